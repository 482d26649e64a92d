"""PiCANet: a dilated VGG-16 U-Net with pixel-wise contextual attention in its decoder.

Liu, Han and Yang, "PiCANet: Learning Pixel-wise Contextual Attention for Saliency Detection", CVPR 2018
(https://arxiv.org/abs/1708.06433), VGG-16 version, as used by ViSaRL (Appendix E and G of the paper).

Encoder (the Caffe model ``VGG_8s_75G432LP`` of Liu et al.): VGG-16 kept at stride 8 for its deep layers. pool4
and pool5 are 3x3 max pools with stride 1 (padding 1), conv5_1..5_3 are dilated by 2, and fc6/fc7 become convs:
fc6 3x3 with 1024 channels and dilation 12 (then dropout 0.5), fc7 1x1 with 1024 channels. The VGG part keeps
torchvision's module indices, so torchvision's VGG-16 state dict loads into it; fc6/fc7 start random.

Decoder: coarse to fine, one cell per encoder feature. Each cell takes an encoder feature ``En`` (BN + ReLU),
fuses it with the 2x upsampled output of the previous cell by a 1x1 conv into ``F`` (the first cell has no
previous output: ``F`` is ``En`` itself), attends over context with a PiCANet module, concatenates ``F`` and its
attended context, and a 1x1 conv + BN + ReLU gives the cell's output ``Dec``; a 1x1 conv and a sigmoid give its
side output, trained by deep supervision. The finest cell (224 px) has no attention and no ``Dec``: its side
output is a 1x1 conv of ``F`` (the "7,5 G; 4,3,2 L" of Liu et al.'s model name: nothing at conv1). Two decoders:

``decoder="authors"`` (default): the ViSaRL authors' lighter decoder (aliang8/visarl, ``picanet_cfg[2]`` in
``visarl/train_picanet.py``, used by their README's training command and by ``add_saliency_to_dataset.py``): cells
from conv4_3 onward, local attention at 28, 56 and 112 px, none at 224, no conv5 / fc6 / fc7 and no global cells
(ViSaRL Appendix E: removing the global cells took inference from 0.1 s to 0.01 s a frame with "little
degradation"). The encoder stops at conv4_3, since nothing reads the deeper layers.

``decoder="full"``: the full PiCANet of Liu et al.: global attention on fc7 and conv5_3, local on conv4_3,
conv3_3 and conv2_2, none at conv1_2. For a 224 input:

====  =======  ==========  ===============  ============  ============================================  ========
cell  map px   En          En / F channels  Dec channels  context                                       decoder
====  =======  ==========  ===============  ============  ============================================  ========
-     28       fc7         1024             512           global (ReNet, 10x10 positions, dilation 3)   full
-     28       conv5_3     512              512           global (same)                                 full
0     28       conv4_3     512              256           local, 7x7 window, dilation 2                 both
1     56       conv3_3     256              128           local, 7x7 window, dilation 2                 both
2     112      conv2_2     128              64            local, 7x7 window, dilation 2                 both
3     224      conv1_2     64               (side only)   none                                          both
====  =======  ==========  ===============  ============  ============================================  ========

In the authors' decoder the conv4_3 cell is the first (no fused previous output). Sizes scale with
``input_size`` (a multiple of 8).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visarl.core.io import atomic_torch_save

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_FORMAT = "visarl-picanet"
"""``format`` entry of the plain weights file written by :func:`save_picanet`."""

DECODERS = ("authors", "full")
"""Decoder variants: the ViSaRL authors' lighter decoder and the full PiCANet of Liu et al. (module docstring)."""

# Slices of the encoder's VGG part ending at each skip feature: conv1_2, conv2_2, conv3_3, conv4_3 and conv5_3
# (after their ReLU) and pool5. Strides 1, 2, 4, 8, 8, 8.
_VGG_STAGES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30), (30, 31))
# VGG-16 "D": channels per conv, "M" a 2x2 stride-2 pool, "m" a 3x3 stride-1 pool (pool4, pool5 kept at stride 8).
_VGG_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "m", 512, 512, 512, "m")
# Per decoder: how many of the VGG stages the encoder builds, and each cell's context, coarse to fine
# ("G" global, "L" local, "-" none: the finest cell, whose side output is read straight off F).
_DECODER_LAYOUT = {"authors": (4, "LLL-"), "full": (6, "GGLLL-")}


class PiCANetOutput(NamedTuple):
    """What :class:`PiCANet` returns."""

    final: Tensor
    """The finest side output, ``[B, 1, H, W]`` in [0, 1]: the predicted saliency map."""
    sides: tuple[Tensor, ...]
    """Every cell's side output, coarse to fine: ``[B, 1, H/8, W/8]`` (one for the authors' decoder, three for the
    full one), then ``H/4``, ``H/2``, ``H``."""


def side_strides(decoder: str) -> tuple[int, ...]:
    """Stride of each side output relative to the input, coarse to fine: (8, 4, 2, 1) or (8, 8, 8, 4, 2, 1)."""
    if decoder not in _DECODER_LAYOUT:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    stages = _DECODER_LAYOUT[decoder][0]
    return tuple(min(8, 2**i) for i in range(stages))[::-1]


def _scaled(channels: int, width_mult: float) -> int:
    return max(1, round(channels * width_mult))


def dilated_vgg16(width_mult: float = 1.0, depth: int | None = None) -> nn.Sequential:
    """VGG-16 conv layers at stride 8 (pool4/pool5 stride 1, conv5 dilated by 2), torchvision's module indices.

    Module ``i`` here is module ``i`` of ``torchvision.models.vgg16().features``, so their state dicts match
    (pools have no parameters); torchvision's init (Kaiming normal, fan out, zero bias). ``depth`` keeps only the
    first modules (23: up to conv4_3 and its ReLU; None: all 31, up to pool5).
    """
    layers: list[nn.Module] = []
    in_ch, dilation = 3, 1
    for v in _VGG_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        elif v == "m":
            layers.append(nn.MaxPool2d(3, stride=1, padding=1))
            dilation = 2  # every conv after pool4 keeps the stride-16 receptive field at stride 8
        else:
            out_ch = _scaled(int(v), width_mult)
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
            in_ch = out_ch
    net = nn.Sequential(*layers[:depth])
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return net


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
        return _LocalAggregate.apply(x, attn.to(x.dtype), self.kernel_size, self.dilation)


class _LocalAggregate(torch.autograd.Function):
    """``out[b, c, y, x] = sum_k attn[b, k, y, x] * x_pad[b, c, y + i_k d, x + j_k d]``: the local attention's
    weighted sum over each pixel's dilated ``KxK`` window, the same as ``F.unfold`` + a weighted sum.

    Neither pass materialises the ``[B, C*K*K, H*W]`` unfolded tensor (630 MB at 224 px and 64 channels for one
    image): the forward accumulates one shifted view of the padded input per window offset, and the backward
    scatters the gradient back into one padded buffer the same way. (Autograd through the forward's 49 slices
    would allocate a zero-filled padded tensor per slice instead, which made training steps ~10x slower.)
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, attn: Tensor, k: int, d: int) -> Tensor:
        pad = d * (k - 1) // 2
        h, w = x.shape[-2:]
        xp = F.pad(x, (pad,) * 4)  # [B, C, H + 2p, W + 2p]
        out = torch.zeros_like(x)
        for i in range(k):
            for j in range(k):
                out.addcmul_(attn[:, i * k + j : i * k + j + 1], xp[:, :, i * d : i * d + h, j * d : j * d + w])
        ctx.save_for_backward(x, attn)
        ctx.k, ctx.d = k, d
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        x, attn = ctx.saved_tensors
        k, d = ctx.k, ctx.d
        pad = d * (k - 1) // 2
        h, w = x.shape[-2:]
        grad = grad.contiguous()
        grad_x = grad_attn = None
        if ctx.needs_input_grad[0]:
            gxp = x.new_zeros(x.shape[0], x.shape[1], h + 2 * pad, w + 2 * pad)
            for i in range(k):
                for j in range(k):
                    gxp[:, :, i * d : i * d + h, j * d : j * d + w].addcmul_(grad, attn[:, i * k + j : i * k + j + 1])
            grad_x = gxp[:, :, pad : pad + h, pad : pad + w]
        if ctx.needs_input_grad[1]:
            xp = F.pad(x, (pad,) * 4)
            grad_attn = torch.stack(
                [(grad * xp[:, :, i * d : i * d + h, j * d : j * d + w]).sum(1) for i in range(k) for j in range(k)],
                dim=1,
            )  # [B, K*K, H, W]
        return grad_x, grad_attn, None, None


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
    The authors' network attends over 10x10 positions of its 28x28 maps (dilation 3). The map size is fixed at
    construction because the number of attention logits depends on it.
    """

    def __init__(self, channels: int, size: int, dilation: int = 3, hidden: int = 256) -> None:
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
    """One PiCANet decoder cell (PiCANet paper, Fig. 2; layout in the module docstring).

    ``first=True`` makes the coarsest cell, which has no previous decoder output to fuse: ``F = ReLU(BN(En))``.
    ``out_channels=None`` makes the finest cell: no attention and no ``Dec``; its side output is a 1x1 conv of
    ``F`` (the authors' and Liu et al.'s last cell), and it returns ``F`` as its output. ``context=None`` with
    ``out_channels`` set makes a plain cell: ``Dec = ReLU(BN(conv1x1(F)))``.
    """

    def __init__(
        self,
        channels: int,
        out_channels: int | None,
        context: nn.Module | None,
        first: bool = False,
        prior: float = 0.5,
    ) -> None:
        super().__init__()
        if out_channels is None and context is not None:
            raise ValueError("the finest cell (out_channels=None) has no attention: context must be None")
        self.bn_en = nn.BatchNorm2d(channels)
        self.fuse = None if first else nn.Conv2d(2 * channels, channels, 1)
        self.context = context
        self.out: nn.Conv2d | None = None
        self.bn_out: nn.BatchNorm2d | None = None
        if out_channels is not None:
            self.out = nn.Conv2d((1 if context is None else 2) * channels, out_channels, 1)
            self.bn_out = nn.BatchNorm2d(out_channels)
        self.side = nn.Conv2d(channels if out_channels is None else out_channels, 1, 1)
        nn.init.constant_(self.side.bias, math.log(prior / (1 - prior)))

    def forward(self, en: Tensor, dec: Tensor | None) -> tuple[Tensor, Tensor]:
        """``en [B, C, H, W]``, ``dec [B, C, h, w]`` (the previous cell's output, upsampled to H, W here) or None
        for the first cell -> ``(Dec [B, C_out, H, W], side map [B, 1, H, W] in [0, 1])``."""
        f = F.relu(self.bn_en(en))
        if self.fuse is not None:
            if dec is None:
                raise ValueError("this decoder cell fuses the previous cell's output: dec must be given")
            if dec.shape[-2:] != en.shape[-2:]:
                dec = F.interpolate(dec, size=en.shape[-2:], mode="bilinear", align_corners=False)
            f = F.relu(self.fuse(torch.cat([f, dec], dim=1)))  # [B, C, H, W]
        if self.out is None:
            return f, torch.sigmoid(self.side(f))
        if self.context is not None:
            f = torch.cat([f, self.context(f)], dim=1)  # [B, 2C, H, W]
        out = F.relu(self.bn_out(self.out(f)))
        return out, torch.sigmoid(self.side(out))


class PiCANet(nn.Module):
    """PiCANet saliency predictor: ``[B, 3, S, S]`` RGB in [0, 1] -> :class:`PiCANetOutput`.

    ImageNet mean/std normalisation happens inside the module, so callers pass raw [0, 1] images.

    Args:
        input_size: side ``S`` of the square input, a multiple of 8 (paper: 224); fixes the global cells' maps.
        decoder: ``"authors"`` (the ViSaRL authors' lighter decoder: conv4_3 onward, local cells at S/8, S/4,
            S/2, no global cells, no conv5/fc6/fc7) or ``"full"`` (the full PiCANet of Liu et al.: global cells on
            fc7 and conv5_3, then the same local cells); see the module docstring.
        width_mult: scales every channel count (encoder, decoder, attention hidden widths); 1.0 is the paper's
            network, small values give a fast test-size model.
        local_kernel, local_dilation: the local attention window (7x7, dilation 2 as in PiCANet).
        local_hidden: channels of the local attention's 7x7 logit conv (PiCANet: 128), before ``width_mult``.
        global_dilation: sampling stride of the global context (PiCANet: 3, i.e. 10x10 positions of 28x28);
            ``full`` only.
        global_hidden: ReNet LSTM width of the global cells (PiCANet: 256), before ``width_mult``; ``full`` only.
        fc6_dilation: dilation of the fc6 conv (PiCANet: 12 on 28x28 maps; on maps smaller than 13 px only its
            centre tap sees the map, so small inputs may want a smaller value); ``full`` only.
        dropout: dropout after fc6 (PiCANet: 0.5); ``full`` only.
        side_prior: initial output of every side output (the bias of its 1x1 conv is the prior's log-odds, as
            RetinaNet initialises its classifier): salient pixels are a few percent of a frame, and starting the
            sides at 0.5 (PiCANet's zero bias) spends the first epochs of a 24-frame training learning that.
        backbone_weights: initialisation of the encoder's VGG part (:func:`resolve_backbone_state`):
            ``"imagenet"`` (torchvision's ImageNet VGG-16, from the torch hub cache, downloaded there once), a path
            to a local torchvision VGG-16 state dict, or None / ``""`` for random init (fc6/fc7 always start
            random). ImageNet weights fit ``width_mult=1`` only.
    """

    def __init__(
        self,
        input_size: int = 224,
        decoder: str = "authors",
        width_mult: float = 1.0,
        local_kernel: int = 7,
        local_dilation: int = 2,
        local_hidden: int = 128,
        global_dilation: int = 3,
        global_hidden: int = 256,
        fc6_dilation: int = 12,
        dropout: float = 0.5,
        side_prior: float = 0.05,
        backbone_weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        if input_size < 8 or input_size % 8 != 0:
            raise ValueError(f"input_size must be a positive multiple of 8, got {input_size}")
        if decoder not in _DECODER_LAYOUT:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        if not 0 < side_prior < 1:
            raise ValueError(f"side_prior must be in (0, 1), got {side_prior}")
        self.hparams: dict[str, Any] = {
            "input_size": input_size,
            "decoder": decoder,
            "width_mult": width_mult,
            "local_kernel": local_kernel,
            "local_dilation": local_dilation,
            "local_hidden": local_hidden,
            "global_dilation": global_dilation,
            "global_hidden": global_hidden,
            "fc6_dilation": fc6_dilation,
            "dropout": dropout,
            "side_prior": side_prior,
        }
        """The constructor's numbers (all but ``backbone_weights``): ``PiCANet(**hparams)`` rebuilds the network."""
        self.input_size = input_size
        self.decoder_name = decoder
        stages, contexts = _DECODER_LAYOUT[decoder]
        self._stages = _VGG_STAGES[:stages]

        self.encoder = dilated_vgg16(width_mult, depth=self._stages[-1][1])
        self.fc: nn.Sequential | None = None
        if decoder == "full":
            c5, c6 = _scaled(512, width_mult), _scaled(1024, width_mult)
            self.fc = nn.Sequential(
                nn.Conv2d(c5, c6, 3, padding=fc6_dilation, dilation=fc6_dilation),  # fc6
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Conv2d(c6, c6, 1),  # fc7
                nn.ReLU(inplace=True),
            )
            for m in self.fc.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
        if backbone_weights:
            self.load_backbone_state(*resolve_backbone_state(backbone_weights))

        # Channels of the encoder features the cells read, coarse to fine; each cell's Dec has the next one's.
        en_channels = [_scaled(c, width_mult) for c in (1024, 512, 512, 256, 128, 64)][-len(contexts) :]
        out_channels: list[int | None] = [*en_channels[1:], None]
        coarse = input_size // 8
        cells = []
        for level, (kind, c, c_out) in enumerate(zip(contexts, en_channels, out_channels, strict=True)):
            context: nn.Module | None = None
            if kind == "G":
                context = GlobalPiCANet(c, coarse, global_dilation, _scaled(global_hidden, width_mult))
            elif kind == "L":
                context = LocalPiCANet(c, local_kernel, local_dilation, _scaled(local_hidden, width_mult))
            cells.append(DecoderCell(c, c_out, context, first=level == 0, prior=side_prior))
        self.decoder = nn.ModuleList(cells)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def load_backbone_state(self, state: dict[str, Tensor], source: str = "state dict") -> None:
        """Load a VGG-16 state dict (torchvision's full model, or its ``features``) into the encoder's VGG part.

        Keys of layers this encoder does not build (conv5 in the authors' decoder, the classifier) are ignored;
        every layer it builds must be there with its shape. ``ValueError`` naming ``source`` otherwise.
        """
        if any(k.startswith("features.") for k in state):  # a full torchvision vgg16 state dict
            state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        depth = len(self.encoder)
        kept = {k: v for k, v in state.items() if k.split(".", 1)[0].isdigit() and int(k.split(".", 1)[0]) < depth}
        try:
            self.encoder.load_state_dict(kept)
        except RuntimeError as e:
            raise ValueError(f"{source}: does not match the VGG-16 encoder: {e}") from e

    def features(self, x: Tensor) -> list[Tensor]:
        """Encoder skip features the decoder reads, coarse to fine: (fc7, conv5_3 for ``full``), conv4_3 (all
        ``S/8``), conv3_3, conv2_2, conv1_2."""
        h = (x - self.mean) / self.std
        skips = []
        for start, end in self._stages:
            h = self.encoder[start:end](h)
            skips.append(h)
        if self.fc is not None:
            skips[-1] = self.fc(skips[-1])  # pool5 -> fc7
        return skips[::-1]

    def forward(self, x: Tensor) -> PiCANetOutput:
        """``x [B, 3, S, S]`` float RGB in [0, 1], ``S == input_size``."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"expected input [B, 3, {self.input_size}, {self.input_size}], got {list(x.shape)}")
        dec = None
        sides = []
        for cell, en in zip(self.decoder, self.features(x), strict=True):
            dec, side = cell(en, dec)
            sides.append(side)
        return PiCANetOutput(final=sides[-1], sides=tuple(sides))


IMAGENET_WEIGHTS = "imagenet"
"""``backbone_weights`` value naming torchvision's ``VGG16_Weights.IMAGENET1K_V1``."""


def imagenet_vgg16_state() -> dict[str, Tensor]:
    """torchvision's ImageNet VGG-16 state dict through its weights API (``VGG16_Weights.IMAGENET1K_V1``).

    torchvision reads it from the torch hub cache (``<torch.hub.get_dir()>/checkpoints``) and downloads it there
    the first time. Offline with nothing cached, ``ValueError`` names the file to place and the directory.
    """
    from torchvision.models import VGG16_Weights

    weights = VGG16_Weights.IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=True, map_location="cpu", weights_only=True)
    except Exception as e:  # no network (URLError, OSError), a truncated cache file, ...
        name = Path(weights.url).name
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise ValueError(
            f"ImageNet VGG-16 weights are not cached and could not be downloaded ({type(e).__name__}: {e}). "
            f"Download {weights.url} elsewhere and place it as {cache / name} (the torch hub cache; TORCH_HOME "
            "moves it), or set backbone_weights to a local torchvision VGG-16 state dict, or to '' for random init"
        ) from e


def resolve_backbone_state(spec: str | Path) -> tuple[dict[str, Tensor], str]:
    """``"imagenet"`` or a path -> (VGG-16 state dict, a name for errors). Only ``"imagenet"`` may download."""
    if str(spec) == IMAGENET_WEIGHTS:
        return imagenet_vgg16_state(), "torchvision VGG16_Weights.IMAGENET1K_V1"
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"{path}: no such VGG-16 weights file (backbone_weights: 'imagenet', a file, or '')")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused, not a torch file
        raise ValueError(f"{path}: not a loadable VGG-16 state dict ({e})") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state, str(path)


def to_net_input(rgb: Tensor, size: int) -> Tensor:
    """Frames uint8 ``[B, 3, H, W]`` (0-255) -> float ``[B, 3, size, size]`` in [0, 1], resized bilinearly.

    The paper feeds PiCANet 224 px images made from 64 px frames; upsampling is plain bilinear (no antialias
    needed), downsampling (a net smaller than the frames) antialiased.
    """
    x = rgb.float() / 255.0
    if x.shape[-2:] != (size, size):
        down = x.shape[-1] > size or x.shape[-2] > size
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=down).clamp(0, 1)
    return x


def to_frame_size(maps: Tensor, height: int, width: int) -> Tensor:
    """Maps ``[B, 1, S, S]`` in [0, 1] -> ``[B, 1, height, width]`` in [0, 1] (antialiased when shrinking), so
    predictions are compared and stored at frame resolution."""
    if maps.shape[-2:] == (height, width):
        return maps
    down = maps.shape[-2] > height or maps.shape[-1] > width
    out = F.interpolate(maps.float(), size=(height, width), mode="bilinear", align_corners=False, antialias=down)
    return out.clamp(0, 1)


def save_picanet(model: PiCANet, path: str | Path) -> Path:
    """Write ``{"format": "visarl-picanet", "hparams": {...}, "state_dict": {...}}`` atomically (temp + rename).

    Only tensors, strings and numbers: :func:`load_picanet` reads it back with ``torch.load(weights_only=True)``.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return atomic_torch_save({"format": WEIGHTS_FORMAT, "hparams": dict(model.hparams), "state_dict": state}, path)


def load_picanet(path: str | Path, map_location: str | torch.device = "cpu") -> PiCANet:
    """Rebuild a :class:`PiCANet` from :func:`save_picanet`'s file (or a saliency-stage Lightning checkpoint),
    in eval mode.

    Raises ``ValueError`` naming ``path`` for anything else (a missing file, a pickle that needs arbitrary code,
    another format, weights that do not fit the stated hyperparameters).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such PiCANet weights file")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a visarl PiCANet weights file (cannot be read as plain tensors: {e})") from e
    if isinstance(blob, dict) and "net_hparams" in (blob.get("hyper_parameters") or {}):
        # A Lightning checkpoint of the saliency stage's SaliencyModule: the net's weights are under "net.".
        state = {k.removeprefix("net."): v for k, v in blob.get("state_dict", {}).items() if k.startswith("net.")}
        blob = {"format": WEIGHTS_FORMAT, "hparams": blob["hyper_parameters"]["net_hparams"], "state_dict": state}
    if not isinstance(blob, dict) or blob.get("format") != WEIGHTS_FORMAT:
        what = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise ValueError(f"{path}: not a visarl PiCANet weights file (format {what!r}, expected {WEIGHTS_FORMAT!r})")
    hparams = blob.get("hparams")
    if isinstance(hparams, dict) and ("global_cells" in hparams or "decoder" not in hparams):
        raise ValueError(
            f"{path}: PiCANet weights from an older visarl (six decoder cells, `global_cells`, no `decoder` entry), "
            "which no decoder of this version matches; retrain with `stage: saliency`"
        )
    try:
        model = PiCANet(**blob["hparams"])
        model.load_state_dict(blob["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: corrupt PiCANet weights file ({e})") from e
    return model.to(map_location).eval()


SALIENCY_LOSSES = ("weighted_mse", "bce", "mse")
"""Per-side losses of :func:`deep_supervision_loss` (the ``loss:`` key of ``stage: saliency``)."""

WEIGHTED_MSE_OFFSET = 1.05
"""WeightedMSE's weight is ``1 / (WEIGHTED_MSE_OFFSET - target)``: 0.95 on the background, 20 at target 1."""


def _pixel_loss(p: Tensor, t: Tensor, kind: str) -> Tensor:
    """Mean per-pixel loss of predictions ``p`` in [0, 1] against targets ``t`` in [0, 1]."""
    if kind == "bce":
        return F.binary_cross_entropy(p, t)
    if kind == "mse":
        return F.mse_loss(p, t)
    return ((p - t) ** 2 / (WEIGHTED_MSE_OFFSET - t)).mean()


def deep_supervision_loss(
    sides: Sequence[Tensor],
    target: Tensor,
    weights: Sequence[float] = (0.5, 0.8, 0.8, 1.0),
    kind: str = "weighted_mse",
) -> Tensor:
    """Weighted sum over side outputs of the loss against the target resized (area average) to each side.

    ``sides``: coarse-to-fine maps ``[B, 1, h, w]`` in [0, 1]; ``target``: ``[B, 1, H, W]`` or ``[B, H, W]``
    in [0, 1] (soft targets are fine). ``weights`` pair with the finest sides; when there are fewer weights than
    sides, the coarser sides take ``weights[0]``: the default is the ViSaRL authors' loss ratios for their four
    cells, and gives (0.5, 0.5, 0.5, 0.8, 0.8, 1.0) for the full decoder's six, the public PiCANet
    implementation's.

    ``kind="weighted_mse"`` (default) is Table III's "WeightedMSE": ``(p - t)^2 / (1.05 - t)``, averaged over pixels,
    the formula the authors' ``train_picanet.py`` defines; it weighs errors on salient pixels up to 20x, so the few
    salient pixels of a click map are not drowned by the background. (That script defines the loss but never calls
    it: its model computes the deep-supervised BCE itself.) ``kind="bce"`` is PiCANet's per-pixel binary
    cross-entropy, what the authors' code actually trains with; ``kind="mse"`` is plain squared error. The loss
    runs in float32 outside autocast, since BCE on probabilities is not autocast-safe.
    """
    if kind not in SALIENCY_LOSSES:
        raise ValueError(f"kind must be one of {SALIENCY_LOSSES}, got {kind!r}")
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
            total = total + w * _pixel_loss(p, t, kind)
    return total
