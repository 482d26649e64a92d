"""The MultiMAE reconstruction loss (ViSaRL Table II's "WeightedMSE"), on masked patches only.

Each output's term is an error over the pixels of its modality's hidden patches (MAE, He et al. 2022: visible
patches are not scored): squared error (``"mse"``) or absolute error (``"l1"``), chosen per output. The authors'
fork scores rgb with ``MaskedMSELoss`` and saliency with ``MaskedL1Loss``, and multiplies the saliency term by 10;
those are the modality table's defaults (:data:`visarl.mae.multimae.MODALITIES`). The total is the weighted sum of
the terms; the terms are returned for logging.

Targets live where the encoder's inputs do: rgb standardised with ImageNet statistics when the model's
``input_norm`` is ``"imagenet"`` (the fork's targets are its normalised inputs). With per-patch normalisation (MAE's
``norm_pix_loss``) the target patch is further standardised by its own mean and (unbiased) variance.

Reduction: ``"per_example"`` (MultiMAE's criterion) averages each example's hidden pixels, then the examples that
hide any; ``"pooled"`` (MAE's) averages every hidden patch of the batch, so examples with more hidden patches of a
modality count more. With Dirichlet masking that count varies from example to example, so the two differ.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

from visarl.mae.multimae import NORM_SUFFIX, MultiMAE, normalize_input, output_source
from visarl.mae.patches import patchify

LOSS_KINDS = ("mse", "l1")
REDUCTIONS = ("per_example", "pooled")


class LossOutput(NamedTuple):
    total: Tensor
    """Scalar: sum over outputs of weight * term."""
    terms: dict[str, Tensor]
    """Output name -> its unweighted masked error (scalar)."""


def normalize_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """Standardise each patch ``[B, N, P]`` over its own pixels and channels (MAE's per-patch targets).

    The variance is unbiased, as in MAE's and MultiMAE's ``target.var(dim=-1)``."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=True)
    return (patches - mean) / (var + eps).sqrt()


def masked_error(pred: Tensor, target: Tensor, hidden: Tensor, kind: str = "mse", reduction: str = "pooled") -> Tensor:
    """Error on hidden patches: ``pred, target [B, N, P]``, ``hidden [B, N]`` bool; 0 if nothing is hidden.

    ``kind``: ``"mse"`` squared or ``"l1"`` absolute per-pixel error. ``reduction``: see the module docstring.
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"loss kind {kind!r} is not one of {LOSS_KINDS}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"loss reduction {reduction!r} is not one of {REDUCTIONS}")
    diff = pred.float() - target.float()
    per_patch = (diff.pow(2) if kind == "mse" else diff.abs()).mean(dim=-1)  # [B, N]
    w = hidden.to(per_patch.dtype)
    if reduction == "pooled":
        return (per_patch * w).sum() / w.sum().clamp_min(1.0)
    count = w.sum(dim=1)  # [B]
    per_example = (per_patch * w).sum(dim=1) / count.clamp_min(1.0)
    scored = (count > 0).to(per_example.dtype)  # examples hiding nothing of this modality are skipped (nanmean)
    return (per_example * scored).sum() / scored.sum().clamp_min(1.0)


def masked_mse(pred: Tensor, target: Tensor, hidden: Tensor) -> Tensor:
    """Mean over all hidden patches of the batch of the per-patch MSE (MAE's pooled reduction)."""
    return masked_error(pred, target, hidden, "mse", "pooled")


class ReconstructionLoss(nn.Module):
    """``loss(preds, inputs, masks) -> LossOutput``; ``preds`` from :class:`MultiMAE`, ``inputs`` images in [0, 1].

    ``weights``: output name -> weight; ``kinds``: output name -> ``"mse"``/``"l1"`` (an output ``x_norm`` falls
    back to the entries of ``x``; unnamed outputs weigh 1 and use MSE). ``normalize``: outputs whose targets are
    per-patch normalised; outputs named ``*_norm`` always are. ``input_norm``: the model's input standardisation,
    applied to the targets too.
    """

    def __init__(
        self,
        patch_size: int,
        weights: Mapping[str, float] | None = None,
        normalize: Collection[str] = ("rgb",),
        eps: float = 1e-6,
        kinds: Mapping[str, str] | None = None,
        reduction: str = "per_example",
        input_norm: str = "none",
    ) -> None:
        super().__init__()
        self.patch_size, self.eps = patch_size, eps
        self.weights = dict(weights or {})
        self.kinds = dict(kinds or {})
        self.normalize = frozenset(normalize)
        self.reduction, self.input_norm = reduction, input_norm
        for name, kind in self.kinds.items():
            if kind not in LOSS_KINDS:
                raise ValueError(f"loss kind {kind!r} of output {name!r} is not one of {LOSS_KINDS}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"loss reduction {reduction!r} is not one of {REDUCTIONS}")

    @classmethod
    def for_model(cls, model: MultiMAE, norm_rgb: bool = True, reduction: str = "per_example") -> ReconstructionLoss:
        """The loss for ``model`` with its table weights and kinds. ``norm_rgb``: normalised rgb targets, unless the
        model has an ``rgb_norm`` output, which then takes the normalised targets while ``rgb`` keeps raw pixels."""
        has_norm_output = "rgb" + NORM_SUFFIX in model.outputs
        normalize = ("rgb",) if norm_rgb and not has_norm_output else ()
        return cls(
            model.patch_size, model.loss_weights(), normalize, kinds=model.loss_kinds(), reduction=reduction,
            input_norm=model.encoder.input_norm,
        )  # fmt: skip

    def _lookup(self, table: Mapping, name: str, default: object) -> object:
        return table.get(name, table.get(output_source(name), default))

    def kind(self, name: str) -> str:
        """``"mse"`` or ``"l1"`` for output ``name``."""
        return str(self._lookup(self.kinds, name, "mse"))

    def weight(self, name: str) -> float:
        return float(self._lookup(self.weights, name, 1.0))

    def is_normalized(self, name: str) -> bool:
        """Whether output ``name``'s targets are standardised per patch."""
        return name in self.normalize or name.endswith(NORM_SUFFIX)

    def model_space(self, name: str, image: Tensor) -> Tensor:
        """Modality ``name``'s image ``[B, C, H, W]`` in [0, 1] as the encoder saw it (rgb standardised or not)."""
        return normalize_input(name, image.float(), self.input_norm)

    def target(self, name: str, inputs: Mapping[str, Tensor]) -> Tensor:
        """The patches ``[B, N, p*p*C]`` output ``name`` is scored against."""
        src = output_source(name)
        target = patchify(self.model_space(src, inputs[src]), self.patch_size)
        if self.is_normalized(name):
            target = normalize_patches(target, self.eps)
        return target

    def forward(
        self, preds: Mapping[str, Tensor], inputs: Mapping[str, Tensor], masks: Mapping[str, Tensor]
    ) -> LossOutput:
        terms = {}
        total = torch.zeros((), device=next(iter(preds.values())).device)
        for name, pred in preds.items():
            hidden = masks[output_source(name)]
            terms[name] = masked_error(pred, self.target(name, inputs), hidden, self.kind(name), self.reduction)
            total = total + self.weight(name) * terms[name]
        return LossOutput(total, terms)


WeightedMSE = ReconstructionLoss
"""Table II's name for the loss (kept for callers that use it)."""
