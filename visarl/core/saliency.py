"""The saliency-source protocol: where the saliency maps of new frames come from.

The RL loop, the probe and the ``label`` stage ask a :class:`SaliencySource` for the maps of a batch of frames
and do not care who answers: the trained PiCANet (:class:`visarl.saliency.online.PiCANetSaliency`) or the
oracle that draws blobs at projected keypoints (:class:`visarl.rl.saliency_source.OracleSaliency`). The protocol
lives in the bottom layer so that a predictor need not know the agent that consumes it, nor the agent the
predictor.

Maps are uint8 ``[B, 1, H, W]`` (0-255), the form stored in the replay shards, so stored and online maps go
through the encoders identically.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: importing visarl.core stays free of torch
    import numpy as np
    from torch import Tensor


class SaliencySource(ABC):
    """Maps a batch of frames (and optionally the simulator states behind them) to saliency maps."""

    @abstractmethod
    def __call__(self, rgb: Tensor, states: np.ndarray | None) -> Tensor:
        """rgb uint8 [B, 3, H, W], states [B, S] or None -> saliency uint8 [B, 1, H, W] on rgb's device."""
