"""The stage registry: each stage module registers its config schema and runner here.

``visarl.fit`` imports the modules in :data:`STAGE_MODULES` so their ``@register_stage``
decorators run; a new stage adds its module to that tuple.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visarl.config import ConfigError, RunConfig

STAGE_MODULES: tuple[str, ...] = (
    "visarl.data.collect",
    "visarl.annotate.stage",
    "visarl.saliency.stage",
    "visarl.mae.stage",
    "visarl.rl.stage",
    "visarl.probe.stage",
    "visarl.report.stage",
    "visarl.pipeline",
    "visarl.experiment",
)
"""Modules that define stages; imported lazily by :func:`get_stage`."""


@dataclass
class RunContext:
    """What a runner gets besides its config."""

    run_dir: Path
    """The run's own directory (holds config.yaml, logs, checkpoints)."""
    resume: bool
    """True when reopened with ``--resume``: continue from what the directory holds."""


Runner = Callable[[Any, RunContext], Any]


@dataclass
class Stage:
    name: str
    schema: type[RunConfig]
    runner: Runner


_STAGES: dict[str, Stage] = {}


def register_stage(name: str, schema: type[RunConfig]) -> Callable[[Runner], Runner]:
    """Decorator: ``@register_stage("collect", CollectConfig)`` on ``def run(cfg, ctx)``."""

    def deco(fn: Runner) -> Runner:
        if name in _STAGES and _STAGES[name].runner is not fn:
            raise RuntimeError(f"stage {name!r} registered twice")
        _STAGES[name] = Stage(name, schema, fn)
        return fn

    return deco


def _import_all() -> None:
    for module in STAGE_MODULES:
        if importlib.util.find_spec(module) is not None:  # stages still being built are skipped
            importlib.import_module(module)


def known_stages() -> list[str]:
    _import_all()
    return sorted(_STAGES)


def get_stage(name: str) -> Stage:
    _import_all()
    if name not in _STAGES:
        raise ConfigError(f"unknown stage {name!r}; known stages: {', '.join(sorted(_STAGES))}")
    return _STAGES[name]
