"""Saliency metrics as torchmetrics ``Metric`` s: F-measure and mean absolute error, as PySODMetrics computes them.

ViSaRL (Sec. III-A, Tables IV-VI) reports F_zeta with zeta^2 = 0.3 on binarised maps and MAE, "from the
original paper" (PiCANet, Liu et al. CVPR 2018), whose evaluation follows the salient-object-detection
convention: per-image statistics averaged over images. The definitions here are PySODMetrics'
(``py_sod_metrics.Fmeasure`` and ``MAE``, called with ``normalize=False``: float predictions in [0, 1] and a
boolean ground truth), which the tests check number for number:

- Ground truth: salient where ``target > target_threshold`` (128.5/255: PySODMetrics' ``gt > 128`` on 0-255 maps).
- Adaptive F: each image's prediction binarised at ``pred >= min(2 * mean(pred), 1)``; F = 0 where the binarised
  prediction and the ground truth do not overlap (an empty ground truth always scores 0); averaged over images.
- Max F: the prediction is quantised to ``floor(255 * pred)`` and binarised at each of the 256 levels
  (``q >= 255, ..., q >= 0``: every pixel is salient at level 0, zeros included); each image's F at each level
  (0 where no true positive), averaged over images into a mean F curve, whose maximum is reported.
- MAE: the mean over pixels of ``|pred - gt|`` against the binarised ground truth, averaged over images
  (``MeanAbsoluteError(target_threshold=GT_THRESHOLD)``; its default compares against the soft map).

Where an older convention differs, both are available: ``FMeasure`` also returns ``"max_mean_pr"``, the max over
levels of F computed from image-averaged precision and recall (the PR-curve convention of older MATLAB
benchmarks), and ``MeanAbsoluteError()`` compares against the soft map (the annotations here are soft Gaussian
maps; map-to-map comparisons such as bf16 vs fp32 predictions need it too). The saliency stage logs and tabulates
PySODMetrics' numbers (``val/f_max``, ``val/f_adaptive``, ``val/mae``) and adds ``val/mae_soft``.

Both metrics keep sums as states with ``dist_reduce_fx="sum"``, so accumulating over batches and devices gives the
same result as one big batch. Maps are ``[B, H, W]`` or ``[B, 1, H, W]`` floats in [0, 1] (NaN is refused); an
image's own H, W may differ between updates.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

GT_THRESHOLD = 128.5 / 255
"""Ground truth is salient above this: on maps stored as 0-255 (``v / 255``, any float precision) it is PySODMetrics'
``gt > 128``; halfway between two levels, so float rounding of ``128 / 255`` cannot flip a pixel."""
LEVELS = 256
"""Binarisation levels of the F curve: ``floor(255 * pred) >= k`` for k = 0..255, as PySODMetrics."""


def _flatten_maps(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Check shapes, finiteness and range; return ``[B, H*W]`` float64 views of both."""
    if preds.shape != target.shape:
        raise ValueError(f"preds and target shapes differ: {list(preds.shape)} vs {list(target.shape)}")
    if preds.ndim == 4 and preds.shape[1] == 1:
        preds, target = preds[:, 0], target[:, 0]
    if preds.ndim != 3:
        raise ValueError(f"expected maps [B, H, W] or [B, 1, H, W], got {list(preds.shape)}")
    # float64 as PySODMetrics computes, so thresholds and quantisation agree to the last pixel.
    preds, target = preds.double(), target.double()
    for name, t in (("preds", preds), ("target", target)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} has NaN or infinite values")
        if t.numel() and (t.min() < 0 or t.max() > 1):
            raise ValueError(f"{name} must lie in [0, 1], got [{t.min().item():.4g}, {t.max().item():.4g}]")
    return preds.flatten(1), target.flatten(1)


def _f_beta(tp: Tensor, n_pred: Tensor, n_true: Tensor, beta2: float) -> tuple[Tensor, Tensor, Tensor]:
    """PySODMetrics' precision ``tp / max(n_pred, 1)``, recall ``tp / max(n_true, 1)`` and F (0 where tp = 0)."""
    precision = tp / n_pred.clamp(min=1)
    recall = tp / n_true.clamp(min=1)
    return precision, recall, _f_of(precision, recall, beta2)


def _f_of(precision: Tensor, recall: Tensor, beta2: float) -> Tensor:
    """``(1 + b2) P R / (b2 P + R)``, 0 where ``P R = 0``."""
    numerator = (1 + beta2) * precision * recall
    return torch.where(numerator > 0, numerator / (beta2 * precision + recall).clamp(min=1e-12), 0.0)


class FMeasure(Metric):
    """F-measure (F_beta, beta^2 = 0.3) of predicted saliency maps against binarised targets (PySODMetrics).

    ``compute()`` returns a dict of scalar tensors: ``"adaptive"`` (mean adaptive F), ``"max"`` (max of the mean
    F curve), ``"mean"`` (mean of the mean F curve) and ``"max_mean_pr"`` (max over levels of F from the
    image-averaged precision and recall; not PySODMetrics' max F). Definitions in the module docstring.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, beta2: float = 0.3, target_threshold: float = GT_THRESHOLD, **kwargs) -> None:
        super().__init__(**kwargs)
        self.beta2 = beta2
        self.target_threshold = target_threshold
        self.add_state("adaptive_f_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("f_curve_sum", torch.zeros(LEVELS, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("precision_sum", torch.zeros(LEVELS, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("recall_sum", torch.zeros(LEVELS, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_images", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """``preds``, ``target``: ``[B, H, W]`` or ``[B, 1, H, W]`` in [0, 1]."""
        pred, true_soft = _flatten_maps(preds, target)  # [B, N] float64
        true = true_soft > self.target_threshold
        n_true = true.sum(1).double()  # [B]

        # Adaptive threshold, one per image.
        t = (2 * pred.mean(1, keepdim=True)).clamp(max=1)  # [B, 1]
        binary = pred >= t
        _, _, f = _f_beta((binary & true).sum(1).double(), binary.sum(1).double(), n_true, self.beta2)
        self.adaptive_f_sum += f.sum()

        # All 256 levels at once: a histogram of the quantised prediction, then counts of pixels at or above each
        # level by a reverse cumulative sum (index k: q >= k).
        q = (pred * 255).floor().long().clamp(0, LEVELS - 1)  # [B, N]
        bins = pred.new_zeros(pred.shape[0], LEVELS)
        n_pred = bins.scatter_add(1, q, torch.ones_like(pred)).flip(1).cumsum(1).flip(1)  # [B, 256]
        tp = bins.scatter_add(1, q, true.double()).flip(1).cumsum(1).flip(1)
        p, r, f = _f_beta(tp, n_pred, n_true[:, None], self.beta2)
        self.f_curve_sum += f.sum(0)
        self.precision_sum += p.sum(0)
        self.recall_sum += r.sum(0)
        self.n_images += pred.shape[0]

    def compute(self) -> dict[str, Tensor]:
        n = self.n_images.double()
        curve = self.f_curve_sum / n
        mean_pr_f = _f_of(self.precision_sum / n, self.recall_sum / n, self.beta2)
        return {
            "adaptive": (self.adaptive_f_sum / n).float(),
            "max": curve.max().float(),
            "mean": curve.mean().float(),
            "max_mean_pr": mean_pr_f.max().float(),
        }


class MeanAbsoluteError(Metric):
    """Mean absolute error between saliency maps: the mean over pixels of ``|pred - gt|`` per image, averaged over
    images (images of different sizes count equally). ``gt`` is the soft target itself (default), or the target
    binarised at ``target_threshold``: ``GT_THRESHOLD`` gives PySODMetrics' MAE."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, target_threshold: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.target_threshold = target_threshold
        self.add_state("error_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_images", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """``preds``, ``target``: ``[B, H, W]`` or ``[B, 1, H, W]`` in [0, 1]."""
        pred, true = _flatten_maps(preds, target)
        if self.target_threshold is not None:
            true = (true > self.target_threshold).double()
        self.error_sum += (pred - true).abs().mean(1).sum()
        self.n_images += pred.shape[0]

    def compute(self) -> Tensor:
        return (self.error_sum / self.n_images.double()).float()
