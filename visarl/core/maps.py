"""Points -> saliency maps: one isotropic Gaussian per point (ViSaRL Sec. III-B, Fig. 5: sigma = 10 px).

The one implementation behind annotation clicks (:mod:`visarl.annotate`), the oracle saliency source of RL
(:mod:`visarl.rl.saliency_source`) and oracle shard labels (:mod:`visarl.mae.oracle`), so all three draw the
same blob for the same point.

Coordinates: a point is ``(x, y)`` in frame pixels, ``x`` the column and ``y`` the row, float. The centre of
pixel ``[row i, col j]`` is ``(x=j, y=i)``, so the frame covers ``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` (the same
convention as ``align_corners=False`` resizing). A point ``u`` on a display ``D`` pixels wide maps to
``x = u * W / D - 0.5``.

Sigma: the paper gives sigma = 10 px without saying on which image. Sigma is therefore stated at a reference
resolution and scaled to the frame: ``sigma_frame = sigma * max(H, W) / reference_size``. The reference is
400 px, the size the authors' annotation page shows frames at (``<img ... width=400>`` in
aliang8/visarl visarl/saliency_gui/index.html). Their maps are built at that size too: clicks are recorded in
page pixels and ``get_heatmap_from_ann_file`` (visarl/util/saliency_util.py) draws on a 400x400 canvas
``exp(-4 ln 2 * d^2 / 25^2)``, a Gaussian with full width at half maximum 25 px, i.e. standard deviation
25 / (2 sqrt(2 ln 2)) = 10.6 px at 400 px, the paper's 10 px (the map is then resized to 224 px). The page's
own overlay (heatmap.js, ``radius: 25``) is display only: each click is a radial gradient opaque out to
0.15 r and transparent at r = 25 px. So sigma = 10 px at 400 px, 1.6 px on a 64 px frame (the former reading,
10 px at 224 px, gave 2.86 px). ``reference_size=None`` means sigma is already in frame pixels.

Combination: ``sum`` (default, as the authors' ``fixation_to_dense_map``) adds the Gaussians, so several
clicks on one spot make it more salient ("more saliency concentrated near the gripper tip"), then divides by
the map's peak so it ends at 1 (a single click off a pixel centre is scaled up to 1 too). ``max`` keeps each
Gaussian at height 1 and overlapping points never exceed 1. Maps are float32 ``[H, W]`` in ``[0, 1]``.
"""

from __future__ import annotations

import numpy as np

SIGMA = 10.0
"""Gaussian sigma in pixels at :data:`REFERENCE_SIZE` (paper, Sec. III-B)."""
REFERENCE_SIZE = 400.0
"""Resolution sigma is stated at: the authors' annotation page shows frames 400 px wide."""
COMBINE = "sum"
"""How the Gaussians of several points combine by default (the authors' sum, normalised to peak 1)."""
COMBINE_MODES = ("max", "sum")
"""Accepted values of ``combine``."""


def frame_sigma(sigma: float, height: int, width: int, reference_size: float | None = REFERENCE_SIZE) -> float:
    """Sigma in frame pixels: ``sigma * max(height, width) / reference_size`` (unchanged when reference is None)."""
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a positive number of pixels, got {sigma!r}")
    if reference_size is None:
        return float(sigma)
    if not np.isfinite(reference_size) or reference_size <= 0:
        raise ValueError(f"reference_size must be positive or None, got {reference_size!r}")
    return float(sigma) * max(height, width) / float(reference_size)


def points_to_maps(
    points: np.ndarray,
    valid: np.ndarray | None,
    height: int,
    width: int,
    sigma: float = SIGMA,
    reference_size: float | None = REFERENCE_SIZE,
    combine: str = COMBINE,
) -> np.ndarray:
    """Maps ``[B, H, W]`` float32 in [0, 1] from points ``[B, K, 2]`` (x=col, y=row) where ``valid [B, K]``.

    Invalid points draw nothing; a frame with no valid point is all zeros. ``valid=None`` means all valid.
    """
    if combine not in COMBINE_MODES:
        raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
    if height <= 0 or width <= 0:
        raise ValueError(f"map size must be positive, got {height}x{width}")
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[-1] != 2:
        raise ValueError(f"points must have shape [B, K, 2], got {pts.shape}")
    ok = np.ones(pts.shape[:2], bool) if valid is None else np.asarray(valid, dtype=bool)
    if ok.shape != pts.shape[:2]:
        raise ValueError(f"valid must have shape {pts.shape[:2]}, got {ok.shape}")
    if not np.all(np.isfinite(pts[ok])):
        raise ValueError("point coordinates must be finite")
    s = frame_sigma(sigma, height, width, reference_size)
    pts = np.where(ok[..., None], pts, 0.0)  # invalid points may hold anything (NaN); they are masked below
    rows = np.arange(height, dtype=np.float64)
    cols = np.arange(width, dtype=np.float64)
    gy = np.exp(-0.5 * ((rows - pts[..., 1:2]) / s) ** 2) * ok[..., None]  # [B, K, H], 0 for invalid points
    gx = np.exp(-0.5 * ((cols - pts[..., 0:1]) / s) ** 2)  # [B, K, W]
    out = np.zeros((pts.shape[0], height, width), dtype=np.float64)
    # One point at a time, in order: memory stays at one map per frame, and adding an invalid point's exact
    # zeros leaves the sum bit-identical to drawing only the valid points.
    for k in range(pts.shape[1]):
        g = gy[:, k, :, None] * gx[:, k, None, :]  # separable Gaussian [B, H, W]
        if combine == "max":
            np.maximum(out, g, out=out)
        else:
            out += g
    if combine == "sum":
        peak = out.max(axis=(1, 2), keepdims=True)
        np.divide(out, peak, out=out, where=peak > 0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def clicks_to_map(
    clicks: np.ndarray | list,
    height: int,
    width: int,
    sigma: float = SIGMA,
    reference_size: float | None = REFERENCE_SIZE,
    combine: str = COMBINE,
) -> np.ndarray:
    """Saliency map ``[H, W]`` float32 in [0, 1] from clicks ``[K, 2]`` of ``(x=col, y=row)`` in frame pixels.

    No clicks give an all-zero map. See the module docstring for the sigma scaling and the combine modes.
    """
    pts = np.asarray(clicks, dtype=np.float64).reshape(-1, 2) if len(clicks) else np.zeros((0, 2))
    return points_to_maps(pts[None], None, height, width, sigma, reference_size, combine)[0]


def maps_from_clicks(
    clicks_per_frame: list[np.ndarray],
    height: int,
    width: int,
    sigma: float = SIGMA,
    reference_size: float | None = REFERENCE_SIZE,
    combine: str = COMBINE,
) -> np.ndarray:
    """Rebuild maps ``[N, H, W]`` float32 from stored raw clicks (e.g. with another sigma)."""
    out = np.zeros((len(clicks_per_frame), height, width), dtype=np.float32)
    for i, c in enumerate(clicks_per_frame):
        out[i] = clicks_to_map(c, height, width, sigma=sigma, reference_size=reference_size, combine=combine)
    return out
