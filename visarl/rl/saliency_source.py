"""Where saliency maps for new frames come from during RL.

In the paper a trained PiCANet predicts saliency online for every new frame (Section III). During RL the
loop asks a :class:`~visarl.core.saliency.SaliencySource` for the maps of a batch of frames; the PiCANet-backed
source lives with the saliency stage. :class:`OracleSaliency` renders Gaussian blobs at known keypoints instead:
a perfect predictor for tests, ablations and for checking the pipeline before a PiCANet exists.

Maps are returned as uint8 ``[B, 1, H, W]`` (0-255), the same form as stored in the replay shards, so
stored and online maps go through the encoders identically (``to_unit`` turns them into [0, 1]).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from visarl.core.maps import COMBINE, COMBINE_MODES, REFERENCE_SIZE, SIGMA, frame_sigma, points_to_maps
from visarl.core.saliency import SaliencySource
from visarl.envs import keypoints_from_states
from visarl.saliency.online import PiCANetSaliency

KeypointFn = Callable[[np.ndarray | None], tuple[np.ndarray, np.ndarray]]
"""states [B, S] -> (keypoints [B, K, 2] pixel (x, y), visible [B, K] bool)."""


class OracleSaliency(SaliencySource):
    """Gaussian blobs at keypoints given by ``keypoint_fn(states)`` (the env projects object positions).

    The blobs are annotation clicks placed on the true keypoints: :func:`visarl.core.maps.points_to_maps` with the
    annotator's defaults (sigma 10 px at 400 px, summed and normalised to peak 1), so for the same points the
    oracle's map equals :func:`visarl.core.maps.clicks_to_map`'s. ``sigma`` is in pixels of a ``reference_size``
    frame and scales with the frame's longer side (1.6 px at 64x64).
    """

    def __init__(
        self,
        keypoint_fn: KeypointFn | None = None,
        sigma: float = SIGMA,
        reference_size: float | None = REFERENCE_SIZE,
        combine: str = COMBINE,
    ) -> None:
        frame_sigma(sigma, 1, 1, reference_size)  # validates sigma / reference_size
        if combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
        self.keypoint_fn = keypoint_fn
        self.sigma = sigma
        self.reference_size = reference_size
        self.combine = combine

    def sigma_px(self, height: int, width: int) -> float:
        """Sigma in pixels of an H x W frame."""
        return frame_sigma(self.sigma, height, width, self.reference_size)

    def render(self, keypoints: np.ndarray | Tensor, visible: np.ndarray | Tensor, height: int, width: int) -> Tensor:
        """uint8 maps [B, 1, H, W] with blobs at ``keypoints`` [B, K, 2] (x, y) where ``visible`` [B, K]."""
        kp = keypoints.detach().cpu().numpy() if isinstance(keypoints, Tensor) else np.asarray(keypoints)
        vis = visible.detach().cpu().numpy() if isinstance(visible, Tensor) else np.asarray(visible)
        if kp.ndim != 3 or kp.shape[-1] != 2 or vis.shape != kp.shape[:2]:
            raise ValueError(f"keypoints must be [B, K, 2] and visible [B, K]; got {kp.shape}, {vis.shape}")
        maps = points_to_maps(kp, vis, height, width, self.sigma, self.reference_size, self.combine)  # [B, H, W]
        return torch.from_numpy(np.round(maps * 255.0).astype(np.uint8))[:, None]

    def __call__(self, rgb: Tensor, states: np.ndarray | None) -> Tensor:
        if self.keypoint_fn is None:
            raise RuntimeError("OracleSaliency needs a keypoint_fn (states -> keypoints, visible) to be called")
        keypoints, visible = self.keypoint_fn(states)
        if len(keypoints) != rgb.shape[0]:
            raise ValueError(f"keypoint_fn gave {len(keypoints)} keypoint sets for a batch of {rgb.shape[0]} frames")
        return self.render(keypoints, visible, rgb.shape[-2], rgb.shape[-1]).to(rgb.device)


SALIENCY_SOURCES = ("none", "oracle", "picanet")
"""Values of the ``saliency:`` config key."""


def make_saliency_source(
    kind: str,
    *,
    camera: Any = None,
    n_objects: int = 1,
    checkpoint: str = "",
    sigma: float = SIGMA,
    reference_size: float | None = REFERENCE_SIZE,
    combine: str = COMBINE,
    device: torch.device | str = "cpu",
) -> SaliencySource | None:
    """The source named by a config: None for "none"; the oracle needs the env's fixed ``camera``
    (:class:`visarl.envs.CameraModel`) to project the stored states and draws its blobs with ``sigma`` (px at
    ``reference_size``) and ``combine``; "picanet" loads a trained checkpoint.
    """
    if kind == "none":
        return None
    if kind == "oracle":
        if camera is None:
            raise ValueError("the oracle saliency source needs the env's camera model")
        fn = functools.partial(keypoints_from_states, camera=camera, n_objects=n_objects)
        return OracleSaliency(fn, sigma, reference_size, combine)
    if kind == "picanet":
        return PiCANetSaliency.from_checkpoint(checkpoint, device=device)
    raise ValueError(f"saliency: {kind!r} is not one of {list(SALIENCY_SOURCES)}")


def labeller(source: SaliencySource, device: torch.device | str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Wrap a source for env-step time: (rgb uint8 [n, H, W, 3], states [n, S]) -> uint8 [n, H, W] on the host."""

    def label(rgb: np.ndarray, states: np.ndarray) -> np.ndarray:
        frames = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).to(device)  # [n, 3, H, W]
        return source(frames, np.asarray(states)).to("cpu").numpy()[:, 0]

    return label
