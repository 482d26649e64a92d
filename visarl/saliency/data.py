"""Annotated frames for training PiCANet: the seeded 80/20 split, the augmentations, a LightningDataModule; and a
keypoint-click annotation builder for tests and benchmarks.

The training data is one annotation export (:func:`visarl.annotate.store.load_annotations`): frames uint8
``[N, H, W, 3]`` and maps float32 ``[N, H, W]`` in [0, 1] at frame resolution. Batches keep frames as uint8
``[B, 3, H, W]`` (the LightningModule resizes them for the net on its device) and maps as float32
``[B, 1, H, W]``. Augmentations (ViSaRL Table III): ColorJitter on the frame, and a random mirror flip applied to
frame and map together.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from visarl.annotate.store import AnnotationStore, FrameRef, load_annotations
from visarl.core.maps import COMBINE, REFERENCE_SIZE, SIGMA
from visarl.data.shards import open_shards
from visarl.envs import MetaWorldPixelEnv, keypoint_names

KINDS = ("gripper", "object", "goal")
"""Keypoint kinds a person clicks on (ViSaRL Sec. III-B): the end effector, the task's objects, the goal."""


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into (train, held-out) index arrays, each sorted.

    ``round(n * val_fraction)`` frames are held out, at least 1 when ``val_fraction > 0`` and ``n >= 2`` (30 frames
    -> 24 / 6, the paper's 80/20). The permutation comes from ``numpy.random.default_rng(seed)`` alone, so the
    same seed and count always hold out the same frames.
    """
    if n < 1:
        raise ValueError("no annotated frames to split")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class AnnotatedFrames(Dataset):
    """Frames and their maps, optionally augmented: ``{"rgb": uint8 [3, H, W], "saliency": float32 [1, H, W]}``.

    ``color_jitter`` is (brightness, contrast, saturation, hue) as in ``torchvision.transforms.ColorJitter``
    (zeros: none); ``flip`` mirrors frame and map together (left-right) with probability 1/2. Random draws use
    torch's global generator, which Lightning seeds (and reseeds per DataLoader worker).
    """

    def __init__(
        self,
        frames: np.ndarray,
        maps: np.ndarray,
        augment: bool = False,
        color_jitter: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        flip: bool = False,
    ) -> None:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
        if maps.shape != frames.shape[:3]:
            raise ValueError(f"maps {maps.shape} do not match frames {frames.shape}")
        self.frames = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()  # [N, 3, H, W]
        self.maps = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]  # [N, 1, H, W]
        self.augment = augment
        self.jitter = None
        if augment and any(v > 0 for v in color_jitter):
            from torchvision.transforms import v2

            b, c, s, h = color_jitter
            self.jitter = v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h)
        self.flip = augment and flip

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        rgb, sal = self.frames[i], self.maps[i]
        if self.jitter is not None:
            rgb = self.jitter(rgb)  # uint8 in, uint8 out
        if self.flip and torch.rand(()) < 0.5:
            rgb, sal = rgb.flip(-1), sal.flip(-1)
        return {"rgb": rgb, "saliency": sal}


class SaliencyDataModule(pl.LightningDataModule):
    """An annotation export split 80/20 by ``seed`` into augmented training and plain held-out frames.

    ``num_train`` > 0 keeps only the first ``num_train`` training frames (in the split's order, itself a seeded
    shuffle) while the held-out frames stay the same: the annotation-count sweep of ViSaRL Table V.

    ``select_fraction`` > 0 moves that share of the training frames into a selection set (seeded, after
    ``num_train``), so a best checkpoint can be chosen on frames that are neither trained on nor reported.
    ``validate_on`` picks what ``val_dataloader`` serves: "heldout" (the reported frames) or "select".
    """

    def __init__(
        self,
        path: str | Path,
        batch_size: int = 16,
        val_fraction: float = 0.2,
        seed: int = 0,
        num_train: int = 0,
        color_jitter: Sequence[float] = (0.2, 0.2, 0.2, 0.02),
        flip: bool = True,
        num_workers: int = 0,
        select_fraction: float = 0.0,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.select_fraction = select_fraction
        self.validate_on = "select" if select_fraction > 0 else "heldout"
        self.select_idx = np.zeros(0, dtype=np.int64)
        self.select_set: AnnotatedFrames | None = None
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.num_train = num_train
        self.color_jitter = tuple(color_jitter)
        self.flip = flip
        self.num_workers = num_workers
        self.train_idx = self.val_idx = np.zeros(0, dtype=np.int64)
        self.train_set: AnnotatedFrames | None = None
        self.val_set: AnnotatedFrames | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        ann = load_annotations(self.path)  # ValueError naming the file if it is not an export
        train, val = split_indices(len(ann.frames), self.val_fraction, self.seed)
        if self.num_train > 0:
            if self.num_train > len(train):
                raise ValueError(f"{self.path}: num_train={self.num_train} but only {len(train)} training frames")
            # The split's own seeded order, so a smaller set is a subset of a larger one.
            order = np.random.default_rng(self.seed + 1).permutation(train)
            train = np.sort(order[: self.num_train])
        if self.select_fraction > 0:
            if len(train) < 2:
                raise ValueError(f"{self.path}: {len(train)} training frames cannot spare a selection set")
            keep, pick = split_indices(len(train), self.select_fraction, self.seed + 2)
            train, select = train[keep], train[pick]
            self.select_idx = select
            self.select_set = AnnotatedFrames(ann.frames[select], ann.maps[select])
        self.train_idx, self.val_idx = train, val
        self.train_set = AnnotatedFrames(ann.frames[train], ann.maps[train], True, self.color_jitter, self.flip)
        self.val_set = AnnotatedFrames(ann.frames[val], ann.maps[val])

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup() first"
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup() first"
        if self.validate_on == "select":
            assert self.select_set is not None, "validate_on='select' needs select_fraction > 0"
            return DataLoader(self.select_set, batch_size=self.batch_size, num_workers=0)
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=0)


def keypoint_annotations(
    data_dir: str | Path,
    out_path: str | Path,
    num_frames: int,
    seed: int = 0,
    kinds: Sequence[str] = KINDS,
    sigma: float = SIGMA,
    reference_size: float | None = REFERENCE_SIZE,
    combine: str = COMBINE,
) -> Path:
    """Write an annotation export for ``num_frames`` random frames of ``data_dir``'s shards, one click on every
    in-frame keypoint of the given ``kinds`` (projected from each frame's stored state; no person, no jitter).

    A deterministic stand-in for a person (and for the simulated annotator): the maps are exactly Gaussians at
    the keypoints, so a predictor's errors are its own. Uses the shards' ``task`` and ``camera`` attributes.
    """
    readers = open_shards(data_dir)
    if not readers:
        raise ValueError(f"{data_dir}: no shards to annotate")
    pool = [(r, int(i)) for r in readers for i in r.frame_indices()]
    if num_frames > len(pool):
        raise ValueError(f"{data_dir}: {num_frames} frames asked for, only {len(pool)} stored")
    chosen = sorted(np.random.default_rng(seed).choice(len(pool), size=num_frames, replace=False).tolist())
    frames = np.stack([pool[j][0].read("rgb", [pool[j][1]])[0] for j in chosen])
    states = np.stack([pool[j][0].read("state", [pool[j][1]])[0] for j in chosen])
    refs = [FrameRef(pool[j][0].path.name, pool[j][1]) for j in chosen]
    attrs = readers[0].attrs
    task, camera = str(attrs["task"]), str(attrs["camera"])

    env = MetaWorldPixelEnv(task, image_size=frames.shape[1:3], camera=camera)
    try:
        xy, visible = env.keypoints_from_states(states)  # [N, K, 2], [N, K]
        names = keypoint_names(env.n_objects)
    finally:
        env.close()
    wanted = np.array([kind in kinds for _, kind in names])

    out_path = Path(out_path)
    journal = out_path.with_name(out_path.stem + ".journal.jsonl")
    journal.unlink(missing_ok=True)  # a generated file: start over rather than replay an old one
    h, w = frames.shape[1:3]
    with AnnotationStore(
        journal,
        frames,
        refs,
        sigma=sigma,
        reference_size=reference_size,
        combine=combine,
        task=task,
        annotator="keypoints",
        fsync=False,
    ) as store:
        for i in range(num_frames):
            for x, y in xy[i][visible[i] & wanted]:
                store.click(i, float(np.clip(x, -0.5, w - 0.5)), float(np.clip(y, -0.5, h - 0.5)))
        store.export(out_path)
    return out_path


def default_annotations(task: str) -> Path:
    """Where ``stage: annotate`` exports a task's annotations by default."""
    return Path("data") / task / "annotations.h5"


def default_weights(task: str) -> Path:
    """Where ``stage: saliency`` exports a task's PiCANet weights and ``stage: label`` looks for them."""
    return Path("data") / task / "picanet.pt"
