"""Saliency stage: the PiCANet predictor, its metrics (F-measure, MAE) and training/labelling around them."""

from visarl.saliency.metrics import FMeasure, MeanAbsoluteError
from visarl.saliency.picanet import PiCANet, PiCANetOutput, deep_supervision_loss

__all__ = ["FMeasure", "MeanAbsoluteError", "PiCANet", "PiCANetOutput", "deep_supervision_loss"]
