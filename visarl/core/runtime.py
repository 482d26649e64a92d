"""The stage runtime: one way for every stage that trains to build its Trainer, keep its checkpoints and resume.

- :func:`build_trainer` turns ``cfg.trainer`` into a ``lightning.Trainer`` logging to TensorBoard in the run
  directory, without Lightning's advertising tip or the model-summary table, and with a progress bar that is drawn
  only once its total is known (:func:`progress_bar`).
- :func:`checkpoint_callbacks` keeps ``checkpoints/last.ckpt`` always at the latest state and, when the stage
  monitors a metric, the best checkpoint beside it. ``ModelCheckpoint(monitor=..., save_top_k=1, save_last=True)``
  is not used: with Lightning 2.6 it rewrites ``last.ckpt`` only when a new best is saved, so after a validation
  metric stops improving, ``--resume`` would go back to the best epoch and redo the rest.
- :func:`resume_checkpoint` finds the checkpoint ``--resume`` continues from and checks that it can be read, so a
  corrupt file is a one-line error naming it rather than an unpickling traceback.
- :func:`quiet_lightning` filters the Lightning messages a user cannot act on while a stage fits or validates.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from visarl.config import ConfigError, TrainerConfig
from visarl.launch import prepare_ddp_launch

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST = "last"
"""File stem of the latest-state checkpoint, ``checkpoints/last.ckpt``."""

_LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
_NOISE_WARNINGS = (
    # torch >= 2.10 deprecates LeafSpec, which Lightning's pytree helper still uses
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    # visarl keeps frozen parts (a frozen encoder, PiCANet's batch norms) in eval mode on purpose
    r"Found \d+ module\(s\) in eval mode at the start of training.*",
    # every --resume reopens a run's own checkpoint directory
    r"Checkpoint directory .* exists and is not empty.*",
)


_ABSENT_DEVICE = re.compile(r"^[A-Z]PU available: False")
"""Lightning's "GPU available: False, used: False" (and TPU, HPU): nothing to act on. "GPU available: True, used:
False" stays: it tells a user with a GPU that the run is not using it."""
_ROUTINE = ("`Trainer.fit` stopped:", "Loading `train_dataloader` to estimate")
"""Lightning's notes that fit reached max_epochs/max_steps (the normal end, which the stage's end line reports) and
that it reads the train loader's length for the LR schedule: routine, nothing to act on."""


class _DropTip(logging.Filter):
    """Drops Lightning's "Tip: ... try installing litlogger/litmodels" advertisements, its lines about
    accelerators the machine does not have, and its routine notes (:data:`_ROUTINE`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return "Tip:" not in msg and not _ABSENT_DEVICE.match(msg) and not msg.startswith(_ROUTINE)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """While active: no Lightning tips, no warnings listed in ``_NOISE_WARNINGS``; every other message stays."""
    drop = _DropTip()
    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    for lg in loggers:
        lg.addFilter(drop)
    try:
        with warnings.catch_warnings():
            for pattern in _NOISE_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for lg in loggers:
            lg.removeFilter(drop)


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def last_checkpoint(run_dir: Path) -> Path:
    """``<run_dir>/checkpoints/last.ckpt``: the latest state of a run."""
    return checkpoint_dir(run_dir) / f"{LAST}.ckpt"


def checkpoint_callbacks(
    run_dir: Path,
    *,
    every_n_epochs: int = 1,
    monitor: str | None = None,
    mode: str = "min",
    best_filename: str = "best-{epoch:04d}",
) -> list[Any]:
    """``[latest]`` or ``[latest, best]`` ModelCheckpoint callbacks writing to ``<run_dir>/checkpoints``.

    The latest one rewrites ``last.ckpt`` at the end of every ``every_n_epochs``-th training epoch (after that
    epoch's validation) whatever the metrics; the best one keeps the single best checkpoint by ``monitor``.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    dirpath = checkpoint_dir(run_dir)
    latest = ModelCheckpoint(
        dirpath=dirpath,
        filename=LAST,
        save_top_k=1,  # without a monitor: keep only the newest
        every_n_epochs=every_n_epochs,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    if monitor is None:
        return [latest]
    best = ModelCheckpoint(
        dirpath=dirpath,
        filename=best_filename,
        auto_insert_metric_name=False,
        monitor=monitor,
        mode=mode,
        save_top_k=1,
    )
    return [latest, best]


def check_checkpoint(path: Path, what: str = "--resume") -> None:
    """Raise :class:`ConfigError` naming ``path`` unless it reads as a torch checkpoint (truncated, corrupt or
    foreign files fail). Tensors are memory-mapped, not loaded."""
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):
            return  # readable; holds an object outside the weights-only allow-list, which Lightning loads itself
        raise _unreadable(path, what, e) from e
    except Exception as e:  # zip errors, EOF, wrong magic number: all mean the file is not a whole checkpoint
        raise _unreadable(path, what, e) from e


def _unreadable(path: Path, what: str, e: Exception) -> ConfigError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return ConfigError(
        f"{what}: {path} cannot be read as a checkpoint ({type(e).__name__}: {first}); "
        "it is truncated or not a checkpoint. Move it away to restart the run from scratch"
    )


def resume_checkpoint(run_dir: Path, resume: bool, stage: str) -> Path | None:
    """The checkpoint a run continues from: ``last.ckpt`` under ``--resume``, checked readable; else None.

    A resumed run killed before its first checkpoint starts over (and says so).
    """
    if not resume:
        return None
    last = last_checkpoint(run_dir)
    if not last.is_file():
        log.warning("%s: --resume but no %s yet; training from the start", stage, last)
        return None
    check_checkpoint(last)
    return last


def _is_progress_bar(callback: Any) -> bool:
    from lightning.pytorch.callbacks import ProgressBar

    return isinstance(callback, ProgressBar)


def progress_bar(refresh_rate: int = 1) -> Any:
    """Lightning's tqdm progress bar, except that a bar appears only once its total is known: Lightning draws
    each bar at creation as ``0/?`` and sets its length a moment later, which a log file keeps as a line."""
    import sys

    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

    class _Tqdm(Tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._hold = False
            super().__init__(*args, delay=1.0, **kwargs)  # tqdm skips its first draw when delay > 0
            self.delay = 0.0  # from here on, draws as usual (and close() clears)

        def reset(self, total: float | None = None) -> None:
            # Lightning calls reset() and sets the total just after: do not draw a bar without one
            self._hold = total is None and self.total is None
            try:
                super().reset(total)
            finally:
                self._hold = False

        def refresh(self, *args: Any, **kwargs: Any) -> Any:
            return None if self._hold else super().refresh(*args, **kwargs)

    class _Bar(TQDMProgressBar):
        def _tqdm(self, desc: str, position: int, leave: bool, smoothing: float = 0.3) -> Tqdm:
            return _Tqdm(
                desc=desc,
                position=position,
                disable=self.is_disabled,
                leave=leave,
                dynamic_ncols=True,
                file=sys.stdout,
                smoothing=smoothing,
                bar_format=self.BAR_FORMAT,
            )

        def init_sanity_tqdm(self) -> Tqdm:
            return self._tqdm(self.sanity_check_description, 2 * self.process_position, leave=False)

        def init_train_tqdm(self) -> Tqdm:
            return self._tqdm(self.train_description, 2 * self.process_position, leave=True, smoothing=0)

        def init_validation_tqdm(self) -> Tqdm:
            has_main_bar = self.trainer.state.fn != "validate"  # no training bar in trainer.validate()
            return self._tqdm(
                self.validation_description, 2 * self.process_position + has_main_bar, leave=not has_main_bar
            )

    return _Bar(refresh_rate=refresh_rate)


def build_trainer(
    trainer_cfg: TrainerConfig,
    run_dir: Path,
    *,
    callbacks: Sequence[Any] = (),
    logger: dict[str, Any] | None = None,
    **overrides: Any,
) -> Any:
    """A ``lightning.Trainer`` from ``cfg.trainer``, logging to TensorBoard in ``run_dir``.

    ``logger`` holds extra TensorBoardLogger arguments (``purge_step``, ``default_hp_metric``); ``overrides`` are
    Trainer arguments the stage fixes itself (``max_epochs``, ``check_val_every_n_epoch``, ...). Under torchrun or
    srun the launch is prepared for the run directory (:func:`visarl.launch.prepare_ddp_launch`).
    """
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    t = trainer_cfg
    kwargs: dict[str, Any] = {
        "accelerator": t.accelerator,
        "devices": t.devices,
        "strategy": t.strategy,
        "num_nodes": t.num_nodes,
        "precision": t.precision,
        "max_epochs": t.max_epochs,
        "max_steps": t.max_steps,
        "log_every_n_steps": t.log_every_n_steps,
        "enable_progress_bar": t.enable_progress_bar,
        "enable_model_summary": False,  # each stage reports its own sizes (summary.json)
        "default_root_dir": str(run_dir),
        "callbacks": list(callbacks),
        "logger": TensorBoardLogger(str(run_dir), name="", version="", **(logger or {})),
    }
    kwargs.update(overrides)
    if kwargs["enable_progress_bar"] and not any(_is_progress_bar(cb) for cb in kwargs["callbacks"]):
        kwargs["callbacks"].append(progress_bar())
    with quiet_lightning():
        trainer = pl.Trainer(**kwargs)
    prepare_ddp_launch(trainer, Path(run_dir))
    return trainer
