"""Where saliency maps for new frames come from during RL.

In the paper a trained PiCANet predicts saliency online for every new frame (Section III). During RL the
loop asks a :class:`SaliencySource` for the maps of a batch of frames; the PiCANet-backed source lives with
the saliency stage. :class:`OracleSaliency` renders Gaussian blobs at known keypoints instead: a perfect
predictor for tests, ablations and for checking the pipeline before a PiCANet exists.

Maps are returned as uint8 ``[B, 1, H, W]`` (0-255), the same form as stored in the replay shards, so
stored and online maps go through the encoders identically (``to_unit`` turns them into [0, 1]).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

KeypointFn = Callable[[np.ndarray | None], tuple[np.ndarray, np.ndarray]]
"""states [B, S] -> (keypoints [B, K, 2] pixel (x, y), visible [B, K] bool)."""


class SaliencySource(ABC):
    """Maps a batch of frames (and optionally the simulator states behind them) to saliency maps."""

    @abstractmethod
    def __call__(self, rgb: Tensor, states: np.ndarray | None) -> Tensor:
        """rgb uint8 [B, 3, H, W], states [B, S] or None -> saliency uint8 [B, 1, H, W] on rgb's device."""


def gaussian_maps(
    keypoints: np.ndarray | Tensor,
    visible: np.ndarray | Tensor,
    height: int,
    width: int,
    sigma: tuple[float, float],
) -> Tensor:
    """Float maps [B, 1, H, W] in [0, 1]: the max over visible keypoints of unnormalised Gaussians.

    ``keypoints`` [B, K, 2] are (x, y) pixel coordinates with (0, 0) the centre of the top-left pixel;
    ``sigma`` is (sigma_y, sigma_x) in pixels. Each blob peaks at 1, and overlapping blobs take the max
    so a map stays in [0, 1] (like overlapping annotation clicks). No visible keypoint gives an all-zero map.
    """
    kp = torch.as_tensor(np.asarray(keypoints), dtype=torch.float32)
    vis = torch.as_tensor(np.asarray(visible), dtype=torch.bool)
    if kp.ndim != 3 or kp.shape[-1] != 2 or vis.shape != kp.shape[:2]:
        raise ValueError(f"keypoints must be [B, K, 2] and visible [B, K]; got {tuple(kp.shape)}, {tuple(vis.shape)}")
    sy, sx = sigma
    ys = torch.arange(height, dtype=torch.float32).view(1, 1, height, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, 1, width)
    dx = (xs - kp[..., 0, None, None]) / sx  # [B, K, 1, W]
    dy = (ys - kp[..., 1, None, None]) / sy  # [B, K, H, 1]
    blobs = torch.exp(-0.5 * (dx**2 + dy**2)) * vis[..., None, None]  # [B, K, H, W]
    if blobs.shape[1] == 0:
        return torch.zeros(kp.shape[0], 1, height, width)
    return blobs.amax(dim=1, keepdim=True)


class OracleSaliency(SaliencySource):
    """Gaussian blobs at keypoints given by ``keypoint_fn(states)`` (the env projects object positions).

    ``sigma`` is in pixels of a ``reference_size`` frame: the paper's annotation clicks use sigma = 10 px
    on PiCANet's 224x224 frames (Fig. 5). On an H x W frame the blob keeps the same size relative to the
    frame: sigma_x = sigma * W / reference_size, sigma_y = sigma * H / reference_size (2.86 px at 64x64).
    """

    def __init__(self, keypoint_fn: KeypointFn | None = None, sigma: float = 10.0, reference_size: int = 224) -> None:
        self.keypoint_fn = keypoint_fn
        self.sigma = sigma
        self.reference_size = reference_size

    def sigma_px(self, height: int, width: int) -> tuple[float, float]:
        """(sigma_y, sigma_x) in pixels for an H x W frame."""
        scale = self.sigma / self.reference_size
        return scale * height, scale * width

    def render(self, keypoints: np.ndarray | Tensor, visible: np.ndarray | Tensor, height: int, width: int) -> Tensor:
        """uint8 maps [B, 1, H, W] with blobs at ``keypoints`` [B, K, 2] (x, y) where ``visible`` [B, K]."""
        maps = gaussian_maps(keypoints, visible, height, width, self.sigma_px(height, width))
        return (maps * 255.0).round().to(torch.uint8)

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
    sigma: float = 10.0,
    device: torch.device | str = "cpu",
) -> SaliencySource | None:
    """The source named by a config: None for "none"; the oracle needs the env's fixed ``camera``
    (:class:`visarl.envs.CameraModel`) to project the stored states; "picanet" loads a trained checkpoint.
    """
    if kind == "none":
        return None
    if kind == "oracle":
        from visarl.envs import keypoints_from_states

        if camera is None:
            raise ValueError("the oracle saliency source needs the env's camera model")
        return OracleSaliency(functools.partial(keypoints_from_states, camera=camera, n_objects=n_objects), sigma)
    if kind == "picanet":
        from visarl.saliency.online import PiCANetSaliency  # imported lazily: the saliency stage is optional here

        return PiCANetSaliency.from_checkpoint(checkpoint, device=device)
    raise ValueError(f"saliency: {kind!r} is not one of {list(SALIENCY_SOURCES)}")


def labeller(source: SaliencySource, device: torch.device | str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Wrap a source for env-step time: (rgb uint8 [n, H, W, 3], states [n, S]) -> uint8 [n, H, W] on the host."""

    def label(rgb: np.ndarray, states: np.ndarray) -> np.ndarray:
        frames = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).to(device)  # [n, 3, H, W]
        return source(frames, np.asarray(states)).to("cpu").numpy()[:, 0]

    return label
