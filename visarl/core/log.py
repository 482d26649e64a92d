"""Rank-zero logging: what visarl tells its user is said once per run, not once per process.

Modules take a logger with ``log = get_logger(__name__)``. In a multi-process run (DDP, torchrun, srun) every
process runs the same code; records from processes other than rank zero are dropped, so a line such as
"rl: resumed at env step ..." appears once. :func:`configure_console` (called by :mod:`visarl.fit`) gives the
``visarl`` logger one plain ``%(message)s`` handler on standard output, so these lines read as ``print`` did.
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = "visarl"
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
"""Where launchers put a process's rank, in the order Lightning reads them (``rank_zero_only``)."""


def process_rank() -> int:
    """This process's rank: from the launcher's environment or, once Lightning has set it up, Lightning's own.

    Lightning is read only if something already imported it, so that importing this module stays cheap.
    """
    for name in RANK_VARIABLES:
        try:
            rank = int(os.environ.get(name, "0"))
        except ValueError:  # not a launcher's value
            continue
        if rank != 0:
            return rank
    rank_zero = sys.modules.get("lightning.fabric.utilities.rank_zero")
    return int(getattr(getattr(rank_zero, "rank_zero_only", None), "rank", 0) or 0)


class RankZeroFilter(logging.Filter):
    """Passes records only in the process of rank zero (checked per record: the rank is known late under DDP)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return process_rank() == 0


_RANK_ZERO = RankZeroFilter()


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` whose records are dropped on every rank but zero."""
    logger = logging.getLogger(name)
    if _RANK_ZERO not in logger.filters:
        logger.addFilter(_RANK_ZERO)
    return logger


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time of each record (pytest and notebooks replace it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value: object) -> None:  # StreamHandler.__init__ assigns one; the property decides
        pass


def configure_console(level: int = logging.INFO) -> logging.Handler:
    """Give the ``visarl`` logger its console handler (``%(message)s`` on stdout) once; returns that handler."""
    logger = logging.getLogger(ROOT)
    for handler in logger.handlers:
        if isinstance(handler, _StdoutHandler):
            return handler
    handler = _StdoutHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler
