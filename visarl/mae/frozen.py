"""The pretrained MultiMAE encoder, frozen, as the state encoder of SAC (ViSaRL Sec. II-D).

During RL the encoder sees every token unmasked and is never trained; the state is the mean of its output token
embeddings (128 for rgb+saliency) or, with a global token, that token (the paper found both similar). Checkpoints
are plain dicts ``{"format": "visarl-multimae", "hparams": {...}, "state_dict": {...}}`` so they load with
``torch.load(weights_only=True)``: no pickled objects.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from visarl.core.io import atomic_torch_save
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
    gives the "pretrain-only" variant (pretrained on rgb+saliency, rgb alone during RL). It is also an SAC
    observation encoder (``encoder: mmae`` of :func:`visarl.rl.encoders.make_encoder`): it reads the
    observation keys :attr:`obs_keys` (its modalities), as uint8 0-255 or as floats in [0, 1].
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
        self.obs_keys = modalities
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
        """``x``: dict of images, or rgb ``[B, 3, H, W]`` (with ``saliency [B, 1, H, W]`` if used) -> ``[B, D]``.

        Images are uint8 (0-255, as the replay stores them) or floats in [0, 1]; the output is float32.
        """
        inputs = dict(x) if isinstance(x, Mapping) else {"rgb": x}
        if saliency is not None:
            inputs["saliency"] = saliency
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise ValueError(f"frozen encoder needs inputs {list(self.modalities)}, missing {missing}")
        # extra inputs (e.g. saliency for an rgb-only variant) are unused
        inputs = {m: _unit(inputs[m]) for m in self.modalities}
        with torch.no_grad():
            tokens = self.encoder(inputs)  # [B, G + M*N, D]
            g = self.encoder.num_global
            state = tokens[:, 0] if self.pooling == "global" else tokens[:, g:].mean(dim=1)
            return state.float()


def _unit(image: Tensor) -> Tensor:
    """uint8 0-255 -> float in [0, 1]; floating images are taken to be in [0, 1] already and left as they are."""
    return image.float() / 255.0 if image.dtype == torch.uint8 else image


EMBEDDING_PREFIX = "emb_"
"""Observation keys of stored embeddings start with this; the rest names the encoder (:attr:`FrameEmbedder.key`)."""


def encoder_digest(encoder: FrozenEncoder) -> str:
    """SHA-1 over the frozen encoder's weights, its RL-time modalities and its pooling.

    Two encoders with the same digest give bit-identical embeddings for the same frames, so the digest can name
    stored embeddings: a replay or shard never mixes embeddings of two encoders under one name.
    """
    h = hashlib.sha1()
    h.update(repr((tuple(encoder.modalities), encoder.pooling)).encode())
    for name, t in sorted(encoder.encoder.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class FrameEmbedder:
    """Encodes observations once, when they are observed: frames in, one embedding per frame out.

    A frozen encoder maps the same frame to the same embedding, so an RL loop (or a probe) can compute each
    frame's embedding when the env returns it, store it with the frame, and train on stored embeddings without
    ever running the encoder on a batch again (the ViSaRL authors' RL loop does the same).

    Observations come in shard layout: ``rgb`` uint8 ``[n, H, W, 3]``, ``saliency`` uint8 ``[n, H, W]`` (or
    float in [0, 1]). The embedding is float32 ``[n, dim]`` under the observation key :attr:`key`, which names
    the encoder by its :func:`encoder_digest`.
    """

    def __init__(self, encoder: FrozenEncoder, device: torch.device | str = "cpu", batch_size: int = 256) -> None:
        self.encoder = encoder.to(device)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.inputs: tuple[str, ...] = tuple(encoder.modalities)
        self.dim: int = int(encoder.out_dim)
        self.digest = encoder_digest(encoder)
        self.key = f"{EMBEDDING_PREFIX}{self.digest[:16]}"

    def to(self, device: torch.device | str) -> FrameEmbedder:
        self.encoder.to(device)
        self.device = torch.device(device)
        return self

    @staticmethod
    def _tensor(x: np.ndarray, device: torch.device) -> Tensor:
        """[n, H, W, C] or [n, H, W] -> float [n, C, H, W] in [0, 1] on ``device``."""
        t = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        t = t.permute(0, 3, 1, 2) if t.ndim == 4 else t.unsqueeze(1)
        return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()

    @torch.no_grad()
    def __call__(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Embeddings float32 ``[n, dim]`` of the observations ``{input: [n, ...]}`` (shard layout)."""
        missing = [k for k in self.inputs if k not in obs]
        if missing:
            raise KeyError(f"the frozen encoder needs observation keys {list(self.inputs)}; missing {missing}")
        n = len(obs[self.inputs[0]])
        out = np.empty((n, self.dim), np.float32)
        for start in range(0, n, self.batch_size):
            part = {k: self._tensor(obs[k][start : start + self.batch_size], self.device) for k in self.inputs}
            out[start : start + len(part[self.inputs[0]])] = self.encoder(part).float().cpu().numpy()
        return out

    def add_to(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``obs`` with its embedding under :attr:`key` (in place; returned for chaining)."""
        obs[self.key] = self(obs)
        return obs

    def describe(self) -> str:
        """Provenance of the stored embeddings, as a shard attribute records it."""
        return f"visarl-multimae sha1={self.digest} modalities={','.join(self.inputs)} pooling={self.encoder.pooling}"


def save_checkpoint(model: MultiMAE, path: str | Path) -> None:
    """Write ``model`` as a ``visarl-multimae`` checkpoint (loadable with ``weights_only=True``), atomically: the
    pretrain stage rewrites ``encoder.pt`` while later stages may read it, and a kill mid-write keeps the old file."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(
        {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "hparams": dict(model.hparams),
            "state_dict": state,
        },
        path,
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
