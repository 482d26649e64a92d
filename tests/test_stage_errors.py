"""Bad inputs stop a stage before its run directory exists: a one-line error naming the file, exit 2, nothing left
behind. Also the config leaks: trainer.* given to a stage that reads none of it, union errors, stage imports."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import visarl.registry as registry
from visarl.config import ConfigError, RunConfig, build, check_keys, check_trainer_use, load_yaml
from visarl.data.shards import ShardWriter
from visarl.fit import main, resolve, run
from visarl.registry import get_stage, register_stage

REPO = Path(__file__).resolve().parents[1]
RL_TINY = "conf/rl/tiny.yaml"
LABEL_TINY = "conf/label/tiny.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny_picanet(path: Path) -> Path:
    from visarl.saliency.picanet import PiCANet, save_picanet

    torch.manual_seed(0)
    return save_picanet(PiCANet(32, width_mult=1 / 16).eval(), path)


def _bad_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "foreign":
        torch.save({"format": "someone-else", "weights": torch.zeros(3)}, path)
    elif kind == "corrupt":
        good = _tiny_picanet(tmp_path / "good.pt")
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return path  # "missing": never written


def _assert_clean_exit(argv: list[str], out: Path, named: Path, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(named) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists() or not any(out.iterdir()), list(out.rglob("*"))  # no run folder, not even <name>/


@pytest.mark.parametrize("kind", ["missing", "foreign", "corrupt"])
def test_rl_with_a_bad_saliency_ckpt_exits_2_and_leaves_nothing(tmp_path, capsys, kind):
    ckpt = _bad_file(tmp_path, kind)
    out = tmp_path / "runs"
    argv = ["--config", RL_TINY, "saliency=picanet", f"saliency_ckpt={ckpt}", f"output_dir={out}", "run=r"]
    _assert_clean_exit(argv, out, ckpt, capsys)


def test_rl_with_a_good_saliency_ckpt_passes_the_check(tmp_path):
    ckpt = _tiny_picanet(tmp_path / "picanet.pt")
    cfg, _, _ = resolve(RL_TINY, None, ["saliency=picanet", f"saliency_ckpt={ckpt}"])
    get_stage("rl").check(cfg)  # no error


def test_rl_with_an_encoder_of_another_image_size_exits_2_before_the_run(tmp_path, capsys):
    from visarl.mae import build_multimae, save_checkpoint

    ckpt = tmp_path / "mmae64.pt"
    save_checkpoint(build_multimae("tiny", ("rgb", "saliency"), image_size=64), ckpt)
    out = tmp_path / "runs"
    argv = ["--config", RL_TINY, "encoder=mmae", f"encoder_ckpt={ckpt}", f"output_dir={out}", "run=r"]
    _assert_clean_exit(argv, out, ckpt, capsys)


def test_resume_with_a_bad_saliency_ckpt_is_a_clean_error_and_keeps_the_run(tmp_path, capsys):
    good = _tiny_picanet(tmp_path / "picanet.pt")
    cfg, run_dir, _ = resolve(RL_TINY, None, ["saliency=picanet", f"saliency_ckpt={good}", f"output_dir={tmp_path}"])
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text((REPO / RL_TINY).read_text().replace("saliency: oracle", "saliency: picanet")
                                         + f"saliency_ckpt: {good}\n")  # fmt: skip
    good.unlink()
    assert main(["--resume", str(run_dir)]) == 2
    assert str(good) in capsys.readouterr().err
    assert (run_dir / "config.yaml").is_file()  # a resumed run's directory is never removed


def _shards(directory: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    writer = ShardWriter(directory, rows_per_shard=8, attrs={"task": "reach", "camera": "corner"})

    def obs() -> dict[str, np.ndarray]:
        return {"rgb": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "state": np.zeros(39, np.float32)}

    writer.add_first(0, obs())
    for t in range(20):
        writer.add_step(0, np.zeros(4, np.float32), 0.0, False, t == 19, 0.0, obs())
    writer.close()
    return writer.shard_paths


def test_label_over_a_truncated_shard_exits_2_and_leaves_nothing(tmp_path, capsys):
    shards = _shards(tmp_path / "replay")
    weights = _tiny_picanet(tmp_path / "picanet.pt")
    bad = shards[1]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 3])
    out = tmp_path / "runs"
    argv = ["--config", LABEL_TINY, f"data_dir={tmp_path / 'replay'}", f"checkpoint={weights}", f"output_dir={out}"]
    _assert_clean_exit(argv, out, bad, capsys)


def test_label_with_a_foreign_checkpoint_exits_2_and_leaves_nothing(tmp_path, capsys):
    _shards(tmp_path / "replay")
    ckpt = _bad_file(tmp_path, "foreign")
    out = tmp_path / "runs"
    argv = ["--config", LABEL_TINY, f"data_dir={tmp_path / 'replay'}", f"checkpoint={ckpt}", f"output_dir={out}"]
    _assert_clean_exit(argv, out, ckpt, capsys)


# ---------------------------------------------------------------- trainer.* only where a stage reads it


@pytest.mark.parametrize(
    "config, overrides",
    [
        ("conf/annotate/simulated_tiny.yaml", ["trainer.devices=4"]),
        ("conf/quickstart.yaml", ["trainer.devices=4"]),
        ("conf/experiment/table1.yaml", ["trainer.accelerator=gpu"]),
        ("conf/collect/random_tiny.yaml", ["trainer.devices=4"]),
        ("conf/collect/random_tiny.yaml", ["trainer.precision=bf16-mixed"]),
        ("conf/label/tiny.yaml", ["trainer.devices=2"]),
    ],
)
def test_trainer_keys_a_stage_does_not_read_are_refused(config, overrides):
    with pytest.raises(ConfigError, match=r"trainer\.(devices|accelerator|precision): stage .* does not use it"):
        resolve(config, None, overrides)


def test_trainer_keys_a_stage_reads_are_accepted():
    resolve("conf/label/tiny.yaml", None, ["trainer.accelerator=cpu", "trainer.precision=bf16-mixed"])
    resolve("conf/collect/sac_tiny.yaml", None, ["trainer.devices=2"])
    resolve("conf/collect/random_tiny.yaml", None, ["trainer.enable_progress_bar=false"])
    resolve("conf/rl/tiny.yaml", None, ["trainer.devices=2"])


def test_every_config_file_sets_only_trainer_keys_its_stage_reads():
    for path in sorted((REPO / "conf").rglob("*.yaml")):
        raw = load_yaml(path)
        if "stage" in raw:
            check_trainer_use(build(get_stage(raw["stage"]).schema, raw))


def test_random_collect_refuses_saliency_it_would_ignore():
    with pytest.raises(ConfigError, match="saliency: policy 'random' stores no saliency maps"):
        resolve("conf/collect/random_tiny.yaml", None, ["saliency=oracle"])
    resolve("conf/collect/sac_tiny.yaml", None, ["saliency=oracle"])  # sac_state labels frames as it collects


# ---------------------------------------------------------------- config and registry


@dataclass
class _Section:
    width: int = 8


@dataclass
class _Optional(RunConfig):
    section: _Section | None = None
    sizes: list[int] | None = None


def test_union_errors_keep_the_precise_reason():
    with pytest.raises(ConfigError, match=r"unknown config key 'section\.widht'; did you mean 'section\.width'"):
        check_keys({"section": {"widht": 3}}, _Optional)
    with pytest.raises(ConfigError, match=r"sizes\[1\]: 'a' \(str\) is not a valid int"):
        check_keys({"sizes": [1, "a"]}, _Optional)
    check_keys({"section": None, "sizes": [1, 2]}, _Optional)


def test_a_stage_module_that_fails_to_import_is_named(monkeypatch):
    monkeypatch.setattr(registry, "STAGE_MODULES", (*registry.STAGE_MODULES, "visarl.no_such_stage"))
    with pytest.raises(registry.StageImportError, match="visarl.no_such_stage"):
        registry.known_stages()


def test_list_stages_says_what_each_stage_does(capsys):
    assert main(["--list-stages"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    by_name = {line.split()[0]: line for line in lines}
    assert {"collect", "label", "pretrain", "rl", "saliency"} <= set(by_name)
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines), lines  # every stage has a summary
    assert "PiCANet" in by_name["saliency"]


@dataclass
class _Failing(RunConfig):
    stage: str = "failing_test"


@register_stage("failing_test", _Failing)
def _fail(cfg, ctx):
    raise ConfigError("input rejected by the runner")


def test_a_config_error_in_the_runner_leaves_no_empty_folders(tmp_path):
    conf = tmp_path / "failing.yaml"
    conf.write_text("stage: failing_test\n")
    out = tmp_path / "runs"
    with pytest.raises(ConfigError, match="rejected"):
        run(str(conf), [f"output_dir={out}", "run=r"])
    assert list(out.iterdir()) == []  # neither runs/failing/r nor runs/failing
    (out / "failing" / "other").mkdir(parents=True)  # a group folder that holds other runs stays
    with pytest.raises(ConfigError):
        run(str(conf), [f"output_dir={out}", "run=r"])
    assert [p.name for p in (out / "failing").iterdir()] == ["other"]


def test_trainer_fields_names_only_trainer_config_fields():
    from visarl.config import TrainerConfig

    names = {f.name for f in dataclasses.fields(TrainerConfig)}
    for stage in registry.known_stages():
        schema = get_stage(stage).schema
        try:
            cfg = schema()
        except ConfigError:
            continue  # schemas that need values (pipeline steps, experiment methods)
        used = cfg.trainer_fields()
        assert used is None or used <= names, (stage, used)
