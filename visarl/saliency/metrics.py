"""Saliency metrics as torchmetrics ``Metric`` s: F-measure and mean absolute error.

ViSaRL (Sec. III-A, Tables IV-VI) reports F_zeta with zeta^2 = 0.3 on binarised maps and MAE, "from the
original paper" (PiCANet, Liu et al. CVPR 2018), whose evaluation follows the salient-object-detection
convention: per-image statistics averaged over images. Both metrics keep sums as states with
``dist_reduce_fx="sum"``, so accumulating over batches and devices gives the same result as one big batch.

Maps are ``[B, H, W]`` or ``[B, 1, H, W]`` floats in [0, 1]; an image's own H, W may differ between updates.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


def _flatten_maps(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Check shapes and range; return ``[B, H*W]`` float views of both."""
    if preds.shape != target.shape:
        raise ValueError(f"preds and target shapes differ: {list(preds.shape)} vs {list(target.shape)}")
    if preds.ndim == 4 and preds.shape[1] == 1:
        preds, target = preds[:, 0], target[:, 0]
    if preds.ndim != 3:
        raise ValueError(f"expected maps [B, H, W] or [B, 1, H, W], got {list(preds.shape)}")
    preds, target = preds.float(), target.float()
    for name, t in (("preds", preds), ("target", target)):
        if t.numel() and (t.min() < 0 or t.max() > 1):
            raise ValueError(f"{name} must lie in [0, 1], got [{t.min().item():.4g}, {t.max().item():.4g}]")
    return preds.flatten(1), target.flatten(1)


def _precision_recall(tp: Tensor, n_pred: Tensor, n_true: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image precision and recall from counts (any matching shapes), with the empty-set conventions:
    nothing predicted -> precision 1 if the target is empty else 0; empty target -> recall 1 if nothing is
    predicted else 0. So an empty prediction of an empty target scores P = R = 1, and any other case with an
    empty side scores P = R = 0."""
    precision = torch.where(n_pred > 0, tp / n_pred.clamp(min=1), (n_true == 0).float())
    recall = torch.where(n_true > 0, tp / n_true.clamp(min=1), (n_pred == 0).float())
    return precision, recall


def _f_beta(precision: Tensor, recall: Tensor, beta2: float) -> Tensor:
    """``(1 + b2) P R / (b2 P + R)``, defined as 0 where ``P = R = 0``."""
    denom = beta2 * precision + recall
    return torch.where(denom > 0, (1 + beta2) * precision * recall / denom.clamp(min=1e-12), 0.0)


class FMeasure(Metric):
    """F-measure (F_beta, beta^2 = 0.3) of predicted saliency maps against binarised targets.

    ``compute()`` returns a dict of scalar tensors:

    - ``"adaptive"``: each image's prediction binarised at ``min(2 * mean(pred), 1)`` (the image's adaptive
      threshold), its F computed, then averaged over images.
    - ``"max"``: at each of ``num_thresholds`` uniform thresholds ``linspace(0, 1, num_thresholds)``, precision
      and recall are averaged over images, F is computed from the averages, and the maximum over thresholds is
      reported.

    Binarisation: the target is salient where ``target > target_threshold``; the prediction is salient where
    ``pred >= t`` and ``pred > 0`` (a zero pixel is never salient, so an all-zero prediction is empty even at
    threshold 0). Empty sets follow :func:`_precision_recall`: an image with an empty target scores F = 1 if the
    binarised prediction is empty too, else 0; an empty prediction of a non-empty target scores 0. Full maps need
    no special case (a full prediction of a full target is P = R = 1).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, beta2: float = 0.3, target_threshold: float = 0.5, num_thresholds: int = 256, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_thresholds < 2:
            raise ValueError(f"num_thresholds must be >= 2, got {num_thresholds}")
        self.beta2 = beta2
        self.target_threshold = target_threshold
        self.num_thresholds = num_thresholds
        self.register_buffer("thresholds", torch.linspace(0, 1, num_thresholds), persistent=False)
        self.add_state("adaptive_f_sum", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("precision_sum", torch.zeros(num_thresholds), dist_reduce_fx="sum")
        self.add_state("recall_sum", torch.zeros(num_thresholds), dist_reduce_fx="sum")
        self.add_state("n_images", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """``preds``, ``target``: ``[B, H, W]`` or ``[B, 1, H, W]`` in [0, 1]."""
        pred, true = _flatten_maps(preds, target)  # [B, N]
        true = true > self.target_threshold
        n_true = true.sum(1).float()  # [B]
        nonzero = pred > 0

        # Adaptive threshold, one per image.
        t = (2 * pred.mean(1, keepdim=True)).clamp(max=1)  # [B, 1]
        binary = (pred >= t) & nonzero
        p, r = _precision_recall((binary & true).sum(1).float(), binary.sum(1).float(), n_true)
        self.adaptive_f_sum += _f_beta(p, r, self.beta2).sum()

        # All thresholds at once: k = number of thresholds <= pred, so pred >= thresholds[i] iff i < k.
        thresholds = self.thresholds.to(pred.device)
        k = torch.bucketize(pred, thresholds, right=True) * nonzero  # [B, N] in 0..T
        bins = pred.new_zeros(pred.shape[0], self.num_thresholds + 1)
        n_pred_hist = bins.scatter_add(1, k, torch.ones_like(pred))  # [B, T+1] pixels per bin
        tp_hist = bins.scatter_add(1, k, true.float())
        # Count of pixels with k > i, for i = 0..T-1: reverse cumulative sum from bin i + 1.
        n_pred = n_pred_hist.flip(1).cumsum(1).flip(1)[:, 1:]  # [B, T]
        tp = tp_hist.flip(1).cumsum(1).flip(1)[:, 1:]
        p, r = _precision_recall(tp, n_pred, n_true[:, None])
        self.precision_sum += p.sum(0)
        self.recall_sum += r.sum(0)
        self.n_images += pred.shape[0]

    def compute(self) -> dict[str, Tensor]:
        n = self.n_images.float()
        precision, recall = self.precision_sum / n, self.recall_sum / n
        return {"adaptive": self.adaptive_f_sum / n, "max": _f_beta(precision, recall, self.beta2).max()}


class MeanAbsoluteError(Metric):
    """Mean absolute error between saliency maps: the mean over pixels of ``|pred - target|`` per image,
    averaged over images (images of different sizes count equally)."""

    is_differentiable = True
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("error_sum", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("n_images", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """``preds``, ``target``: ``[B, H, W]`` or ``[B, 1, H, W]`` in [0, 1]."""
        pred, true = _flatten_maps(preds, target)
        self.error_sum += (pred - true).abs().mean(1).sum()
        self.n_images += pred.shape[0]

    def compute(self) -> Tensor:
        return self.error_sum / self.n_images.float()
