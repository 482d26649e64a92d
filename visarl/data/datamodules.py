"""LightningDataModules over HDF5 replay shards: transitions for SAC, frames for pretraining.

Both read shards written by :class:`visarl.data.shards.ShardWriter` in one or several directories and
gather whole batches at once (one read per shard and field per batch, numpy gathers when cached), instead
of one Python call per sample. Without ``cache`` only row bookkeeping (a few bytes a row) lives in memory
and rows are read from the files (memory-mapped when stored contiguous); with ``cache`` the requested
fields of every shard are loaded once into numpy, images already in ``[N, C, H, W]`` layout.

Images come out as uint8 ``[B, C, H, W]`` (models convert to float on the device, so the host-to-device copy
is 4x smaller); state and actions as float32.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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


def _to_chw(rows: np.ndarray) -> np.ndarray:
    """[N, H, W, C] -> contiguous [N, C, H, W]; [N, H, W] -> [N, 1, H, W]; other ranks unchanged."""
    if rows.ndim == 4:
        return np.ascontiguousarray(rows.transpose(0, 3, 1, 2))
    if rows.ndim == 3:
        return rows[:, None]
    return rows


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


class TransitionDataset(IterableDataset):
    """Endless batches of transitions drawn uniformly with replacement over every transition of every shard.

    Each DataLoader worker (and DDP rank) draws from its own generator seeded with ``(seed, rank, worker,
    iteration)``, so workers never repeat each other and a restarted iteration does not replay the last one.
    Within a batch, transitions are ordered by shard and row (the draw itself is uniform).
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
        self._cache: dict[str, np.ndarray] | None = None
        if cache:
            # rows of all shards back to back, so a transition's next observation is its global row + 1
            every = [np.arange(len(r)) for r in self.readers]
            self._cache = {k: _load_rows(self.readers, k, every) for k in self.keys + TRANSITION_FIELDS}
            offsets = np.cumsum([0] + [len(r) for r in self.readers])[:-1]
            self._rows = offsets[self._shard] + self._rows
            for r in self.readers:
                r.close()  # no HDF5 handle may cross the fork into workers

    @property
    def num_transitions(self) -> int:
        """Distinct transitions sampled from (no ``__len__``: the stream is endless, not an epoch)."""
        return len(self._rows)

    def sample(self, rng: np.random.Generator) -> TransitionBatch:
        """One batch of ``batch_size`` transitions drawn with ``rng``."""
        draw = rng.integers(0, len(self._rows), self.batch_size)
        if self._cache is not None:
            rows = self._rows[draw]  # global rows; [B]
            c = self._cache
            arrays = {f: c[f][rows] for f in TRANSITION_FIELDS}
            # obs and next obs in one gather per key, [2B, ...]; np.take is a bit faster than [] indexing
            both = np.concatenate((rows, rows + 1))
            pairs = {k: torch.from_numpy(np.take(c[k], both, axis=0)) for k in self.keys}
            obs = {k: v[: len(rows)] for k, v in pairs.items()}  # contiguous halves, no copy
            nxt = {k: v[len(rows) :] for k, v in pairs.items()}
        else:
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

    ``cache=True`` loads the requested fields of every shard into memory once (fastest; the arrays are
    shared copy-on-write with forked workers); otherwise rows are read from the files per batch.
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
