"""Observation encoders for SAC behind one interface.

Every encoder maps an observation dict ``{key: Tensor [B, ...]}`` to features ``[B, out_dim]`` and declares
the keys it reads in ``obs_keys`` (so a data module loads only those). Images arrive as uint8 ``[B, C, H, W]``
(0-255) or as floats already in [0, 1]; saliency maps are ``[B, 1, H, W]`` in the same two forms.

- ``IdentityEncoder``: the low-dimensional ``state`` vector (39-d in Meta-World), unchanged.
- ``PixelCNN``: the paper's CNN (Appendix F, after RAD/SAC-AE), trained by critic gradients only, with the
  four input variants of Section IV-D: ``rgb``, ``saliency``, ``rgb_x_saliency`` and ``rgbs``. Its settings follow
  the paper and, where it is silent, the authors' ``SharedCNN`` (docs/fidelity.md, CNN rows).
- ``mmae``: the pretrained MultiMAE encoder, frozen (:class:`visarl.mae.frozen.FrozenEncoder`). The rl stage
  stores its embedding of each frame instead of re-encoding batches (:class:`visarl.mae.frozen.FrameEmbedder`);
  this form encodes every batch, the reference the stored embeddings are checked against.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from visarl.config import ConfigError
from visarl.mae.frozen import FrozenEncoder
from visarl.rl.networks import CONV_INITS, conv_init

ENCODER_NAMES = ("identity", "cnn", "mmae")
"""Values of the ``encoder:`` config key: the 39-d state, the paper's CNN, the frozen MultiMAE."""


def to_unit(x: Tensor) -> Tensor:
    """uint8 0-255 -> float32 in [0, 1]; floating inputs are taken to be in [0, 1] already."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    return x.float()


def _require(obs: Mapping[str, Tensor], keys: tuple[str, ...], who: str) -> None:
    missing = [k for k in keys if k not in obs]
    if missing:
        raise KeyError(f"{who} needs observation keys {list(keys)}; missing {missing}, got {sorted(obs)}")


class IdentityEncoder(nn.Module):
    """Passes the state vector through: obs[key] [B, dim] -> float [B, dim]."""

    def __init__(self, dim: int, key: str = "state") -> None:
        super().__init__()
        self.out_dim = dim
        self.obs_keys = (key,)

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        _require(obs, self.obs_keys, "IdentityEncoder")
        return obs[self.obs_keys[0]].float()


@dataclass(frozen=True)
class PixelVariant:
    """How one CNN input variant is built: the observation keys it reads, its channels, how it combines them."""

    obs_keys: tuple[str, ...]
    channels: int
    combine: Callable[[dict[str, Tensor]], Tensor]
    """Maps {key: float [B, C_k, H, W] in [0, 1]} to the CNN input [B, channels, H, W] in [0, 1]."""
    saliency_channel: bool = False
    """The map enters the CNN as a channel of its own (so ``saliency_scale`` applies), not as a mask of rgb."""


# One entry per input variant (ViSaRL Section IV-D), so adding a variant is one line.
PIXEL_VARIANTS: dict[str, PixelVariant] = {
    "rgb": PixelVariant(("rgb",), 3, lambda x: x["rgb"]),
    "saliency": PixelVariant(("saliency",), 1, lambda x: x["saliency"], saliency_channel=True),
    # Saliency masks the image: each rgb channel scaled by the [0, 1] map (Fig. 4).
    "rgb_x_saliency": PixelVariant(("rgb", "saliency"), 3, lambda x: x["rgb"] * x["saliency"]),
    # Saliency as a fourth channel after r, g, b.
    "rgbs": PixelVariant(
        ("rgb", "saliency"), 4, lambda x: torch.cat([x["rgb"], x["saliency"]], dim=1), saliency_channel=True
    ),
}


def conv_out_size(size: int, num_layers: int, first_padding: int = 0) -> int:
    """Spatial size after the stack: one 3x3 stride-2 conv (padding ``first_padding``), then 3x3 stride-1 valid.

    Without padding (the paper's text and the authors' code): 64 -> 31 -> 29 -> ... -> 11, and 84 -> 41 -> ... -> 21.
    """
    size = (size + 2 * first_padding - 3) // 2 + 1
    return size - 2 * (num_layers - 1)


class PixelCNN(nn.Module):
    """The paper's CNN encoder (ViSaRL Appendix F, after RAD [9] and SAC-AE [10]; the authors' ``SharedCNN``).

    ``num_layers`` 3x3 convs of ``num_filters`` filters, stride 2 for the first and 1 for the rest, ReLU between
    them and none after the last (``last_relu=False``, as the authors' and SAC-AE's encoders), flattened. Inputs are
    scaled to [0, 1] (the authors divide by 255 and do not centre; ``center=True`` subtracts 0.5 as DrQ-v2 does).

    Appendix F says "no padding" and also "a feature map of 32x12x12 given 64x64x3"; these disagree. The authors'
    code has no padding, so the default ``first_padding=0`` gives 64 -> 31 -> ... -> 11, i.e. 32x11x11 = 3872
    features (32x21x21 at 84 px); ``first_padding=1`` gives the stated 32x12x12 = 4608.

    ``saliency_scale`` multiplies a saliency map that enters as a channel of its own (variants ``saliency`` and
    ``rgbs``). 1.0 keeps it in [0, 1] like rgb; the authors' code divides it by 255 twice (their predictor returns
    [0, 1], their encoder divides every channel by 255), which ``saliency_scale = 1/255`` restores.
    Convs get the delta-orthogonal init of the authors and SAC-AE (``init="delta_orthogonal"``), or ``"orthogonal"``.
    """

    def __init__(
        self,
        variant: str,
        image_size: tuple[int, int],
        num_layers: int = 11,
        num_filters: int = 32,
        first_padding: int = 0,
        last_relu: bool = False,
        center: bool = False,
        saliency_scale: float = 1.0,
        init: str = "delta_orthogonal",
    ) -> None:
        super().__init__()
        if variant not in PIXEL_VARIANTS:
            raise ValueError(f"unknown pixel variant {variant!r}; known: {sorted(PIXEL_VARIANTS)}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if init not in CONV_INITS:
            raise ValueError(f"unknown conv init {init!r}; known: {list(CONV_INITS)}")
        self.variant = variant
        self.spec = PIXEL_VARIANTS[variant]
        self.obs_keys = self.spec.obs_keys
        self.center = center
        self.saliency_scale = float(saliency_scale)
        h, w = (conv_out_size(s, num_layers, first_padding) for s in image_size)
        if h < 1 or w < 1:
            raise ValueError(f"image size {tuple(image_size)} is too small for {num_layers} conv layers")
        self.out_shape = (num_filters, h, w)
        self.out_dim = num_filters * h * w
        layers: list[nn.Module] = [nn.Conv2d(self.spec.channels, num_filters, 3, stride=2, padding=first_padding)]
        for _ in range(num_layers - 1):
            layers += [nn.ReLU(inplace=True), nn.Conv2d(num_filters, num_filters, 3, stride=1)]
        if last_relu:
            layers.append(nn.ReLU(inplace=True))
        self.convs = nn.Sequential(*layers)
        self.apply(lambda m: conv_init(m, init))

    def preprocess(self, obs: Mapping[str, Tensor]) -> Tensor:
        """Build the network input [B, C, H, W] from the observation dict: each key in [0, 1], then combined."""
        _require(obs, self.obs_keys, f"PixelCNN(variant={self.variant!r})")
        x = {k: to_unit(obs[k]) for k in self.obs_keys}
        if self.spec.saliency_channel and self.saliency_scale != 1.0:
            x["saliency"] = x["saliency"] * self.saliency_scale
        x = self.spec.combine(x)
        return x - 0.5 if self.center else x

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        # oneDNN's CPU convolutions are faster on channels-last tensors; flatten(1) still yields the
        # logical [C, H, W] order, so features do not depend on the memory format.
        x = self.preprocess(obs).contiguous(memory_format=torch.channels_last)
        return self.convs(x).flatten(1)  # [B, C*H*W]


def _image_size(obs_shapes: Mapping[str, tuple[int, ...]], keys: tuple[str, ...]) -> tuple[int, int]:
    sizes = {k: tuple(obs_shapes[k][-2:]) for k in keys}
    if len(set(sizes.values())) != 1:
        raise ConfigError(f"observation images differ in size: {sizes}")
    return next(iter(sizes.values()))  # type: ignore[return-value]


def make_encoder(
    name: str,
    variant: str,
    obs_shapes: Mapping[str, tuple[int, ...]],
    *,
    num_layers: int = 11,
    num_filters: int = 32,
    first_padding: int = 0,
    last_relu: bool = False,
    center: bool = False,
    saliency_scale: float = 1.0,
    conv_init: str = "delta_orthogonal",
    module: FrozenEncoder | None = None,
    state_key: str = "state",
) -> nn.Module:
    """Build an encoder from names and the observation shapes (``{"rgb": (3, 64, 64), "state": (39,), ...}``).

    ``name`` is "identity" (``variant`` ignored), "cnn" (``variant`` one of PIXEL_VARIANTS) or "mmae": ``module``,
    a :class:`FrozenEncoder` (e.g. from :func:`visarl.mae.frozen.load_encoder`), whose modalities must be among
    the keys of ``variant`` ("rgb", "saliency" or "rgbs") and whose image size must be the observations'.
    """
    if name not in ENCODER_NAMES:
        raise ConfigError(f"encoder: {name!r} is not one of {list(ENCODER_NAMES)}")
    if name == "identity":
        if state_key not in obs_shapes:
            raise ConfigError(f"encoder 'identity' needs observation key {state_key!r}; got {sorted(obs_shapes)}")
        return IdentityEncoder(int(obs_shapes[state_key][0]), key=state_key)

    allowed = list(PIXEL_VARIANTS) if name == "cnn" else ["rgb", "saliency", "rgbs"]
    if variant not in allowed:
        raise ConfigError(f"variant: {variant!r} is not one of {allowed} for encoder {name!r}")
    spec = PIXEL_VARIANTS[variant]
    missing = [k for k in spec.obs_keys if k not in obs_shapes]
    if missing:
        raise ConfigError(f"variant {variant!r} needs observation keys {missing}; got {sorted(obs_shapes)}")
    for key, channels in (("rgb", 3), ("saliency", 1)):
        if key in spec.obs_keys and obs_shapes[key][0] != channels:
            raise ConfigError(f"observation {key!r} must have {channels} channels, got shape {obs_shapes[key]}")
    image_size = _image_size(obs_shapes, spec.obs_keys)

    if name == "cnn":
        return PixelCNN(
            variant, image_size, num_layers, num_filters, first_padding, last_relu, center, saliency_scale, conv_init
        )

    return _frozen(module, variant, image_size)


def _frozen(module: FrozenEncoder | None, variant: str, image_size: tuple[int, int]) -> FrozenEncoder:
    """``module`` checked against the variant's keys and the observations' image size."""
    if not isinstance(module, FrozenEncoder):
        raise ConfigError("encoder 'mmae' needs a pretrained module: a FrozenEncoder (visarl.mae.load_encoder)")
    keys = PIXEL_VARIANTS[variant].obs_keys
    if not set(module.obs_keys) <= set(keys):
        raise ConfigError(f"variant {variant!r} gives {list(keys)}; the frozen encoder reads {list(module.obs_keys)}")
    trained = int(module.encoder.image_size)
    if image_size != (trained, trained):
        raise ConfigError(f"the frozen encoder was trained on {trained}x{trained} frames, not {image_size}")
    return module


def is_trainable(encoder: nn.Module) -> bool:
    """True when the encoder has parameters an optimizer should update (the CNN; not identity or frozen)."""
    return any(p.requires_grad for p in encoder.parameters())
