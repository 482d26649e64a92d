"""Several processes, one run directory: how ranks find the run they belong to.

Two ways to start a multi-process (DDP) run, and what each needs from ``visarl.fit``:

- **Lightning's own launcher** (``python -m visarl.fit --config ... trainer.devices=4 trainer.strategy=ddp``):
  Lightning starts ranks > 0 by re-running the command line. With the original ``--config`` argv every rank would
  make a run directory of its own (or refuse rank 0's), so :func:`prepare_ddp_launch` rewrites the command to
  ``--resume <run_dir>`` before the Trainer launches them.
- **An outside launcher** (``torchrun``, ``srun``): every rank runs the same command from the start. The ranks
  agree on the run directory only if it is named (``run=NAME``); rank 0 creates it and the other ranks wait for
  its ``config.yaml`` (see :func:`external_rank` and ``visarl.fit.run``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from visarl.config import ConfigError


def external_rank() -> int | None:
    """This process's global rank when torchrun or srun started it as one of several, else None.

    Lightning's own launcher sets ``WORLD_SIZE`` only after ``visarl.fit`` has chosen the run directory, and its
    children come back through ``--resume``; so a rank seen here was started from outside.
    """
    for rank_var, size_var in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank_var in os.environ and int(os.environ.get(size_var, "1")) > 1:
            return int(os.environ[rank_var])
    return None


def wait_for_run(run_dir: Path, started: float, timeout: float = 600.0, poll: float = 0.5) -> None:
    """Rank > 0 of an outside launch: wait until rank 0 has written this run's ``config.yaml``.

    A ``config.yaml`` older than this launch (``started``, with a minute of clock slack between nodes) belongs to
    an earlier run of the same name, which rank 0 refuses; waiting on it would hang every rank in DDP's rendezvous.
    """
    config = run_dir / "config.yaml"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if config.is_file() and config.stat().st_mtime >= started - 60:
            return
        time.sleep(poll)
    raise ConfigError(f"rank 0 did not create {config} within {timeout:.0f} s (does run= name an earlier run?)")


def prepare_ddp_launch(trainer: Any, run_dir: Path) -> None:
    """Make the ranks that Lightning starts by re-running the command line reopen ``run_dir``.

    Call it after building the Trainer and before ``fit``. ``--resume <run_dir>`` makes those ranks load this run's
    saved config and resume from the same checkpoint as rank 0 if there is one. Ranks started by an outside launcher
    (torchrun, SLURM) are left alone.
    """
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    env = getattr(trainer.strategy, "cluster_environment", None)
    if not isinstance(launcher, _SubprocessScriptLauncher) or trainer.world_size == 1:
        return
    if env is not None and env.creates_processes_externally:  # a child already, or an outside launcher
        return
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is None or spec.name != "visarl.fit":
        raise ConfigError(
            f"trainer.strategy={trainer.strategy.__class__.__name__} starts the other ranks by re-running the command "
            "line: launch it with `python -m visarl.fit ...`, or use trainer.strategy=ddp_spawn from Python"
        )
    sys.argv = [sys.argv[0], "--resume", str(run_dir.resolve())]
