"""MultiMAE: multi-modal masked autoencoder over rgb and saliency, the ViSaRL scene encoder.

Bachmann, Mizrahi, Atanov, Zamir, "MultiMAE: Multi-modal Multi-task Masked Autoencoders", ECCV 2022; used by
ViSaRL (Liang et al.) Sec. II-B..II-D with the numbers of its Table II: 64x64 inputs, 8x8 patches (64 tokens per
modality), 32 visible tokens spread across modalities by Dirichlet(alpha=1) draws, a 4-layer ViT encoder, one
light decoder per modality (one cross-attention layer over all encoded tokens, then 3 transformer layers), a
loss on masked patches only (:mod:`visarl.mae.loss`). For RL the encoder is frozen and sees every token
(:mod:`visarl.mae.frozen`).

Where the paper is silent the defaults follow the authors' MultiMAE fork (github aliang8/MultiMAE): the encoder
carries one learned global token and ends at its last transformer block (no final LayerNorm, as MultiMAE's
pretraining encoder); rgb enters standardised with the ImageNet mean and std; each decoder's cross-attention has
no residual and its pixel head no LayerNorm before it (MultiMAE's ``SpatialOutputAdapter``). The older visarl
choices stay as constructor values (``final_norm``, ``input_norm="none"``, ``decoder_residual``), and
:func:`upgrade_hparams` gives checkpoints written before them their old values.

Modalities travel as dicts ``{"rgb": [B, 3, H, W] in [0, 1], "saliency": [B, 1, H, W] in [0, 1]}``; the token
sequence is always the modalities' blocks in the constructor's order. Adding a modality is one
:data:`MODALITIES` entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from visarl.config import ConfigError, choice
from visarl.mae.adapters import PatchInputAdapter, SpatialDecoder, norm_layer, set_fused_attn
from visarl.mae.masking import default_visible, dirichlet_masks, visible_ids


@dataclass(frozen=True)
class ModalitySpec:
    """One row of the modality table: how a modality enters (input adapter) and leaves (output adapter)."""

    channels: int
    """Image channels ``C``; a patch of it is ``p*p*C`` numbers."""
    loss_weight: float = 1.0
    """Weight of its reconstruction term in the total loss."""
    loss: str = "mse"
    """Per-pixel error of its reconstruction term: ``"mse"`` or ``"l1"`` (see :mod:`visarl.mae.loss`)."""
    input_adapter: type[nn.Module] = PatchInputAdapter
    """Built as ``input_adapter(channels, image_size, patch_size, dim)``."""
    output_adapter: type[nn.Module] = SpatialDecoder
    """Built as ``output_adapter(channels, patch_size, grid, M, query_index, encoder_dim, ...decoder numbers)``."""


MODALITIES: dict[str, ModalitySpec] = {
    "rgb": ModalitySpec(channels=3),
    # the authors' fork: MaskedL1Loss for saliency, its term multiplied by 10 ("upweight saliency loss")
    "saliency": ModalitySpec(channels=1, loss_weight=10.0, loss="l1"),
}
"""The modality table. Outputs named ``<modality>_norm`` (e.g. ``rgb_norm``) are extra decoders of that modality
whose target is per-patch normalised (see :class:`visarl.mae.loss.WeightedMSE`)."""

NORM_SUFFIX = "_norm"

INPUT_NORMS = ("imagenet", "none")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

LEGACY_HPARAMS: dict[str, Any] = {"final_norm": True, "input_norm": "none", "decoder_residual": True}
"""What checkpoints of format version 1 (written before these hparams existed) were trained with."""


def upgrade_hparams(hparams: Mapping[str, Any], version: int) -> dict[str, Any]:
    """Constructor hparams of a checkpoint of format ``version``, with the values older versions implied."""
    hp = dict(hparams)
    if version < 2:
        for key, value in LEGACY_HPARAMS.items():
            hp.setdefault(key, value)
    return hp


def normalize_input(name: str, x: Tensor, input_norm: str) -> Tensor:
    """Modality ``name`` ``[B, C, H, W]`` in [0, 1] as the encoder sees it: rgb standardised per channel with
    ImageNet statistics under ``input_norm="imagenet"`` (the authors' fork), anything else unchanged."""
    if input_norm == "none" or name != "rgb":
        return x
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def denormalize_input(name: str, x: Tensor, input_norm: str) -> Tensor:
    """Inverse of :func:`normalize_input`: encoder-space images back to [0, 1] pixels."""
    if input_norm == "none" or name != "rgb":
        return x
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return x * std + mean


def output_source(name: str) -> str:
    """The modality an output reconstructs: ``"rgb_norm" -> "rgb"``, ``"rgb" -> "rgb"``."""
    return name.removesuffix(NORM_SUFFIX)


def _spec(name: str) -> ModalitySpec:
    if name not in MODALITIES:
        raise ValueError(f"unknown modality {name!r}; known: {sorted(MODALITIES)}")
    return MODALITIES[name]


class MultiMAEEncoder(nn.Module):
    """Input adapters + ViT encoder: a dict of images (all or some modalities) -> tokens ``[B, G + K, D]``.

    ``G`` is 1 with ``global_token`` (a learned token placed first, like ViT's class token) and 0 otherwise;
    ``K`` is the number of tokens kept: all tokens of the modalities given, or those in ``ids_visible``.
    Inputs are images in [0, 1]; ``input_norm`` says how rgb is standardised before its patch projection.
    ``final_norm`` adds a LayerNorm after the last block (ViT/MAE; MultiMAE's pretraining encoder has none).
    """

    def __init__(
        self,
        modalities: tuple[str, ...],
        *,
        image_size: int,
        patch_size: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        global_token: bool,
        final_norm: bool,
        input_norm: str,
        fused_attn: bool = True,
    ) -> None:
        super().__init__()
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm {input_norm!r} is not one of {INPUT_NORMS}")
        if not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities must be a non-empty tuple of distinct names, got {modalities!r}")
        self.modalities = tuple(modalities)
        self.image_size, self.patch_size, self.dim = image_size, patch_size, dim
        self.input_adapters = nn.ModuleDict(
            {m: _spec(m).input_adapter(_spec(m).channels, image_size, patch_size, dim) for m in self.modalities}
        )
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.num_tokens = self.grid[0] * self.grid[1]  # per modality
        self.num_global = int(global_token)
        self.global_token = nn.Parameter(torch.zeros(1, 1, dim)) if global_token else None
        self.blocks = nn.Sequential(
            *[Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)]
        )
        self.input_norm = input_norm
        self.norm = norm_layer(dim) if final_norm else nn.Identity()
        if self.global_token is not None:
            nn.init.trunc_normal_(self.global_token, std=0.02)
        set_fused_attn(self, fused_attn)

    def check_inputs(self, inputs: Mapping[str, Tensor], require_all: bool) -> list[str]:
        """The modalities of ``inputs`` this encoder knows, in token order; clear errors on bad keys/shapes."""
        unknown = sorted(set(inputs) - set(self.modalities))
        if unknown:
            raise ValueError(f"inputs {unknown} are not modalities of this encoder {self.modalities}")
        present = [m for m in self.modalities if m in inputs]
        missing = [m for m in self.modalities if m not in inputs]
        if not present or (require_all and missing):
            raise ValueError(f"missing input modalities {missing} (model has {self.modalities})")
        for m in present:
            want = (_spec(m).channels, self.image_size, self.image_size)
            if inputs[m].dim() != 4 or tuple(inputs[m].shape[1:]) != want:
                raise ValueError(
                    f"input {m!r} has shape {tuple(inputs[m].shape)}, expected [B, {', '.join(map(str, want))}]"
                )
        return present

    def tokenize(self, inputs: Mapping[str, Tensor], present: list[str]) -> Tensor:
        """All tokens of the given modalities, concatenated in token order: ``[B, len(present) * N, D]``."""
        return torch.cat(
            [self.input_adapters[m](normalize_input(m, inputs[m], self.input_norm)) for m in present], dim=1
        )

    def forward(self, inputs: Mapping[str, Tensor], ids_visible: Tensor | None = None) -> Tensor:
        """Encode all tokens of the modalities given, or (all modalities needed) only those in ``ids_visible``."""
        present = self.check_inputs(inputs, require_all=ids_visible is not None)
        x = self.tokenize(inputs, present)  # [B, N_all, D]
        if ids_visible is not None:
            x = torch.gather(x, 1, ids_visible[..., None].expand(-1, -1, x.shape[-1]))  # [B, K, D]
        if self.global_token is not None:
            x = torch.cat([self.global_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.norm(self.blocks(x))


class MultiMAEOutput(NamedTuple):
    """What :meth:`MultiMAE.forward` returns."""

    preds: dict[str, Tensor]
    """Output name -> predicted patches ``[B, N, p*p*C]`` (every patch; the loss keeps the masked ones)."""
    masks: dict[str, Tensor]
    """Modality -> ``[B, N]`` bool, True where the token was hidden from the encoder."""
    ids_visible: Tensor
    """``[B, K]`` ids of the encoded tokens in the concatenated sequence (modality blocks in model order)."""


class MultiMAE(nn.Module):
    """The masked autoencoder: :class:`MultiMAEEncoder` plus one :class:`SpatialDecoder` per output.

    Outputs are one per modality, plus ``rgb_norm`` when ``norm_rgb_output`` (a second rgb decoder trained on
    per-patch normalised pixels, as the ViSaRL authors' code did, while ``rgb`` keeps raw pixels for viewing).
    ``decoder_residual``: a residual around each decoder's cross-attention and a LayerNorm before its pixel head
    (visarl's first decoder); False is MultiMAE's output adapter.
    ``modalities=("rgb",)`` is the rgb-only baseline with the same code. The numbers have no defaults here:
    :class:`ModelConfig` holds them (``MultiMAE(modalities, **ModelConfig().kwargs())`` is Table II's model).
    """

    def __init__(
        self,
        modalities: tuple[str, ...],
        *,
        image_size: int,
        patch_size: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        decoder_dim: int,
        decoder_depth: int,
        decoder_heads: int,
        global_token: bool,
        norm_rgb_output: bool,
        final_norm: bool,
        input_norm: str,
        decoder_residual: bool,
        fused_attn: bool = True,
    ) -> None:
        super().__init__()
        modalities = tuple(modalities)
        if norm_rgb_output and "rgb" not in modalities:
            raise ValueError("norm_rgb_output needs the rgb modality")
        # constructor numbers, saved in checkpoints (fused_attn is a run-time choice, not saved)
        self.hparams: dict[str, Any] = dict(
            modalities=list(modalities), image_size=image_size, patch_size=patch_size, dim=dim, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, decoder_dim=decoder_dim, decoder_depth=decoder_depth,
            decoder_heads=decoder_heads, global_token=global_token, norm_rgb_output=norm_rgb_output,
            final_norm=final_norm, input_norm=input_norm, decoder_residual=decoder_residual,
        )  # fmt: skip
        self.modalities, self.patch_size = modalities, patch_size
        self.encoder = MultiMAEEncoder(
            modalities, image_size=image_size, patch_size=patch_size, dim=dim, depth=depth, num_heads=num_heads,
            mlp_ratio=mlp_ratio, global_token=global_token, final_norm=final_norm, input_norm=input_norm,
            fused_attn=fused_attn,
        )  # fmt: skip
        self.outputs = modalities + (("rgb" + NORM_SUFFIX,) if norm_rgb_output else ())
        self.decoders = nn.ModuleDict()
        for name in self.outputs:
            src = output_source(name)
            spec = _spec(src)
            self.decoders[name] = spec.output_adapter(
                spec.channels, patch_size, self.encoder.grid, len(modalities), modalities.index(src), dim,
                decoder_dim, decoder_depth, decoder_heads, mlp_ratio, fused_attn, decoder_residual,
            )  # fmt: skip
        self.apply(_init_linear)

    @property
    def num_tokens(self) -> int:
        """Tokens per modality (64 at 64x64 with 8x8 patches)."""
        return self.encoder.num_tokens

    def loss_weights(self) -> dict[str, float]:
        """Output name -> loss weight from the modality table."""
        return {name: _spec(output_source(name)).loss_weight for name in self.outputs}

    def loss_kinds(self) -> dict[str, str]:
        """Output name -> per-pixel error (``"mse"`` / ``"l1"``) from the modality table."""
        return {name: _spec(output_source(name)).loss for name in self.outputs}

    def set_fused_attn(self, fused: bool) -> None:
        """True: ``F.scaled_dot_product_attention``; False: the eager softmax(QK^T)V baseline."""
        set_fused_attn(self, fused)

    def no_weight_decay(self) -> set[str]:
        """Parameter names that should not be decayed: learned tokens and embeddings (MAE/MultiMAE practice)."""
        keys = ("mask_token", "modality_embed", "global_token")
        return {n for n, _ in self.named_parameters() if n.rsplit(".", 1)[-1] in keys}

    def sample_masks(
        self,
        batch: int,
        num_visible: int | None = None,
        alpha: float = 1.0,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> dict[str, Tensor]:
        """Random masks ``{modality: [B, N] bool, True = hidden}`` with exactly ``num_visible`` visible per row
        (None: 75% of this model's tokens hidden, as the pretrain stage's default)."""
        n = [self.num_tokens] * len(self.modalities)
        if num_visible is None:
            num_visible = default_visible(sum(n))
        return dict(zip(self.modalities, dirichlet_masks(batch, n, num_visible, alpha, generator, device), strict=True))

    def forward(
        self,
        inputs: Mapping[str, Tensor],
        num_visible: int | None = None,
        alpha: float = 1.0,
        generator: torch.Generator | None = None,
        masks: Mapping[str, Tensor] | None = None,
    ) -> MultiMAEOutput:
        """Mask, encode the visible tokens, decode every output. ``masks`` (True = hidden) overrides sampling."""
        self.encoder.check_inputs(inputs, require_all=True)
        ref = inputs[self.modalities[0]]
        if masks is None:
            masks = self.sample_masks(ref.shape[0], num_visible, alpha, generator, ref.device)
        for m in self.modalities:
            if m not in masks or tuple(masks[m].shape) != (ref.shape[0], self.num_tokens):
                raise ValueError(f"masks need a [B, {self.num_tokens}] bool entry for each of {self.modalities}")
        hidden = torch.cat([masks[m] for m in self.modalities], dim=1)  # [B, M*N]
        ids = visible_ids(hidden)  # [B, K]
        encoded = self.encoder(inputs, ids)  # [B, G+K, D]
        preds = {name: dec(encoded, ids, self.encoder.num_global) for name, dec in self.decoders.items()}
        return MultiMAEOutput(preds, dict(masks), ids)

    def forward_features(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """No masking: tokens ``[B, G + M*N, D]`` of the modalities given ([B, 129, D] for rgb+saliency, G=1)."""
        return self.encoder(inputs)


def _init_linear(m: nn.Module) -> None:
    # MAE's init: xavier-uniform linear layers, zero biases (timm's own default is a truncated normal)
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


MODEL_SIZES: dict[str, dict[str, int]] = {
    "paper": dict(dim=256, depth=4, num_heads=4, decoder_dim=256, decoder_depth=3, decoder_heads=4),
    "tiny": dict(dim=64, depth=1, num_heads=2, decoder_dim=64, decoder_depth=1, decoder_heads=2),
}
"""Named widths: ``paper`` is ViSaRL's Table II model, ``tiny`` the test-size variant (same code)."""


@dataclass
class ModelConfig:
    """MultiMAE's architecture: a named size, with any width given here taking precedence. The one place the
    model's defaults live (``pretrain``'s ``model:`` section; :func:`build_multimae` for tests and benchmarks)."""

    size: str = "paper"
    """'paper' (Table II: 256 wide, 4 layers, 4 heads; decoders 256 wide, 3 layers, 4 heads) or 'tiny' (tests)."""
    dim: int | None = None
    """Encoder width; None takes the size's."""
    depth: int | None = None
    """Encoder transformer layers."""
    num_heads: int | None = None
    """Encoder attention heads."""
    decoder_dim: int | None = None
    """Decoder width."""
    decoder_depth: int | None = None
    """Decoder self-attention layers after its cross-attention layer."""
    decoder_heads: int | None = None
    """Decoder attention heads."""
    mlp_ratio: float = 4.0
    """Transformer MLP hidden width / width."""
    image_size: int = 64
    """Input side in pixels; must match the frames."""
    patch_size: int = 8
    """Patch side in pixels (8: 64 tokens per modality at 64x64)."""
    global_token: bool = True
    """A learned global token in the encoder (the authors' fork: num_global_tokens 1); RL pools the mean of the
    other tokens by default (Sec. II-D), or this token."""
    final_norm: bool = False
    """LayerNorm after the last encoder block (ViT/MAE); MultiMAE's pretraining encoder, the authors', has none."""
    input_norm: str = "imagenet"
    """'imagenet': rgb standardised with ImageNet mean/std before the encoder, and as the rgb target (the authors'
    fork); 'none': rgb in [0, 1]."""
    decoder_residual: bool = False
    """Residual around each decoder's cross-attention and a LayerNorm before its head; False: MultiMAE's decoder."""
    norm_rgb_output: bool = True
    """Extra rgb decoder trained on per-patch normalised pixels (MultiMAE's extra_norm_pix_loss)."""
    fused_attn: bool | None = None
    """Attention kernel: True F.scaled_dot_product_attention, False softmax(QK^T)V; None: fused on GPU, eager on CPU
    (on a CPU eager attention is the faster one under bf16; benchmarks/multimae_speed.py compares them)."""
    compile: bool = False
    """torch.compile the encoder and decoders: steps only a little faster on a CPU, after a compile that takes
    minutes (benchmarks/multimae_speed.py); worth it only for long runs."""

    def __post_init__(self) -> None:
        choice("model.size", self.size, list(MODEL_SIZES))
        choice("model.input_norm", self.input_norm, list(INPUT_NORMS))
        for key in ("dim", "depth", "num_heads", "decoder_dim", "decoder_depth", "decoder_heads"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"model.{key}: must be positive, got {value}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"model.image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    def widths(self) -> dict[str, int]:
        """The six width numbers, the size's defaults overridden by the fields given."""
        base = MODEL_SIZES[self.size]
        return {k: getattr(self, k) if getattr(self, k) is not None else v for k, v in base.items()}

    def kwargs(self) -> dict[str, Any]:
        """The :class:`MultiMAE` constructor numbers; the caller adds ``modalities`` and the run-time ``fused_attn``."""
        return {
            **self.widths(),
            "mlp_ratio": self.mlp_ratio,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "global_token": self.global_token,
            "norm_rgb_output": self.norm_rgb_output,
            "final_norm": self.final_norm,
            "input_norm": self.input_norm,
            "decoder_residual": self.decoder_residual,
        }


def build_multimae(
    size: str = "paper", modalities: tuple[str, ...] = ("rgb", "saliency"), **overrides: Any
) -> MultiMAE:
    """``build_multimae("tiny", ("rgb",))``: the :class:`MultiMAE` of ``ModelConfig(size=size, **overrides)``.

    Unlike a pretrain config, it has one decoder per modality unless ``norm_rgb_output=True`` is given, so any
    modalities work (tests and benchmarks).
    """
    cfg = ModelConfig(size=size, **{"norm_rgb_output": False, **overrides})
    fused = {} if cfg.fused_attn is None else {"fused_attn": cfg.fused_attn}
    return MultiMAE(tuple(modalities), **cfg.kwargs(), **fused)
