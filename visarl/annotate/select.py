"""Which frames of a task's shards get annotated: ``random`` (the paper) or ``diverse`` (greedy k-center).

The paper selects its N = 30 frames "at random" (ViSaRL Sec. III-B). Random frames from a replay follow its
state distribution, so with a random or early policy most of them show the gripper near its start. ``diverse``
runs greedy k-center (farthest-point traversal, Gonzalez 1985: a 2-approximation of the smallest covering
radius) on downsampled frames, so the chosen frames spread over the visual states the data holds.

Candidates are every observation of the shards once: rows marked ``continued`` repeat the last frame of the
previous shard's segment and are skipped. Both methods are deterministic given the seed and the data (shards
sorted by file name, rows ascending), which is what lets the annotation store recognise a restarted session.
Indices come back in selection order, so a prefix of a ``diverse`` choice is the k-center choice for that k.

Coverage (how well N frames stand for all of them): the distance from every frame to its nearest chosen frame,
mean and max, in a feature space: downsampled pixels (:meth:`FramePool.features`) or, e.g., keypoint pixels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from visarl.annotate.store import FrameRef
from visarl.data.shards import ShardReader, open_shards

SELECTION_METHODS = ("random", "diverse")
"""Accepted values of ``method``."""

_CHUNK = 8192  # rows per chunk when reading frames or computing distances: bounds temporary memory


@dataclass
class FrameContext:
    """Where each of ``N`` chosen frames sits in its episode, with its neighbours there (the page's read-only
    context: where the arm came from and where it is going). ``K = 2 * radius + 1`` offsets around each frame."""

    episode: np.ndarray
    """int64 ``[N]``, the frame's episode id."""
    step: np.ndarray
    """int64 ``[N]``, the frame's step within that episode."""
    offsets: np.ndarray
    """int64 ``[K]``, step offsets ``-radius..radius`` (0 is the frame itself)."""
    frames: np.ndarray
    """uint8 ``[N, K, H, W, 3]``, the neighbours (zeros where the episode has no such step)."""
    available: np.ndarray
    """bool ``[N, K]``, the episode has that step."""


class Coverage(NamedTuple):
    """Distance from each frame to its nearest chosen frame, in the units of the features given."""

    mean: float
    max: float


Sources = str | os.PathLike | Sequence[ShardReader | str | os.PathLike]


@dataclass
class FramePool:
    """Every distinct frame of a set of shards: frame ``i`` is row ``row[i]`` of ``readers[shard[i]]``."""

    readers: list[ShardReader]
    shard: np.ndarray
    """int64 ``[N]``, index into ``readers``."""
    row: np.ndarray
    """int64 ``[N]``, row in that shard."""

    def __len__(self) -> int:
        return len(self.row)

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the frames."""
        shape = self.readers[0].fields["rgb"][0]
        return int(shape[1]), int(shape[2])

    def refs(self, indices: Sequence[int] | np.ndarray) -> list[FrameRef]:
        """``(shard file name, row)`` of pool frames ``indices``, in that order."""
        return [FrameRef(self.readers[self.shard[i]].path.name, int(self.row[i])) for i in indices]

    def read(self, field: str, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Dataset ``field`` of pool frames ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) == 0:
            raise ValueError("no frames to read")
        first = self.readers[self.shard[idx[0]]].read(field, [self.row[idx[0]]])
        out = np.empty((len(idx), *first.shape[1:]), first.dtype)
        for s in np.unique(self.shard[idx]):
            at = np.flatnonzero(self.shard[idx] == s)
            rows = self.row[idx[at]]
            order = np.argsort(rows, kind="stable")  # sorted reads are the fast path of every storage layout
            out[at[order]] = self.readers[s].read(field, rows[order])
        return out

    def context(self, indices: Sequence[int] | np.ndarray, radius: int) -> FrameContext:
        """Episode, step and the neighbours within ``radius`` steps of pool frames ``indices`` (same episode)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        everything = np.arange(len(self))
        episode, step = self.read("episode", everything), self.read("step", everything).astype(np.int64)
        offsets = np.arange(-radius, radius + 1, dtype=np.int64)
        nb = np.full((len(idx), len(offsets)), -1, np.int64)  # [N, K] pool index of each neighbour, -1: none
        for n, i in enumerate(idx):
            same = np.flatnonzero(episode == episode[i])  # the episode's frames (each step once in the pool)
            for k, d in enumerate(offsets):
                hit = same[step[same] == step[i] + d]
                if len(hit):
                    nb[n, k] = hit[0]
        h, w = self.frame_shape
        frames = np.zeros((*nb.shape, h, w, 3), np.uint8)
        have = nb >= 0
        if have.any():
            frames[have] = self.read("rgb", nb[have])
        return FrameContext(episode[idx].astype(np.int64), step[idx], offsets, frames, have)

    def features(self, size: int = 16, grey: bool = False) -> np.ndarray:
        """Area-downsampled frames, uint8 ``[N, size * size * C]`` (C = 1 grey, 3 colour), read in chunks.

        uint8 keeps 200k frames of 16x16 colour at 150 MB; rounding moves a feature by at most 0.5/255.
        """
        h, w = self.frame_shape
        size = min(size, h, w)
        out = np.empty((len(self), size * size * (1 if grey else 3)), np.uint8)
        for s, reader in enumerate(self.readers):
            at = np.flatnonzero(self.shard == s)  # ascending rows of this shard
            for lo in range(0, len(at), _CHUNK):
                part = at[lo : lo + _CHUNK]
                out[part] = downsample(reader.read("rgb", self.row[part]), size, grey)
        return out


def downsample(rgb: np.ndarray, size: int, grey: bool = False) -> np.ndarray:
    """Frames uint8 ``[B, H, W, 3]`` -> area-averaged ``[B, size * size * C]`` uint8 (any H, W >= size)."""
    b, h, w, _ = rgb.shape
    # Bin edges of an area resize: output cell i averages input rows [floor(i*h/size), floor((i+1)*h/size)).
    rows = (np.arange(size) * h) // size
    cols = (np.arange(size) * w) // size
    x = rgb.astype(np.float32)
    x = np.add.reduceat(x, rows, axis=1) / np.diff(np.append(rows, h))[None, :, None, None]
    x = np.add.reduceat(x, cols, axis=2) / np.diff(np.append(cols, w))[None, None, :, None]
    if grey:
        x = x @ np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 luma
    return np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(b, -1)


def frame_pool(sources: Sources) -> FramePool:
    """All distinct frames of a shard directory, or of a list of shard paths / readers (in the given order).

    Raises ``ValueError`` naming the directory when it holds no shards, and naming the files when their
    frame sizes differ (annotations need one size).
    """
    if isinstance(sources, (str, os.PathLike)):
        readers = open_shards(sources)
        if not readers:
            where = Path(sources)
            why = "does not exist" if not where.exists() else "holds no shards (*.h5)"
            raise ValueError(f"data directory {where} {why}: collect frames first (stage: collect)")
    else:
        readers = [r if isinstance(r, ShardReader) else ShardReader(r) for r in sources]
        if not readers:
            raise ValueError("no shards given")
    sizes = {r.path.name: tuple(r.fields["rgb"][0][1:3]) for r in readers}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"shards hold frames of different sizes: {sizes}")
    shard, row = [], []
    for s, r in enumerate(readers):
        rows = r.frame_indices()  # skips `continued` duplicates
        shard.append(np.full(len(rows), s, np.int64))
        row.append(rows.astype(np.int64))
    return FramePool(readers, np.concatenate(shard), np.concatenate(row))


def _check_n(n: int, total: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"number of frames must be a positive integer, got {n!r}")
    if n > total:
        raise ValueError(f"asked for {n} frames but the shards hold only {total} distinct frames")


def random_indices(total: int, n: int, seed: int) -> np.ndarray:
    """``n`` distinct indices of ``range(total)``, uniform without replacement, in draw order."""
    _check_n(n, total)
    return np.random.default_rng(seed).choice(total, size=n, replace=False).astype(np.int64)


def _sq_dist(features: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ``[N]`` from ``features [N, D]`` to one ``center [D]``, chunked in float32."""
    out = np.empty(len(features), np.float32)
    c = center.astype(np.float32)
    for lo in range(0, len(features), _CHUNK):
        d = features[lo : lo + _CHUNK].astype(np.float32) - c
        out[lo : lo + _CHUNK] = np.einsum("nd,nd->n", d, d)
    return out


def k_center(features: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Greedy k-center (farthest-point traversal) over ``features [N, D]``: ``n`` indices in selection order.

    The first index is drawn uniformly with ``seed``; each next one is the frame farthest from all chosen so
    far (ties: the lowest index). Frames identical to a chosen one are still distinct candidates, so ``n`` up
    to ``N`` never repeats an index.
    """
    features = np.asarray(features)
    _check_n(n, len(features))
    chosen = np.empty(n, np.int64)
    chosen[0] = np.random.default_rng(seed).integers(len(features))
    nearest = _sq_dist(features, features[chosen[0]])  # [N] squared distance to the nearest chosen frame
    nearest[chosen[0]] = -1.0  # never pick a chosen frame again
    for k in range(1, n):
        chosen[k] = int(np.argmax(nearest))
        np.minimum(nearest, _sq_dist(features, features[chosen[k]]), out=nearest)
        nearest[chosen[k]] = -1.0  # chosen frames stay at -1 under the minimum
    return chosen


def coverage(features: np.ndarray, chosen: Sequence[int] | np.ndarray, scale: float = 1.0) -> Coverage:
    """Mean and max Euclidean distance from every row of ``features [N, D]`` to its nearest chosen row,
    divided by ``scale`` (for uint8 pixel features, ``255 * sqrt(D)`` gives the RMS intensity difference)."""
    features = np.asarray(features)
    chosen = np.asarray(chosen, dtype=np.int64).reshape(-1)
    if len(chosen) == 0:
        raise ValueError("coverage needs at least one chosen frame")
    nearest = np.full(len(features), np.inf, np.float32)
    for c in chosen:
        np.minimum(nearest, _sq_dist(features, features[c]), out=nearest)
    d = np.sqrt(np.maximum(nearest, 0.0)) / scale
    return Coverage(float(d.mean()), float(d.max()))


def pixel_scale(features: np.ndarray) -> float:
    """The ``scale`` that makes :func:`coverage` of uint8 pixel features an RMS difference in [0, 1] intensity."""
    return 255.0 * float(np.sqrt(features.shape[1]))


def select_indices(
    pool: FramePool,
    n: int,
    method: str = "random",
    seed: int = 0,
    *,
    feature_size: int = 16,
    grey: bool = False,
    features: np.ndarray | None = None,
) -> np.ndarray:
    """Indices into ``pool`` of ``n`` frames chosen by ``method`` (see the module docstring)."""
    if method not in SELECTION_METHODS:
        raise ValueError(f"selection method must be one of {SELECTION_METHODS}, got {method!r}")
    if method == "random":
        return random_indices(len(pool), n, seed)
    _check_n(n, len(pool))
    if features is None:
        features = pool.features(feature_size, grey)
    return k_center(features, n, seed)


def select_frames(
    sources: Sources | FramePool,
    n: int,
    method: str = "random",
    seed: int = 0,
    *,
    feature_size: int = 16,
    grey: bool = False,
) -> list[FrameRef]:
    """``n`` frames of a shard directory (or shard paths / readers) as ``(shard file name, row)``, in selection
    order; ``method`` is ``random`` or ``diverse``, deterministic given ``seed`` and the data."""
    pool = sources if isinstance(sources, FramePool) else frame_pool(sources)
    return pool.refs(select_indices(pool, n, method, seed, feature_size=feature_size, grey=grey))
