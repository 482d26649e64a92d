"""Patch <-> image reshapes and fixed 2-D sine-cosine position embeddings.

The patch layout follows MAE (He et al. 2022): each patch is flattened as ``(row, col, channel)``, so a patch of a
``C``-channel image is a vector of ``p * p * C`` numbers and patches are ordered row-major over the grid. The same
order is used by the input adapters (a stride-``p`` convolution, flattened row-major) and by the decoders' heads.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def patchify(x: Tensor, p: int) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, N, p*p*C]`` with ``N = (H/p) * (W/p)`` row-major patches."""
    b, c, h, w = x.shape
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    gh, gw = h // p, w // p
    x = x.reshape(b, c, gh, p, gw, p)
    # [B, gh, gw, p, p, C]: pixel rows, then pixel columns, then channels inside each patch
    x = x.permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, gh * gw, p * p * c)


def unpatchify(patches: Tensor, p: int, grid: tuple[int, int] | None = None) -> Tensor:
    """Inverse of :func:`patchify`: ``[B, N, p*p*C]`` -> ``[B, C, gh*p, gw*p]``; ``grid`` defaults to square."""
    b, n, d = patches.shape
    if d % (p * p):
        raise ValueError(f"patch vector of length {d} does not hold whole {p}x{p} patches")
    c = d // (p * p)
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} patches do not form a square grid; pass grid=(rows, cols)")
        grid = (side, side)
    gh, gw = grid
    if gh * gw != n:
        raise ValueError(f"grid {grid} does not hold {n} patches")
    x = patches.reshape(b, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)  # [B, C, gh, p, gw, p]
    return x.reshape(b, c, gh * p, gw * p)


def sincos_pos_embed_2d(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed 2-D sine-cosine position embeddings ``[gh*gw, dim]``, row-major like :func:`patchify`.

    A quarter of the channels encodes the row with sines, a quarter with cosines, and the same for the column
    (the ViT/MAE/MultiMAE recipe); frequencies are geometric from 1 to ``1/temperature``.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {dim}")
    gh, gw = grid
    rows, cols = torch.meshgrid(
        torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij"
    )
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # [dim/4]
    out_r = rows.reshape(-1, 1) * omega  # [N, dim/4]
    out_c = cols.reshape(-1, 1) * omega
    emb = torch.cat([out_r.sin(), out_r.cos(), out_c.sin(), out_c.cos()], dim=1)
    return emb.float()
