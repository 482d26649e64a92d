"""docs/fidelity.md stays true: every default it names is the code's (or the paper config's) value."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

LEDGER = Path("docs/fidelity.md")
COLUMNS = ["area", "setting", "key", "paper", "authors' code", "visarl default", "why (differences)"]
AREAS = {"env", "CNN", "SAC", "MultiMAE", "PiCANet", "annotation", "evaluation", "report"}


def schemas() -> dict[str, type]:
    """The config dataclasses a ledger key may name, by class name."""
    from visarl.annotate.stage import AnnotateConfig
    from visarl.envs import EnvConfig
    from visarl.mae.stage import AugmentConfig, ModelConfig, OptimConfig, PretrainConfig
    from visarl.rl.stage import EvalConfig, RLConfig, SACConfig, SACRunConfig
    from visarl.saliency.stage import LabelConfig, SaliencyConfig

    classes = (
        AnnotateConfig,
        EnvConfig,
        AugmentConfig,
        ModelConfig,
        OptimConfig,
        PretrainConfig,
        EvalConfig,
        RLConfig,
        SACConfig,
        SACRunConfig,
        LabelConfig,
        SaliencyConfig,
    )
    return {c.__name__: c for c in classes}


def ledger_rows(text: str) -> list[dict[str, str]]:
    """The ledger table's rows as {column: cell}; raises if the header is not the expected one."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == COLUMNS, header
    rows = []
    for line in lines[2:]:  # skip the header and the |---| line
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        assert len(cells) == len(COLUMNS), f"row has {len(cells)} cells, not {len(COLUMNS)}: {line}"
        rows.append(dict(zip(COLUMNS, cells, strict=True)))
    return rows


def documented_value(cell: str) -> Any:
    """The value a 'visarl default' cell states: its first `backticked` literal, parsed as YAML."""
    match = re.match(r"`([^`]*)`", cell)
    assert match, f"visarl default {cell!r} must start with the value in backticks"
    return yaml.safe_load(match.group(1)) if match.group(1) != "''" else ""


def code_value(key: str) -> Any:
    """The value the code gives ``key``: a dataclass default (``Schema.field``) or a config file's resolved value
    (``conf/x.yaml:dotted.key``)."""
    if ":" in key:
        from visarl.fit import resolve

        path, dotted = key.split(":", 1)
        cfg, _, _ = resolve(path, None, [])
        value: Any = cfg
        for part in dotted.split("."):
            value = getattr(value, part)
        return value
    cls_name, field_name = key.split(".", 1)
    cls = schemas()[cls_name]
    field = {f.name: f for f in dataclasses.fields(cls)}[field_name]
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()  # type: ignore[misc]


def same(documented: Any, actual: Any) -> bool:
    if isinstance(documented, (int, float)) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        return not isinstance(documented, bool) and math.isclose(documented, actual, rel_tol=1e-9)
    if isinstance(documented, list) and isinstance(actual, (list, tuple)):
        return len(documented) == len(actual) and all(same(d, a) for d, a in zip(documented, actual, strict=True))
    return documented == actual


def mismatches(text: str) -> list[str]:
    """Every ledger row whose key's value differs from what its visarl-default column says."""
    bad = []
    for row in ledger_rows(text):
        key = row["key"].strip("`")
        if key == "—":
            continue
        documented, actual = documented_value(row["visarl default"]), code_value(key)
        if not same(documented, actual):
            bad.append(f"{row['area']} / {row['setting']} ({key}): ledger says {documented!r}, code has {actual!r}")
    return bad


@pytest.fixture(scope="module")
def text() -> str:
    return LEDGER.read_text()


def test_ledger_defaults_match_the_code(text):
    assert mismatches(text) == []


def test_ledger_names_real_keys_and_covers_every_area(text):
    rows = ledger_rows(text)
    keyed = [r for r in rows if r["key"] != "—"]
    assert len(keyed) >= 50
    for row in keyed:
        assert re.fullmatch(r"`[^`]+`", row["key"]), row["key"]
        code_value(row["key"].strip("`"))  # raises KeyError / AttributeError on a key the code does not have
        for column in ("paper", "authors' code", "why (differences)"):
            assert row[column], f"{row['setting']}: empty {column!r}"
    assert {r["area"] for r in rows} == AREAS
    settings = [(r["area"], r["setting"]) for r in rows]
    assert len(settings) == len(set(settings)), "a setting appears twice"


def test_checker_catches_a_drifted_default(text):
    # The check can fail: a ledger that states another value for a keyed row is caught, naming the key.
    row = next(r for r in ledger_rows(text) if r["key"] == "`SACConfig.num_layers`")
    line = next(ln for ln in text.splitlines() if "`SACConfig.num_layers`" in ln)
    drifted = text.replace(line, line.replace(row["visarl default"], "`2`"))
    assert mismatches(drifted) == ["SAC / hidden layers (SACConfig.num_layers): ledger says 2, code has 3"]
    line = next(ln for ln in text.splitlines() if "`conf/pretrain/rgb.yaml:num_visible`" in ln)
    assert len(mismatches(text.replace(line, line.replace("| `16` |", "| `32` |")))) == 1


def test_authors_bugs_are_documented(text):
    for phrase in ("pairs observation t-1 with action t", "divided by 255 twice", "ColorJitter never applied"):
        assert phrase in text, phrase


@pytest.mark.parametrize(
    "config",
    [
        "conf/rl/cnn_rgb.yaml",
        "conf/rl/cnn_saliency.yaml",
        "conf/rl/cnn_rgb_x_saliency.yaml",
        "conf/rl/cnn_rgbs.yaml",
        "conf/saliency/reach.yaml",
        "conf/pretrain/rgb.yaml",
        "conf/pretrain/rgb_saliency.yaml",
        "conf/annotate/reach.yaml",
    ],
)
def test_paper_configs_point_to_the_ledger(config):
    assert "docs/fidelity.md" in Path(config).read_text()
