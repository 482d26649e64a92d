"""SAC for ViSaRL: encoders and input variants, actor and twin critics, the update math, saliency sources."""

from visarl.data.datamodules import TransitionBatch
from visarl.rl.encoders import IdentityEncoder, PixelCNN, make_encoder
from visarl.rl.networks import Actor, Critic, SquashedNormal
from visarl.rl.sac import SACAgent, SACOptimizers, make_optimizers
from visarl.rl.saliency_source import OracleSaliency

__all__ = [
    "Actor",
    "Critic",
    "IdentityEncoder",
    "OracleSaliency",
    "PixelCNN",
    "SACAgent",
    "SACOptimizers",
    "SquashedNormal",
    "TransitionBatch",
    "make_encoder",
    "make_optimizers",
]
