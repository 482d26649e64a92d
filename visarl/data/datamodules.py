"""LightningDataModules over HDF5 replay shards: transitions for SAC, frames for pretraining.

Both read shards written by :class:`visarl.data.shards.ShardWriter` in one or several directories and
gather whole batches at once (one read per shard and field per batch, numpy gathers when cached), instead
of one Python call per sample. Without ``cache`` only row bookkeeping (a few bytes a row) lives in memory
and rows are read from the files (memory-mapped when stored contiguous); with ``cache`` the requested
fields of every shard are loaded once into numpy, images already in ``[N, C, H, W]`` layout: for transitions,
into a :class:`ReplayBuffer`, the same in-memory replay the SAC loop appends to (:mod:`visarl.rl.replay`).

Images come out as uint8 ``[B, C, H, W]`` (models convert to float on the device, so the host-to-device copy
is 4x smaller); state and actions as float32.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from visarl.data.shards import ROW_FIELDS, ShardError, ShardReader, open_shards

TRANSITION_FIELDS = ("action", "reward", "terminated", "truncated")
"""Per-transition fields (of the row that starts it) in a :class:`TransitionBatch`."""


class TransitionBatch(NamedTuple):
    """A batch of B transitions; ``obs``/``next_obs`` map keys to ``[B, C, H, W]`` images or ``[B, S]`` vectors."""

    obs: dict[str, torch.Tensor]
    action: torch.Tensor
    """float32 [B, A]"""
    reward: torch.Tensor
    """float32 [B]"""
    next_obs: dict[str, torch.Tensor]
    terminated: torch.Tensor
    """bool [B]: no bootstrapping from next_obs."""
    truncated: torch.Tensor
    """bool [B]: the episode hit its time limit; bootstrapping continues."""


def _as_dirs(data_dirs: str | Path | Sequence[str | Path]) -> list[Path]:
    dirs = [data_dirs] if isinstance(data_dirs, (str, Path)) else list(data_dirs)
    if not dirs:
        raise ValueError("no data directories given")
    return [Path(d) for d in dirs]


def shard_readers(data_dirs: str | Path | Sequence[str | Path], keys: Sequence[str]) -> list[ShardReader]:
    """Validated readers for every shard in ``data_dirs``; each must hold ``keys`` with matching row shapes.

    Errors name the directory and file: a missing key usually means a stage was skipped (e.g. no saliency
    before the ``label`` stage ran).
    """
    readers: list[ShardReader] = []
    shapes: dict[str, tuple[tuple[int, ...], Path]] = {}
    for d in _as_dirs(data_dirs):
        found = open_shards(d)
        if not found:
            raise FileNotFoundError(f"no shards (*.h5) in {d}")
        for reader in found:
            for key in keys:
                if key not in reader.fields:
                    hint = " (run the label stage to add saliency maps)" if key == "saliency" else ""
                    raise ShardError(
                        f"{d}: shard {reader.path.name} has no {key!r} dataset{hint}; it has {sorted(reader.fields)}"
                    )
                shape = reader.fields[key][0][1:]
                first = shapes.setdefault(key, (shape, reader.path))
                if first[0] != shape:
                    raise ShardError(
                        f"{reader.path}: {key!r} rows are {list(shape)} but {first[1]} has {list(first[0])}"
                    )
            readers.append(reader)
    return readers


def _chw_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row shape as a model sees it: [H, W, C] -> [C, H, W], [H, W] -> [1, H, W], vectors unchanged."""
    if len(shape) == 3:
        return (shape[2], shape[0], shape[1])
    if len(shape) == 2:
        return (1, *shape)
    return shape


def chw(rows: np.ndarray) -> np.ndarray:
    """Rows as the models see them: [N, H, W, C] -> [N, C, H, W], [N, H, W] -> [N, 1, H, W], vectors unchanged."""
    if rows.ndim == 4:
        return rows.transpose(0, 3, 1, 2)
    if rows.ndim == 3:
        return rows[:, None]
    return rows


def _to_chw(rows: np.ndarray) -> np.ndarray:
    """:func:`chw`, images made contiguous."""
    return np.ascontiguousarray(chw(rows)) if rows.ndim == 4 else chw(rows)


def _load_rows(readers: Sequence[ShardReader], key: str, rows: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate ``rows`` of ``key`` from every reader into one preallocated [sum, ...] array (CHW images)."""
    shape, dtype = readers[0].fields[key]
    out = np.empty((sum(len(r) for r in rows), *_chw_shape(shape[1:])), dtype)
    at = 0
    for reader, r in zip(readers, rows, strict=True):
        out[at : at + len(r)] = _to_chw(reader.read(key, r))
        at += len(r)
    return out


def _shard_runs(shard_ids: np.ndarray) -> list[tuple[int, int, int]]:
    """(shard, start, end) for each run of equal shard ids in a sorted array."""
    cuts = np.flatnonzero(np.diff(shard_ids)) + 1
    starts = np.concatenate(([0], cuts)).tolist()
    ends = np.concatenate((cuts, [len(shard_ids)])).tolist()
    return [(int(shard_ids[a]), a, b) for a, b in zip(starts, ends, strict=True)]


def passthrough_collate(batch: Any) -> Any:
    """Collate function for datasets whose ``__getitems__`` already returns a whole batch."""
    return batch


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


# --------------------------------------------------------------------------------------------------
# transitions


class ReplayBuffer:
    """Rows of observations in a ring of ``capacity`` rows; transitions are links ``row -> next_row``.

    ``obs_spec`` maps each stored key to its per-row shape and dtype (images ``[C, H, W]``). Rows are written by
    :meth:`add_obs` and linked by :meth:`add_transitions`. When the ring wraps, the oldest rows are overwritten
    and their transitions dropped; a next observation is always newer than its observation, so a surviving
    transition never points at an overwritten row.
    """

    def __init__(
        self, capacity: int, obs_spec: Mapping[str, tuple[tuple[int, ...], np.dtype]], action_dim: int
    ) -> None:
        if capacity < 2:
            raise ValueError(f"replay capacity must be >= 2 rows, got {capacity}")
        self.capacity = int(capacity)
        self.keys = tuple(obs_spec)
        # np.empty reserves address space only: pages are touched as rows are written
        self.obs = {k: np.empty((self.capacity, *shape), dtype) for k, (shape, dtype) in obs_spec.items()}
        self.action = np.zeros((self.capacity, action_dim), np.float32)
        self.reward = np.zeros(self.capacity, np.float32)
        self.terminated = np.zeros(self.capacity, bool)
        self.truncated = np.zeros(self.capacity, bool)
        self.has_next = np.zeros(self.capacity, bool)
        self.next_row = np.zeros(self.capacity, np.int64)
        self.serial = np.full(self.capacity, -1, np.int64)  # total rows written when each row was written
        self.rows_written = 0
        self.num_transitions = 0  # links made and not yet overwritten

    @property
    def size(self) -> int:
        """Rows currently held."""
        return min(self.rows_written, self.capacity)

    def __len__(self) -> int:
        return self.num_transitions

    def add_obs(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Append n observations (``{key: [n, ...]}``, every stored key); returns their rows [n]."""
        n = len(next(iter(obs.values())))
        serial = np.arange(self.rows_written, self.rows_written + n)
        rows = serial % self.capacity
        dropped = int(self.has_next[rows].sum())
        self.num_transitions -= dropped
        self.has_next[rows] = False
        for k in self.keys:
            self.obs[k][rows] = obs[k]
        self.serial[rows] = serial
        self.rows_written += n
        return rows

    def add_transitions(
        self,
        rows: np.ndarray,
        next_rows: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
    ) -> None:
        """Link ``rows`` [n] to ``next_rows`` [n] with the action taken and what followed."""
        oldest = self.rows_written - self.capacity
        if np.any(self.serial[rows] < oldest) or np.any(self.serial[rows] < 0):
            raise RuntimeError("replay capacity too small: an observation was overwritten before its next one came")
        self.action[rows] = action
        self.reward[rows] = reward
        self.terminated[rows] = terminated
        self.truncated[rows] = truncated
        self.next_row[rows] = next_rows
        self.num_transitions += int((~self.has_next[rows]).sum())
        self.has_next[rows] = True

    def sample(self, batch_size: int, rng: np.random.Generator) -> TransitionBatch:
        """B transitions drawn uniformly with replacement (CPU tensors; images uint8 [B, C, H, W])."""
        if self.num_transitions == 0:
            raise ValueError("the replay holds no transitions yet")
        # Rejection: only the newest row of each stream and the last rows of episodes lack a next observation, so
        # redrawing the few rows that do is cheaper than drawing among the linked rows.
        rows = rng.integers(0, self.size, batch_size)
        unlinked = np.flatnonzero(~self.has_next[rows])
        while len(unlinked):
            rows[unlinked] = rng.integers(0, self.size, len(unlinked))
            unlinked = unlinked[~self.has_next[rows[unlinked]]]
        both = np.concatenate((rows, self.next_row[rows]))  # one gather per key for obs and next obs, [2B, ...]
        pairs = {k: torch.from_numpy(np.take(v, both, axis=0)) for k, v in self.obs.items()}
        return TransitionBatch(
            obs={k: v[:batch_size] for k, v in pairs.items()},
            action=torch.from_numpy(self.action[rows]),
            reward=torch.from_numpy(self.reward[rows]),
            next_obs={k: v[batch_size:] for k, v in pairs.items()},
            terminated=torch.from_numpy(self.terminated[rows]),
            truncated=torch.from_numpy(self.truncated[rows]),
        )

    def load_shard(self, reader: ShardReader) -> int:
        """Append every row of a shard (its transitions linked as stored); returns the transitions added."""
        data = {k: chw(reader.read(k)) for k in self.keys}
        rows = self.add_obs(data)
        t = reader.transition_indices()
        if len(t):
            fields = {f: reader.read(f, t) for f in TRANSITION_FIELDS}
            self.add_transitions(rows[t], rows[t + 1], **fields)
        return len(t)


class TransitionDataset(IterableDataset):
    """Endless batches of transitions drawn uniformly with replacement over every transition it holds.

    The transitions are those of ``readers``' shards, read from the files per batch, or, with ``cache``, loaded
    once into a :class:`ReplayBuffer` (:meth:`from_buffer` gives a dataset over a buffer another party fills: the
    SAC loop's replay). Each DataLoader worker (and DDP rank) draws from its own generator seeded with ``(seed,
    rank, worker, iteration)``, so workers never repeat each other and a restarted iteration does not replay the
    last one. Read from the files, a batch's transitions are ordered by shard and row (the draw itself is uniform).
    """

    def __init__(
        self,
        readers: Sequence[ShardReader],
        batch_size: int,
        keys: Sequence[str] = ("rgb", "state"),
        cache: bool = False,
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        bad = [k for k in keys if k in ROW_FIELDS]
        if bad:
            raise ValueError(f"keys {bad} are bookkeeping fields, not observations")
        self.readers = list(readers)
        self.batch_size = batch_size
        self.keys = tuple(keys)
        self.seed, self.rank = int(seed), int(rank)
        self._iterations = 0
        starts = [r.transition_indices() for r in self.readers]
        self._rows = np.concatenate(starts) if starts else np.zeros(0, np.int64)  # row in its shard
        self._shard = np.repeat(np.arange(len(starts), dtype=np.int32), [len(s) for s in starts])
        if len(self._rows) == 0:
            raise ValueError(f"no transitions in {[str(r.path) for r in self.readers]}")
        self.obs_shapes = {k: _chw_shape(self.readers[0].fields[k][0][1:]) for k in self.keys}
        self.action_dim = int(self.readers[0].fields["action"][0][1])
        self.buffer: ReplayBuffer | None = None
        """The rows in memory (``cache``); None when batches are read from the files."""
        if cache:
            spec = {k: (self.obs_shapes[k], self.readers[0].fields[k][1]) for k in self.keys}
            self.buffer = ReplayBuffer(sum(len(r) for r in self.readers), spec, self.action_dim)
            for r in self.readers:
                self.buffer.load_shard(r)
                r.close()  # no HDF5 handle may cross the fork into workers

    @classmethod
    def from_buffer(cls, buffer: ReplayBuffer, batch_size: int, seed: int = 0, rank: int = 0) -> TransitionDataset:
        """A dataset over ``buffer`` as it is filled (empty at first). Sample it in the process that fills it:
        a DataLoader worker would see the buffer as it was when the worker started."""
        ds = cls.__new__(cls)
        IterableDataset.__init__(ds)
        ds.readers, ds.batch_size, ds.keys = [], int(batch_size), buffer.keys
        ds.seed, ds.rank, ds._iterations = int(seed), int(rank), 0
        ds._rows, ds._shard = np.zeros(0, np.int64), np.zeros(0, np.int32)
        ds.obs_shapes = {k: v.shape[1:] for k, v in buffer.obs.items()}
        ds.action_dim = buffer.action.shape[1]
        ds.buffer = buffer
        return ds

    @property
    def num_transitions(self) -> int:
        """Distinct transitions sampled from (no ``__len__``: the stream is endless, not an epoch)."""
        return len(self.buffer) if self.buffer is not None else len(self._rows)

    def sample(self, rng: np.random.Generator, batch_size: int | None = None) -> TransitionBatch:
        """One batch of ``batch_size`` (default: the dataset's) transitions drawn with ``rng``."""
        b = self.batch_size if batch_size is None else batch_size
        if self.buffer is not None:
            return self.buffer.sample(b, rng)
        draw = rng.integers(0, len(self._rows), b)
        draw.sort()  # groups the draw by shard: one gather per shard and field
        obs, nxt, arrays = self._read(self._shard[draw], self._rows[draw])
        return TransitionBatch(
            obs=obs,
            action=torch.from_numpy(arrays["action"]),
            reward=torch.from_numpy(arrays["reward"]),
            next_obs=nxt,
            terminated=torch.from_numpy(arrays["terminated"]),
            truncated=torch.from_numpy(arrays["truncated"]),
        )

    def _read(
        self, shards: np.ndarray, rows: np.ndarray
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, np.ndarray]]:
        b = len(rows)
        spec = self.readers[0].fields
        obs = {k: np.empty((b, *spec[k][0][1:]), spec[k][1]) for k in self.keys}
        nxt = {k: np.empty_like(v) for k, v in obs.items()}
        arrays = {f: np.empty((b, *spec[f][0][1:]), spec[f][1]) for f in TRANSITION_FIELDS}
        for shard, lo, hi in _shard_runs(shards):
            reader, r = self.readers[shard], rows[lo:hi]
            both = np.concatenate((r, r + 1))  # this row and its next observation in one read
            for k in self.keys:
                data = reader.read(k, both)
                obs[k][lo:hi], nxt[k][lo:hi] = data[: hi - lo], data[hi - lo :]
            for f in TRANSITION_FIELDS:
                arrays[f][lo:hi] = reader.read(f, r)
        return (
            {k: torch.from_numpy(_to_chw(v)) for k, v in obs.items()},
            {k: torch.from_numpy(_to_chw(v)) for k, v in nxt.items()},
            arrays,
        )

    def __iter__(self) -> Iterator[TransitionBatch]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        self._iterations += 1  # each worker counts on its own copy; persistent workers keep counting
        rng = np.random.default_rng([self.seed % (1 << 63), self.rank, worker, self._iterations])
        while True:
            yield self.sample(rng)


class TransitionDataModule(pl.LightningDataModule):
    """Uniform replay sampling of transitions from shards, as an endless stream of :class:`TransitionBatch`.

    ``cache=True`` loads the requested fields of every shard into memory once, into a :class:`ReplayBuffer`
    (fastest; the arrays are shared copy-on-write with forked workers); otherwise rows are read from the files per
    batch. The SAC loop's replay is one made by :meth:`over_buffer`: its cache is the buffer the loop appends to
    as it steps (and the shards it writes are the durable copy), and the loop draws each batch with :meth:`sample`.
    """

    def __init__(
        self,
        data_dirs: str | list[str],
        batch_size: int = 128,
        cache: bool = False,
        num_workers: int = 0,
        seed: int = 0,
        keys: Sequence[str] = ("rgb", "state"),
    ) -> None:
        super().__init__()
        self.data_dirs = _as_dirs(data_dirs)
        self.batch_size = batch_size
        self.cache = cache
        self.num_workers = num_workers
        self.seed = seed
        self.keys = tuple(keys)
        self.dataset: TransitionDataset | None = None

    @classmethod
    def over_buffer(
        cls, buffer: ReplayBuffer, data_dir: str | Path, batch_size: int = 128, seed: int = 0, rank: int = 0
    ) -> TransitionDataModule:
        """A module whose cache is ``buffer``, filled by its owner (empty at first; ``data_dir`` holds the shards
        the owner writes). Batches come from :meth:`sample`, or from ``train_dataloader()`` without workers."""
        dm = cls(str(data_dir), batch_size, cache=True, num_workers=0, seed=seed, keys=buffer.keys)
        dm.dataset = TransitionDataset.from_buffer(buffer, batch_size, seed, rank)
        return dm

    @property
    def buffer(self) -> ReplayBuffer | None:
        """The in-memory rows (``cache=True``, after :meth:`setup`)."""
        return self.dataset.buffer if self.dataset is not None else None

    def sample(self, rng: np.random.Generator, batch_size: int | None = None) -> TransitionBatch:
        """One batch drawn with ``rng`` in this process, without a DataLoader (the SAC loop's way)."""
        if self.dataset is None:
            self.setup("fit")
        return self.dataset.sample(rng, batch_size)

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        readers = shard_readers(self.data_dirs, self.keys)
        rank = self.trainer.global_rank if self.trainer is not None else _rank()
        self.dataset = TransitionDataset(readers, self.batch_size, self.keys, self.cache, self.seed, rank)

    def train_dataloader(self) -> DataLoader:
        if self.dataset is None:
            self.setup("fit")
        return DataLoader(
            self.dataset,
            batch_size=None,  # the dataset yields whole batches
            collate_fn=passthrough_collate,  # (the default would walk every batch converting nothing)
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )


# --------------------------------------------------------------------------------------------------
# frames


class FrameDataset(Dataset):
    """Every distinct frame of the shards once (continuation duplicates skipped), as dicts of ``[C, H, W]``.

    ``dataset[i]`` gives one frame; ``dataset.__getitems__(indices)`` (used by the DataLoader) gives a whole
    batch ``{key: [B, C, H, W]}`` with one read per shard and key, so use ``collate_fn=passthrough_collate``.
    """

    def __init__(
        self,
        readers: Sequence[ShardReader],
        keys: Sequence[str] = ("rgb", "saliency"),
        cache: bool = False,
    ) -> None:
        super().__init__()
        self.readers = list(readers)
        self.keys = tuple(keys)
        frames = [r.frame_indices() for r in self.readers]
        self._rows = np.concatenate(frames) if frames else np.zeros(0, np.int64)
        self._shard = np.repeat(np.arange(len(frames), dtype=np.int32), [len(f) for f in frames])
        self.ids = np.arange(len(self._rows))
        """Frames of the whole dataset that this (sub)set holds."""
        self.shapes = {k: _chw_shape(self.readers[0].fields[k][0][1:]) for k in self.keys} if self.readers else {}
        self._cache: dict[str, np.ndarray] | None = None
        if cache:
            self._cache = {k: _load_rows(self.readers, k, frames) for k in self.keys}
            for r in self.readers:
                r.close()

    def subset(self, ids: np.ndarray) -> FrameDataset:
        """A view holding frames ``ids`` of the whole dataset; shares readers and cache."""
        view = object.__new__(FrameDataset)
        view.__dict__.update(self.__dict__)
        view.ids = np.asarray(ids, dtype=np.int64)
        return view

    def episodes(self) -> np.ndarray:
        """Episode id of each frame in this (sub)set."""
        out = np.empty(len(self.ids), np.int64)
        shards, rows = self._shard[self.ids], self._rows[self.ids]
        for i, reader in enumerate(self.readers):
            mask = shards == i
            if mask.any():
                out[mask] = reader.read("episode", rows[mask])
        return out

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        ids = self.ids[np.asarray(indices, dtype=np.int64)]
        if self._cache is not None:
            return {k: torch.from_numpy(np.take(self._cache[k], ids, axis=0)) for k in self.keys}
        shards = self._shard[ids]
        order = np.argsort(shards, kind="stable")  # group by shard; results go back to the asked order
        rows = self._rows[ids][order]
        out = {}
        for k in self.keys:
            shape, dtype = self.readers[0].fields[k]
            data = np.empty((len(ids), *shape[1:]), dtype)
            for shard, lo, hi in _shard_runs(shards[order]):
                data[order[lo:hi]] = self.readers[shard].read(k, rows[lo:hi])
            out[k] = torch.from_numpy(_to_chw(data))
        return out


def split_by_episode(episodes: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of frames, with whole episodes going to val until ~``val_fraction`` of frames.

    Splitting by episode rather than by frame keeps near-identical neighbouring frames out of both sides,
    so the validation loss measures generalization. The split depends only on ``seed`` and the data.
    """
    uniq, inverse, counts = np.unique(episodes, return_inverse=True, return_counts=True)
    if len(uniq) < 2:
        raise ValueError(f"val_fraction={val_fraction} needs at least 2 episodes to split; the data has {len(uniq)}")
    perm = np.random.default_rng(seed).permutation(len(uniq))
    cum = np.cumsum(counts[perm])
    k = int(np.clip(np.argmin(np.abs(cum - val_fraction * len(episodes))) + 1, 1, len(uniq) - 1))
    is_val = np.zeros(len(uniq), bool)
    is_val[perm[:k]] = True
    val = is_val[inverse]
    return np.flatnonzero(~val), np.flatnonzero(val)


class EpochShuffle(Sampler[int]):
    """A fresh random order of ``range(n)`` each epoch, drawn from ``(seed, epoch)`` alone.

    Lightning calls :meth:`set_epoch` before each training epoch, so a run resumed at epoch e shuffles epochs e, e+1,
    ... as the run never stopped would have. (A DataLoader ``generator`` instead restarts at its seed in the
    resumed process, so the resumed epochs would repeat the first epochs' orders.)
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        seed = np.random.SeedSequence([self.seed % (1 << 63), self.epoch]).generate_state(1, np.uint64)[0]
        g = torch.Generator().manual_seed(int(seed) % (1 << 63))
        return iter(torch.randperm(self.n, generator=g).tolist())


class FrameDataModule(pl.LightningDataModule):
    """Frames (rgb and, after labelling, saliency) for pretraining; optional episode-level validation split."""

    def __init__(
        self,
        data_dirs: str | list[str],
        batch_size: int = 512,
        cache: bool = False,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.0,
        keys: Sequence[str] = ("rgb", "saliency"),
    ) -> None:
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.data_dirs = _as_dirs(data_dirs)
        self.batch_size = batch_size
        self.cache = cache
        self.num_workers = num_workers
        self.seed = seed
        self.val_fraction = val_fraction
        self.keys = tuple(keys)
        self.dataset: FrameDataset | None = None
        self.train_set: FrameDataset | None = None
        self.val_set: FrameDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        self.dataset = FrameDataset(shard_readers(self.data_dirs, self.keys), self.keys, self.cache)
        if len(self.dataset) == 0:
            raise ValueError(f"no frames in {[str(d) for d in self.data_dirs]}")
        if self.val_fraction > 0:
            train, val = split_by_episode(self.dataset.episodes(), self.val_fraction, self.seed)
            self.train_set, self.val_set = self.dataset.subset(train), self.dataset.subset(val)
        else:
            self.train_set, self.val_set = self.dataset, None
        for r in self.dataset.readers:
            r.close()  # episodes() read from the files: no HDF5 handle may cross the fork into workers

    def _loader(self, dataset: FrameDataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffle(len(dataset), self.seed) if shuffle else None,
            collate_fn=passthrough_collate,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.dataset is None:
            self.setup("validate")
        return self._loader(self.val_set, shuffle=False) if self.val_set is not None else []
