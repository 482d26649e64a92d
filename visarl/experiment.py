"""`stage: experiment`: a matrix of rl or probe runs (methods x tasks x seeds), e.g. the paper's Table I.

Each cell is one ``python -m visarl.fit`` run in ``<root>/<method>-<task>/seed<seed>``. The matrix runs its
cells one after another or ``parallel`` at a time as local processes, skips cells whose ``eval.json`` holds a
final evaluation (``probe.json`` for probes), resumes cells that were interrupted, and with ``print_only: true``
prints one command line
per remaining cell for a cluster scheduler instead. Method overrides may use ``{task}``, ``{seed}`` and any name
of ``params`` (e.g. ``{rgb_encoder}``), so a pipeline can hand the matrix the checkpoints its earlier steps built.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from visarl.config import ConfigError, RunConfig
from visarl.core.log import get_logger
from visarl.registry import RunContext, register_stage

log = get_logger(__name__)


@dataclass
class MethodSpec:
    """One row of the matrix: an rl (or probe) config and its overrides."""

    name: str = ""
    """Row name, used in run directory names (e.g. cnn_rgbs)."""
    config: str = ""
    """The rl or probe config file."""
    overrides: list[str] = field(default_factory=list)
    """dotted.key=value overrides; {task}, {seed} and the experiment's params are filled in per cell."""


@dataclass
class ExperimentConfig(RunConfig):
    """Run every (method, task, seed) cell of a matrix."""

    stage: str = "experiment"
    root: str = "runs/table1"
    """Where the cells' runs live; stable across invocations so finished cells are found and skipped."""
    tasks: list[str] = field(default_factory=lambda: ["reach", "drawer-open", "faucet-open", "door-open"])
    """Columns of the matrix."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds per cell (the paper: 3)."""
    methods: list[MethodSpec] = field(default_factory=list)
    """Rows of the matrix."""
    overrides: list[str] = field(default_factory=list)
    """Overrides applied to every cell (before the method's own)."""
    params: dict[str, str] = field(default_factory=dict)
    """Named values for placeholders in overrides, e.g. {rgb_encoder: runs/rgb/reach/encoder.pt}."""
    parallel: int = 1
    """Cells run at once as local processes (each may itself use trainer.devices GPUs)."""
    print_only: bool = False
    """Print one command line per remaining cell instead of running them."""

    def trainer_fields(self) -> frozenset[str]:
        """The experiment builds no Trainer: give ``trainer.*`` in ``overrides`` for the cells."""
        return frozenset()

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError("methods: an experiment needs at least one method")
        if self.parallel < 1:
            raise ConfigError(f"parallel: must be >= 1, got {self.parallel}")
        clash = {"task", "seed"} & set(self.params)
        if clash:
            raise ConfigError(f"params: {sorted(clash)} are filled in per cell; choose other names")
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names) or not all(names):
            raise ConfigError(f"methods: every method needs a unique name, got {names}")


@dataclass
class Cell:
    method: MethodSpec
    task: str
    seed: int
    run_dir: Path

    def finished(self) -> bool:
        """The run holds its final evaluation (``eval.json`` of an rl run, ``probe.json`` of a probe)."""
        for name in ("eval.json", "probe.json"):
            try:
                final = json.loads((self.run_dir / name).read_text()).get("final") or {}
            except (OSError, ValueError):
                continue
            if "success_rate" in final:
                return True
        return False

    def command(self, common: list[str], params: dict[str, str] | None = None) -> list[str]:
        fmt = {**(params or {}), "task": self.task, "seed": str(self.seed)}
        if (self.run_dir / "config.yaml").exists():  # started before: continue it
            return [sys.executable, "-m", "visarl.fit", "--resume", str(self.run_dir)]
        try:
            overrides = [o.format(**fmt) for o in [*common, *self.method.overrides]]
        except KeyError as e:
            raise ConfigError(f"methods.{self.method.name}: placeholder {e} is neither task, seed nor in params") from e
        place = [
            f"output_dir={self.run_dir.parent.parent}",
            f"name={self.run_dir.parent.name}",
            f"run={self.run_dir.name}",
        ]
        base = [f"env.task={self.task}", f"seed={self.seed}"]
        return [sys.executable, "-m", "visarl.fit", "--config", self.method.config, *base, *overrides, *place]


def cells(cfg: ExperimentConfig) -> list[Cell]:
    """Every cell, seed by seed: a matrix cut short holds the same seeds of every method and task."""
    root = Path(cfg.root)
    return [
        Cell(m, t, s, root / f"{m.name}-{t}" / f"seed{s}") for s in cfg.seeds for t in cfg.tasks for m in cfg.methods
    ]


@register_stage("experiment", ExperimentConfig)
def run_experiment(cfg: ExperimentConfig, ctx: RunContext) -> dict:
    for m in cfg.methods:
        if not Path(m.config).is_file():
            raise ConfigError(f"methods.{m.name}.config: file not found: {m.config}")
    for c in cells(cfg):  # every placeholder resolves before the first cell starts
        c.command(cfg.overrides, cfg.params)
    todo = [c for c in cells(cfg) if not c.finished()]
    total = len(cells(cfg))
    log.info(f"experiment: {total - len(todo)}/{total} cells finished, {len(todo)} to run")
    if cfg.print_only:
        for c in todo:
            log.info(shlex.join(c.command(cfg.overrides, cfg.params)))
        return {"todo": len(todo), "total": total}
    running: list[tuple[Cell, subprocess.Popen]] = []
    failed: list[str] = []
    log_dir = ctx.run_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    queue = list(todo)
    while queue or running:
        while queue and len(running) < cfg.parallel:
            c = queue.pop(0)
            log_file = open(log_dir / f"{c.run_dir.parent.name}-{c.run_dir.name}.log", "ab")
            running.append(
                (c, subprocess.Popen(c.command(cfg.overrides, cfg.params), stdout=log_file, stderr=subprocess.STDOUT))
            )
            log.info(f"experiment: started {c.run_dir}")
        for c, proc in list(running):
            if proc.poll() is not None:
                running.remove((c, proc))
                status = "done" if proc.returncode == 0 and c.finished() else f"FAILED (exit {proc.returncode})"
                if status != "done":
                    failed.append(str(c.run_dir))
                log.info(f"experiment: {status}: {c.run_dir}")
        time.sleep(0.5)
    if failed:
        log.info(f"experiment: {len(failed)} cells failed; their logs are in {log_dir}; rerun to retry them")
    return {"todo": len(todo), "total": total, "failed": failed}
