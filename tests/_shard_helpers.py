"""Write small random shard datasets and keep the ground truth of what was written, for the data tests.

Each observation's ``state`` starts with ``[episode, step]`` so that a sampled batch reveals which
transition it holds (float32 represents these small integers exactly).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from visarl.data.shards import ShardWriter

IMAGE = 8  # frame side: tiny, the tests check bookkeeping, not images
STATE = 5
ACTION = 3


@dataclass
class Truth:
    """What a test wrote: every frame by (episode, step), every transition by (episode, step of its start)."""

    frames: dict[tuple[int, int], dict[str, np.ndarray]] = field(default_factory=dict)
    transitions: dict[tuple[int, int], dict[str, object]] = field(default_factory=dict)
    shards: list[Path] = field(default_factory=list)

    @property
    def episodes(self) -> set[int]:
        return {e for e, _ in self.frames}


def make_obs(rng: np.random.Generator, episode: int, step: int) -> dict[str, np.ndarray]:
    state = rng.standard_normal(STATE).astype(np.float32)
    state[:2] = episode, step
    return {"rgb": rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8), "state": state}


def write_dataset(
    directory: str | Path,
    episodes: list[list[tuple[int, str]]],
    rows_per_shard: int,
    seed: int = 0,
    flush_every: int = 0,
    writer_id: int = 0,
    chunk_rows: int = 0,
) -> Truth:
    """Write ``episodes[stream] = [(length, end), ...]`` from interleaved streams; ``end`` is 'terminated',
    'truncated' or 'running' (never ends; only valid last on its stream). Streams advance in random order.
    ``flush_every > 0`` also calls ``flush()`` every that many steps; ``chunk_rows > 0`` stores images chunked
    (read through h5py) instead of contiguous (memory-mapped).
    """
    rng = np.random.default_rng(seed)
    truth = Truth()
    writer = ShardWriter(
        directory,
        rows_per_shard=rows_per_shard,
        attrs={"task": "test-v3", "config": "a: 1\n", "image_size": IMAGE},
        writer_id=writer_id,
        chunk_rows=chunk_rows,
    )
    queues = [list(eps) for eps in episodes]
    current: dict[int, list] = {}  # stream -> [episode, step, length, end]
    ticks = 0
    while True:
        live = [s for s in range(len(queues)) if s in current or queues[s]]
        if not live:
            break
        s = int(rng.choice(live))
        if s not in current:
            length, end = queues[s].pop(0)
            assert length >= 1 and (end != "running" or not queues[s]), "running episodes go last on a stream"
            episode = writer.next_episode
            obs = make_obs(rng, episode, 0)
            assert writer.add_first(s, obs) == episode
            truth.frames[(episode, 0)] = obs
            current[s] = [episode, 0, length, end]
            continue
        episode, step, length, end = current[s]
        last = step + 1 == length
        terminated, truncated = last and end == "terminated", last and end == "truncated"
        action = rng.standard_normal(ACTION).astype(np.float32)
        reward, success = float(rng.standard_normal()), float(rng.integers(0, 2))
        obs = make_obs(rng, episode, step + 1)
        writer.add_step(s, action, reward, terminated, truncated, success, obs)
        truth.frames[(episode, step + 1)] = obs
        truth.transitions[(episode, step)] = dict(
            action=action, reward=reward, terminated=terminated, truncated=truncated, success=success
        )
        current[s][1] = step + 1
        if last:  # a 'running' episode stays buffered in the writer and is written as a partial segment
            del current[s]
        ticks += 1
        if flush_every and ticks % flush_every == 0:
            writer.flush()
    writer.close()
    truth.shards = list(writer.shard_paths)
    return truth


def simple_dataset(directory: str | Path, seed: int = 0, rows_per_shard: int = 23) -> Truth:
    """Three streams, mixed episode ends, several shard cuts (episodes span shards)."""
    episodes = [
        [(9, "terminated"), (5, "truncated"), (4, "running")],
        [(13, "truncated"), (3, "terminated")],
        [(2, "terminated"), (7, "truncated"), (6, "terminated"), (11, "running")],
    ]
    return write_dataset(directory, episodes, rows_per_shard=rows_per_shard, seed=seed)


@st.composite
def layouts(draw: st.DrawFn) -> tuple[list[list[tuple[int, str]]], int, int]:
    """Random (episodes per stream, rows_per_shard, seed): 1-3 streams of 1-3 episodes, the last maybe running."""
    streams = []
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 3))
        eps = [(draw(st.integers(1, 8)), draw(st.sampled_from(["terminated", "truncated"]))) for _ in range(n)]
        if draw(st.booleans()):
            eps[-1] = (eps[-1][0], "running")
        streams.append(eps)
    return streams, draw(st.integers(3, 15)), draw(st.integers(0, 2**16))
