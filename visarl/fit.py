"""The one entry point of every stage.

    python -m visarl.fit --config conf/<stage>/<name>.yaml [dotted.key=value ...]
    python -m visarl.fit --resume runs/<name>/<run> [dotted.key=value ...]
    python -m visarl.fit --config conf/<stage>/<name>.yaml [dotted.key=value ...] --help

Reads the config, validates it against the stage's schema, creates (or reopens) the run
directory with the resolved ``config.yaml``, seeds everything, and calls the stage's runner.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from visarl.config import (
    ConfigError,
    RunConfig,
    build,
    check_trainer_use,
    describe_config,
    load_yaml,
    parse_overrides,
    to_yaml,
)
from visarl.core.io import atomic_write_text
from visarl.core.log import configure_console, get_logger
from visarl.launch import external_rank, wait_for_run
from visarl.registry import RunContext, describe_stages, get_stage, known_stages

log = get_logger(__name__)

_depth = 0
"""How many runs this process is inside (a pipeline or experiment runs its steps through :func:`run`)."""

_NOT_OUTPUTS = ("config.yaml", "hparams.yaml", "events.out.tfevents.")
"""Files every run directory holds (the saved config, TensorBoard's logs): left out of the end line's outputs."""


def run_outputs(run_dir: Path) -> list[str]:
    """What a finished run left in its directory, for the end line: file names, and folder names with a '/'."""
    if not run_dir.is_dir():
        return []
    names = [p.name + "/" if p.is_dir() else p.name for p in sorted(run_dir.iterdir())]
    return [n for n in names if not n.startswith(_NOT_OUTPUTS) and not n.startswith(".")]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices). Environments are seeded by their runner from cfg.seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    os.environ["PYTHONHASHSEED"] = str(seed)
    import torch

    torch.manual_seed(seed)  # also seeds every CUDA device


def _stage_of(raw: dict, source: str) -> str:
    stage = raw.get("stage")
    if not stage:
        raise ConfigError(f"{source}: no 'stage:' key; known stages: {', '.join(known_stages())}")
    if not isinstance(stage, str):
        raise ConfigError(f"{source}: stage: {stage!r} is not a valid str")
    return stage


def resolve(
    config: str | None, resume: str | None, overrides: list[str], named_run: bool = False
) -> tuple[RunConfig, Path, bool]:
    """Build the config and choose the run directory, without creating anything on disk.

    A new run without ``run:`` is named by the time; ``named_run`` (every rank of a torchrun/srun launch, which
    must agree on one directory) makes that an error instead.
    """
    extra = parse_overrides(overrides)
    if resume is not None:
        run_dir = Path(resume)
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {run_dir}: not a run directory (no {saved})")
        raw = load_yaml(saved)
        stage_name = _stage_of(raw, str(saved))
        if "stage" in extra and extra["stage"] != stage_name:
            raise ConfigError(f"--resume {run_dir}: cannot change stage from {stage_name!r} to {extra['stage']!r}")
        cfg = build(get_stage(stage_name).schema, raw, extra)
        check_trainer_use(cfg)
        return cfg, run_dir, True
    if config is None:
        raise ConfigError("give --config FILE (or --resume RUN_DIR)")
    raw = load_yaml(config)
    stage_name = str(extra.get("stage") or _stage_of(raw, config))
    schema = get_stage(stage_name).schema
    cfg = build(schema, raw, extra)
    check_trainer_use(cfg)
    cfg.name = cfg.name or Path(config).stem
    if named_run and not cfg.run:
        raise ConfigError(
            "started as one of several ranks (torchrun/srun): name the run (run=NAME) so that every rank "
            "uses the same run directory"
        )
    cfg.run = cfg.run or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return cfg, Path(cfg.output_dir) / cfg.name / cfg.run, False


def run(config: str | None = None, overrides: list[str] | None = None, resume: str | None = None) -> Any:
    """Programmatic twin of the command line; returns whatever the stage's runner returns.

    Under torchrun or srun (several ranks started from outside, see :mod:`visarl.launch`) every rank runs this:
    rank 0 creates the run directory, the others wait for it and share it.
    """
    started = time.time()
    configure_console()  # the stages' progress lines (rank zero's only), as plain lines on stdout
    rank = external_rank()
    cfg, run_dir, resuming = resolve(config, resume, list(overrides or []), named_run=rank is not None)
    writer = rank in (None, 0)  # rank 0 writes config.yaml; other ranks of an outside launch only read the run
    stage = get_stage(cfg.stage)
    if writer and not resuming and (run_dir / "config.yaml").exists():
        raise ConfigError(f"run directory {run_dir} already holds a run; use --resume {run_dir} or another run=")
    if stage.check is not None:
        stage.check(cfg)  # the stage's input files, before anything is written
    if not writer and not resuming:
        wait_for_run(run_dir, started)
    created = [d for d in (run_dir.parent, run_dir) if not d.exists()] if writer and not resuming else []
    if writer and not resuming:
        run_dir.mkdir(parents=True, exist_ok=True)
    if writer:
        atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    seed_everything(cfg.seed)
    global _depth
    if resuming or _depth == 0:  # a pipeline's steps: the pipeline's own line names each one as it starts
        log.info(f"{cfg.stage}: {'resuming' if resuming else 'starting'} {run_dir}")
    _depth += 1
    try:
        result = stage.runner(cfg, RunContext(run_dir=run_dir, resume=resuming))
        outputs = run_outputs(run_dir)
        wrote = f" ({', '.join(outputs)})" if outputs else ""
        log.info(f"{cfg.stage}: done in {time.time() - started:.0f} s -> {run_dir}{wrote}")
        return result
    except ConfigError:
        # A runner that rejects its input before writing anything leaves no empty run directory behind.
        if created and [p.name for p in run_dir.iterdir()] == ["config.yaml"]:
            shutil.rmtree(run_dir)
            if run_dir.parent in created and not any(run_dir.parent.iterdir()):
                run_dir.parent.rmdir()
        raise
    finally:
        _depth -= 1


def config_help(config: str | None, resume: str | None, overrides: list[str]) -> str:
    """Every field of the stage's config as the run would see it (file, saved config, overrides); writes nothing."""
    cfg, _, _ = resolve(config, resume, overrides)
    source = config if config is not None else f"{resume}/config.yaml"
    return describe_config(cfg, source)


def main(argv: list[str] | None = None) -> int:
    # --help is ours: with --config it describes that config's fields; without, it is argparse's usage
    parser = argparse.ArgumentParser(prog="python -m visarl.fit", description=__doc__.split("\n\n")[0], add_help=False)
    parser.add_argument(
        "-h",
        "--help",
        action="store_true",
        help="show this message; with --config (or --resume): every config field of its stage with its type, "
        "current value, default and docstring, and exit",
    )
    parser.add_argument("--config", help="YAML config file (conf/<stage>/<name>.yaml)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run stored in RUN_DIR")
    parser.add_argument("--list-stages", action="store_true", help="print the known stages and exit")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    args = parser.parse_args(argv)
    try:
        if args.help:
            if args.config is None and args.resume is None:
                parser.print_help()
            else:
                print(config_help(args.config, args.resume, args.overrides))
            return 0
        if args.list_stages:
            stages = describe_stages()
            width = max(len(name) for name, _ in stages)
            print("\n".join(f"{name:<{width}}  {summary}" for name, summary in stages))
            return 0
        if args.config and args.resume:
            raise ConfigError("give either --config or --resume, not both")
        run(args.config, args.overrides, args.resume)
    except ConfigError as e:
        print(f"visarl.fit: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # `python -m visarl.fit` runs this file as __main__, a second copy of the module beside the visarl.fit that
    # pipelines import: run the imported one, so both share one logger and one count of nested runs.
    from visarl.fit import main as _main

    sys.exit(_main())
