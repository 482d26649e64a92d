"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half of one.

Each write goes to a hidden temporary file beside the target (``.<name>.<pid>-<thread>.tmp``, so concurrent
writers never share one), is flushed to disk, and is renamed over the target with :func:`os.replace`; the
directory is then synced so the rename itself survives a power cut. A write that fails removes its temporary.
HDF5 shards have their own writer with the same rule (:mod:`visarl.data.shards`).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where a directory cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], Any], tmp: str | Path | None = None) -> Path:
    """Call ``write(tmp)`` to fill a temporary file, then rename it over ``path``; returns ``path``.

    ``write`` gets the temporary's path and must create the file there (``torch.save(obj, tmp)``,
    ``tmp.write_text(...)``). Parent directories are created. ``tmp`` names the temporary (hidden, beside
    ``path``) for a writer that must overwrite what a killed run of itself left there; the default name is
    unique to the process and thread.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tmp) if tmp is not None else path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=indent))


def atomic_copy(src: str | Path, dst: str | Path) -> Path:
    """Copy the file ``src`` to ``dst`` atomically (contents only)."""
    return atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def atomic_savefig(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    """``fig.savefig(path, **kwargs)`` for a matplotlib figure, atomically; the format comes from ``path``'s suffix
    (the temporary's name has none)."""
    fmt = Path(path).suffix.lstrip(".") or None
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)``, atomically."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
