"""The stage registry: each stage module registers its config schema and runner here.

``visarl.fit`` imports the modules in :data:`STAGE_MODULES` so their ``@register_stage``
decorators run; a new stage adds its module to that tuple.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visarl.config import ConfigError, RunConfig

STAGE_MODULES: tuple[str, ...] = (
    "visarl.collect",
    "visarl.annotate.stage",
    "visarl.saliency.stage",
    "visarl.mae.stage",
    "visarl.rl.stage",
    "visarl.probe.stage",
    "visarl.report.stage",
    "visarl.pipeline",
    "visarl.experiment",
)
"""Modules that define stages; imported by :func:`get_stage`. Each must import: a failure names the module."""


@dataclass
class RunContext:
    """What a runner gets besides its config."""

    run_dir: Path
    """The run's own directory (holds config.yaml, logs, checkpoints)."""
    resume: bool
    """True when reopened with ``--resume``: continue from what the directory holds."""


Runner = Callable[[Any, RunContext], Any]
Check = Callable[[Any], None]
"""Checks a stage's inputs (files it will read) before its run directory exists; raises ConfigError."""


@dataclass
class Stage:
    name: str
    schema: type[RunConfig]
    runner: Runner
    check: Check | None = None
    """Run by ``visarl.fit`` before the run directory is created (also on ``--resume``)."""

    @property
    def summary(self) -> str:
        """What the stage does, in one line: the first line of its config schema's docstring."""
        doc = (self.schema.__doc__ or "").strip()
        return doc.splitlines()[0].replace("``", "") if doc else ""


_STAGES: dict[str, Stage] = {}


def register_stage(name: str, schema: type[RunConfig], check: Check | None = None) -> Callable[[Runner], Runner]:
    """Decorator: ``@register_stage("collect", CollectConfig)`` on ``def run(cfg, ctx)``; ``check(cfg)``, if
    given, validates the stage's input files before anything is written."""

    def deco(fn: Runner) -> Runner:
        if name in _STAGES and _STAGES[name].runner is not fn:
            raise RuntimeError(f"stage {name!r} registered twice")
        _STAGES[name] = Stage(name, schema, fn, check)
        return fn

    return deco


class StageImportError(ImportError):
    """A module listed in :data:`STAGE_MODULES` is missing or fails to import."""


def _import_all() -> None:
    for module in STAGE_MODULES:
        try:
            importlib.import_module(module)
        except Exception as e:  # a missing stage would otherwise look like an unknown stage name
            raise StageImportError(f"stage module {module} failed to import: {type(e).__name__}: {e}") from e


def known_stages() -> list[str]:
    _import_all()
    return sorted(_STAGES)


def describe_stages() -> list[tuple[str, str]]:
    """``(name, one-line summary)`` of every stage, sorted by name."""
    _import_all()
    return [(name, _STAGES[name].summary) for name in sorted(_STAGES)]


def get_stage(name: str) -> Stage:
    _import_all()
    if name not in _STAGES:
        raise ConfigError(f"unknown stage {name!r}; known stages: {', '.join(sorted(_STAGES))}")
    return _STAGES[name]
