"""`stage: report`: Table I and Figure 3 from the rl runs found under some directories, and the probe table and
figure from the probe runs there."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from visarl.config import ConfigError, RunConfig
from visarl.core.log import get_logger
from visarl.registry import RunContext, register_stage
from visarl.report.results import collect_probe_results, collect_results
from visarl.report.tables import write_figure3, write_probe_figure, write_probe_table, write_table1

log = get_logger(__name__)


@dataclass
class ReportConfig(RunConfig):
    """Aggregate rl runs into the paper's Table I and Figure 3, and probe runs into the probe table and figure."""

    stage: str = "report"
    runs: list[str] = field(default_factory=lambda: ["runs"])
    """Directories searched (recursively) for rl runs."""
    out_dir: str = ""
    """Where table1.md/.csv and figure3.png go; default: the report's own run directory."""


@register_stage("report", ReportConfig)
def run_report(cfg: ReportConfig, ctx: RunContext) -> dict:
    roots = [Path(r) for r in cfg.runs]
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        raise ConfigError(f"runs: no such directory: {', '.join(missing)}")
    results = collect_results(roots)
    out = Path(cfg.out_dir) if cfg.out_dir else ctx.run_dir
    md, csv_path = write_table1(results, out)
    fig = write_figure3(results, out)
    log.info(md.read_text())
    log.info(f"report: {len(results)} rl runs; Table I: {md} ({csv_path.name}); Figure 3: {fig}")
    out_info = {"table_md": str(md), "table_csv": str(csv_path), "figure": str(fig), "runs": len(results)}
    probes = collect_probe_results(roots)
    if probes:
        pmd, pcsv = write_probe_table(probes, out)
        pfig = write_probe_figure(probes, out)
        log.info(pmd.read_text())
        log.info(f"report: {len(probes)} probe runs; probe table: {pmd} ({pcsv.name}); figure: {pfig}")
        out_info.update(probe_md=str(pmd), probe_csv=str(pcsv), probe_figure=str(pfig), probes=len(probes))
    return out_info
