"""Kill a real ``python -m visarl.fit`` with SIGKILL at a chosen moment, and see where a resumed run starts.

Shared by the resume tests: the contract test over every stage (test_resume_contract.py) and the per-stage ones.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


def env_for_subprocess() -> dict[str, str]:
    """The test's environment, one OpenMP thread (tiny nets, shared CPUs), and this checkout first on the path."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def fit_command(config: str, overrides: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "visarl.fit", "--config", config, *overrides]


def kill_when(cmd: Sequence[str], ready: Callable[[], bool], timeout: float = 300.0, poll: float = 0.02) -> None:
    """Start ``cmd`` and SIGKILL it as soon as ``ready()`` holds.

    Fails (with the process's stderr) if it exits first or ``ready()`` never holds within ``timeout`` seconds, so a
    test never mistakes a finished run for a killed one. ``timeout`` is generous: the machine may be shared.
    """
    proc = subprocess.Popen(
        list(cmd), cwd=REPO, env=env_for_subprocess(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline and not ready():
            time.sleep(poll)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if not alive:
            raise AssertionError(f"the run exited ({proc.returncode}) before it could be killed:\n{proc.stderr.read()}")
        assert ready(), f"not ready within {timeout} s"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None while it is missing or being written."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not there yet, or mid-write: the caller polls again
        return None


@dataclass
class Start:
    """Where a Lightning fit began: the counters on its first ``on_train_start``, after any checkpoint restore."""

    epoch: int
    global_step: int
    env_step: int | None  # the SAC loop's own counter, None for other modules


def record_fit_starts(monkeypatch: Any) -> list[Start]:
    """Make every ``Trainer.fit`` in this process append its :class:`Start` to the returned list."""
    import lightning.pytorch as pl

    starts: list[Start] = []

    class _Record(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            env_step = getattr(module, "env_step", None)
            starts.append(
                Start(trainer.current_epoch, trainer.global_step, None if env_step is None else int(env_step))
            )

    fit = pl.Trainer.fit

    def recording_fit(self: pl.Trainer, *args: Any, **kwargs: Any) -> Any:
        self.callbacks.append(_Record())
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "fit", recording_fit)
    return starts
