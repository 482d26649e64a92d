"""Multi-modal token masking: a fixed budget of visible tokens shared across modalities by Dirichlet draws.

MultiMAE (Bachmann et al. 2022, Sec. 3.2) samples, per example, the share of visible tokens each modality gets
from a symmetric Dirichlet(alpha), then picks that many tokens uniformly at random inside each modality. ViSaRL
(Sec. II-C, Table II) keeps 32 visible tokens out of 2 x 64 with alpha = 1. MultiMAE rounds the shares
independently, so the total can miss the budget by one; here the counts are rounded by largest remainder under
each modality's token count, so every example has exactly ``budget`` visible tokens (fixed encoder length, no
padding) and no modality is asked for more tokens than it has.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _rand_device(generator: torch.Generator | None, device: torch.device | str) -> torch.device:
    # A generator only draws on its own device; without one draw where the data lives (no host round trip).
    return generator.device if generator is not None else torch.device(device)


def sample_gamma(
    shape: Sequence[int],
    concentration: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Gamma(concentration, 1) samples by Marsaglia & Tsang (2000), drawn from ``generator``.

    Written out because ``torch.distributions.Gamma`` cannot take a generator, and reproducible masks need one.
    Concentrations below 1 use the boost Gamma(a) = Gamma(a + 1) * U^(1/a).
    """
    if concentration <= 0:
        raise ValueError(f"Gamma concentration must be positive, got {concentration}")
    dev = _rand_device(generator, device)
    a = concentration + 1.0 if concentration < 1.0 else concentration
    d = a - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    out = torch.empty(shape, device=dev)
    todo = torch.ones(shape, dtype=torch.bool, device=dev)
    while bool(todo.any()):  # accepts over 95% of proposals, so two or three rounds
        z = torch.randn(shape, generator=generator, device=dev)
        u = torch.rand(shape, generator=generator, device=dev)
        v = (1.0 + c * z) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-30)))
        take = ok & todo
        out[take] = (d * v)[take]
        todo &= ~ok
    if concentration < 1.0:
        u = torch.rand(shape, generator=generator, device=dev)
        out = out * u ** (1.0 / concentration)
    return out


def sample_dirichlet(
    batch: int,
    num_modalities: int,
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Symmetric Dirichlet(alpha) shares ``[B, M]`` (rows sum to 1), as normalised Gamma draws."""
    g = sample_gamma((batch, num_modalities), alpha, generator, device)
    return g / g.sum(dim=1, keepdim=True).clamp_min(1e-30)


def allocate_budget(shares: Tensor, budget: int, capacity: Sequence[int]) -> Tensor:
    """Integer token counts ``[B, M]`` from shares ``[B, M]``: each row sums to ``budget``, column m <= capacity[m].

    Largest-remainder rounding: floor every share, then hand the missing tokens one at a time to the modality
    with the largest remainder that still has room (a full modality passes its excess on the same way).
    """
    b, m = shares.shape
    cap = torch.as_tensor(list(capacity), device=shares.device)
    if cap.numel() != m:
        raise ValueError(f"{m} shares but {cap.numel()} capacities")
    if not 0 <= budget <= int(cap.sum()):
        raise ValueError(f"visible budget {budget} is outside [0, {int(cap.sum())}] tokens")
    raw = shares.float() * budget
    counts = torch.minimum(raw.floor().long(), cap)
    rows = torch.arange(b, device=shares.device)
    while True:
        short = budget - counts.sum(dim=1)  # [B], >= 0
        if not bool((short > 0).any()):
            return counts
        priority = (raw - counts).masked_fill(counts >= cap, float("-inf"))
        pick = priority.argmax(dim=1)
        counts[rows, pick] += (short > 0).long()


def sample_masks(counts: Tensor, num_tokens: Sequence[int], generator: torch.Generator | None = None) -> list[Tensor]:
    """Per-modality masks ``[B, N_m]`` (True = hidden) with exactly ``counts[:, m]`` visible tokens, uniform."""
    dev = _rand_device(generator, counts.device)
    masks = []
    for m, n in enumerate(num_tokens):
        noise = torch.rand(counts.shape[0], n, generator=generator, device=dev).to(counts.device)
        rank = noise.argsort(dim=1).argsort(dim=1)  # a uniformly random permutation rank per token
        masks.append(rank >= counts[:, m : m + 1])
    return masks


MASK_RATIO = 0.75
"""Share of tokens hidden by default (Sec. II-B: "a high masking ratio m = 0.75")."""


def default_visible(total_tokens: int, mask_ratio: float = MASK_RATIO) -> int:
    """Visible tokens at ``mask_ratio`` of ``total_tokens`` (all modalities): 32 of 128 for rgb + saliency at 64 px,
    16 of 64 for rgb alone. At least one."""
    return max(1, round(total_tokens * (1 - mask_ratio)))


def visible_ids(hidden: Tensor) -> Tensor:
    """Ids ``[B, K]`` (ascending) of the visible tokens of a mask ``[B, N]``; every row must show K tokens."""
    k = (~hidden).sum(dim=1)
    if bool((k != k[0]).any()):
        raise ValueError(f"every example needs the same number of visible tokens, got {sorted(set(k.tolist()))}")
    # stable sort puts the visible (0) entries first, in their original order
    return hidden.to(torch.uint8).argsort(dim=1, stable=True)[:, : int(k[0])]


def dirichlet_masks(
    batch: int,
    num_tokens: Sequence[int],
    budget: int,
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> list[Tensor]:
    """The whole sampler: Dirichlet shares -> exact counts -> uniform masks ``[B, N_m]`` per modality."""
    shares = sample_dirichlet(batch, len(num_tokens), alpha, generator, device).to(device)
    counts = allocate_budget(shares, budget, num_tokens)
    return [mask.to(device) for mask in sample_masks(counts, num_tokens, generator)]
