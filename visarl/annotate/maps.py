"""Clicks -> saliency maps: one isotropic Gaussian per click (ViSaRL Sec. III-B, Fig. 5: sigma = 10 px).

Coordinates: a click is ``(x, y)`` in frame pixels, ``x`` the column and ``y`` the row, float. The centre
of pixel ``[row i, col j]`` is ``(x=j, y=i)``, so the frame covers ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``
(the same convention as ``align_corners=False`` resizing). A point ``u`` on a display ``D`` pixels wide maps
to ``x = u * W / D - 0.5``.

Sigma: the paper gives sigma in pixels of the image the annotators saw (their interface showed frames at
224 px, PiCANet's input size). Our frames are smaller (64 px), so sigma is stated at a reference resolution
and scaled to the frame: ``sigma_frame = sigma * max(H, W) / reference_size``; 10 px at 224 is 2.86 px on a
64 px frame, the same fraction of the image. ``reference_size=None`` means sigma is already in frame pixels.

Combination: ``max`` (default) keeps each click's Gaussian at height 1 and overlapping clicks never exceed 1;
``sum`` adds the Gaussians, so repeated clicks on one spot make it more salient, then divides by the peak so
the map still ends at 1. Maps are float32 ``[H, W]`` in ``[0, 1]``.
"""

from __future__ import annotations

import numpy as np

COMBINE_MODES = ("max", "sum")
"""Accepted values of ``combine``."""


def frame_sigma(sigma: float, height: int, width: int, reference_size: float | None = 224) -> float:
    """Sigma in frame pixels: ``sigma * max(height, width) / reference_size`` (unchanged when reference is None)."""
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a positive number of pixels, got {sigma!r}")
    if reference_size is None:
        return float(sigma)
    if not np.isfinite(reference_size) or reference_size <= 0:
        raise ValueError(f"reference_size must be positive or None, got {reference_size!r}")
    return float(sigma) * max(height, width) / float(reference_size)


def clicks_to_map(
    clicks: np.ndarray | list,
    height: int,
    width: int,
    sigma: float = 10.0,
    reference_size: float | None = 224,
    combine: str = "max",
) -> np.ndarray:
    """Saliency map ``[H, W]`` float32 in [0, 1] from clicks ``[K, 2]`` of ``(x=col, y=row)`` in frame pixels.

    No clicks give an all-zero map. See the module docstring for the sigma scaling and the combine modes.
    """
    if combine not in COMBINE_MODES:
        raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
    if height <= 0 or width <= 0:
        raise ValueError(f"map size must be positive, got {height}x{width}")
    pts = np.asarray(clicks, dtype=np.float64).reshape(-1, 2) if len(clicks) else np.zeros((0, 2))
    if not np.all(np.isfinite(pts)):
        raise ValueError("click coordinates must be finite")
    s = frame_sigma(sigma, height, width, reference_size)
    out = np.zeros((height, width), dtype=np.float64)
    if len(pts) == 0:
        return out.astype(np.float32)
    cols = np.arange(width, dtype=np.float64)
    rows = np.arange(height, dtype=np.float64)
    for x, y in pts:
        # Separable Gaussian: [H, 1] * [1, W]; one click at a time keeps memory at one map.
        g = np.exp(-0.5 * ((rows - y) / s) ** 2)[:, None] * np.exp(-0.5 * ((cols - x) / s) ** 2)[None, :]
        if combine == "max":
            np.maximum(out, g, out=out)
        else:
            out += g
    if combine == "sum":
        peak = out.max()
        if peak > 0:
            out /= peak
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def maps_from_clicks(
    clicks_per_frame: list[np.ndarray],
    height: int,
    width: int,
    sigma: float = 10.0,
    reference_size: float | None = 224,
    combine: str = "max",
) -> np.ndarray:
    """Rebuild maps ``[N, H, W]`` float32 from stored raw clicks (e.g. with another sigma)."""
    out = np.zeros((len(clicks_per_frame), height, width), dtype=np.float32)
    for i, c in enumerate(clicks_per_frame):
        out[i] = clicks_to_map(c, height, width, sigma=sigma, reference_size=reference_size, combine=combine)
    return out
