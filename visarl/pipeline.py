"""`stage: pipeline`: run other stages' configs in order, passing each one's outputs to the next.

Each step names a stage config and overrides for it. Overrides may use placeholders filled in at run time:

- ``{data}``: the pipeline's data folder (``data_root``, default ``<pipeline run dir>/data``),
- ``{task}``: the pipeline's ``task``,
- ``{run_dir}``: the pipeline's own run directory,
- ``{step:NAME}``: the run directory of an earlier step (e.g. ``{step:saliency}/picanet.pt``).

Every step runs as its own run under ``<pipeline run dir>/<step name>/run`` through :func:`visarl.fit.run`,
so it gets its config.yaml, logs and checkpoints like any other run. ``pipeline_state.json`` records finished
steps: a rerun (``--resume``) skips them and resumes the step that was interrupted from its own run directory, with
the pipeline's overrides for that step applied again over its saved config. The resumed step is validated again
like a new one (its schema, then its stage's input check), so a value fixed in the pipeline's ``config.yaml`` (or
with ``--resume <step run dir> key=value``) reaches it, and a bad one stops the pipeline with a one-line error.

Before the first step runs, every step's config is built with its filled-in overrides and validated against its
stage's schema (nothing is written), so a typo in the last step fails in a second, not after an hour of the
steps before it.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from visarl.config import ConfigError, RunConfig
from visarl.core.io import atomic_write_json
from visarl.core.log import get_logger
from visarl.fit import resolve
from visarl.fit import run as fit_run
from visarl.registry import RunContext, register_stage

log = get_logger(__name__)

_PLACEHOLDER = re.compile(r"\{(data|task|run_dir|step:[A-Za-z0-9_\-]+)\}")


@dataclass
class PipelineStep:
    """One stage run inside a pipeline."""

    name: str = ""
    """Unique step name; its run lives in <pipeline run>/<name>/run."""
    config: str = ""
    """The stage config file to run, e.g. conf/collect/sac_tiny.yaml."""
    overrides: list[str] = field(default_factory=list)
    """dotted.key=value overrides, with {data}, {task}, {run_dir} and {step:NAME} placeholders."""


@dataclass
class PipelineConfig(RunConfig):
    """Chain stage configs; see the module docstring for placeholders."""

    stage: str = "pipeline"
    task: str = "reach"
    """The task every step works on (filled in for {task})."""
    data_root: str = ""
    """Folder for the pipeline's datasets ({data}); default <pipeline run dir>/data."""
    steps: list[PipelineStep] = field(default_factory=list)
    """The steps, run in order."""

    def trainer_fields(self) -> frozenset[str]:
        """The pipeline builds no Trainer: give ``trainer.*`` to the steps that train, in their overrides."""
        return frozenset()

    def __post_init__(self) -> None:
        names = [s.name for s in self.steps]
        if not self.steps:
            raise ConfigError("steps: a pipeline needs at least one step")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes or not all(names):
            raise ConfigError(f"steps: every step needs a unique name (duplicates: {dupes})")


def fill(text: str, values: dict[str, str], step: str) -> str:
    """Replace the placeholders of one override; unknown or later steps are errors naming the step."""

    def sub(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise ConfigError(f"steps.{step}: {match.group(0)} refers to no earlier step")
        return values[key]

    return _PLACEHOLDER.sub(sub, text)


def _save_state(path: Path, state: dict) -> None:
    atomic_write_json(path, state)


def step_overrides(cfg: PipelineConfig, run_dir: Path) -> dict[str, list[str]]:
    """Each step's overrides with the placeholders filled in (a reference to a later step is an error)."""
    values = {"data": cfg.data_root or str(run_dir / "data"), "task": cfg.task, "run_dir": str(run_dir)}
    out: dict[str, list[str]] = {}
    for step in cfg.steps:
        values[f"step:{step.name}"] = str(run_dir / step.name / "run")
        out[step.name] = [fill(o, values, step.name) for o in step.overrides]
    return out


def placement(cfg: PipelineConfig, run_dir: Path, name: str) -> list[str]:
    """The keys that put a step's run at ``<run_dir>/<name>/run``, seeded like the pipeline."""
    return [f"output_dir={run_dir}", f"name={name}", "run=run", f"seed={cfg.seed}"]


@dataclass
class StepRun:
    """How :func:`visarl.fit.run` starts one step: a new run of its config, or the resume of its interrupted run."""

    config: str | None
    resume: str | None
    overrides: list[str]


def step_run(cfg: PipelineConfig, run_dir: Path, step: PipelineStep, overrides: list[str]) -> StepRun:
    """A step whose run directory holds a config resumes it, with the step's ``overrides`` applied again (a saved
    config alone would keep a value the pipeline has since fixed); any other starts at ``<run_dir>/<name>/run``."""
    step_dir = run_dir / step.name / "run"
    if (step_dir / "config.yaml").exists():
        return StepRun(None, str(step_dir), overrides)
    return StepRun(step.config, None, overrides + placement(cfg, run_dir, step.name))


def check_steps(cfg: PipelineConfig, run_dir: Path) -> dict[str, list[str]]:
    """Validate every step's config with its overrides, as the step will run (no files written); errors name the
    step. Returns :func:`step_overrides`.
    """
    for step in cfg.steps:
        if not Path(step.config).is_file():
            raise ConfigError(f"steps.{step.name}.config: file not found: {step.config}")
    overrides = step_overrides(cfg, run_dir)
    for step in cfg.steps:
        how = step_run(cfg, run_dir, step, overrides[step.name])
        try:
            resolve(how.config, how.resume, how.overrides)
        except ConfigError as e:
            raise ConfigError(f"steps.{step.name} ({how.resume or step.config}): {e}") from None
    return overrides


@register_stage("pipeline", PipelineConfig)
def run_pipeline(cfg: PipelineConfig, ctx: RunContext) -> dict:
    overrides = check_steps(cfg, ctx.run_dir)
    state_path = ctx.run_dir / "pipeline_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"done": {}}
    outputs: dict[str, object] = {}
    for step in cfg.steps:
        step_dir = ctx.run_dir / step.name / "run"
        if step.name in state["done"]:
            log.info(f"pipeline: {step.name} already done ({step_dir}), skipping")
            continue
        t0 = time.perf_counter()
        log.info(f"pipeline: {step.name}: {step.config} {' '.join(overrides[step.name])}")
        how = step_run(cfg, ctx.run_dir, step, overrides[step.name])  # the step's run dir is inside the pipeline's
        try:
            outputs[step.name] = fit_run(how.config, how.overrides, how.resume)
        except ConfigError as e:  # e.g. the stage's input check: name the step whose config holds the value
            raise ConfigError(f"steps.{step.name} ({how.resume or step.config}): {e}") from None
        state["done"][step.name] = {"run_dir": str(step_dir), "seconds": round(time.perf_counter() - t0, 1)}
        _save_state(state_path, state)
    return {"steps": state["done"], "outputs": outputs}
