"""PiCANet as a :class:`~visarl.core.saliency.SaliencySource`: saliency for frames never seen before.

ViSaRL predicts saliency online during RL with the trained PiCANet (Sec. III): the RL loop hands over a batch of
frames from its vectorized envs and gets uint8 maps back, in the same form as the maps the ``label`` stage
stores in the shards (``[B, 1, H, W]``, 0-255, frame resolution), so both go through the encoders alike.
The ``label`` stage uses this class too, so stored and online maps come from one code path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from visarl.core.saliency import SaliencySource
from visarl.saliency.picanet import PiCANet, load_picanet, to_frame_size, to_net_input

PRECISIONS = {"32": None, "32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
"""Accepted ``precision`` values (Lightning's names) -> autocast dtype (None: float32)."""


def resolve_device(accelerator: str) -> torch.device:
    """Lightning-style accelerator name ('auto', 'cpu', 'gpu', 'cuda', 'mps', or a device string) -> device."""
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if accelerator == "gpu":
        return torch.device("cuda")
    return torch.device(accelerator)


class PiCANetSaliency(SaliencySource):
    """Batched PiCANet inference under ``no_grad`` in eval mode: uint8 frames in, uint8 maps out.

    Frames are resized to the net's input size and the prediction back to the frame size (see
    :func:`~visarl.saliency.picanet.to_net_input`). ``precision`` 'bf16-mixed' or '16-mixed' runs the net under
    autocast. Large batches are split into chunks of ``batch_size`` frames to bound memory.
    """

    def __init__(
        self,
        net: PiCANet,
        device: str | torch.device = "cpu",
        precision: str = "32",
        batch_size: int = 256,
        channels_last: bool = True,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.dtype = PRECISIONS[precision]
        self.precision = precision
        self.batch_size = batch_size
        self.channels_last = channels_last
        self.net = net.to(self.device).eval()
        if channels_last:
            # oneDNN's convolutions are faster on NHWC tensors on the CPU (and cuDNN's on tensor cores).
            self.net = self.net.to(memory_format=torch.channels_last)
        for p in self.net.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "cpu", precision: str = "32", batch_size: int = 256
    ) -> PiCANetSaliency:
        """Load a PiCANet weights file written by the saliency stage (``picanet.pt``); ``ValueError`` naming the
        file for anything else."""
        return cls(load_picanet(path), device=device, precision=precision, batch_size=batch_size)

    @property
    def input_size(self) -> int:
        return self.net.input_size

    @torch.no_grad()
    def predict(self, rgb: Tensor) -> Tensor:
        """Frames uint8 ``[B, 3, H, W]`` (any device) -> float maps ``[B, 1, H, W]`` in [0, 1] on the net's device."""
        if rgb.dtype != torch.uint8 or rgb.ndim != 4 or rgb.shape[1] != 3:
            raise ValueError(f"expected uint8 frames [B, 3, H, W], got {rgb.dtype} {list(rgb.shape)}")
        h, w = rgb.shape[-2:]
        outs = []
        for start in range(0, len(rgb), self.batch_size):
            x = to_net_input(rgb[start : start + self.batch_size].to(self.device, non_blocking=True), self.input_size)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                final = self.net(x).final
            outs.append(to_frame_size(final.float(), h, w))
        if not outs:
            return torch.zeros(0, 1, h, w, device=self.device)
        return torch.cat(outs)

    def __call__(self, rgb: Tensor, states: np.ndarray | None = None) -> Tensor:
        """rgb uint8 ``[B, 3, H, W]`` -> saliency uint8 ``[B, 1, H, W]`` (0-255) on rgb's device; states unused."""
        maps = self.predict(rgb)
        return (maps * 255.0).round_().to(torch.uint8).to(rgb.device)
