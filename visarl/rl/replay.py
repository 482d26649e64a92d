"""The SAC replay: a :class:`~visarl.data.datamodules.TransitionDataModule` the loop appends to and samples from,
mirrored row for row to HDF5 shards.

Every observation the loop sees becomes one row of the module's cache, a :class:`ReplayBuffer` (numpy, images
``[C, H, W]``), and one row of a :class:`~visarl.data.shards.ShardWriter`; a transition links a row to the row of
its next observation. Batches are drawn from memory, through the module (a numpy gather of 2B rows, as fast as
plain numpy indexing: benchmarks/datamodule.py); the shards are the durable copy, the pretraining dataset, and
what a resumed run reloads into the same cache.

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

from visarl.data.datamodules import ReplayBuffer, TransitionBatch, TransitionDataModule, chw
from visarl.data.shards import ShardReader, ShardWriter, parse_shard_name


class Replay:
    """The loop's replay: n env streams feeding a :class:`TransitionDataModule`'s cache and a :class:`ShardWriter`.

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
        batch_size: int = 128,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.num_streams = num_streams
        self.prefix = prefix
        self.writer_id = writer_id
        self.rows_per_shard = rows_per_shard
        self.attrs = dict(attrs)
        # An observation waits at most two vector steps for its next one, each adding <= 2 rows a stream.
        capacity = max(int(capacity), 4 * num_streams + 2)
        buffer = ReplayBuffer(capacity, {k: obs_spec[k] for k in buffer_keys}, action_dim)
        self.datamodule = TransitionDataModule.over_buffer(buffer, self.data_dir, batch_size, rank=writer_id)
        self.buffer = buffer  # the module's cache, appended to below
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
        return self.datamodule.sample(rng, batch_size)

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
