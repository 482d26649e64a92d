"""Saliency stage: the PiCANet predictor, its metrics (F-measure, MAE), its training (`stage: saliency`),
pseudo-labelling of replay shards (`stage: label`) and the online saliency source for RL."""

from visarl.saliency.metrics import FMeasure, MeanAbsoluteError
from visarl.saliency.picanet import PiCANet, PiCANetOutput, deep_supervision_loss, load_picanet, save_picanet

__all__ = [
    "FMeasure",
    "MeanAbsoluteError",
    "PiCANet",
    "PiCANetOutput",
    "deep_supervision_loss",
    "load_picanet",
    "save_picanet",
]
