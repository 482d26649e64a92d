"""MultiMAE pretraining (ViSaRL Sec. II-C): the model, its masking and loss, and the frozen encoder for RL."""

from visarl.mae.adapters import CrossAttention, PatchInputAdapter, SpatialDecoder, set_fused_attn
from visarl.mae.frozen import FrameEmbedder, FrozenEncoder, encoder_digest, load_encoder, load_model, save_checkpoint
from visarl.mae.loss import LossOutput, ReconstructionLoss, WeightedMSE, masked_error, masked_mse, normalize_patches
from visarl.mae.masking import allocate_budget, dirichlet_masks, sample_dirichlet, sample_masks, visible_ids
from visarl.mae.multimae import (
    MODALITIES,
    MODEL_SIZES,
    ModalitySpec,
    MultiMAE,
    MultiMAEEncoder,
    MultiMAEOutput,
    build_multimae,
)
from visarl.mae.patches import patchify, sincos_pos_embed_2d, unpatchify

__all__ = [
    "MODALITIES",
    "MODEL_SIZES",
    "CrossAttention",
    "FrameEmbedder",
    "FrozenEncoder",
    "encoder_digest",
    "LossOutput",
    "ModalitySpec",
    "MultiMAE",
    "MultiMAEEncoder",
    "MultiMAEOutput",
    "PatchInputAdapter",
    "ReconstructionLoss",
    "SpatialDecoder",
    "WeightedMSE",
    "allocate_budget",
    "build_multimae",
    "dirichlet_masks",
    "load_encoder",
    "load_model",
    "masked_error",
    "masked_mse",
    "normalize_patches",
    "patchify",
    "sample_dirichlet",
    "sample_masks",
    "save_checkpoint",
    "set_fused_attn",
    "sincos_pos_embed_2d",
    "unpatchify",
    "visible_ids",
]
