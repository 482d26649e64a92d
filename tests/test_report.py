"""stage: report on synthetic runs with known values: Table I cells, missing cells, Figure 3."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from visarl.config import build, to_yaml
from visarl.fit import run
from visarl.report import aggregate_curves, collect_results, method_of, table_cells
from visarl.rl.encoders import PIXEL_VARIANTS
from visarl.rl.evaluate import EvalResult
from visarl.rl.stage import RLConfig


def _fake_run(
    root: Path,
    task: str,
    variant: str,
    seed: int,
    curve: list[float],
    final: float | None,
    saliency: str = "",
    legacy: bool = False,
) -> Path:
    """An rl run folder in the shape the rl stage writes it: the resolved config.yaml, the eval/success_rate events,
    and eval.json as SACLoop writes it (EvalResult records; the saliency source the policy read).

    ``saliency`` is the config's source (default: picanet where the variant reads maps); ``legacy`` drops the source
    from eval.json, as runs written before it recorded one.
    """
    run_dir = root / f"{task}-{variant}-{seed}-{saliency}-{legacy}"
    run_dir.mkdir(parents=True)
    reads_maps = "saliency" in PIXEL_VARIANTS[variant].obs_keys
    saliency = saliency or ("picanet" if reads_maps else "none")
    cfg = build(
        RLConfig,
        {"seed": seed, "env": {"task": task}, "variant": variant, "saliency": saliency, "saliency_ckpt": "p.pt"},
    )
    cfg.name, cfg.run = root.name, run_dir.name
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    tb = SummaryWriter(str(run_dir))
    for i, v in enumerate(curve):
        tb.add_scalar("eval/success_rate", v, (i + 1) * 1000)
    tb.close()
    if final is not None:
        records = [_record((i + 1) * 1000, v) for i, v in enumerate(curve[:-1])] + [_record(len(curve) * 1000, final)]
        source = {"saliency": saliency if reads_maps else "none"}  # SACLoop.saliency_record
        if source["saliency"] == "picanet":
            source["saliency_ckpt"] = cfg.saliency_ckpt
        doc = {"task": task, **({} if legacy else source), "env_step": records[-1]["step"], "final": records[-1]}
        (run_dir / "eval.json").write_text(json.dumps({**doc, "curve": records}))
    return run_dir


def _record(step: int, success: float) -> dict:
    """One evaluation as eval.json stores it; its mean return is 100 x its success rate."""
    return EvalResult(step, success, 100.0 * success, 500.0, 50, 1.0, [success] * 50, [100.0 * success] * 50).record()


@pytest.fixture
def fake_runs(tmp_path):
    root = tmp_path / "runs"
    finals = {"rgb": [0.2, 0.4, 0.9], "rgbs": [0.5, 0.7, 0.6]}
    for variant, values in finals.items():
        for seed, final in enumerate(values):
            _fake_run(root, "reach-v3", variant, seed, [0.0, final / 2, final], final)
    _fake_run(root, "door-open", "rgb", 0, [0.1], None)  # evaluated curve but no final eval: missing in the table
    (root / "not-a-run").mkdir()
    (root / "collect").mkdir()
    (root / "collect" / "config.yaml").write_text("stage: collect\n")
    return root, finals


def test_cells_match_numpy(fake_runs):
    root, finals = fake_runs
    results = collect_results([root])
    assert len(results) == 7
    cells = table_cells(results)
    for variant, method in (("rgb", "CNN RGB"), ("rgbs", "CNN RGBS")):
        mean, std, n = cells[(method, "reach")]
        assert n == 3
        assert mean == pytest.approx(np.mean(finals[variant]))
        assert std == pytest.approx(np.std(finals[variant], ddof=1))
    assert ("CNN RGB", "door-open") not in cells


def test_report_stage_writes_table_and_figure(fake_runs, tmp_path):
    root, finals = fake_runs
    out = run("conf/report/default.yaml", [f"runs=[{root}]", f"output_dir={tmp_path}/out", "run=r"])
    rows = list(csv.reader(open(out["table_csv"])))
    header = rows[0]
    by_method = {r[0]: dict(zip(header, r, strict=True)) for r in rows[1:]}
    m, s = np.mean(finals["rgb"]), np.std(finals["rgb"], ddof=1)
    assert by_method["CNN RGB"]["reach (ours)"] == f"{m:.2f} ± {s:.2f}"
    assert by_method["CNN RGB"]["reach (paper)"] == "0.39 ± 0.13"
    assert by_method["CNN RGB"]["door-open (ours)"] == "—"  # never filled in
    assert by_method["CNN RGB"]["Average (ours)"] == "—"
    assert by_method["MMAE RGB+Saliency"]["reach (ours)"] == "—"
    assert by_method["MMAE RGB+Saliency"]["Average (paper)"] == "0.70"
    png = Path(out["figure"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_curve_aggregation_mean_and_standard_error(fake_runs):
    root, finals = fake_runs
    runs = [r for r in collect_results([root]) if r.method == "CNN RGBS"]
    steps, mean, sem = aggregate_curves(runs)
    assert list(steps) == [1000, 2000, 3000]
    values = np.array([[0.0, f / 2, f] for f in finals["rgbs"]])
    assert np.allclose(mean, values.mean(0))
    assert np.allclose(sem, values.std(0, ddof=1) / np.sqrt(3))


def test_method_names(tmp_path):
    from omegaconf import OmegaConf

    from visarl.mae import build_multimae, save_checkpoint

    rgbs = tmp_path / "rgbs.pt"
    save_checkpoint(build_multimae("tiny", ("rgb", "saliency"), image_size=32), rgbs)

    def method(**fields) -> str:  # from config.yaml as the rl stage writes it
        cfg = build(RLConfig, {"saliency": "oracle", **fields})
        return method_of(OmegaConf.to_container(OmegaConf.create(to_yaml(cfg))))

    assert method(variant="rgb_x_saliency") == "CNN RGB x Saliency"
    assert method(encoder="identity") == "identity"
    mmae = {"encoder": "mmae", "encoder_ckpt": str(rgbs)}
    assert method(**mmae, variant="rgbs", modalities=["rgb", "saliency"]) == "MMAE RGB+Saliency"
    assert method(**mmae, variant="rgbs") == "MMAE RGB+Saliency"  # no modalities: the variant's inputs
    assert method(**mmae, variant="rgb", modalities=["rgb"]) == "MMAE RGB+Saliency(PO)"  # pretrained with maps
    rgb = tmp_path / "rgb.pt"
    save_checkpoint(build_multimae("tiny", ("rgb",), image_size=32), rgb)
    assert method(**{**mmae, "encoder_ckpt": str(rgb)}, variant="rgb") == "MMAE RGB"


def test_publish_writes_json_table_and_figure_from_the_runs(fake_runs, tmp_path):
    from visarl.report.publish import publish

    root, finals = fake_runs
    reach = tmp_path / "reach_only"
    reach.mkdir()
    for run_dir in root.glob("reach-v3-*"):  # one task: methods map straight to per-seed finals
        run_dir.rename(reach / run_dir.name)
        (reach / run_dir.name / "summary.json").write_text("{}")  # the rl stage writes it when a run ends
    running = _fake_run(reach, "reach-v3", "rgb", 7, [0.0], 0.0)  # no summary.json: still running, not counted
    out = tmp_path / "docs"
    doc = publish(reach, out, "demo", "python -m visarl.fit --config X")
    assert doc["task"] == "reach" and doc["env_steps"] == 3000
    assert doc["methods"] == {"CNN RGB": finals["rgb"], "CNN RGBS": finals["rgbs"]}
    assert doc["best"]["CNN RGB"] == pytest.approx(finals["rgb"])  # each curve peaks at its final value
    assert doc["final_return"]["CNN RGBS"] == pytest.approx([100 * f for f in finals["rgbs"]])
    assert doc["in_progress"] == [str(running)]
    assert json.loads((out / "demo.json").read_text())["methods"] == doc["methods"]
    md = (out / "demo.md").read_text()
    m, s = np.mean(finals["rgb"]), np.std(finals["rgb"], ddof=1)
    assert f"| CNN RGB | {m:.2f} ± {s:.2f} |" in md and "python -m visarl.fit --config X" in md
    assert doc["commit"] in md and str(running) in md and (out / "demo.png").stat().st_size > 5000


def test_oracle_runs_are_their_own_marked_row(tmp_path):
    root = tmp_path / "runs"
    for seed, final in enumerate([0.5, 0.7]):
        _fake_run(root, "reach", "rgbs", seed, [final], final, saliency="picanet")
    _fake_run(root, "reach", "rgbs", 0, [0.9], 0.9, saliency="oracle")
    # written before eval.json recorded the source: the config's saliency key decides
    _fake_run(root, "reach", "rgbs", 1, [0.8], 0.8, saliency="oracle", legacy=True)
    _fake_run(root, "reach", "rgb", 0, [0.3], 0.3, saliency="oracle", legacy=True)  # rgb never reads maps: not marked
    results = collect_results([root])
    assert sorted(r.label for r in results) == ["CNN RGB", "CNN RGBS", "CNN RGBS", "CNN RGBS †", "CNN RGBS †"]
    cells = table_cells(results)
    assert cells[("CNN RGBS", "reach")][0] == pytest.approx(0.6)  # PiCANet runs alone
    assert cells[("CNN RGBS †", "reach")][0] == pytest.approx(0.85)  # never mixed into the PiCANet mean
    out = run("conf/report/default.yaml", [f"runs=[{root}]", f"output_dir={tmp_path}/out", "run=r"])
    rows = list(csv.reader(open(out["table_csv"])))
    names = [r[0] for r in rows[1:]]
    assert names.index("CNN RGBS †") == names.index("CNN RGBS") + 1
    marked = dict(zip(rows[0], rows[1 + names.index("CNN RGBS †")], strict=True))
    assert marked["reach (ours)"].startswith("0.85") and marked["reach (paper)"] == "0.51 ± 0.07"
    md = Path(out["table_md"]).read_text()
    assert "| CNN RGBS † |" in md and "† Saliency from the oracle" in md and "privileged" in md


def test_no_footnote_without_oracle_runs(fake_runs, tmp_path):
    root, _ = fake_runs
    out = run("conf/report/default.yaml", [f"runs=[{root}]", f"output_dir={tmp_path}/out", "run=r"])
    assert "†" not in Path(out["table_md"]).read_text()
