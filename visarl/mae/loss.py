"""WeightedMSE: the MultiMAE reconstruction loss (ViSaRL Table II), on masked patches only.

Each output's term is the mean squared error over the pixels of its modality's hidden patches (MAE, He et al. 2022:
visible patches are not scored). With per-patch normalisation (MAE's ``norm_pix_loss``) the target patch is
standardised by its own mean and variance, which MAE found gives better representations. The total is the
weighted sum of the terms; the terms are returned for logging.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

from visarl.mae.multimae import NORM_SUFFIX, MultiMAE, output_source
from visarl.mae.patches import patchify


class LossOutput(NamedTuple):
    total: Tensor
    """Scalar: sum over outputs of weight * term."""
    terms: dict[str, Tensor]
    """Output name -> its unweighted masked MSE (scalar)."""


def normalize_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """Standardise each patch ``[B, N, P]`` over its own pixels and channels (MAE's per-patch targets)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=False)
    return (patches - mean) / (var + eps).sqrt()


def masked_mse(pred: Tensor, target: Tensor, hidden: Tensor) -> Tensor:
    """Mean over hidden patches of the per-patch MSE: ``pred, target [B, N, P]``, ``hidden [B, N]`` bool.

    Pooled over the batch (MAE), so an example with more hidden patches counts more; 0 if nothing is hidden.
    """
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)  # [B, N]
    w = hidden.to(per_patch.dtype)
    return (per_patch * w).sum() / w.sum().clamp_min(1.0)


class WeightedMSE(nn.Module):
    """``loss(preds, inputs, masks) -> LossOutput``; ``preds`` from :class:`MultiMAE`, ``inputs`` the images.

    ``weights``: output name -> weight (an output ``x_norm`` falls back to the weight of ``x``). ``normalize``:
    outputs whose targets are per-patch normalised; outputs named ``*_norm`` always are.
    """

    def __init__(
        self,
        patch_size: int,
        weights: Mapping[str, float] | None = None,
        normalize: Collection[str] = ("rgb",),
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.patch_size, self.eps = patch_size, eps
        self.weights = dict(weights or {})
        self.normalize = frozenset(normalize)

    @classmethod
    def for_model(cls, model: MultiMAE, norm_rgb: bool = True) -> WeightedMSE:
        """The loss for ``model`` with its table weights. ``norm_rgb``: normalised rgb targets, unless the model
        has an ``rgb_norm`` output, which then takes the normalised targets while ``rgb`` keeps raw pixels."""
        has_norm_output = "rgb" + NORM_SUFFIX in model.outputs
        normalize = ("rgb",) if norm_rgb and not has_norm_output else ()
        return cls(model.patch_size, model.loss_weights(), normalize)

    def target(self, name: str, inputs: Mapping[str, Tensor]) -> Tensor:
        """The patches ``[B, N, p*p*C]`` output ``name`` is scored against."""
        target = patchify(inputs[output_source(name)], self.patch_size)
        if name in self.normalize or name.endswith(NORM_SUFFIX):
            target = normalize_patches(target.float(), self.eps)
        return target

    def forward(
        self, preds: Mapping[str, Tensor], inputs: Mapping[str, Tensor], masks: Mapping[str, Tensor]
    ) -> LossOutput:
        terms = {}
        total = torch.zeros((), device=next(iter(preds.values())).device)
        for name, pred in preds.items():
            src = output_source(name)
            terms[name] = masked_mse(pred, self.target(name, inputs), masks[src])
            total = total + self.weights.get(name, self.weights.get(src, 1.0)) * terms[name]
        return LossOutput(total, terms)
