"""HDF5 replay shards: the on-disk format of every dataset visarl collects, and its writer and reader.

Format (``format = "visarl-shard"``, ``schema_version = 1``)
------------------------------------------------------------
One HDF5 file holds a contiguous block of N rows. Each row is one OBSERVATION; the rows of one episode
segment are contiguous and ordered by step. Datasets, all of length N:

=============  ======================  ===========================================================
``rgb``        uint8 [N, H, W, 3]      upright camera frame (contiguous, memory-mapped by readers)
``state``      float32 [N, S]          proprioceptive / object state vector
``action``     float32 [N, A]          action taken at this observation (zeros where none was)
``reward``     float32 [N]             reward received for that action
``terminated`` bool [N]                the transition starting at this row ended the episode (MDP end)
``truncated``  bool [N]                ... ended it by a time limit (bootstrapping continues)
``success``    float32 [N]             ``info["success"]`` after that action
``has_next``   bool [N]                row + 1 is this transition's next observation
``episode``    int64 [N]               episode id, unique within the dataset directory
``step``       int32 [N]               observation index within its episode
``continued``  bool [N]                this row repeats the last row of the episode's previous segment
``saliency``   uint8 [N, H, W]         optional: added later by the ``label`` stage (:func:`write_field`)
=============  ======================  ===========================================================

Observation keys beyond ``rgb`` and ``state`` given to the writer are stored the same way (per row).
Datasets are contiguous and uncompressed by default: readers memory-map them, so random rows cost a numpy
gather (see :data:`DEFAULT_CHUNK_ROWS` for the measurements against chunked storage).

Transitions are the rows with ``has_next``; ``next_obs`` is row + 1, so every frame is stored once and a
transition never crosses an episode (or shard) boundary. An episode still running when a shard is cut is
split: its segment ends with its latest observation (``has_next`` False) and that observation is also the
first row of its next segment, marked ``continued`` so that frame-level readers skip the duplicate.

Attributes: ``format``, ``schema_version``, ``writer_id``, the producer's ``task``, ``camera``,
``image_size``, ``action_repeat``, ``config`` (YAML text), and ``complete = True``, set last.
Episode ids are ``writer_id << 40 | n``, unique across writers with distinct ``writer_id`` (e.g. DDP ranks)
and across resumed runs (a writer continues after the ids and shard indices already in its directory).

Crash safety: a shard is written to ``.{name}.tmp`` in the same directory (by :func:`visarl.core.io.atomic_write`),
marked complete, closed, fsynced and ``os.replace``-d to ``{prefix}-w{writer_id}-{index:06d}.h5``. Readers list
only ``*.h5`` files not starting with '.', and reject any file lacking ``complete``; a SIGKILL at any point leaves
either no shard or a whole one (tested in tests/test_shards.py). The layout follows drqv2's episode files on disk,
with HDF5 instead of npz so that rows can be read at random without loading a file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from visarl.core.io import atomic_write

SCHEMA_VERSION = 1
"""Bumped whenever the meaning or layout of a dataset changes; readers reject other versions."""
FORMAT = "visarl-shard"
OBS_KEYS = ("rgb", "state")
"""Observation datasets every shard has."""
ROW_FIELDS = ("action", "reward", "terminated", "truncated", "success", "has_next", "episode", "step", "continued")
"""Per-row bookkeeping datasets every shard has."""
REQUIRED_FIELDS = OBS_KEYS + ROW_FIELDS
RESERVED_ATTRS = ("format", "schema_version", "complete", "writer_id")
EPISODE_ID_BITS = 40
"""Episode ids are ``writer_id << 40 | counter``: writers with distinct ids never collide."""
DEFAULT_CHUNK_ROWS = 0
"""Rows per HDF5 chunk of image datasets; 0 stores them contiguous and uncompressed, which readers memory-map:
random rows then cost a numpy gather, several times faster than the best per-row read of chunks of 1 row and
two orders of magnitude faster than h5py's list indexing of chunked data (benchmarks/datamodule.py)."""


def default_data_dir(task: str) -> Path:
    """Where a task's shards live unless a config says otherwise: ``data/<task>/replay``."""
    return Path("data") / task / "replay"


SHARD_NAME = re.compile(r"^(?P<prefix>.+)-w(?P<writer>\d+)-(?P<index>\d{6,})\.h5$")
"""``<prefix>-w<writer id>-<index, 6+ digits>.h5``: the name of a shard a :class:`ShardWriter` wrote."""


class ShardName(NamedTuple):
    """The parts of a shard's file name (:data:`SHARD_NAME`)."""

    prefix: str
    writer: int
    index: int


def parse_shard_name(name: str) -> ShardName | None:
    """``"shard-w0-000012.h5"`` -> ``ShardName("shard", 0, 12)``; None for a name no writer gives a shard."""
    m = SHARD_NAME.match(name)
    return ShardName(m["prefix"], int(m["writer"]), int(m["index"])) if m else None


def producer_attrs(env: Any, config_yaml: str) -> dict[str, Any]:
    """The provenance attributes a collecting run gives its shards: the env's task, camera, image size and
    action repeat (any object with those fields, e.g. ``visarl.envs.EnvConfig``) and the producing config."""
    return {
        "task": env.task,
        "camera": env.camera,
        "image_size": env.image_size,
        "action_repeat": env.action_repeat,
        "config": config_yaml,
    }


class ShardError(ValueError):
    """A file is not a valid, complete visarl shard; the message names the file."""


# --------------------------------------------------------------------------------------------------
# writing


def _check_attr(key: str, value: Any) -> Any:
    if isinstance(value, (str, bool, int, float, np.integer, np.floating, np.bool_)):
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        arr = np.asarray(value)
        if arr.dtype.kind in "biuf":
            return arr
    raise ValueError(f"shard attribute {key!r}: {value!r} is not a string, number or list of numbers")


def _create_rows(f: h5py.File, name: str, data: np.ndarray, chunk_rows: int) -> None:
    """Create a per-row dataset: contiguous (memory-mappable), or image-like rows chunked by ``chunk_rows``."""
    if chunk_rows > 0 and data.ndim >= 3 and len(data):
        f.create_dataset(name, data=data, chunks=(min(chunk_rows, len(data)), *data.shape[1:]))
    else:
        f.create_dataset(name, data=data)


def _fill(f: h5py.File, columns: Mapping[str, np.ndarray], attrs: Mapping[str, Any], chunk_rows: int) -> None:
    """Write every dataset and attribute except ``complete`` (a separate step so tests can stop here)."""
    for name, data in columns.items():
        _create_rows(f, name, data, chunk_rows)
    for key, value in attrs.items():
        f.attrs[key] = value


def _write_shard(
    path: Path, columns: Mapping[str, np.ndarray], attrs: Mapping[str, Any], chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Path:

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            _fill(f, columns, attrs, chunk_rows)
            f.attrs["complete"] = True  # last: a file without it is never accepted

    return atomic_write(path, write, tmp=path.with_name(f".{path.name}.tmp"))


@dataclass
class _Segment:
    """The buffered rows of one episode since it started or since the last shard was cut."""

    episode: int
    first_step: int
    continued: bool
    obs: dict[str, list[np.ndarray]]
    action: list[np.ndarray] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)
    terminated: list[bool] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    success: list[float] = field(default_factory=list)

    @property
    def transitions(self) -> int:
        return len(self.action)

    def last_obs(self) -> dict[str, np.ndarray]:
        return {k: v[-1] for k, v in self.obs.items()}


class ShardWriter:
    """Buffers episodes from one or several env streams and writes them as shards of ~``rows_per_shard`` rows.

    ``add_first(stream, obs)`` starts an episode on a stream (the env index of a vector env; episodes of
    different streams interleave in time), ``add_step`` appends one transition. A shard is written when the
    buffered rows reach ``rows_per_shard``, on :meth:`flush` and on :meth:`close`. Only segments with at least
    one transition are written: an observation never followed by a step is dropped at :meth:`close`.

    Episode ids are ``writer_id << 40 | n`` with ``n`` continuing after those in this writer's existing shards,
    and shard indices continue after the highest existing one, so resuming (or several writers with distinct
    ``writer_id``, e.g. DDP ranks) never overwrites or collides. Two live writers must not share a writer_id.
    """

    def __init__(
        self,
        directory: str | Path,
        rows_per_shard: int = 5000,
        attrs: Mapping[str, Any] | None = None,
        prefix: str = "shard",
        writer_id: int = 0,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ) -> None:
        if rows_per_shard < 2:
            raise ValueError(f"rows_per_shard must be >= 2, got {rows_per_shard}")
        if not 0 <= writer_id < 2 ** (63 - EPISODE_ID_BITS):
            raise ValueError(f"writer_id must be in [0, 2**{63 - EPISODE_ID_BITS}), got {writer_id}")
        if not prefix or prefix.startswith(".") or "/" in prefix or os.sep in prefix:
            raise ValueError(f"shard prefix {prefix!r} must be a plain file name not starting with '.'")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rows_per_shard = rows_per_shard
        self.prefix = prefix
        self.writer_id = writer_id
        self.chunk_rows = chunk_rows
        self.attrs: dict[str, Any] = {}
        for key, value in (attrs or {}).items():
            if key in RESERVED_ATTRS:
                raise ValueError(f"shard attribute {key!r} is set by the writer itself")
            self.attrs[key] = _check_attr(key, value)
        self.shard_paths: list[Path] = []
        self._next_index, self._next_episode = self._scan_existing()
        self._running: dict[int, _Segment] = {}
        self._done: list[_Segment] = []
        self._rows = 0  # rows that the next shard would hold (segments with >= 1 transition)
        self._obs_spec: dict[str, tuple[tuple[int, ...], np.dtype]] | None = None
        self._action_dim: int | None = None
        self._closed = False

    def _scan_existing(self) -> tuple[int, int]:
        """Next shard index and episode counter after this writer's shards already in the directory."""
        index, episode = 0, 0
        for path in self.directory.glob(f"{_glob_escape(self.prefix)}-w{self.writer_id}-*.h5"):
            name = parse_shard_name(path.name)
            if name is None or name.prefix != self.prefix or name.writer != self.writer_id:
                continue
            index = max(index, name.index + 1)
            episodes = ShardReader(path).read("episode")
            if len(episodes):
                episode = max(episode, int(episodes.max()) - (self.writer_id << EPISODE_ID_BITS) + 1)
        return index, episode

    # -- public API ---------------------------------------------------------------------------------

    @property
    def next_episode(self) -> int:
        """The episode id that the next :meth:`add_first` will return."""
        return (self.writer_id << EPISODE_ID_BITS) | self._next_episode

    def add_first(self, stream: int, obs: Mapping[str, np.ndarray]) -> int:
        """Start a new episode on ``stream`` with its first observation; returns the episode id.

        A still-running episode on the stream ends here without a terminal flag (its last row has no next).
        """
        self._check_open()
        obs = self._check_obs(obs)
        old = self._running.pop(stream, None)
        if old is not None and old.transitions:
            self._done.append(old)
        episode = self.next_episode
        self._next_episode += 1
        self._running[stream] = _Segment(episode, 0, False, {k: [v] for k, v in obs.items()})
        return episode

    def add_step(
        self,
        stream: int,
        action: np.ndarray,
        reward: float,
        terminated: bool,
        truncated: bool,
        success: float,
        next_obs: Mapping[str, np.ndarray],
    ) -> None:
        """Append one transition to ``stream``'s episode; ``terminated or truncated`` ends the episode."""
        self._check_open()
        seg = self._running.get(stream)
        if seg is None:
            raise ValueError(f"add_step on stream {stream} without a running episode: call add_first first")
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if self._action_dim is None:
            self._action_dim = action.shape[0]
        elif action.shape[0] != self._action_dim:
            raise ValueError(f"action has {action.shape[0]} dims, earlier actions had {self._action_dim}")
        next_obs = self._check_obs(next_obs)
        self._rows += 2 if seg.transitions == 0 else 1
        seg.action.append(action)
        seg.reward.append(float(reward))
        seg.terminated.append(bool(terminated))
        seg.truncated.append(bool(truncated))
        seg.success.append(float(success))
        for k, v in next_obs.items():
            seg.obs[k].append(v)
        if terminated or truncated:
            self._done.append(self._running.pop(stream))
        if self._rows >= self.rows_per_shard:
            self.flush()

    def flush(self) -> Path | None:
        """Write a shard now from every buffered segment with a transition; returns its path (None if none)."""
        self._check_open()
        segments = [s for s in self._done if s.transitions]
        segments += [self._running[k] for k in sorted(self._running) if self._running[k].transitions]
        if not segments:
            return None
        columns = self._columns(segments)
        name = f"{self.prefix}-w{self.writer_id}-{self._next_index:06d}.h5"
        attrs = {**self.attrs, "format": FORMAT, "schema_version": SCHEMA_VERSION, "writer_id": self.writer_id}
        path = _write_shard(self.directory / name, columns, attrs, self.chunk_rows)
        self._next_index += 1
        self.shard_paths.append(path)
        # running episodes continue in the next shard from their latest observation (the duplicated row)
        self._done = []
        for stream, seg in self._running.items():
            if seg.transitions:
                last = seg.first_step + seg.transitions
                self._running[stream] = _Segment(seg.episode, last, True, {k: [v] for k, v in seg.last_obs().items()})
        self._rows = 0
        return path

    def close(self) -> None:
        """Write what is buffered (running episodes as partial segments) and refuse further rows."""
        if self._closed:
            return
        self.flush()
        self._running.clear()
        self._closed = True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"ShardWriter for {self.directory} is closed")

    def _check_obs(self, obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy an observation (vector envs reuse buffers) and check it matches the first one's keys/shapes."""
        out = {}
        for k, v in obs.items():
            v = np.array(v, copy=True)
            if k == "state":
                v = v.astype(np.float32, copy=False)
            out[k] = v
        if self._obs_spec is None:
            missing = [k for k in OBS_KEYS if k not in out]
            if missing:
                raise ValueError(f"observation lacks {missing}; it has {sorted(out)}")
            rgb = out["rgb"]
            if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
                raise ValueError(f"obs['rgb'] must be uint8 [H, W, 3], got {rgb.dtype} {list(rgb.shape)}")
            if out["state"].ndim != 1:
                raise ValueError(f"obs['state'] must be 1-D, got shape {list(out['state'].shape)}")
            if set(out) & set(ROW_FIELDS):
                raise ValueError(f"observation keys {sorted(set(out) & set(ROW_FIELDS))} clash with shard fields")
            self._obs_spec = {k: (v.shape, v.dtype) for k, v in out.items()}
        else:
            spec = {k: (v.shape, v.dtype) for k, v in out.items()}
            if spec != self._obs_spec:
                raise ValueError(f"observation {spec} differs from the first one {self._obs_spec}")
        return out

    def _columns(self, segments: Sequence[_Segment]) -> dict[str, np.ndarray]:
        assert self._obs_spec is not None and self._action_dim is not None
        n = sum(s.transitions + 1 for s in segments)
        cols = {k: np.stack([o for s in segments for o in s.obs[k]]) for k in self._obs_spec}  # [N, ...] per obs key
        cols["action"] = np.zeros((n, self._action_dim), np.float32)
        for name, dtype in (("reward", np.float32), ("terminated", bool), ("truncated", bool), ("success", np.float32)):
            cols[name] = np.zeros(n, dtype)
        cols["has_next"] = np.zeros(n, bool)
        cols["episode"] = np.zeros(n, np.int64)
        cols["step"] = np.zeros(n, np.int32)
        cols["continued"] = np.zeros(n, bool)
        row = 0
        for s in segments:
            t = s.transitions
            body = slice(row, row + t)  # rows that start a transition; the segment's last row does not
            cols["action"][body] = np.stack(s.action)
            cols["reward"][body] = s.reward
            cols["terminated"][body] = s.terminated
            cols["truncated"][body] = s.truncated
            cols["success"][body] = s.success
            cols["has_next"][body] = True
            cols["episode"][row : row + t + 1] = s.episode
            cols["step"][row : row + t + 1] = np.arange(s.first_step, s.first_step + t + 1)
            cols["continued"][row] = s.continued
            row += t + 1
        return cols


def _glob_escape(text: str) -> str:
    """Escape glob metacharacters in a literal file-name part."""
    return re.sub(r"([\[\]\*\?])", r"[\1]", text)


# --------------------------------------------------------------------------------------------------
# reading


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class ShardReader:
    """One shard, validated on construction; the HDF5 file is opened lazily on the first read.

    The handle is per process (reopened after a fork and dropped when pickled), so a reader built in the
    main process can go to DataLoader workers. Construction checks the attributes, the presence and lengths
    of every required dataset and the row bookkeeping; ``full_check=True`` also reads every byte of data
    (catches files damaged inside a dataset). Any failure raises :class:`ShardError` naming the file.
    """

    def __init__(self, path: str | Path, full_check: bool = False) -> None:
        self.path = Path(path)
        self._h5: h5py.File | None = None
        self._cols: dict[str, np.ndarray | h5py.Dataset] = {}
        self._pid = -1
        with self._guard("cannot read"):
            with h5py.File(self.path, "r") as f:
                self._validate(f, full_check)

    # -- validation ---------------------------------------------------------------------------------

    def _fail(self, why: str) -> ShardError:
        return ShardError(f"{self.path}: {why}")

    def _guard(self, what: str) -> _Guard:
        return _Guard(self, what)

    def _validate(self, f: h5py.File, full_check: bool) -> None:
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
        if attrs.get("format") != FORMAT:
            raise self._fail(f"not a visarl shard (format attribute is {attrs.get('format')!r}, expected {FORMAT!r})")
        if attrs.get("schema_version") != SCHEMA_VERSION:
            raise self._fail(
                f"schema_version {attrs.get('schema_version')!r} is not supported (this code reads {SCHEMA_VERSION})"
            )
        if attrs.get("complete") is not True:
            raise self._fail("shard is incomplete (no complete=True attribute): its writer did not finish")
        # h5py's low-level calls: ~4x faster than Group.items(), which matters when opening many shards
        names = list(f.keys())
        missing = [k for k in REQUIRED_FIELDS if k not in names]
        if missing:
            raise self._fail(f"missing datasets {missing}")
        self._fields: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        ids = {}
        for name in names:
            try:
                ids[name] = h5py.h5d.open(f.id, name.encode())
            except KeyError as e:  # a group or a damaged object
                raise self._fail(f"{name!r} is not a readable dataset") from e
            self._fields[name] = (ids[name].shape, ids[name].dtype)
        n = self._fields["has_next"][0][0] if self._fields["has_next"][0] else 0
        bad = {k: s[0] if s else None for k, (s, _) in self._fields.items() if not s or s[0] != n}
        if bad:
            raise self._fail(f"datasets have inconsistent lengths {bad}, expected {n} rows")
        rgb_shape, rgb_dtype = self._fields["rgb"]
        if rgb_dtype != np.uint8 or len(rgb_shape) != 4 or rgb_shape[-1] != 3:
            raise self._fail(f"rgb must be uint8 [N, H, W, 3], found {rgb_dtype} {list(rgb_shape)}")
        self._len = n
        self.attrs: dict[str, Any] = attrs
        # Small per-row bookkeeping kept in memory: ~14 bytes a row, needed to index transitions and frames.
        self._has_next = _read_all(ids["has_next"]).astype(bool)
        self._continued = _read_all(ids["continued"]).astype(bool)
        episode, step = _read_all(ids["episode"]), _read_all(ids["step"])
        if n and self._has_next[-1]:
            raise self._fail("last row has has_next=True but there is no next row")
        t = np.flatnonzero(self._has_next)
        if np.any(episode[t + 1] != episode[t]) or np.any(step[t + 1] != step[t] + 1):
            raise self._fail("has_next links rows of different episodes or non-consecutive steps")
        starts = np.flatnonzero(self._continued)
        if np.any(self._has_next[starts[starts > 0] - 1]):
            raise self._fail("a continued row is not the first row of its segment")
        if full_check:
            for name in self._fields:
                dset = f[name]
                step_rows = max(1, (1 << 24) // max(1, dset.dtype.itemsize * int(np.prod(dset.shape[1:]))))
                for lo in range(0, n, step_rows):
                    dset[lo : lo + step_rows]

    # -- handle -------------------------------------------------------------------------------------

    def _column(self, field: str) -> np.ndarray | h5py.Dataset:
        """``field`` as a read-only memory map when stored contiguous and uncompressed, else the h5py dataset.

        Handles and maps belong to one process: after a fork they are rebuilt (HDF5 is not fork-safe), and
        pickling drops them, so workers open their own. A shard is never modified in place (``write_field``
        replaces the file), so a map stays valid for the file it was made from.
        """
        if self._pid != os.getpid():
            self._h5, self._cols, self._pid = None, {}, os.getpid()
        col = self._cols.get(field)
        if col is None:
            if self._h5 is None:
                self._h5 = h5py.File(self.path, "r")
            dset = self._h5[field]
            offset = dset.id.get_offset() if dset.chunks is None and not dset.external else None
            if offset is not None and dset.dtype.kind in "biuf":
                col = np.memmap(self.path, dset.dtype, "r", offset=offset, shape=dset.shape)
            else:
                col = dset
            self._cols[field] = col
        return col

    def close(self) -> None:
        """Release the file handle and memory maps of this process (reopened on the next read)."""
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5, self._cols = None, {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_h5"], state["_cols"], state["_pid"] = None, {}, -1
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: h5py may already be gone
            pass

    # -- queries ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"ShardReader({str(self.path)!r}, rows={self._len})"

    @property
    def fields(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Dataset name -> (shape, dtype) for every dataset in the shard."""
        return dict(self._fields)

    def transition_indices(self) -> np.ndarray:
        """Rows that start a transition (next observation = row + 1), int64 ascending."""
        return np.flatnonzero(self._has_next)

    def frame_indices(self) -> np.ndarray:
        """Rows holding each observation once (continuation duplicates skipped), int64 ascending."""
        return np.flatnonzero(~self._continued)

    def read(self, field: str, indices: np.ndarray | Sequence[int] | slice | None = None) -> np.ndarray:
        """Rows ``indices`` (any order, repeats allowed; None = all) of dataset ``field`` as numpy."""
        if field not in self._fields:
            raise KeyError(f"{self.path}: no dataset {field!r}; it has {sorted(self._fields)}")
        if field == "has_next":
            return self._has_next.copy() if indices is None else self._has_next[indices]
        with self._guard(f"cannot read {field!r}"):
            col = self._column(field)
            if indices is None or isinstance(indices, slice):
                return np.array(col[slice(None) if indices is None else indices])
            idx = np.asarray(indices, dtype=np.int64).reshape(-1)
            if len(idx) and (idx.min() < 0 or idx.max() >= self._len):
                raise IndexError(f"{self.path}: row index out of range [0, {self._len}) in {field!r}")
            if isinstance(col, np.ndarray):
                return np.asarray(col[idx])  # numpy gather from the memory map: any order, repeats fine
            if len(idx) == 0:
                return np.empty((0, *col.shape[1:]), col.dtype)
            if np.all(idx[1:] > idx[:-1]):
                return read_sorted(col, idx)
            uniq, inverse = np.unique(idx, return_inverse=True)
            return read_sorted(col, uniq)[inverse]

    def load(self, fields: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Every row of ``fields`` (default: all datasets) as numpy arrays."""
        return {k: self.read(k) for k in (self._fields if fields is None else fields)}


def _read_all(dsid: h5py.h5d.DatasetID) -> np.ndarray:
    out = np.empty(dsid.shape, dsid.dtype)
    dsid.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
    return out


class _Guard:
    """Turn h5py's errors for damaged files (OSError, RuntimeError, KeyError) into ShardError naming the file."""

    def __init__(self, reader: ShardReader, what: str) -> None:
        self.reader, self.what = reader, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None or isinstance(exc, (ShardError, IndexError)):
            return False
        if isinstance(exc, (OSError, RuntimeError, KeyError)):
            raise ShardError(f"{self.reader.path}: {self.what} (damaged or not an HDF5 shard): {exc}") from exc
        return False


def read_sorted(dset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Read strictly increasing ``rows`` of a chunked or compressed HDF5 dataset, one slice per run of rows.

    h5py's list indexing builds one hyperslab per row and is very slow on chunked data, while a slice read costs
    little more than its bytes: consecutive runs (a row and its next row) are read as one slice.
    """
    n = len(rows)
    out = np.empty((n, *dset.shape[1:]), dset.dtype)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate(([0], breaks)).tolist()
    ends = np.concatenate((breaks, [n])).tolist()
    for a, b in zip(starts, ends, strict=True):
        lo = int(rows[a])
        out[a:b] = dset[lo : lo + b - a]
    return out


def open_shards(directory: str | Path, strict: bool = True) -> list[ShardReader]:
    """Validated readers for the shards in ``directory``, sorted by name (see :func:`list_shards`)."""
    directory = Path(directory)
    if not directory.exists():
        return []  # nothing collected yet; consumers that need data raise their own error naming it
    if not directory.is_dir():
        raise NotADirectoryError(f"shard directory {directory} is a file")
    readers = []
    for path in sorted(directory.glob("*.h5")):
        if path.name.startswith(".") or not path.is_file():
            continue  # temporary files of writers (possibly killed ones)
        try:
            readers.append(ShardReader(path))
        except ShardError:
            if strict:
                raise
    return readers


def list_shards(directory: str | Path, strict: bool = True) -> list[Path]:
    """Shard files in ``directory``, sorted by name; temporary files (names starting with '.') are ignored.

    A directory that does not exist holds no shards. Each ``*.h5`` is opened and validated: with ``strict``
    a file that is not a complete, consistent shard raises :class:`ShardError` naming it (data must not
    silently go missing); otherwise it is skipped.
    """
    return [r.path for r in open_shards(directory, strict)]


def write_field(path: str | Path, name: str, array: np.ndarray, overwrite: bool = False) -> None:
    """Add per-row dataset ``name`` to an existing shard, atomically.

    The shard is copied to ``.{file}.{name}.tmp``, the dataset added there, and the copy renamed over the
    original, so a crash at any point leaves the file either untouched or fully labelled.
    """
    path = Path(path)
    reader = ShardReader(path)
    array = np.asarray(array)
    if name in REQUIRED_FIELDS:
        raise ValueError(f"{path}: {name!r} is a core shard field and cannot be rewritten")
    if array.ndim == 0 or array.shape[0] != len(reader):
        raise ValueError(f"{path}: {name!r} has shape {list(array.shape)}, expected {len(reader)} rows")
    if name in reader.fields and not overwrite:
        raise ValueError(f"{path}: already has a {name!r} dataset (pass overwrite=True to replace it)")

    def write(tmp: Path) -> None:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "r+") as f:
            if name in f:
                del f[name]
            chunks = f["rgb"].chunks  # store labels like the frames
            _add_dataset(f, name, array, chunks[0] if chunks else 0)

    atomic_write(path, write, tmp=path.with_name(f".{path.name}.{name}.tmp"))  # replaces a killed labeller's copy


def _add_dataset(f: h5py.File, name: str, array: np.ndarray, chunk_rows: int) -> None:
    _create_rows(f, name, array, chunk_rows)


# --------------------------------------------------------------------------------------------------
# summaries


@dataclass(frozen=True)
class DatasetInfo:
    """What a set of shards holds."""

    shards: int
    rows: int
    frames: int
    """Distinct observations (rows minus continuation duplicates)."""
    transitions: int
    episodes: int
    successful_episodes: int
    """Episodes with ``success > 0`` after some step."""
    fields: tuple[str, ...]
    """Datasets present in every shard."""

    def __str__(self) -> str:
        return (
            f"{self.shards} shards, {self.frames} frames, {self.transitions} transitions, "
            f"{self.episodes} episodes ({self.successful_episodes} successful); fields: {', '.join(self.fields)}"
        )


def dataset_info(directories: str | Path | Sequence[str | Path]) -> DatasetInfo:
    """Summarize every shard in one or several directories."""
    dirs = [directories] if isinstance(directories, (str, Path)) else list(directories)
    readers = [r for d in dirs for r in open_shards(d)]
    episodes, succeeded = [], []
    fields: set[str] | None = None
    for r in readers:
        ep = r.read("episode")
        episodes.append(ep)
        succeeded.append(ep[r.read("success") > 0])
        fields = set(r.fields) if fields is None else fields & set(r.fields)
    cat = np.concatenate(episodes) if episodes else np.zeros(0, np.int64)
    won = np.concatenate(succeeded) if succeeded else np.zeros(0, np.int64)
    return DatasetInfo(
        shards=len(readers),
        rows=sum(len(r) for r in readers),
        frames=sum(len(r.frame_indices()) for r in readers),
        transitions=sum(len(r.transition_indices()) for r in readers),
        episodes=len(np.unique(cat)),
        successful_episodes=len(np.unique(won)),
        fields=tuple(sorted(fields or ())),
    )


def summarize(directories: str | Path | Sequence[str | Path]) -> dict[str, Any]:
    """:func:`dataset_info` as a JSON-ready dict (for run summaries)."""
    info = dataclasses.asdict(dataset_info(directories))
    info["fields"] = list(info["fields"])
    return info
