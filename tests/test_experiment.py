"""stage: experiment: the matrix's cells, skipping finished ones, printing commands for a scheduler."""

from __future__ import annotations

import json
import shlex

from visarl.fit import run


def _matrix(tmp_path) -> str:
    path = tmp_path / "m.yaml"
    path.write_text(
        f"""stage: experiment
root: {tmp_path}/cells
tasks: [reach, door-open]
seeds: [0, 1, 2]
print_only: true
methods:
  - name: a
    config: conf/collect/random_tiny.yaml
    overrides: ["num_steps={{seed}}0"]
  - name: b
    config: conf/collect/random_tiny.yaml
"""
    )
    return str(path)


def test_print_only_lists_every_unfinished_cell(tmp_path, capsys):
    conf = _matrix(tmp_path)
    done = tmp_path / "cells" / "a-reach" / "seed1"
    done.mkdir(parents=True)
    (done / "eval.json").write_text(json.dumps({"final": {"success_rate": 0.5}}))
    out = run(conf, [f"output_dir={tmp_path}/runs"])
    assert out == {"todo": 11, "total": 12}
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "visarl.fit" in ln]
    assert len(lines) == 11
    cmd = next(shlex.split(ln) for ln in lines if "name=a-door-open" in ln and "run=seed2" in ln)
    assert cmd[cmd.index("--config") + 1] == "conf/collect/random_tiny.yaml"
    assert {"env.task=door-open", "seed=2", "num_steps=20", f"output_dir={tmp_path}/cells"} <= set(cmd)
    assert not any("name=a-reach" in ln and "run=seed1" in ln for ln in lines)  # finished: skipped


def test_started_cell_is_resumed_not_restarted(tmp_path, capsys):
    conf = _matrix(tmp_path)
    started = tmp_path / "cells" / "b-reach" / "seed0"
    started.mkdir(parents=True)
    (started / "config.yaml").write_text("stage: collect\n")
    run(conf, [f"output_dir={tmp_path}/runs"])
    lines = capsys.readouterr().out.splitlines()
    assert any(ln.endswith(f"--resume {started}") for ln in lines)


def test_params_fill_method_placeholders(tmp_path, capsys):
    """A pipeline hands the matrix its checkpoints through params; an unknown placeholder fails before any cell."""
    import pytest

    from visarl.config import ConfigError

    conf = _matrix(tmp_path)
    text = (tmp_path / "m.yaml").read_text().replace('"num_steps={{seed}}0"', '"data_dir={store}/{task}-{seed}"')
    (tmp_path / "m.yaml").write_text(text.replace('"num_steps={seed}0"', '"data_dir={store}/{task}-{seed}"'))
    run(conf, [f"output_dir={tmp_path}/runs", "params.store=/some/where"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "name=a-reach" in ln and "run=seed1" in ln]
    assert "data_dir=/some/where/reach-1" in shlex.split(lines[0])
    with pytest.raises(ConfigError, match="store"):
        run(conf, [f"output_dir={tmp_path}/runs2"])
    with pytest.raises(ConfigError, match="params"):
        run(conf, [f"output_dir={tmp_path}/runs3", "params.seed=3"])


def test_cells_run_seed_by_seed():
    """A matrix cut short must hold whole seeds (every method and task), not every seed of the first methods."""
    from visarl.config import build
    from visarl.experiment import ExperimentConfig, cells

    cfg = build(
        ExperimentConfig,
        {
            "stage": "experiment",
            "tasks": ["reach", "door-open"],
            "seeds": [0, 1],
            "methods": [{"name": "a", "config": "x.yaml"}, {"name": "b", "config": "y.yaml"}],
        },
    )
    order = [(c.seed, c.task, c.method.name) for c in cells(cfg)]
    assert order[:4] == [(0, "reach", "a"), (0, "reach", "b"), (0, "door-open", "a"), (0, "door-open", "b")]
    assert len(order) == 8 and len(set(order)) == 8
