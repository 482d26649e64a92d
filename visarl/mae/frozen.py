"""The pretrained MultiMAE encoder, frozen, as the state encoder of SAC (ViSaRL Sec. II-D).

During RL the encoder sees every token unmasked and is never trained; the state is the mean of its output token
embeddings (128 for rgb+saliency) or, with a global token, that token (the paper found both similar). Checkpoints
are plain dicts ``{"format": "visarl-multimae", "hparams": {...}, "state_dict": {...}}`` so they load with
``torch.load(weights_only=True)``: no pickled objects.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from visarl.mae.multimae import MultiMAE, MultiMAEEncoder, upgrade_hparams

CHECKPOINT_FORMAT = "visarl-multimae"
CHECKPOINT_VERSION = 2
"""2: hparams name final_norm, input_norm and decoder_residual; version 1 files load with their old values."""
POOLINGS = ("mean", "global")
ENCODER_HPARAMS = (
    "modalities", "image_size", "patch_size", "dim", "depth", "num_heads", "mlp_ratio", "global_token", "final_norm",
    "input_norm",
)  # fmt: skip


class FrozenEncoder(nn.Module):
    """Images -> state ``[B, out_dim]``: a frozen :class:`MultiMAEEncoder`, always in eval mode, no gradients.

    ``modalities`` (default: all of the encoder's) are the inputs used at RL time; a subset such as ``("rgb",)``
    gives the "pretrain-only" variant (pretrained on rgb+saliency, rgb alone during RL).
    """

    def __init__(
        self, encoder: MultiMAEEncoder, modalities: tuple[str, ...] | None = None, pooling: str = "mean"
    ) -> None:
        super().__init__()
        modalities = tuple(modalities) if modalities is not None else encoder.modalities
        if not modalities or not set(modalities) <= set(encoder.modalities):
            raise ValueError(f"modalities {modalities!r} must be a non-empty subset of {encoder.modalities}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
        if pooling == "global" and encoder.global_token is None:
            raise ValueError("pooling='global' needs an encoder trained with a global token")
        self.encoder = encoder
        self.modalities, self.pooling = modalities, pooling
        self.out_dim = encoder.dim
        self.requires_grad_(False)
        self.train(False)

    @classmethod
    def from_model(
        cls, model: MultiMAE, modalities: tuple[str, ...] | None = None, pooling: str = "mean"
    ) -> FrozenEncoder:
        """Freeze a copy of ``model``'s encoder (the model itself stays trainable)."""
        return cls(copy.deepcopy(model.encoder), modalities, pooling)

    def train(self, mode: bool = True) -> FrozenEncoder:
        # stays in eval mode even when an enclosing agent calls .train()
        return super().train(False)

    def forward(self, x: Mapping[str, Tensor] | Tensor, saliency: Tensor | None = None) -> Tensor:
        """``x``: dict of images, or rgb ``[B, 3, H, W]`` (with ``saliency [B, 1, H, W]`` if used) -> ``[B, D]``."""
        inputs = dict(x) if isinstance(x, Mapping) else {"rgb": x}
        if saliency is not None:
            inputs["saliency"] = saliency
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise ValueError(f"frozen encoder needs inputs {list(self.modalities)}, missing {missing}")
        inputs = {m: inputs[m] for m in self.modalities}  # extra inputs (e.g. saliency for an rgb-only variant) unused
        with torch.no_grad():
            tokens = self.encoder(inputs)  # [B, G + M*N, D]
            g = self.encoder.num_global
            return tokens[:, 0] if self.pooling == "global" else tokens[:, g:].mean(dim=1)


def save_checkpoint(model: MultiMAE, path: str | Path) -> None:
    """Write ``model`` as a ``visarl-multimae`` checkpoint (loadable with ``weights_only=True``)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "hparams": dict(model.hparams),
            "state_dict": state,
        },
        Path(path),
    )


def _read_checkpoint(path: Path) -> dict:
    def bad(why: str) -> ValueError:
        return ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint ({why})")

    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused, truncated or foreign file: all mean "not ours"
        raise bad(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise bad(f"format is {ckpt.get('format')!r}" if isinstance(ckpt, dict) else f"holds a {type(ckpt).__name__}")
    if not isinstance(ckpt.get("hparams"), dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise bad("missing 'hparams' or 'state_dict'")
    version = ckpt.get("version", 1)
    if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: {CHECKPOINT_FORMAT} checkpoint version {version!r}, but this visarl reads versions 1 to "
            f"{CHECKPOINT_VERSION}; update visarl to load it"
        )
    ckpt["hparams"] = upgrade_hparams(ckpt["hparams"], version)
    return ckpt


def load_model(path: str | Path) -> MultiMAE:
    """The whole :class:`MultiMAE` (decoders included) from a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    ckpt = _read_checkpoint(path)
    try:
        model = MultiMAE(**ckpt["hparams"])
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: checkpoint does not fit a MultiMAE: {e}") from e
    return model


def load_encoder(path: str | Path, modalities: tuple[str, ...] | None = None, pooling: str = "mean") -> FrozenEncoder:
    """The frozen encoder of a ``visarl-multimae`` checkpoint; ``modalities`` picks the RL-time inputs (subset).

    Only the encoder is built and loaded (decoder weights are skipped). Raises ``ValueError`` naming the file if it
    is not such a checkpoint or its weights do not fit.
    """
    path = Path(path)
    ckpt = _read_checkpoint(path)
    hp = ckpt["hparams"]
    prefix = "encoder."
    state = {k.removeprefix(prefix): v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        kwargs = {k: hp[k] for k in ENCODER_HPARAMS}
        kwargs["modalities"] = tuple(kwargs["modalities"])
        encoder = MultiMAEEncoder(**kwargs)
        encoder.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: checkpoint does not fit a MultiMAE encoder: {type(e).__name__}: {e}") from e
    return FrozenEncoder(encoder, modalities, pooling)
