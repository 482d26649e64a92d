"""Oracle saliency labels for shards: Gaussian "clicks" at the true gripper, object and goal positions.

A stand-in for the ``label`` stage (PiCANet inference) when pretraining must be exercised without a trained
saliency model: tests, benchmarks, and ablations with perfect saliency. Each frame's keypoints are projected
from its stored 39-d state with the shard's camera (:func:`visarl.envs.keypoints_from_states`) and turned into a
map exactly as annotation clicks are (:func:`visarl.core.maps.points_to_maps` with the annotator's defaults:
sigma 10 px at 400 px, summed and normalised to peak 1); keypoints outside the frame are dropped. Maps are
stored as uint8 ``saliency [N, H, W]`` with :func:`visarl.data.shards.write_field`, the field the label stage
writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from visarl.core.maps import COMBINE, REFERENCE_SIZE, SIGMA, points_to_maps
from visarl.data.shards import ShardReader, list_shards, write_field


def oracle_maps(
    xy: np.ndarray,
    visible: np.ndarray,
    height: int,
    width: int,
    sigma: float = SIGMA,
    reference_size: float | None = REFERENCE_SIZE,
    combine: str = COMBINE,
) -> np.ndarray:
    """uint8 maps ``[B, H, W]`` from keypoints ``xy [B, K, 2]`` (x, y pixels) where ``visible [B, K]``."""
    out = np.empty((len(xy), height, width), np.uint8)
    for i in range(0, len(xy), 256):  # chunks bound the float64 working maps
        m = points_to_maps(xy[i : i + 256], visible[i : i + 256], height, width, sigma, reference_size, combine)
        out[i : i + 256] = np.round(m * 255.0).astype(np.uint8)
    return out


def label_shards_with_oracle(
    data_dir: str | Path,
    sigma: float = SIGMA,
    reference_size: float | None = REFERENCE_SIZE,
    overwrite: bool = False,
    combine: str = COMBINE,
) -> int:
    """Add an oracle ``saliency`` field to every shard in ``data_dir``; returns the number of rows labelled.

    The camera comes from each shard's ``task``, ``camera`` and ``image_size`` attributes (one env is built per
    distinct triple to read its fixed camera pose; nothing is rendered per frame).
    """
    # lazy: importing visarl.envs loads MuJoCo and picks its GL backend
    from visarl.envs import DEFAULT_CAMERA, keypoints_from_states, make_env

    cameras: dict[tuple, tuple] = {}
    total = 0
    for path in list_shards(data_dir):
        reader = ShardReader(path)
        key = (reader.attrs["task"], reader.attrs.get("camera", DEFAULT_CAMERA), int(reader.attrs["image_size"]))
        if key not in cameras:
            env = make_env(key[0], image_size=key[2], camera=key[1])
            cameras[key] = (env.camera_model, env.n_objects)
            env.close()
        camera, n_objects = cameras[key]
        states = reader.read("state")
        reader.close()
        xy, visible = keypoints_from_states(states, camera, n_objects)
        maps = oracle_maps(xy, visible, key[2], key[2], sigma, reference_size, combine)
        write_field(path, "saliency", maps, overwrite=overwrite)
        total += len(maps)
    return total
