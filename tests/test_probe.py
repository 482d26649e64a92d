"""`stage: probe`: scripted-expert demos, embeddings computed once, a falling BC loss, resume after SIGKILL.

All at test size (conf/probe/tiny.yaml: 3 demos of 30 steps at 32 px, 2-episode evaluations).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from visarl.config import ConfigError
from visarl.data.shards import ShardReader, list_shards
from visarl.fit import run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
TINY = "conf/probe/tiny.yaml"
ENV = {"task": "reach", "image_size": 32, "episode_length": 30}


def _probe_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "probe.json").read_text())


def test_demos_are_the_scripted_experts_actions(tmp_path):
    from visarl.envs import EnvConfig, env_kwargs
    from visarl.envs.experts import ScriptedExpert
    from visarl.probe.demos import DemoSet, read_manifest, record_demos

    kwargs = env_kwargs(EnvConfig(**ENV))
    spec = DemoSet("reach-v3", 2, 0, kwargs)
    manifest = record_demos(tmp_path, spec, progress=False)
    expert = ScriptedExpert("reach")
    rows = 0
    for path in list_shards(tmp_path):
        r = ShardReader(path)
        idx = r.transition_indices()
        np.testing.assert_array_equal(r.read("action", idx), expert(r.read("state", idx)))
        np.testing.assert_array_equal(r.read("expert_action", idx), r.read("action", idx))
        assert len(np.unique(r.read("episode"))) == 2
        rows += len(r)
    assert manifest["frames"] == rows and len(manifest["successes"]) == 2
    # a second call reuses the recording; another spec in the same folder is refused
    before = [p.stat().st_mtime_ns for p in list_shards(tmp_path)]
    assert record_demos(tmp_path, spec, progress=False) == read_manifest(tmp_path)
    assert [p.stat().st_mtime_ns for p in list_shards(tmp_path)] == before
    with pytest.raises(ConfigError, match="num_demos=2, wanted 3"):
        record_demos(tmp_path, DemoSet("reach-v3", 3, 0, kwargs), progress=False)
    # DART: noisy executed actions, every frame still labelled with the expert's clean action
    record_demos(tmp_path / "dart", DemoSet("reach-v3", 1, 0, kwargs, noise=0.3), progress=False)
    r = ShardReader(list_shards(tmp_path / "dart")[0])
    idx = r.transition_indices()
    np.testing.assert_array_equal(r.read("expert_action", idx), expert(r.read("state", idx)))
    assert not np.allclose(r.read("action", idx), r.read("expert_action", idx))


def test_scripted_expert_noise_and_end_on_success():
    from visarl.envs import make_env
    from visarl.envs.experts import EndOnSuccess, ScriptedExpert

    states = np.random.default_rng(0).normal(size=(5, 39)).astype(np.float32)
    clean = ScriptedExpert("reach")(states)
    noisy = ScriptedExpert("reach", noise=0.5, rng=np.random.default_rng(1))(states)
    assert clean.shape == (5, 4) and not np.allclose(clean, noisy) and np.abs(noisy).max() <= 1.0
    env = EndOnSuccess(make_env("reach", seed=0, image_size=32, episode_length=200))
    expert = ScriptedExpert("reach")
    obs, _ = env.reset(seed=0)
    steps = 0
    for steps in range(1, 201):  # noqa: B007
        obs, _, terminated, truncated, info = env.step(expert(obs["state"]))
        if terminated or truncated:
            break
    assert truncated and info["success"] == 1.0 and steps < 200  # ended at the first success, not the time limit
    env.close()


def test_collect_scripted_policy_stores_expert_actions(tmp_path):
    from visarl.envs.experts import ScriptedExpert

    data = tmp_path / "data"
    summary = run("conf/collect/scripted_tiny.yaml", [f"output_dir={tmp_path}", "run=c", f"data_dir={data}"])
    expert = ScriptedExpert("reach")
    for path in list_shards(data):
        r = ShardReader(path)
        idx = r.transition_indices()
        np.testing.assert_array_equal(r.read("action", idx), expert(r.read("state", idx)))
    assert summary["policy"] == "scripted" and summary["transitions"] == 120


def test_state_probe_bc_loss_falls_and_report_reads_it(tmp_path):
    run(TINY, [f"output_dir={tmp_path}", "run=s", "bc.steps=60", "eval.every=30"])
    data = _probe_json(tmp_path / "tiny" / "s")
    curve = data["curve"]
    assert [c["step"] for c in curve] == [30, 60]
    assert curve[-1]["bc_loss"] < curve[0]["bc_loss"] < data["initial_bc_loss"]
    assert curve[-1]["bc_loss"] < 0.5 * data["initial_bc_loss"]
    assert data["final"]["step"] == 60 and data["best"]["success_rate"] >= data["final"]["success_rate"]
    assert all(c["episodes"] == 2 for c in curve)
    # TensorBoard has the BC loss and the success rate
    from visarl.report.results import read_scalars

    steps, _ = read_scalars(tmp_path / "tiny" / "s", "eval/success_rate")
    assert steps.tolist() == [30, 60]
    # the report stage writes the probe table
    out = run("conf/report/default.yaml", [f"runs=[{tmp_path}]", f"output_dir={tmp_path}/rep", "run=r"])
    assert out["probes"] == 1
    assert "| State |" in Path(out["probe_md"]).read_text()


@pytest.fixture(scope="module")
def mmae_ckpt(tmp_path_factory) -> Path:
    from visarl.mae import build_multimae, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mmae") / "encoder.pt"
    save_checkpoint(build_multimae("tiny", ("rgb", "saliency"), image_size=32), path)
    return path


def test_frozen_encoder_embeds_each_demo_frame_once(tmp_path, mmae_ckpt, monkeypatch):
    """Demo frames are encoded once (then read from the shards); training never runs the encoder."""
    from visarl.mae.frozen import FrameEmbedder

    calls: list[int] = []
    original = FrameEmbedder.__call__

    def counting(self, obs):
        calls.append(len(obs[self.inputs[0]]))
        return original(self, obs)

    monkeypatch.setattr(FrameEmbedder, "__call__", counting)
    demos = tmp_path / "demos"
    common = [f"output_dir={tmp_path}", f"demo_dir={demos}", "encoder=mmae", f"encoder_ckpt={mmae_ckpt}"]
    sal = ["variant=rgbs", "saliency=oracle"]
    run(TINY, [*common, *sal, "run=a"])
    data = _probe_json(tmp_path / "tiny" / "a")
    frames = sum(len(ShardReader(p)) for p in list_shards(demos))
    assert data["embedded_rows"] == frames
    # one call per demo shard, then one 1-frame call per evaluation step (1 env): reset + each step
    eval_calls = sum(1 + int(round(c["episode_length"] * c["episodes"])) for c in data["curve"])
    assert sum(n for n in calls if n > 1) == frames
    assert len(calls) == len(list_shards(demos)) + eval_calls
    key = [k for k in ShardReader(list_shards(demos)[0]).fields if k.startswith("emb_")]
    assert len(key) == 1 and "saliency" in ShardReader(list_shards(demos)[0]).fields
    # a second probe of the same encoder on the same demos encodes none of them again
    calls.clear()
    run(TINY, [*common, *sal, "run=b", "bc.steps=20"])
    assert _probe_json(tmp_path / "tiny" / "b")["embedded_rows"] == 0
    assert all(n == 1 for n in calls)
    # the pretrain-only variant (rgb inputs of the rgb+saliency checkpoint) is another encoder: its own field
    run(TINY, [*common, "modalities=[rgb]", "run=c", "bc.steps=20"])
    assert _probe_json(tmp_path / "tiny" / "c")["embedded_rows"] == frames
    with pytest.raises(ConfigError, match="saliency"):
        run(TINY, [*common, "variant=rgbs", "saliency=none", "run=d"])


def test_sigkill_then_resume_continues(tmp_path):
    run_dir = tmp_path / "tiny" / "k"
    cmd = [sys.executable, "-m", "visarl.fit", "--config", TINY, f"output_dir={tmp_path}", "run=k",
           "bc.steps=3000", "eval.every=1000", "checkpoint_every=25"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300  # generous: CI machines may be shared
    step = 0
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file():
            try:
                step = int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])
            except Exception:  # mid-rename
                step = 0
            if step >= 50:
                break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert step >= 50, "the probe never reached a checkpoint at step 50"
    saved = int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])
    demo_mtimes = [p.stat().st_mtime_ns for p in list_shards(run_dir / "demos")]
    # resume with a shorter budget so the test stays short: training continues from the checkpoint's step
    end = saved + 40
    out = run(resume=str(run_dir), overrides=[f"bc.steps={end}", "eval.every=0"])
    assert out["step"] == end and out["final"]["step"] == end
    assert [p.stat().st_mtime_ns for p in list_shards(run_dir / "demos")] == demo_mtimes  # demos reused
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == end


def _fake_probe(root: Path, name: str, task: str, seed: int, final: float, best: float, **cfg: object) -> Path:
    run_dir = root / name / f"seed{seed}"
    run_dir.mkdir(parents=True)
    lines = ["stage: probe", f"seed: {seed}", f"env: {{task: {task}}}"] + [f"{k}: {v}" for k, v in cfg.items()]
    (run_dir / "config.yaml").write_text("\n".join(lines) + "\n")
    probe = {"final": {"step": 10, "success_rate": final}, "best": {"step": 5, "success_rate": best}}
    (run_dir / "probe.json").write_text(json.dumps({**probe, "seconds": {"total": 60.0}}))
    return run_dir


def test_probe_table_mean_std_and_matrix_cells(tmp_path):
    from visarl.experiment import Cell, MethodSpec
    from visarl.report.results import collect_probe_results
    from visarl.report.tables import probe_rows

    finals = [0.9, 0.8, 1.0]
    for seed, f in enumerate(finals):
        _fake_probe(tmp_path, "state-reach", "reach-v3", seed, f, 1.0, encoder="state")
    _fake_probe(tmp_path, "cnn-reach", "reach", 0, 0.2, 0.3, encoder="cnn", variant="rgbs")
    results = collect_probe_results([tmp_path])
    header, rows = probe_rows(results)
    assert header == ["Method", "reach final", "reach best", "seeds"]
    by_method = {r[0]: r for r in rows}
    assert by_method["State"][1] == f"{np.mean(finals):.2f} ± {np.std(finals, ddof=1):.2f}"
    assert by_method["State"][2] == "1.00 ± 0.00" and by_method["State"][3] == "3"
    assert by_method["CNN RGBS"][1:] == ["0.20", "0.30", "1"]
    # an experiment cell counts a probe as finished once probe.json holds the final evaluation
    cell = Cell(MethodSpec("state", "conf/probe/reach.yaml"), "reach", 0, tmp_path / "state-reach" / "seed0")
    assert cell.finished()
    assert not Cell(MethodSpec("x", "conf/probe/reach.yaml"), "reach", 0, tmp_path / "none").finished()


def test_probe_figure_bars_are_the_means_and_nothing_is_clipped(tmp_path):
    """One bar per (method, task) at the mean final success; the title and the legend (outside the axes) lie
    inside the figure once drawn (an earlier layout cut the title's first letters)."""
    from visarl.report.results import collect_probe_results
    from visarl.report.tables import probe_figure, write_probe_figure

    for seed, f in enumerate([0.9, 0.8, 1.0]):
        _fake_probe(tmp_path, "state-reach", "reach-v3", seed, f, 1.0, encoder="state")
        _fake_probe(tmp_path, "state-drawer", "drawer-open", seed, f / 2, 1.0, encoder="state")
    results = collect_probe_results([tmp_path])
    fig = probe_figure(results)
    ax = fig.axes[0]
    heights = sorted(round(b.get_height(), 6) for b in ax.patches)
    assert heights == [0.45, 0.9]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    box = fig.bbox
    for artist in (ax.title, ax.get_legend()):
        extent = artist.get_window_extent(renderer)
        assert box.x0 - 1 <= extent.x0 and extent.x1 <= box.x1 + 1 and extent.y1 <= box.y1 + 1, artist
    assert write_probe_figure(results, tmp_path / "out").stat().st_size > 0


def test_cnn_probe_trains_the_cnn_by_the_bc_loss(tmp_path):
    """The paper's CNN variants run end to end (rgb + oracle saliency); the checkpoint holds conv weights that
    differ from a fresh init of the same seed."""
    over = ["encoder=cnn", "variant=rgbs", "saliency=oracle", "cnn_layers=2", "cnn_filters=4", "bc.steps=20",
            "eval.every=0", f"output_dir={tmp_path}", "run=c"]  # fmt: skip
    out = run(TINY, over)
    assert out["final"]["step"] == 20 and out["inputs"] == ["rgb", "saliency"]
    state = torch.load(tmp_path / "tiny" / "c" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    convs = [k for k in state["state_dict"] if k.startswith("policy.encoder.convs")]
    assert convs
    from visarl.rl.encoders import PixelCNN

    torch.manual_seed(0)
    fresh = PixelCNN("rgbs", (32, 32), 2, 4).state_dict()
    assert any(not torch.equal(state["state_dict"][f"policy.encoder.{k}"], v) for k, v in fresh.items())
