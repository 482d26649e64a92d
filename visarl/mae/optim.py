"""The MultiMAE optimiser recipe (ViSaRL Table II, "the same training hyperparameters as the MultiMAE paper").

- Learning rate: ``base_lr * total_batch / 256``, the "base learning rate" of Table II as MultiMAE defines it
  (``run_pretraining_multimae.py``: ``args.lr = args.blr * total_batch_size / 256`` with total batch = per-device
  batch x world size). The ViSaRL authors' fork divides by the per-device batch instead
  (``args.blr * total_batch_size / args.batch_size``), so its peak is ``base_lr x devices``: 1e-4 on their one GPU
  where the MultiMAE reading gives 2e-4 at batch 512. ``reference_batch=None`` reproduces the fork.
- Schedule, set every optimiser step: linear warmup from ``warmup_lr`` to the peak over ``warmup_epochs``, then
  a half cosine down towards ``min_lr`` (MultiMAE ``utils.cosine_scheduler``: ``np.linspace`` warmup that
  reaches the peak on its last step, then ``min + (peak - min) * (1 + cos(pi * i / n)) / 2`` for the
  ``n`` remaining steps, so the last value is just above ``min_lr``).
- AdamW with betas (0.9, 0.95) and weight decay 0.05, except on parameters with at most one dimension
  (norms, biases) and on the model's ``no_weight_decay()`` names (tokens, modality embeddings), as MultiMAE's
  ``optim_factory.get_parameter_groups`` does. Position embeddings here are fixed buffers, never decayed.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def scaled_lr(base_lr: float, total_batch: int, reference_batch: int | None = 256, device_batch: int = 0) -> float:
    """Peak learning rate for a total (all devices) batch: ``base_lr * total_batch / reference_batch``.

    ``reference_batch=None`` divides by ``device_batch`` (the per-device batch), as the authors' fork does.
    """
    ref = reference_batch if reference_batch is not None else device_batch
    if ref <= 0:
        raise ValueError(f"learning-rate reference batch must be positive, got {ref}")
    return base_lr * total_batch / ref


def warmup_cosine_lr(
    step: int, total_steps: int, warmup_steps: int, peak_lr: float, warmup_lr: float = 1e-6, min_lr: float = 0.0
) -> float:
    """Learning rate at optimiser step ``step`` (0-based) of ``total_steps``; see the module docstring."""
    warmup_steps = min(warmup_steps, total_steps)
    if step < warmup_steps:
        if warmup_steps == 1:
            return warmup_lr
        return warmup_lr + (peak_lr - warmup_lr) * step / (warmup_steps - 1)
    n = max(total_steps - warmup_steps, 1)
    i = min(step - warmup_steps, n - 1)  # steps past the planned end (e.g. a longer resumed run) stay at the last
    return min_lr + 0.5 * (peak_lr - min_lr) * (1 + math.cos(math.pi * i / n))


def param_groups(model: nn.Module, weight_decay: float, skip: set[str] | None = None) -> list[dict]:
    """Two AdamW groups: ``weight_decay`` on weight matrices, none on 1-d parameters and ``skip`` names.

    ``skip`` defaults to ``model.no_weight_decay()`` when the model has it. Frozen parameters are left out.
    """
    if skip is None:
        skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.95),
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; ``fused`` (one kernel for all parameters) defaults to on where supported."""
    if fused is None:
        fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), fused=fused)
