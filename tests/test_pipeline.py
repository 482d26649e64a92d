"""stage: pipeline: steps run in order, outputs flow through placeholders, finished steps are skipped."""

from __future__ import annotations

import json

import pytest

from visarl.config import ConfigError
from visarl.data.shards import list_shards
from visarl.fit import run


def _pipeline(tmp_path, steps: str) -> str:
    path = tmp_path / "pipe.yaml"
    path.write_text(f"stage: pipeline\ntask: reach\nsteps:\n{steps}")
    return str(path)


STEPS = """
  - name: collect
    config: conf/collect/random_tiny.yaml
    overrides: ["data_dir={data}/replay", "env.task={task}", "num_steps=20"]
  - name: more
    config: conf/collect/random_tiny.yaml
    overrides: ["data_dir={step:collect}/../../data/replay", "append=true", "num_steps=20"]
"""


def test_pipeline_runs_steps_and_skips_finished_ones(tmp_path):
    conf = _pipeline(tmp_path, STEPS)
    out = run(conf, [f"output_dir={tmp_path}/runs", "run=p"])
    run_dir = tmp_path / "runs" / "pipe" / "p"
    assert set(out["steps"]) == {"collect", "more"}
    shards = list_shards(run_dir / "data" / "replay")
    assert len(shards) >= 2  # both steps wrote into {data}, the second found it through {step:collect}
    assert (run_dir / "collect" / "run" / "config.yaml").exists()
    # A resumed pipeline skips finished steps: nothing new is written.
    state = json.loads((run_dir / "pipeline_state.json").read_text())
    assert list(state["done"]) == ["collect", "more"]
    out = run(resume=str(run_dir))
    assert list_shards(run_dir / "data" / "replay") == shards
    # Forget the last step: a resume reruns exactly that one (continuing its own run directory).
    del state["done"]["more"]
    (run_dir / "pipeline_state.json").write_text(json.dumps(state))
    run(resume=str(run_dir))
    assert json.loads((run_dir / "pipeline_state.json").read_text())["done"].keys() == {"collect", "more"}


def test_cli_pipeline_says_once_where_it_starts_and_each_step_where_it_ended(tmp_path):
    """`python -m visarl.fit` runs fit as __main__; its pipeline's steps must still count as nested runs."""
    import subprocess
    import sys
    from pathlib import Path

    conf = _pipeline(tmp_path, STEPS)
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "visarl.fit", "--config", conf, f"output_dir={tmp_path}/runs", "run=p"],
        capture_output=True,
        text=True,
        cwd=repo,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    run_dir = tmp_path / "runs" / "pipe" / "p"
    assert [line for line in lines if "starting" in line] == [f"pipeline: starting {run_dir}"]
    assert sum(line.startswith("collect: done in ") for line in lines) == 2
    assert lines[-1].startswith("pipeline: done in ")


def test_pipeline_errors_name_the_step(tmp_path):
    bad_ref = STEPS.replace("{step:collect}", "{step:later}")
    assert bad_ref != STEPS
    with pytest.raises(ConfigError, match=r"steps.more: \{step:later\} refers to no earlier step"):
        run(_pipeline(tmp_path, bad_ref), [f"output_dir={tmp_path}/runs", "run=a"])
    missing = STEPS.replace("conf/collect/random_tiny.yaml", "conf/nowhere.yaml", 1)
    with pytest.raises(ConfigError, match=r"steps.collect.config: file not found: conf/nowhere.yaml"):
        run(_pipeline(tmp_path, missing), [f"output_dir={tmp_path}/runs", "run=b"])
    with pytest.raises(ConfigError, match="unique name"):
        run(_pipeline(tmp_path, STEPS.replace("name: more", "name: collect")), [f"output_dir={tmp_path}/runs"])


def test_pipeline_validates_every_step_before_running_any(tmp_path):
    typo = STEPS.replace('"append=true", "num_steps=20"', '"append=true", "num_stepz=20"')
    assert typo != STEPS
    with pytest.raises(ConfigError, match=r"steps\.more \(conf/collect/random_tiny\.yaml\): .*num_stepz"):
        run(_pipeline(tmp_path, typo), [f"output_dir={tmp_path}/runs", "run=t"])
    # Nothing ran: the first step's data and run directory were never made, and no empty pipeline run is left.
    assert not (tmp_path / "runs" / "pipe" / "t").exists()


def test_quickstart_pipeline_validates(tmp_path):
    from visarl.fit import resolve
    from visarl.pipeline import check_steps

    cfg, run_dir, _ = resolve("conf/quickstart.yaml", None, [f"output_dir={tmp_path}"])
    overrides = check_steps(cfg, run_dir)
    assert list(overrides) == [s.name for s in cfg.steps]
    assert overrides["label"][-1] == f"checkpoint={run_dir}/saliency/run/picanet.pt"  # {step:saliency} filled


def test_resumed_step_is_checked_again_and_takes_the_pipelines_fix(tmp_path, capsys, monkeypatch):
    """An interrupted rl step whose saved config pairs a 64 px encoder with 32 px frames: --resume of the pipeline is
    a one-line error (exit 2) naming the step and the file; once the pipeline's overrides fix the value, the resumed
    step runs with it (its saved config alone would keep the bad one)."""
    from omegaconf import OmegaConf

    from visarl.config import to_yaml
    from visarl.fit import main, resolve
    from visarl.mae import build_multimae, save_checkpoint
    from visarl.registry import get_stage

    ckpt = tmp_path / "mmae64.pt"
    save_checkpoint(build_multimae("tiny", ("rgb", "saliency"), image_size=64), ckpt)
    conf = _pipeline(
        tmp_path,
        f'  - name: rl\n    config: conf/rl/tiny.yaml\n    overrides: ["encoder=mmae", "encoder_ckpt={ckpt}"]\n',
    )
    cfg, run_dir, _ = resolve(conf, None, [f"output_dir={tmp_path}/runs", "run=p"])
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    step_overrides = ["encoder=mmae", f"encoder_ckpt={ckpt}", f"output_dir={run_dir}", "name=rl", "run=run"]
    step_cfg, step_dir, _ = resolve("conf/rl/tiny.yaml", None, step_overrides)
    step_dir.mkdir(parents=True)  # the step started before its input check existed, then stopped
    (step_dir / "config.yaml").write_text(to_yaml(step_cfg))

    assert main(["--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "steps.rl" in err and str(ckpt) in err and "env.image_size is 32" in err
    assert (step_dir / "config.yaml").is_file()  # the interrupted step's run is kept

    saved = OmegaConf.load(run_dir / "config.yaml")  # the fix, in the pipeline's own config
    saved.steps[0].overrides.append("env.image_size=64")
    OmegaConf.save(saved, run_dir / "config.yaml")
    seen = []
    monkeypatch.setattr(get_stage("rl"), "runner", lambda cfg, ctx: seen.append((cfg.env.image_size, ctx)) or {})
    assert main(["--resume", str(run_dir)]) == 0
    assert [(size, ctx.run_dir, ctx.resume) for size, ctx in seen] == [(64, step_dir, True)]
    assert OmegaConf.load(step_dir / "config.yaml").env.image_size == 64
