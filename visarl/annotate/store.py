"""Annotation storage: a crash-safe click journal, and the one HDF5 file the saliency stage reads.

Journal (the working store)
---------------------------
An append-only JSON-lines file. Line 1 is a header naming the frames it belongs to (count, size, shard
references, SHA-256 of the pixels); every later line is one event: ``open``, ``click`` (with an optional part
``label``), ``delete``, ``move``, ``label`` (of one click, by id), ``empty`` (the "nothing salient here" mark of
a frame), ``undo``, ``clear``, ``goto`` or ``done``. Each event is written with one ``write`` on an
``O_APPEND`` descriptor and ``fsync``-ed before the caller (the HTTP server) acknowledges it, so a killed
server or browser loses at most the click in flight. Why a journal rather than rewriting one JSON document
per change (temp file + fsync + replace): a change costs one short append instead of rewriting every click so
far, the file is never replaced (no window where it is missing), and it keeps the full history (undone
clicks, timings) for free. Reopening replays the events, which restores the clicks and the current frame. A
torn last line (the write a kill interrupted, never acknowledged) is dropped and truncated away; a bad line
anywhere else is corruption and
raises a ``ValueError`` naming the file and line, leaving the file untouched.

Undo reverts the frame's last change: a click, a clear (so an accidental clear is one undo away), a delete,
a move, a label or the "nothing salient" mark. A frame never holds clicks and the mark at once.

Idempotent changes: a change may carry an ``op_id`` (the page gives every change one). It is journaled with
the event, and a change whose ``op_id`` is already in the journal is not applied again: it answers what the
first one did. A page that resends a change whose answer was lost (the server was killed after the write)
therefore stores it once, also across a restart.

Export format (``export(path)``, HDF5, written to a temp file, fsync-ed, then renamed)
------------------------------------------------------------------------------------
File attributes: ``format = "visarl-annotations"``, ``schema_version = 1``, ``sigma`` (px at the reference
resolution), ``reference_size`` (0 means sigma is in frame pixels), ``frame_sigma`` (px on the frame),
``combine`` (``"max"`` or ``"sum"``), ``task``, ``guidance`` (what the annotator was asked to click),
``parts`` (the part labels offered, comma-joined), ``created`` (unix s), ``journal`` (the journal's file name),
and any ``export_attrs`` the store was given (the annotate stage records ``selection``, ``seed``,
``annotator_kind``, ``data_dir``, ... there; see :mod:`visarl.annotate.stage`).

Datasets, ``N`` frames of ``H x W``, ``M`` clicks in all:

- ``frames``        uint8 ``[N, H, W, 3]``, the frames shown.
- ``maps``          float32 ``[N, H, W]`` in [0, 1], at frame resolution (see :mod:`visarl.annotate.maps`).
- ``shard``         utf-8 string ``[N]``, the replay shard file name each frame came from.
- ``row``           int64 ``[N]``, the frame's row in that shard.
- ``clicks``        float64 ``[M, 3]`` of ``(frame_index, x, y)``, x = column, y = row, frame pixels,
                    sorted by frame and then by click order. Raw clicks: maps can be rebuilt with another sigma.
- ``click_time``    float64 ``[M]``, unix seconds of each click.
- ``click_offsets`` int64 ``[N + 1]``: frame ``i``'s clicks are rows ``click_offsets[i]:click_offsets[i+1]``.
- ``click_label``   utf-8 string ``[M]``, each click's part (``gripper``, ``object``, ``goal``) or ``""``.
- ``click_id``      int64 ``[M]``, each click's id in the journal.
- ``nothing_salient`` bool ``[N]``, frames the annotator marked as holding nothing salient (their map is zero).
- ``annotator``     utf-8 string ``[N]``, who clicked (comma-joined if several people did).
- ``first_click``, ``last_click`` float64 ``[N]``, unix seconds (NaN for a frame without clicks).

:func:`load_annotations` reads it back and checks all of the above (``click_label``, ``click_id`` and
``nothing_salient`` are optional: exports written before they existed read as unlabelled and unmarked).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from visarl.annotate.guidance import PARTS, check_parts
from visarl.core.io import atomic_write
from visarl.core.maps import COMBINE, COMBINE_MODES, REFERENCE_SIZE, SIGMA, clicks_to_map, frame_sigma, maps_from_clicks

JOURNAL_FORMAT = "visarl-annotation-journal"
EXPORT_FORMAT = "visarl-annotations"
SCHEMA_VERSION = 1
EXPORT_ATTRS = (
    "format",
    "schema_version",
    "sigma",
    "reference_size",
    "frame_sigma",
    "combine",
    "task",
    "guidance",
    "parts",
    "created",
    "journal",
)
"""File attributes every export has; ``export_attrs`` adds others (the annotate stage: selection, seed, ...)."""

_OP_ID = re.compile(r"[A-Za-z0-9_.:-]{1,80}")


class StoreClosed(RuntimeError):
    """A change or read reached a store that was closed (the server is shutting down)."""


class FrameRef(NamedTuple):
    """Where a frame came from: the replay shard's file name and the row in it."""

    shard: str
    row: int


@dataclass
class _Click:
    x: float
    y: float
    t: float
    id: int
    annotator: str
    label: str = ""


@dataclass
class _Frame:
    clicks: list[_Click] = field(default_factory=list)
    # Undo stack of (kind, what it takes to revert it): ("click", None), ("clear", removed clicks),
    # ("delete", (index, click)), ("move", (id, old x, old y)), ("label", (id, old label)), ("empty", old mark).
    history: list[tuple[str, Any]] = field(default_factory=list)
    version: int = 0
    empty: bool = False


def check_frames(frames: np.ndarray, refs: Sequence[Any]) -> tuple[np.ndarray, list[FrameRef]]:
    """Validate ``frames`` uint8 ``[N, H, W, 3]`` and one ``(shard, row)`` reference per frame."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        desc = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise ValueError(f"frames must be a uint8 array [N, H, W, 3], got {desc}")
    if len(frames) == 0:
        raise ValueError("frames is empty: nothing to annotate")
    if len(refs) != len(frames):
        raise ValueError(f"{len(refs)} frame references for {len(frames)} frames")
    out = []
    for i, r in enumerate(refs):
        try:
            shard, row = r
        except (TypeError, ValueError):
            raise ValueError(f"frame reference {i} must be (shard file name, row), got {r!r}") from None
        if not isinstance(shard, str) or isinstance(row, bool) or not isinstance(row, int | np.integer):
            raise ValueError(f"frame reference {i} must be (str, int), got {r!r}")
        out.append(FrameRef(shard, int(row)))
    return np.ascontiguousarray(frames), out


def _encode(event: dict) -> bytes:
    return (json.dumps(event, separators=(",", ":"), allow_nan=False) + "\n").encode()


def _finite(name: str, v: Any) -> float:
    """``v`` as a finite float; ``ValueError`` for anything else (bools, strings, huge integers, NaN)."""
    if isinstance(v, bool) or not isinstance(v, int | float | np.number):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    try:
        f = float(v)  # an integer beyond float range (JSON allows 1e30 written as digits) overflows here
    except OverflowError:
        raise ValueError(f"{name} must be a finite number, got an integer of {len(str(v))} digits") from None
    if not math.isfinite(f):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    return f


class AnnotationStore:
    """Clicks on a fixed list of frames, journaled to ``path`` (created, or reopened and replayed).

    Thread-safe: every method takes one lock, and a change returns only once it is on disk.
    ``sigma``, ``reference_size`` and ``combine`` only shape the maps; the journal keeps raw clicks.
    ``parts`` are the labels a click may carry (default: gripper, object, goal); ``guidance`` is what the
    annotator was asked to click. Both are recorded in the export.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        frames: np.ndarray,
        refs: Sequence[Any],
        *,
        sigma: float = SIGMA,
        reference_size: float | None = REFERENCE_SIZE,
        combine: str = COMBINE,
        task: str = "",
        annotator: str = "",
        guidance: str = "",
        parts: Sequence[str] = PARTS,
        fsync: bool = True,
        export_attrs: dict[str, Any] | None = None,
    ) -> None:
        if combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
        self.frames, self.refs = check_frames(frames, refs)
        self.num_frames, self.height, self.width = self.frames.shape[:3]
        frame_sigma(sigma, self.height, self.width, reference_size)  # validates sigma / reference_size
        self.path = Path(path)
        self.sigma, self.reference_size, self.combine = float(sigma), reference_size, combine
        self.task, self.annotator, self._fsync = task, annotator, fsync
        self.guidance, self.parts = guidance, check_parts(parts)
        # Extra file attributes of every export (e.g. the stage's frame selection and seed); str, numbers, bools.
        self.export_attrs = dict(export_attrs or {})
        clash = set(self.export_attrs) & set(EXPORT_ATTRS)
        if clash:
            raise ValueError(f"export_attrs {sorted(clash)} would overwrite the export's own attributes")
        self._lock = threading.RLock()
        self._frames_state = [_Frame() for _ in range(self.num_frames)]
        self._map_cache: dict[int, tuple[int, np.ndarray]] = {}
        self._ops: dict[str, Any] = {}  # op_id -> the answer of the change that carried it
        self.current = 0
        self.done = False
        self.revision = 0
        self._next_id = 0
        self._header = {
            "format": JOURNAL_FORMAT,
            "version": SCHEMA_VERSION,
            "num_frames": self.num_frames,
            "height": self.height,
            "width": self.width,
            "refs": [[r.shard, r.row] for r in self.refs],
            "frames_sha256": hashlib.sha256(self.frames.tobytes()).hexdigest(),
            "created": time.time(),
        }
        if self.path.exists():
            self._replay()
        else:
            self._create()
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._append({"op": "open", "t": time.time(), "annotator": annotator})

    # -- journal -------------------------------------------------------------------------------------
    def _create(self) -> None:
        atomic_write(self.path, lambda tmp: tmp.write_bytes(_encode(self._header)))

    def _replay(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        keep = len(data)
        if lines[-1] != b"":
            # The last write was cut short by a kill: it was never acknowledged, drop it.
            keep -= len(lines[-1])
        lines = lines[:-1]
        events = []
        for n, line in enumerate(lines, start=1):
            try:
                ev = json.loads(line)
                if not isinstance(ev, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                if n == len(lines) and n > 1:
                    keep -= len(line) + 1  # a torn final line that happens to end in a newline
                    break
                what = "header" if n == 1 else "event"
                raise ValueError(f"{self.path}: line {n}: corrupt {what} in annotation journal ({e})") from None
            events.append(ev)
        if not events or events[0].get("format") != JOURNAL_FORMAT:
            raise ValueError(f"{self.path}: not a visarl annotation journal (no '{JOURNAL_FORMAT}' header)")
        self._check_header(events[0])
        for n, ev in enumerate(events[1:], start=2):
            try:
                self._record(ev, self._apply(ev))
            except (KeyError, TypeError, ValueError, IndexError, StopIteration) as e:
                raise ValueError(f"{self.path}: line {n}: invalid event {ev!r} ({e})") from None
        if keep < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())

    def _check_header(self, h: dict) -> None:
        if h.get("version") != SCHEMA_VERSION:
            raise ValueError(f"{self.path}: journal version {h.get('version')!r}, this visarl reads {SCHEMA_VERSION}")
        for key in ("num_frames", "height", "width", "refs", "frames_sha256"):
            if h.get(key) != self._header[key]:
                raise ValueError(
                    f"{self.path}: this annotation store belongs to other frames ({key} differs); "
                    "use another store path for a new set of frames"
                )

    def _append(self, event: dict) -> None:
        if self._fd is None:
            raise StoreClosed(f"{self.path}: store is closed")
        data = _encode(event)
        # One write on an O_APPEND descriptor: the line lands whole or (on a kill) as a torn tail that replay drops.
        written = os.write(self._fd, data)
        while written < len(data):
            written += os.write(self._fd, data[written:])
        if self._fsync:
            os.fsync(self._fd)

    @staticmethod
    def _find(st: _Frame, click_id: int) -> int:
        """Index of click ``click_id`` in the frame's list; StopIteration when it is not there."""
        return next(k for k, c in enumerate(st.clicks) if c.id == click_id)

    def _apply(self, ev: dict) -> Any:
        """Apply one event to the in-memory state (shared by live changes and replay); returns its answer."""
        op = ev["op"]
        if op == "open":
            return None
        if op == "done":
            self.done = True
            self.revision += 1
            return True
        f = ev["frame"]
        if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < self.num_frames:
            raise IndexError(f"frame {f!r} out of range")
        st = self._frames_state[f]
        out: Any = True
        if op == "goto":
            self.current = f
            self.revision += 1
            return True
        if op == "click":
            c = _Click(
                float(ev["x"]),
                float(ev["y"]),
                float(ev["t"]),
                int(ev["id"]),
                str(ev.get("annotator", "")),
                str(ev.get("label", "")),
            )
            st.clicks.append(c)
            st.history.append(("click", None))
            self._next_id = max(self._next_id, c.id + 1)
            out = c.id
        elif op == "undo":
            kind, payload = st.history.pop()
            if kind == "click":
                st.clicks.pop()
            elif kind == "clear":
                st.clicks = list(payload or [])
            elif kind == "delete":
                st.clicks.insert(payload[0], payload[1])
            elif kind == "move":
                c = st.clicks[self._find(st, payload[0])]
                c.x, c.y = payload[1], payload[2]
            elif kind == "label":
                st.clicks[self._find(st, payload[0])].label = payload[1]
            elif kind == "empty":
                st.empty = payload
        elif op == "clear":
            st.history.append(("clear", st.clicks))
            out = len(st.clicks)
            st.clicks = []
        elif op == "delete":
            k = self._find(st, int(ev["id"]))
            st.history.append(("delete", (k, st.clicks.pop(k))))
        elif op == "move":
            c = st.clicks[self._find(st, int(ev["id"]))]
            st.history.append(("move", (c.id, c.x, c.y)))
            c.x, c.y = float(ev["x"]), float(ev["y"])
        elif op == "label":
            c = st.clicks[self._find(st, int(ev["id"]))]
            st.history.append(("label", (c.id, c.label)))
            c.label = str(ev["label"])
        elif op == "empty":
            st.history.append(("empty", st.empty))
            st.empty = bool(ev["value"])
        else:
            raise ValueError(f"unknown op {op!r}")
        self.current, self.done = f, False
        st.version += 1
        self.revision += 1
        return out

    def _record(self, event: dict, answer: Any) -> None:
        op_id = event.get("op_id")
        if op_id is not None:
            self._ops[str(op_id)] = answer

    def _commit(self, event: dict, op_id: str | None) -> Any:
        if op_id is not None:
            event["op_id"] = op_id
        self._append(event)  # on disk first: an acknowledged change is never lost
        answer = self._apply(event)
        self._record(event, answer)
        return answer

    # -- changes -------------------------------------------------------------------------------------
    def _check_frame(self, frame: int) -> int:
        if isinstance(frame, bool) or not isinstance(frame, int | np.integer) or not 0 <= frame < self.num_frames:
            raise IndexError(f"frame {frame!r} is not in 0..{self.num_frames - 1}")
        return int(frame)

    @staticmethod
    def check_op_id(op_id: Any) -> str | None:
        """Validate an optional change id: up to 80 letters, digits and ``_.:-``."""
        if op_id is None:
            return None
        if not isinstance(op_id, str) or not _OP_ID.fullmatch(op_id):
            raise ValueError(f"op_id must be up to 80 characters of letters, digits, '_.:-', got {op_id!r}")
        return op_id

    def check_point(self, x: Any, y: Any) -> tuple[float, float]:
        """Validate a click position (frame pixels, pixel centres at integers); returns floats."""
        x, y = _finite("x", x), _finite("y", y)
        if not (-0.5 <= x <= self.width - 0.5 and -0.5 <= y <= self.height - 0.5):
            raise ValueError(f"click ({x}, {y}) is outside the {self.width}x{self.height} frame")
        return x, y

    def check_label(self, label: Any) -> str:
        """A click's part label: one of ``parts``, or ``""`` for none."""
        if label != "" and label not in self.parts:
            raise ValueError(f"label must be one of {list(self.parts)} or '', got {label!r}")
        return label

    def _known(self, op_id: str | None) -> bool:
        return op_id is not None and op_id in self._ops

    def _click_index(self, frame: int, click_id: Any) -> int:
        if isinstance(click_id, bool) or not isinstance(click_id, int | np.integer):
            raise ValueError(f"click id must be an integer, got {click_id!r}")
        try:
            return self._find(self._frames_state[frame], int(click_id))
        except StopIteration:
            raise ValueError(f"frame {frame} has no click {click_id}") from None

    def click(self, frame: int, x: float, y: float, label: str = "", op_id: str | None = None) -> int:
        """Add a click at ``(x=col, y=row)`` on ``frame``; returns its id once it is on disk."""
        frame = self._check_frame(frame)
        x, y = self.check_point(x, y)
        label, op_id = self.check_label(label), self.check_op_id(op_id)
        with self._lock:
            if self._known(op_id):
                return self._ops[op_id]
            if self._frames_state[frame].empty:
                raise ValueError(f"frame {frame} is marked as holding nothing salient: unmark it before clicking")
            event = {"op": "click", "frame": frame, "x": x, "y": y, "t": time.time(), "id": self._next_id}
            event["annotator"] = self.annotator
            if label:
                event["label"] = label
            return self._commit(event, op_id)

    def undo(self, frame: int, op_id: str | None = None) -> bool:
        """Revert the frame's last change; False when there is none."""
        frame, op_id = self._check_frame(frame), self.check_op_id(op_id)
        with self._lock:
            if self._known(op_id):
                return self._ops[op_id]
            if not self._frames_state[frame].history:
                return False
            return self._commit({"op": "undo", "frame": frame, "t": time.time()}, op_id)

    def clear(self, frame: int, op_id: str | None = None) -> int:
        """Remove every click of ``frame`` (undoable); returns how many were removed."""
        frame, op_id = self._check_frame(frame), self.check_op_id(op_id)
        with self._lock:
            if self._known(op_id):
                return self._ops[op_id]
            if not self._frames_state[frame].clicks:
                return 0
            return self._commit({"op": "clear", "frame": frame, "t": time.time()}, op_id)

    def delete(self, frame: int, click_id: int, op_id: str | None = None) -> bool:
        """Remove one click of ``frame`` by id (undoable)."""
        frame, op_id = self._check_frame(frame), self.check_op_id(op_id)
        with self._lock:
            if self._known(op_id):
                return self._ops[op_id]
            self._click_index(frame, click_id)
            return self._commit({"op": "delete", "frame": frame, "id": int(click_id), "t": time.time()}, op_id)

    def move(self, frame: int, click_id: int, x: float, y: float, op_id: str | None = None) -> bool:
        """Move one click of ``frame`` to ``(x, y)`` (undoable)."""
        frame, op_id = self._check_frame(frame), self.check_op_id(op_id)
        x, y = self.check_point(x, y)
        with self._lock:
            if self._known(op_id):
                return self._ops[op_id]
            self._click_index(frame, click_id)
            event = {"op": "move", "frame": frame, "id": int(click_id), "x": x, "y": y, "t": time.time()}
            return self._commit(event, op_id)

    def set_label(self, frame: int, click_id: int, label: str, op_id: str | None = None) -> bool:
        """Give one click of ``frame`` a part label, or ``""`` to remove it (undoable)."""
        frame, op_id = self._check_frame(frame), self.check_op_id(op_id)
        label = self.check_label(label)
        with self._lock:
            if self._known(op_id):
                return self._ops[op_id]
            k = self._click_index(frame, click_id)
            if self._frames_state[frame].clicks[k].label == label:
                return False
            event = {"op": "label", "frame": frame, "id": int(click_id), "label": label, "t": time.time()}
            return self._commit(event, op_id)

    def set_empty(self, frame: int, value: bool, op_id: str | None = None) -> bool:
        """Mark ``frame`` as holding nothing salient (its map stays zero), or unmark it (undoable).

        Only a frame without clicks can be marked; returns False when the mark is already ``value``."""
        frame, op_id = self._check_frame(frame), self.check_op_id(op_id)
        if not isinstance(value, bool):
            raise ValueError(f"value must be true or false, got {value!r}")
        with self._lock:
            if self._known(op_id):
                return self._ops[op_id]
            st = self._frames_state[frame]
            if st.empty == value:
                return False
            if value and st.clicks:
                raise ValueError(f"frame {frame} has {len(st.clicks)} clicks: clear them before marking it empty")
            return self._commit({"op": "empty", "frame": frame, "value": value, "t": time.time()}, op_id)

    def goto(self, frame: int, op_id: str | None = None) -> None:
        """Remember the frame on screen, so that reopening resumes there."""
        frame, op_id = self._check_frame(frame), self.check_op_id(op_id)
        with self._lock:
            if frame != self.current and not self._known(op_id):
                self._commit({"op": "goto", "frame": frame, "t": time.time()}, op_id)

    def mark_done(self, op_id: str | None = None) -> None:
        """Record that the annotator finished (a later change clears the flag)."""
        op_id = self.check_op_id(op_id)
        with self._lock:
            if not self.done and not self._known(op_id):
                self._commit({"op": "done", "t": time.time()}, op_id)

    # -- reading -------------------------------------------------------------------------------------
    def clicks(self, frame: int) -> np.ndarray:
        """Clicks of ``frame`` as ``[K, 2]`` float64 ``(x, y)``, in click order."""
        frame = self._check_frame(frame)
        with self._lock:
            return np.array([[c.x, c.y] for c in self._frames_state[frame].clicks], dtype=np.float64).reshape(-1, 2)

    def click_records(self, frame: int) -> list[dict]:
        """Clicks of ``frame`` with their ids, times, annotators and labels."""
        frame = self._check_frame(frame)
        with self._lock:
            return [dict(vars(c)) for c in self._frames_state[frame].clicks]

    def counts(self) -> list[int]:
        """Number of clicks per frame."""
        with self._lock:
            return [len(s.clicks) for s in self._frames_state]

    def empty_marks(self) -> list[bool]:
        """Per frame: marked as holding nothing salient."""
        with self._lock:
            return [s.empty for s in self._frames_state]

    def can_undo(self, frame: int) -> bool:
        with self._lock:
            return bool(self._frames_state[self._check_frame(frame)].history)

    def map(self, frame: int) -> np.ndarray:
        """The frame's saliency map ``[H, W]`` float32 in [0, 1] (cached until the frame changes)."""
        frame = self._check_frame(frame)
        with self._lock:
            st = self._frames_state[frame]
            hit = self._map_cache.get(frame)
            if hit is None or hit[0] != st.version:
                pts = [[c.x, c.y] for c in st.clicks]
                m = clicks_to_map(pts, self.height, self.width, self.sigma, self.reference_size, self.combine)
                hit = (st.version, m)
                self._map_cache[frame] = hit
            return hit[1].copy()

    # -- export --------------------------------------------------------------------------------------
    def export(self, path: str | os.PathLike) -> Path:
        """Write every frame, map and raw click to one HDF5 file (format in the module docstring), atomically."""
        path = Path(path)
        with self._lock:
            per_frame = [list(s.clicks) for s in self._frames_state]
            empty = np.array([s.empty for s in self._frames_state], dtype=bool)
            maps = np.stack([self.map(i) for i in range(self.num_frames)])
        counts = np.array([len(c) for c in per_frame], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        flat = [(i, c.x, c.y) for i, cs in enumerate(per_frame) for c in cs]
        clicks = np.array(flat, dtype=np.float64).reshape(-1, 3)
        times = np.array([c.t for cs in per_frame for c in cs], dtype=np.float64)
        labels = [c.label for cs in per_frame for c in cs]
        ids = np.array([c.id for cs in per_frame for c in cs], dtype=np.int64)
        first = np.array([min((c.t for c in cs), default=np.nan) for cs in per_frame], dtype=np.float64)
        last = np.array([max((c.t for c in cs), default=np.nan) for cs in per_frame], dtype=np.float64)
        who = [",".join(dict.fromkeys(c.annotator for c in cs)) for cs in per_frame]
        text = h5py.string_dtype("utf-8")

        def write(tmp: Path) -> None:
            with h5py.File(tmp, "w") as f:
                f.attrs.update(
                    format=EXPORT_FORMAT,
                    schema_version=SCHEMA_VERSION,
                    sigma=self.sigma,
                    reference_size=float(self.reference_size or 0),
                    frame_sigma=frame_sigma(self.sigma, self.height, self.width, self.reference_size),
                    combine=self.combine,
                    task=self.task,
                    guidance=self.guidance,
                    parts=",".join(self.parts),
                    created=time.time(),
                    journal=self.path.name,
                )
                f.attrs.update(self.export_attrs)
                f.create_dataset("frames", data=self.frames, compression="gzip")
                f.create_dataset("maps", data=maps, compression="gzip")
                f.create_dataset("shard", data=[r.shard for r in self.refs], dtype=text)
                f.create_dataset("row", data=np.array([r.row for r in self.refs], dtype=np.int64))
                f.create_dataset("clicks", data=clicks)
                f.create_dataset("click_time", data=times)
                f.create_dataset("click_offsets", data=offsets)
                f.create_dataset("click_label", data=labels, dtype=text, shape=(len(labels),))
                f.create_dataset("click_id", data=ids)
                f.create_dataset("nothing_salient", data=empty)
                f.create_dataset("annotator", data=who, dtype=text)
                f.create_dataset("first_click", data=first)
                f.create_dataset("last_click", data=last)

        atomic_write(path, write)
        return path

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> AnnotationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Annotations:
    """An exported annotation file, read back by :func:`load_annotations`."""

    path: Path
    frames: np.ndarray
    """uint8 ``[N, H, W, 3]``."""
    maps: np.ndarray
    """float32 ``[N, H, W]`` in [0, 1]."""
    clicks: list[np.ndarray]
    """Per frame, float64 ``[K, 2]`` of ``(x=col, y=row)`` in frame pixels."""
    click_times: list[np.ndarray]
    """Per frame, float64 ``[K]`` unix seconds."""
    refs: list[FrameRef]
    annotators: list[str]
    first_click: np.ndarray
    last_click: np.ndarray
    attrs: dict[str, Any]
    click_labels: list[np.ndarray]
    """Per frame, ``[K]`` str: each click's part label (``gripper``, ``object``, ``goal``) or ``""``."""
    nothing_salient: np.ndarray
    """bool ``[N]``: frames the annotator marked as holding nothing salient (zero maps on purpose)."""

    @property
    def annotated(self) -> np.ndarray:
        """bool ``[N]``: frames with at least one click."""
        return np.array([len(c) > 0 for c in self.clicks], dtype=bool)

    @property
    def reviewed(self) -> np.ndarray:
        """bool ``[N]``: frames with clicks or the "nothing salient" mark (their maps are meant as they are)."""
        return self.annotated | self.nothing_salient

    def rebuild_maps(
        self, sigma: float | None = None, reference_size: float | None | str = "stored", combine: str | None = None
    ) -> np.ndarray:
        """Maps ``[N, H, W]`` from the raw clicks with other settings (defaults: the stored ones)."""
        ref = (self.attrs["reference_size"] or None) if reference_size == "stored" else reference_size
        _, h, w = self.maps.shape
        return maps_from_clicks(
            self.clicks,
            h,
            w,
            sigma if sigma is not None else self.attrs["sigma"],
            ref,
            combine or self.attrs["combine"],
        )


def load_annotations(path: str | os.PathLike) -> Annotations:
    """Read and check an exported annotation file; ``ValueError`` naming the file if it is not one."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable HDF5 annotation file ({e})") from None
    with f:
        attrs = {
            k: (v.decode() if isinstance(v, bytes) else v.item() if isinstance(v, np.generic) else v)
            for k, v in f.attrs.items()
        }
        if attrs.get("format") != EXPORT_FORMAT:
            raise ValueError(f"{path}: not a visarl annotation file (format attribute is {attrs.get('format')!r})")
        if attrs.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"{path}: schema_version {attrs.get('schema_version')!r}, expected {SCHEMA_VERSION}")
        try:
            frames = f["frames"][()]
            maps = f["maps"][()]
            shard = [s.decode() if isinstance(s, bytes) else str(s) for s in f["shard"][()]]
            row = f["row"][()]
            clicks = f["clicks"][()]
            times = f["click_time"][()]
            offsets = f["click_offsets"][()]
            who = [s.decode() if isinstance(s, bytes) else str(s) for s in f["annotator"][()]]
            first, last = f["first_click"][()], f["last_click"][()]
            # Optional datasets: exports written before labels and the empty mark existed lack them.
            labels = (
                [s.decode() if isinstance(s, bytes) else str(s) for s in f["click_label"][()]]
                if "click_label" in f
                else [""] * len(clicks)
            )
            empty = f["nothing_salient"][()].astype(bool) if "nothing_salient" in f else np.zeros(len(frames), bool)
        except KeyError as e:
            raise ValueError(f"{path}: corrupt annotation file, missing dataset ({e})") from None
    n = len(frames)
    ok = (
        frames.dtype == np.uint8
        and frames.ndim == 4
        and frames.shape[-1] == 3
        and maps.shape == frames.shape[:3]
        and len(shard) == len(row) == len(who) == len(first) == len(last) == n
        and clicks.ndim == 2
        and clicks.shape[1] == 3
        and len(times) == len(clicks)
        and len(labels) == len(clicks)
        and empty.shape == (n,)
        and offsets.shape == (n + 1,)
        and offsets[0] == 0
        and offsets[-1] == len(clicks)
        and np.all(np.diff(offsets) >= 0)
    )
    if not ok:
        raise ValueError(f"{path}: corrupt annotation file (inconsistent dataset shapes)")
    per = [clicks[offsets[i] : offsets[i + 1]] for i in range(n)]
    if any(len(p) and np.any(p[:, 0] != i) for i, p in enumerate(per)):
        raise ValueError(f"{path}: corrupt annotation file (clicks do not match click_offsets)")
    return Annotations(
        path=path,
        frames=frames,
        maps=maps.astype(np.float32),
        clicks=[p[:, 1:].copy() for p in per],
        click_times=[times[offsets[i] : offsets[i + 1]].copy() for i in range(n)],
        refs=[FrameRef(s, int(r)) for s, r in zip(shard, row, strict=True)],
        annotators=who,
        first_click=first,
        last_click=last,
        attrs=attrs,
        click_labels=[np.array(labels[offsets[i] : offsets[i + 1]], dtype=object) for i in range(n)],
        nothing_salient=empty,
    )
