"""visarl.fit: config loading, validation errors, run directories, resume, seeding."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from visarl.config import ConfigError, RunConfig, build, check_keys, choice, load_yaml
from visarl.fit import main, resolve, run
from visarl.registry import get_stage, known_stages, register_stage

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Inner:
    width: int = 8
    ratio: float = 0.5


@dataclass
class EchoConfig(RunConfig):
    stage: str = "echo_test"
    inner: Inner = field(default_factory=Inner)
    mode: str = "a"
    tags: list[str] = field(default_factory=list)
    limit: int | None = None

    def __post_init__(self) -> None:
        choice("mode", self.mode, ["a", "b"])


CALLS: list = []


@register_stage("echo_test", EchoConfig)
def _echo(cfg, ctx):
    CALLS.append((cfg, ctx, torch.rand(1).item(), np.random.rand()))
    return cfg


def _write(tmp_path: Path, text: str, name: str = "echo.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_run_writes_resolved_config_and_dispatches(tmp_path):
    conf = _write(tmp_path, "stage: echo_test\ninner:\n  width: 16\n")
    cfg = run(str(conf), [f"output_dir={tmp_path}/runs", "run=r1", "inner.ratio=0.25", "tags=[x,y]"])
    assert cfg.inner.width == 16 and cfg.inner.ratio == 0.25 and cfg.tags == ["x", "y"]
    run_dir = tmp_path / "runs" / "echo" / "r1"  # <output_dir>/<config stem>/<run>
    saved = load_yaml(run_dir / "config.yaml")
    assert saved["inner"] == {"width": 16, "ratio": 0.25} and saved["name"] == "echo" and saved["run"] == "r1"
    assert CALLS[-1][1].run_dir == run_dir and CALLS[-1][1].resume is False


def test_a_run_says_where_it_starts_and_what_it_wrote(tmp_path, caplog):
    conf = _write(tmp_path, "stage: echo_test\n")
    run_dir = tmp_path / "runs" / "echo" / "r1"
    with caplog.at_level("INFO", logger="visarl.fit"):
        run(str(conf), [f"output_dir={tmp_path}/runs", "run=r1"])
    lines = [r.getMessage() for r in caplog.records if r.name == "visarl.fit"]
    assert lines[0] == f"echo_test: starting {run_dir}"
    assert lines[-1].startswith("echo_test: done in ") and lines[-1].endswith(f"-> {run_dir}")  # config.yaml only
    (run_dir / "model.pt").write_bytes(b"x")
    (run_dir / "checkpoints").mkdir()
    with caplog.at_level("INFO", logger="visarl.fit"):
        run(resume=str(run_dir))
    lines = [r.getMessage() for r in caplog.records if r.name == "visarl.fit"]
    assert f"echo_test: resuming {run_dir}" in lines and lines[-1].endswith(f"-> {run_dir} (checkpoints/, model.pt)")


def test_a_step_inside_a_pipeline_leaves_its_start_to_the_pipeline(tmp_path, caplog, monkeypatch):
    import visarl.fit

    conf = _write(tmp_path, "stage: echo_test\n")
    monkeypatch.setattr(visarl.fit, "_depth", 1)  # as when a pipeline or experiment runs its steps
    with caplog.at_level("INFO", logger="visarl.fit"):
        run(str(conf), [f"output_dir={tmp_path}/runs", "run=r1"])
    lines = [r.getMessage() for r in caplog.records if r.name == "visarl.fit"]
    assert len(lines) == 1 and lines[0].startswith("echo_test: done in ")
    assert visarl.fit._depth == 1  # restored after the run


def test_resume_reopens_same_dir_with_saved_values(tmp_path):
    conf = _write(tmp_path, "stage: echo_test\nmode: b\n")
    run(str(conf), [f"output_dir={tmp_path}/runs", "run=r1", "inner.width=3"])
    run_dir = tmp_path / "runs" / "echo" / "r1"
    cfg = run(resume=str(run_dir), overrides=["trainer.devices=2"])
    assert cfg.mode == "b" and cfg.inner.width == 3 and cfg.trainer.devices == 2
    assert CALLS[-1][1].resume is True and CALLS[-1][1].run_dir == run_dir
    with pytest.raises(ConfigError, match="already holds a run"):
        run(str(conf), [f"output_dir={tmp_path}/runs", "run=r1"])


def test_outside_launcher_ranks_share_rank0_run_dir(tmp_path, monkeypatch):
    """torchrun/srun start every rank with the same command: rank 0 makes the run, the others wait and share it."""
    conf = _write(tmp_path, "stage: echo_test\n")
    args = [f"output_dir={tmp_path}/runs", "run=shared"]
    run_dir = tmp_path / "runs" / "echo" / "shared"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match=r"name the run \(run=NAME\)"):  # timestamps differ between ranks
        run(str(conf), [f"output_dir={tmp_path}/runs"])
    assert not (tmp_path / "runs").exists()

    done: list = []
    rank1 = threading.Thread(target=lambda: done.append(run(str(conf), args)))
    rank1.start()
    time.sleep(1.0)
    assert rank1.is_alive() and not run_dir.exists()  # rank 1 waits for rank 0
    monkeypatch.setenv("RANK", "0")  # (the thread reads RANK only at its start)
    run(str(conf), args)
    rank1.join(timeout=30)
    assert len(done) == 1 and {c[1].run_dir for c in CALLS[-2:]} == {run_dir}
    assert [p.name for p in (tmp_path / "runs" / "echo").iterdir()] == ["shared"]


def test_outside_launcher_rank_refuses_a_stale_run(tmp_path):
    from visarl.launch import wait_for_run

    (tmp_path / "config.yaml").write_text("stage: echo_test\n")
    wait_for_run(tmp_path, started=time.time())  # written just now, by this launch's rank 0
    with pytest.raises(ConfigError, match="did not create"):  # an earlier run's config: refuse, do not hang
        wait_for_run(tmp_path, started=time.time() + 3600, timeout=0.3, poll=0.1)


def test_same_seed_same_random_streams(tmp_path):
    conf = _write(tmp_path, "stage: echo_test\nseed: 7\n")
    run(str(conf), [f"output_dir={tmp_path}/runs", "run=a"])
    run(str(conf), [f"output_dir={tmp_path}/runs", "run=b"])
    run(str(conf), [f"output_dir={tmp_path}/runs", "run=c", "seed=8"])
    (_, _, ta, na), (_, _, tb, nb), (_, _, tc, nc) = CALLS[-3:]
    assert (ta, na) == (tb, nb) and (ta, na) != (tc, nc)


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("stage: echo_test\ninner:\n  widht: 3\n", [], r"unknown config key 'inner.widht'; did you mean 'inner.width'"),
        ("stage: echo_test\n", ["moed=a"], r"unknown config key 'moed'; did you mean 'mode'"),
        ("stage: echo_test\ninner:\n  width: wide\n", [], r"inner.width: 'wide' \(str\) is not a valid int"),
        ("stage: echo_test\n", ["inner.ratio=fast"], r"inner.ratio: 'fast' \(str\) is not a valid float"),
        ("stage: echo_test\nmode: c\n", [], r"mode: 'c' is not one of \['a', 'b'\]"),
        ("stage: echo_test\ninner: 3\n", [], r"inner: expected a mapping of Inner fields"),
        ("stage: echo_test\ntrainer:\n  precision: fp8\n", [], r"trainer.precision: 'fp8' is not one of"),
        ("stage: nope\n", [], r"unknown stage 'nope'; known stages: .*collect.*echo_test"),
        ("mode: a\n", [], r"no 'stage:' key"),
        ("- 1\n- 2\n", [], r"must be a mapping"),
        ("stage: echo_test\n", ["novalue"], r"not of the form dotted.key=value"),
    ],
)
def test_errors_name_the_key_and_value(tmp_path, text, overrides, message):
    conf = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=message):
        resolve(str(conf), None, overrides)


def test_missing_file_and_bad_resume_dir_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nowhere.yaml"):
        resolve(str(tmp_path / "nowhere.yaml"), None, [])
    with pytest.raises(ConfigError, match=r"not a run directory"):
        resolve(None, str(tmp_path), [])


def test_cli_exits_nonzero_with_message(tmp_path, capsys):
    conf = _write(tmp_path, "stage: echo_test\nwidth: 3\n")
    assert main(["--config", str(conf)]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'width'" in err and "Traceback" not in err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_cli_subprocess_unknown_stage_lists_known(tmp_path):
    conf = _write(tmp_path, "stage: bogus\n")
    proc = subprocess.run(
        [sys.executable, "-m", "visarl.fit", "--config", str(conf)], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 2
    assert "unknown stage 'bogus'" in proc.stderr and "collect" in proc.stderr


def test_check_keys_handles_optional_and_lists():
    check_keys({"limit": None, "tags": ["a"]}, EchoConfig)
    check_keys({"limit": 3}, EchoConfig)
    with pytest.raises(ConfigError, match=r"tags: 3 is not a valid list"):
        check_keys({"tags": 3}, EchoConfig)
    with pytest.raises(ConfigError, match=r"limit: 'x' is not a valid"):
        check_keys({"limit": "x"}, EchoConfig)
    assert build(EchoConfig, {"limit": 4}).limit == 4


def test_every_config_file_validates():
    """Every YAML in conf/ builds against its stage's schema."""
    files = sorted((REPO / "conf").rglob("*.yaml"))
    assert files, "no configs found"
    for path in files:
        raw = load_yaml(path)
        if "stage" not in raw:  # experiment matrices and other non-stage files declare no stage
            continue
        build(get_stage(raw["stage"]).schema, raw)
    assert "collect" in known_stages()


def test_help_with_config_lists_every_field_and_writes_nothing(tmp_path, capsys):
    """--help after --config: each field's type, current value (file + overrides), default and docstring."""
    conf = str(REPO / "conf/rl/tiny.yaml")
    assert main(["--config", conf, f"output_dir={tmp_path}", "sac.batch_size=7", "--help"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "num_steps: int = 60  (default: 1000000)" in lines  # set by the file
    assert "  batch_size: int = 7  (default: 128)" in lines  # a section's field, indented, set by an override
    at = lines.index("  batch_size: int = 7  (default: 128)")
    assert lines[at + 1].strip().startswith("Transitions per update")  # its field docstring
    assert "sac: SACConfig" in lines and "  every: int = 30  (default: 10000)" in lines
    assert "modalities: list[str] = []  (default: [])" in lines  # one line per value, lists included
    for name in ("seed", "trainer", "env", "encoder_ckpt", "saliency_sigma"):  # every field, sections included
        assert any(line.startswith(f"{name}: ") for line in lines), name
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_help_without_config_is_the_usage(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m visarl.fit") and "--config" in out


def test_field_docs_follow_inheritance():
    from visarl.config import field_docs
    from visarl.probe.stage import ProbeEvalConfig

    docs = field_docs(ProbeEvalConfig)
    assert docs["every"].startswith("Optimizer steps")  # the probe's own
    assert docs["episodes"].startswith("Episodes per evaluation")  # inherited from the shared base
    assert field_docs(EchoConfig)["seed"].startswith("Seeds python")  # from RunConfig


def test_every_key_error_of_file_and_overrides_in_one_message(tmp_path):
    conf = _write(tmp_path, "stage: echo_test\nwidht: 3\ninner:\n  width: wide\n  rato: 0.1\n")
    with pytest.raises(ConfigError) as info:
        resolve(str(conf), None, ["mdoe=b", "limit=3"])
    assert len(info.value.problems) == 4
    message = str(info.value)
    assert message.startswith("4 config errors:")
    expected = (
        "unknown config key 'widht'",
        "inner.width: 'wide' (str) is not a valid int",
        "unknown config key 'inner.rato'; did you mean 'inner.ratio'?",
        "unknown config key 'mdoe'",  # from the overrides
    )
    for part in expected:
        assert part in message, part
    with pytest.raises(ConfigError) as one:  # a single mistake reads as before
        resolve(str(_write(tmp_path, "stage: echo_test\nwidth: 3\n", "one.yaml")), None, [])
    assert str(one.value).startswith("unknown config key 'width'") and one.value.problems == [str(one.value)]
