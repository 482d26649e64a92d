"""Inputs of `stage: label` at test size: shards of random frames and an untrained PiCANet whose maps vary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from visarl.data.shards import ShardWriter
from visarl.saliency.picanet import PiCANet, save_picanet

SIZE = 32  # frame side of the synthetic shards


def write_shards(directory: Path, num_steps: int, rows_per_shard: int, seed: int = 0) -> list[Path]:
    """Random frames in shards: one long episode cut every ``rows_per_shard`` rows."""
    rng = np.random.default_rng(seed)
    writer = ShardWriter(directory, rows_per_shard=rows_per_shard, attrs={"task": "reach", "camera": "corner"})

    def obs() -> dict[str, np.ndarray]:
        return {
            "rgb": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
            "state": rng.standard_normal(39).astype(np.float32),
        }

    writer.add_first(0, obs())
    for t in range(num_steps):
        writer.add_step(0, np.zeros(4, np.float32), 0.0, False, t == num_steps - 1, 0.0, obs())
    writer.close()
    return writer.shard_paths


def tiny_weights(path: Path, input_size: int = 64, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = PiCANet(input_size, width_mult=1 / 16, fc6_dilation=3)
    with torch.no_grad():  # an untrained net whose maps vary visibly with the frame (mid-range, not ~0)
        net.decoder[-1].side.weight.mul_(10.0)
        net.decoder[-1].side.bias.zero_()
    return save_picanet(net.eval(), path)
