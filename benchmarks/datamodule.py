"""Replay sampling speed: TransitionDataModule over HDF5 shards against plain numpy indexing in memory.

Generates 50k frames (64x64 rgb + 39-d state, 4 interleaved streams of 500-step episodes) into shards in
a temporary directory, then measures batches of 128 transitions per second:

- numpy: the same arrays held in memory, obs and next_obs gathered by fancy indexing (the peer to match),
- datamodule cache=True: shards loaded into memory once, batches from the DataLoader,
- datamodule cache=False: rows read from the files per batch (contiguous datasets, memory-mapped),
- datamodule cache=False on shards whose rgb is chunked one row per chunk (read through h5py).

The files sit in the page cache after generation, so the uncached rates are for a warm cache.
Last line: ``datamodule_vs_numpy: X`` with X = cached rate / numpy rate. Run: ``python benchmarks/datamodule.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from visarl.data.datamodules import TransitionDataModule  # noqa: E402
from visarl.data.shards import ShardReader, ShardWriter, list_shards  # noqa: E402

BATCH = 128


def generate(directory: Path, frames: int, chunk_rows: int, rows_per_shard: int, seed: int = 0) -> None:
    """Random frames drawn from a pool (generation speed is not what is measured)."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 256, (256, 64, 64, 3), dtype=np.uint8)
    states = rng.standard_normal((1024, 39)).astype(np.float32)
    streams, episode_len, n = 4, 500, 0
    t = dict.fromkeys(range(streams), 0)

    def obs() -> dict[str, np.ndarray]:
        nonlocal n
        n += 1
        return {"rgb": pool[n % 256], "state": states[n % 1024]}

    with ShardWriter(directory, rows_per_shard, attrs={"task": "benchmark"}, chunk_rows=chunk_rows) as writer:
        for s in range(streams):
            writer.add_first(s, obs())
        while n < frames:
            for s in range(streams):
                t[s] += 1
                done = t[s] == episode_len
                writer.add_step(s, rng.standard_normal(4), 1.0, False, done, 0.0, obs())
                if done:
                    writer.add_first(s, obs())
                    t[s] = 0


def rates(steps: dict[str, Callable[[], object]], seconds: float, rounds: int = 6) -> dict[str, float]:
    """Batches per second of each step: 1 / median time of one batch.

    Each round runs every step for a block of consecutive batches (as training would), and rounds alternate
    so that slow phases of a shared machine hit every step alike; the median ignores the batches during
    which the process was preempted.
    """
    times: dict[str, list[float]] = {name: [] for name in steps}
    block = seconds / (rounds * len(steps))
    for _ in range(rounds):
        for name, step in steps.items():
            for _ in range(3):  # warm-up after the previous step's block
                step()
            start = time.perf_counter()
            while (t := time.perf_counter()) - start < block:
                step()
                times[name].append(time.perf_counter() - t)
    return {name: 1.0 / float(np.median(t)) for name, t in times.items()}


def numpy_sampler(directory: Path, seed: int) -> Callable[[], object]:
    readers = [ShardReader(p) for p in list_shards(directory)]
    data = {k: np.concatenate([r.read(k) for r in readers]) for k in ("rgb", "state", "action", "reward")}
    data["terminated"] = np.concatenate([r.read("terminated") for r in readers])
    data["truncated"] = np.concatenate([r.read("truncated") for r in readers])
    offsets = np.cumsum([0] + [len(r) for r in readers])[:-1]
    starts = np.concatenate([o + r.transition_indices() for o, r in zip(offsets, readers, strict=True)])
    rng = np.random.default_rng(seed)

    def step() -> object:
        idx = starts[rng.integers(0, len(starts), BATCH)]
        return (
            data["rgb"][idx],
            data["state"][idx],
            data["action"][idx],
            data["reward"][idx],
            data["rgb"][idx + 1],
            data["state"][idx + 1],
            data["terminated"][idx],
            data["truncated"][idx],
        )

    return step


def loader_sampler(directory: Path, cache: bool, seed: int) -> tuple[Callable[[], object], float, TransitionDataModule]:
    start = time.perf_counter()
    dm = TransitionDataModule(str(directory), batch_size=BATCH, cache=cache, seed=seed)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    return (lambda: next(it)), time.perf_counter() - start, dm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50_000)
    parser.add_argument("--rows-per-shard", type=int, default=12_500)
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring time, all samplers together")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="visarl-bench-") as tmp:
        contiguous, chunked = Path(tmp) / "contiguous", Path(tmp) / "chunked"
        t0 = time.perf_counter()
        generate(contiguous, args.frames, chunk_rows=0, rows_per_shard=args.rows_per_shard)
        generate(chunked, args.frames, chunk_rows=1, rows_per_shard=args.rows_per_shard)
        n_shards = len(list_shards(contiguous))
        print(f"generated 2 x {args.frames} frames in {n_shards} shards each: {time.perf_counter() - t0:.1f} s")

        numpy_step = numpy_sampler(contiguous, seed=0)
        cached_step, cached_setup, cached_dm = loader_sampler(contiguous, cache=True, seed=0)
        lazy_step, lazy_setup, _ = loader_sampler(contiguous, cache=False, seed=0)
        chunked_step, chunked_setup, _ = loader_sampler(chunked, cache=False, seed=0)
        rng = np.random.default_rng(1)
        samplers = {
            "numpy in memory (peer)": (numpy_step, 0.0),
            "datamodule cache=True": (cached_step, cached_setup),
            "  its dataset.sample(), no DataLoader": (lambda: cached_dm.dataset.sample(rng), cached_setup),
            "datamodule cache=False": (lazy_step, lazy_setup),
            "datamodule cache=False, chunked rgb": (chunked_step, chunked_setup),
        }
        measured = rates({name: step for name, (step, _) in samplers.items()}, args.seconds)

    peer = measured["numpy in memory (peer)"]
    print(f"\n{'sampler':38s} {'setup s':>8s} {'batches/s':>10s} {'transitions/s':>14s} {'vs numpy':>9s}")
    for name, (_, setup) in samplers.items():
        r = measured[name]
        print(f"{name:38s} {setup:8.2f} {r:10.1f} {r * BATCH:14.0f} {r / peer:9.2f}")
    print(f"datamodule_vs_numpy: {measured['datamodule cache=True'] / peer:.2f}")


if __name__ == "__main__":
    main()
