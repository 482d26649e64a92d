"""The SAC replay: an in-memory buffer that samples transitions, mirrored row for row to HDF5 shards.

Every observation the loop sees becomes one row of a :class:`ReplayBuffer` (numpy, images ``[C, H, W]``) and one
row of a :class:`~visarl.data.shards.ShardWriter`; a transition links a row to the row of its next observation.
Batches are drawn from memory: a numpy gather of 2B rows (~10 us a frame for 64x64 rgb) instead of reading the
shards (measured in benchmarks/sac_updates.py's notes and the issue report); the shards are the durable copy,
the pretraining dataset, and what a resumed run reloads.

Episodes from several env streams interleave in time, so a transition's next observation is found through
``next_row`` rather than ``row + 1``; a link is only ever made inside one episode of one stream, so a sampled
transition never crosses an episode (tested).

Resume: :meth:`Replay.checkpoint` flushes the writer (every row seen so far is then in complete shards) and
returns the shard names; :meth:`Replay.restore` moves any later shard of this writer aside, so a run resumed from
that checkpoint holds exactly the rows it held when the checkpoint was taken, neither duplicated nor missing.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visarl.data.datamodules import TransitionBatch
from visarl.data.shards import ShardReader, ShardWriter, parse_shard_name


def chw(rows: np.ndarray) -> np.ndarray:
    """Rows as the models see them: [N, H, W, C] -> [N, C, H, W], [N, H, W] -> [N, 1, H, W], vectors unchanged."""
    if rows.ndim == 4:
        return rows.transpose(0, 3, 1, 2)
    if rows.ndim == 3:
        return rows[:, None]
    return rows


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
        rows = np.empty(0, np.int64)
        # Rejection: only the newest row of each stream and the last rows of episodes lack a next observation.
        while len(rows) < batch_size:
            draw = rng.integers(0, self.size, 2 * batch_size)
            rows = np.concatenate((rows, draw[self.has_next[draw]]))
        rows = rows[:batch_size]
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
            fields = {f: reader.read(f, t) for f in ("action", "reward", "terminated", "truncated")}
            self.add_transitions(rows[t], rows[t + 1], **fields)
        return len(t)


class Replay:
    """The loop's replay: n env streams feeding a :class:`ReplayBuffer` and a :class:`ShardWriter` together.

    ``buffer_keys`` are kept in memory (what the encoder reads); every observation key goes to the shards
    (frames and states always, saliency when the loop computes it). Observations arrive as the vector env
    gives them, in shard layout (images [n, H, W, C], saliency [n, H, W], state [n, S]).
    """

    def __init__(
        self,
        data_dir: str | Path,
        num_streams: int,
        capacity: int,
        buffer_keys: Sequence[str],
        obs_spec: Mapping[str, tuple[tuple[int, ...], np.dtype]],
        action_dim: int,
        rows_per_shard: int,
        attrs: Mapping[str, Any],
        prefix: str,
        writer_id: int = 0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.num_streams = num_streams
        self.prefix = prefix
        self.writer_id = writer_id
        self.rows_per_shard = rows_per_shard
        self.attrs = dict(attrs)
        # An observation waits at most two vector steps for its next one, each adding <= 2 rows a stream.
        capacity = max(int(capacity), 4 * num_streams + 2)
        self.buffer = ReplayBuffer(capacity, {k: obs_spec[k] for k in buffer_keys}, action_dim)
        self.writer: ShardWriter | None = None
        self.shards: list[str] = []  # complete shards of this run and writer, in order
        self._current = np.zeros(num_streams, np.int64)  # buffer row of each stream's latest observation

    # -- writing -----------------------------------------------------------------------------------

    def _writer(self) -> ShardWriter:
        if self.writer is None:
            self.writer = ShardWriter(
                self.data_dir, self.rows_per_shard, self.attrs, prefix=self.prefix, writer_id=self.writer_id
            )
        return self.writer

    def _buffer_rows(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.buffer.add_obs({k: chw(obs[k]) for k in self.buffer.keys})

    def start(self, obs: Mapping[str, np.ndarray], streams: np.ndarray | None = None) -> None:
        """First observations of new episodes on ``streams`` (default: all), ``{key: [n, ...]}``."""
        streams = np.arange(self.num_streams) if streams is None else np.asarray(streams)
        if len(streams) == 0:
            return
        self._current[streams] = self._buffer_rows(obs)
        writer = self._writer()
        self._collect_published()
        for j, s in enumerate(streams.tolist()):
            writer.add_first(s, {k: v[j] for k, v in obs.items()})

    def step(
        self,
        action: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        success: np.ndarray,
        next_obs: Mapping[str, np.ndarray],
    ) -> None:
        """One transition on every stream; ``next_obs`` holds the final observation where an episode ended."""
        next_rows = self._buffer_rows(next_obs)
        self.buffer.add_transitions(self._current, next_rows, action, reward, terminated, truncated)
        self._current = next_rows
        writer = self._writer()
        for i in range(self.num_streams):
            writer.add_step(
                i,
                action[i],
                float(reward[i]),
                bool(terminated[i]),
                bool(truncated[i]),
                float(success[i]),
                {k: v[i] for k, v in next_obs.items()},
            )
        self._collect_published()

    def _collect_published(self) -> None:
        """Record the shards the writer has published (it cuts them itself when rows_per_shard is reached)."""
        if self.writer is not None and len(self.writer.shard_paths) > 0:
            new = [p.name for p in self.writer.shard_paths]
            self.shards.extend(new)
            self.writer.shard_paths.clear()

    def sample(self, batch_size: int, rng: np.random.Generator) -> TransitionBatch:
        return self.buffer.sample(batch_size, rng)

    # -- checkpoints ---------------------------------------------------------------------------------

    def checkpoint(self) -> list[str]:
        """Write every buffered row to complete shards; returns the names of all shards of this run so far."""
        if self.writer is not None:
            self.writer.flush()
            self._collect_published()
        return list(self.shards)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self._collect_published()
            self.writer = None

    def own_shards(self) -> list[Path]:
        """Shard files of this run's prefix and writer in ``data_dir``, ordered by index."""
        found = []
        for path in self.data_dir.glob(f"*-w{self.writer_id}-*.h5"):
            name = parse_shard_name(path.name)
            if name and name.prefix == self.prefix and name.writer == self.writer_id:
                found.append((name.index, path))
        return [p for _, p in sorted(found)]

    def restore(self, shards: Sequence[str]) -> int:
        """Reload the rows of ``shards`` (names from :meth:`checkpoint`) and set aside this writer's later shards.

        Shards written after the checkpoint (by the killed run) are moved to ``data_dir/discarded/<time>/``
        rather than deleted, and a killed writer's temporary files are removed, so the replay and the
        directory hold exactly the checkpoint's rows. Returns the transitions reloaded.
        """
        if self.writer is not None:
            raise RuntimeError("restore() must come before the first observation")
        keep = set(shards)
        present = {p.name: p for p in self.own_shards()}
        missing = [s for s in shards if s not in present]
        if missing:
            raise FileNotFoundError(f"{self.data_dir}: shards {missing} named by the checkpoint are missing")
        later = [p for name, p in present.items() if name not in keep]
        if later:
            aside = self.data_dir / "discarded" / time.strftime("%Y%m%d-%H%M%S")
            aside.mkdir(parents=True, exist_ok=True)
            for p in later:
                shutil.move(str(p), aside / p.name)
        for tmp in self.data_dir.glob(f".{self.prefix}-w{self.writer_id}-*.tmp"):
            tmp.unlink(missing_ok=True)
        loaded = 0
        for name in shards:
            loaded += self.buffer.load_shard(ShardReader(self.data_dir / name))
        self.shards = list(shards)
        return loaded


def safe_prefix(name: str) -> str:
    """A shard-name prefix from a run name: letters, digits, '-', '_' and '.' kept, anything else '_'."""
    out = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")
    return out or "run"
