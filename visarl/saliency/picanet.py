"""PiCANet: a VGG-16 U-Net with pixel-wise contextual attention in its decoder.

Liu, Han and Yang, "PiCANet: Learning Pixel-wise Contextual Attention for Saliency Detection", CVPR 2018
(https://arxiv.org/abs/1708.06433), as used by ViSaRL (Appendix E and G of the paper): the encoder is VGG-16,
every decoder cell upsamples the coarser decoder feature, fuses it with the encoder skip feature and attends
over context with a PiCANet module; each cell has a sigmoid side output trained by deep supervision.
ViSaRL removes the global-attention cells (0.1 s -> 0.01 s a frame, "little degradation"): ``global_cells``
is False by default here too.

Decoder layout for a 224 input (sizes scale with ``input_size``, which must be divisible by 32):

====  =======  ========  =====================  ========================================================
cell  map px   channels  skip feature           context module
====  =======  ========  =====================  ========================================================
0     7        512       pool5                  global (dilation 1), or a plain conv cell when off
1     14       512       conv5_3                global (dilation 2), or a plain conv cell when off
2     28       512       conv4_3                local, 7x7 window, dilation 2
3     56       256       conv3_3                local, 7x7 window, dilation 2
4     112      128       conv2_2                local, 7x7 window, dilation 2
5     224      64        conv1_2                local, 7x7 window, dilation 2
====  =======  ========  =====================  ========================================================

The original PiCANet keeps conv5 at stride 8 (dilated) and runs its two global cells at 28 px on fc7/conv5;
here the encoder is the stock torchvision VGG-16 (stride 32), so the two coarse cells sit at 7 and 14 px.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Slices of torchvision's vgg16().features ending at each skip feature: conv1_2, conv2_2, conv3_3, conv4_3,
# conv5_3 (after their ReLU) and pool5. Strides 1, 2, 4, 8, 16, 32.
_VGG_STAGES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30), (30, 31))


class PiCANetOutput(NamedTuple):
    """What :class:`PiCANet` returns."""

    final: Tensor
    """The finest side output, ``[B, 1, H, W]`` in [0, 1]: the predicted saliency map."""
    sides: tuple[Tensor, ...]
    """Every cell's side output, coarse to fine, ``[B, 1, H/32, W/32]`` ... ``[B, 1, H, W]``, in [0, 1]."""


def _scaled(channels: int, width_mult: float) -> int:
    return max(1, round(channels * width_mult))


class LocalPiCANet(nn.Module):
    """Local pixel-wise contextual attention (PiCANet paper, Sec. 3.2).

    Every pixel predicts ``K*K`` attention logits with a ``KxK`` dilated conv and a 1x1 conv, softmaxes them
    over its own dilated ``KxK`` window and returns the attention-weighted sum of the features in that window.
    Window positions outside the map are masked out of the softmax (the paper zero-pads instead, which lets
    attention leak onto padding), so the weights over the in-map positions sum to 1.
    """

    def __init__(self, channels: int, kernel_size: int = 7, dilation: int = 2, hidden: int = 128) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.pad = dilation * (kernel_size - 1) // 2
        # The logit predictor sees the same dilated window it attends over.
        self.logits = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size, padding=self.pad, dilation=dilation),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, kernel_size * kernel_size, 1),
        )

    def attention(self, x: Tensor) -> Tensor:
        """Attention weights ``[B, K*K, H, W]`` (window offsets in row-major order); 0 outside the map."""
        logits = self.logits(x)  # [B, K*K, H, W]
        h, w = x.shape[-2:]
        # valid[k, y, x]: window offset k of pixel (y, x) lies inside the map.
        ones = torch.ones(1, 1, h, w, device=x.device, dtype=logits.dtype)
        valid = F.unfold(ones, self.kernel_size, dilation=self.dilation, padding=self.pad).view(1, -1, h, w) > 0
        return logits.masked_fill(~valid, float("-inf")).softmax(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> attended context ``[B, C, H, W]``."""
        attn = self.attention(x)  # [B, K*K, H, W]
        h, w = x.shape[-2:]
        xp = F.pad(x, (self.pad,) * 4)  # [B, C, H + 2p, W + 2p]
        # Equivalent to F.unfold + weighted sum, but without materialising the [B, C*K*K, H*W] unfolded tensor
        # (630 MB at 224 px, 64 channels): one shifted view per window offset, accumulated in place.
        out = torch.zeros_like(x)
        d, k = self.dilation, self.kernel_size
        for i in range(k):
            for j in range(k):
                shifted = xp[:, :, i * d : i * d + h, j * d : j * d + w]
                out = out.addcmul_(attn[:, i * k + j : i * k + j + 1], shifted)
        return out


class ReNet(nn.Module):
    """ReNet (Visin et al. 2015) as PiCANet's global context encoder: a bidirectional LSTM along every row,
    then one along every column of its output, so each pixel's state has seen the whole map."""

    def __init__(self, channels: int, hidden: int, out_channels: int) -> None:
        super().__init__()
        self.rows = nn.LSTM(channels, hidden, batch_first=True, bidirectional=True)
        self.cols = nn.LSTM(2 * hidden, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Conv2d(2 * hidden, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, out_channels, H, W]``."""
        b, c, h, w = x.shape
        # All rows of all images are one LSTM batch: [B*H, W, C].
        r, _ = self.rows(x.permute(0, 2, 3, 1).reshape(b * h, w, c))
        r = r.reshape(b, h, w, -1).permute(0, 2, 1, 3).reshape(b * w, h, -1)  # columns: [B*W, H, 2h]
        s, _ = self.cols(r)
        s = s.reshape(b, w, h, -1).permute(0, 3, 2, 1)  # [B, 2h, H, W]
        return self.proj(s)


class GlobalPiCANet(nn.Module):
    """Global pixel-wise contextual attention (PiCANet paper, Sec. 3.1).

    The context is the whole map sampled with a stride of ``dilation`` (``n x n`` positions, ``n =
    ceil(size / dilation)``); a ReNet predicts ``n*n`` logits per pixel, softmaxed into attention over them.
    The map size is fixed at construction because the number of attention logits depends on it.
    """

    def __init__(self, channels: int, size: int, dilation: int = 1, hidden: int = 256) -> None:
        super().__init__()
        self.size = size
        self.dilation = dilation
        self.n = math.ceil(size / dilation)
        self.renet = ReNet(channels, hidden, self.n * self.n)

    def attention(self, x: Tensor) -> Tensor:
        """Attention weights ``[B, n*n, H, W]`` over the sampled positions (row-major)."""
        if x.shape[-2:] != (self.size, self.size):
            raise ValueError(f"global attention built for {self.size}x{self.size} maps, got {tuple(x.shape[-2:])}")
        return self.renet(x).softmax(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> attended context ``[B, C, H, W]``."""
        b, c, h, w = x.shape
        attn = self.attention(x).reshape(b, self.n * self.n, h * w)  # [B, n*n, H*W]
        context = x[:, :, :: self.dilation, :: self.dilation].reshape(b, c, self.n * self.n)  # [B, C, n*n]
        return torch.bmm(context, attn).reshape(b, c, h, w)


class DecoderCell(nn.Module):
    """One PiCANet decoder cell (PiCANet paper, Fig. 2): BN+ReLU on the encoder skip ``En``, concatenate the
    2x upsampled coarser decoder feature, 1x1 conv to ``F``; with attention, concatenate ``F`` and its attended
    context and 1x1 conv to ``Dec``, else (plain cell) a 3x3 conv of ``F`` to ``Dec`` (the 3x3 stands in for the
    spatial context the removed attention gave); BN+ReLU; a 1x1 conv and sigmoid give the side output."""

    def __init__(self, channels: int, out_channels: int, context: nn.Module | None) -> None:
        super().__init__()
        self.bn_en = nn.BatchNorm2d(channels)
        self.fuse = nn.Conv2d(2 * channels, channels, 1)
        self.context = context
        if context is None:
            self.out = nn.Conv2d(channels, out_channels, 3, padding=1)
        else:
            self.out = nn.Conv2d(2 * channels, out_channels, 1)
        self.bn_out = nn.BatchNorm2d(out_channels)
        self.side = nn.Conv2d(out_channels, 1, 1)

    def forward(self, en: Tensor, dec: Tensor | None) -> tuple[Tensor, Tensor]:
        """``en [B, C, H, W]``, ``dec [B, C, H/2, W/2]`` or None (coarsest cell: ``En`` is fused with itself,
        as in the reference implementation) -> ``(Dec [B, C_out, H, W], side map [B, 1, H, W] in [0, 1])``."""
        en = F.relu(self.bn_en(en))
        if dec is None:
            dec = en
        elif dec.shape[-2:] != en.shape[-2:]:
            dec = F.interpolate(dec, size=en.shape[-2:], mode="bilinear", align_corners=False)
        f = F.relu(self.fuse(torch.cat([en, dec], dim=1)))  # [B, C, H, W]
        if self.context is not None:
            f = torch.cat([f, self.context(f)], dim=1)  # [B, 2C, H, W]
        out = F.relu(self.bn_out(self.out(f)))
        return out, torch.sigmoid(self.side(out))


class PiCANet(nn.Module):
    """PiCANet saliency predictor: ``[B, 3, H, W]`` RGB in [0, 1] -> :class:`PiCANetOutput`.

    ImageNet mean/std normalisation happens inside the module, so callers pass raw [0, 1] images.

    Args:
        input_size: side of the square input, divisible by 32 (paper: 224); fixes the global cells' map sizes.
        global_cells: use the two global-attention cells (original PiCANet); False as in ViSaRL.
        width_mult: scales every channel count (encoder, decoder, attention hidden sizes); 1.0 is the paper's
            network, small values give a fast test-size model.
        local_kernel, local_dilation: the local attention window (7x7, dilation 2 as in PiCANet).
        global_dilations: sampling stride of the global context in the 7 px and 14 px cells.
        weights_path: a local VGG-16 state dict (torchvision's full model or its ``features``) loaded into the
            encoder with ``torch.load(weights_only=True)``; nothing is ever downloaded. None: random init.
    """

    def __init__(
        self,
        input_size: int = 224,
        global_cells: bool = False,
        width_mult: float = 1.0,
        local_kernel: int = 7,
        local_dilation: int = 2,
        global_dilations: tuple[int, int] = (1, 2),
        weights_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        if input_size < 32 or input_size % 32 != 0:
            raise ValueError(f"input_size must be a positive multiple of 32, got {input_size}")
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        self.input_size = input_size
        self.global_cells = global_cells

        # torchvision.models.vgg16(weights=None).features, built without the 102M-parameter classifier that
        # vgg16() would also initialise and we would throw away (seconds on a CPU): the same make_layers call
        # and the same init as torchvision's VGG. Its state-dict keys match torchvision's ``features.*``.
        cfg = [v if v == "M" else _scaled(v, width_mult) for v in torchvision.models.vgg.cfgs["D"]]
        self.encoder = torchvision.models.vgg.make_layers(cfg)
        for m in self.encoder.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        if weights_path is not None:
            self._load_encoder(Path(weights_path))

        skip_channels = [_scaled(c, width_mult) for c in (512, 512, 512, 256, 128, 64)]  # coarse to fine
        out_channels = skip_channels[1:] + skip_channels[-1:]
        cells = []
        for level, (c, c_out) in enumerate(zip(skip_channels, out_channels, strict=True)):
            context: nn.Module | None
            if level < 2:
                # The two coarse cells: global attention when on; otherwise no context module (plain conv cell).
                size = input_size // 2 ** (5 - level)
                context = (
                    GlobalPiCANet(c, size, global_dilations[level], _scaled(256, width_mult)) if global_cells else None
                )
            else:
                context = LocalPiCANet(c, local_kernel, local_dilation, _scaled(128, width_mult))
            cells.append(DecoderCell(c, c_out, context))
        self.decoder = nn.ModuleList(cells)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _load_encoder(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # unpickling refused, not a torch file, missing file
            raise ValueError(f"{path}: not a loadable VGG-16 state dict ({e})") from e
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
        if any(k.startswith("features.") for k in state):  # a full torchvision vgg16 state dict
            state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        try:
            self.encoder.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"{path}: does not match the VGG-16 encoder: {e}") from e

    def forward(self, x: Tensor) -> PiCANetOutput:
        """``x [B, 3, S, S]`` float RGB in [0, 1], ``S == input_size``."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"expected input [B, 3, {self.input_size}, {self.input_size}], got {list(x.shape)}")
        h = (x - self.mean) / self.std
        skips = []
        for start, end in _VGG_STAGES:
            h = self.encoder[start:end](h)
            skips.append(h)  # strides 1, 2, 4, 8, 16, 32
        dec = None
        sides = []
        for cell, en in zip(self.decoder, reversed(skips), strict=True):
            dec, side = cell(en, dec)
            sides.append(side)
        return PiCANetOutput(final=sides[-1], sides=tuple(sides))


def deep_supervision_loss(
    sides: Sequence[Tensor],
    target: Tensor,
    weights: Sequence[float] = (0.5, 0.8, 0.8, 1.0),
    kind: str = "bce",
) -> Tensor:
    """Weighted sum over side outputs of the loss against the target resized (area average) to each side.

    ``sides``: coarse-to-fine maps ``[B, 1, h, w]`` in [0, 1]; ``target``: ``[B, 1, H, W]`` or ``[B, H, W]``
    in [0, 1] (soft targets are fine). ``weights`` pair with the finest sides; when there are fewer weights than
    sides, the coarser sides take ``weights[0]``, so the default gives (0.5, 0.5, 0.5, 0.8, 0.8, 1.0) for
    PiCANet's six cells, the loss ratios of the public PiCANet implementation.

    ``kind="bce"`` (default) is PiCANet's per-pixel binary cross-entropy, which Table III says ViSaRL follows
    ("following [8]"); its "WeightedMSE" entry repeats Table II's MultiMAE loss, so we read "weighted" as these
    per-side weights. ``kind="mse"`` gives the weighted squared-error reading. The loss runs in float32 outside
    autocast, since BCE on probabilities is not autocast-safe.
    """
    if kind not in ("bce", "mse"):
        raise ValueError(f"kind must be 'bce' or 'mse', got {kind!r}")
    if len(weights) > len(sides):
        raise ValueError(f"{len(weights)} weights for {len(sides)} side outputs")
    if target.ndim == 3:
        target = target.unsqueeze(1)
    weights = [weights[0]] * (len(sides) - len(weights)) + list(weights)
    total = sides[0].new_zeros((), dtype=torch.float32)
    with torch.autocast(device_type=target.device.type, enabled=False):
        target = target.float()
        for side, w in zip(sides, weights, strict=True):
            t = target if side.shape[-2:] == target.shape[-2:] else F.interpolate(target, side.shape[-2:], mode="area")
            p = side.float()
            loss = F.binary_cross_entropy(p, t) if kind == "bce" else F.mse_loss(p, t)
            total = total + w * loss
    return total
