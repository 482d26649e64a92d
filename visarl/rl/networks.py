"""SAC actor and twin critics: the heads that sit on an encoder's output.

ViSaRL, Appendix F: each head is a linear projection to 100 features with normalization, then 3 linear
layers of 1024 hidden units and an output layer; the critics share the actor's structure. As in SAC-AE
and DrQ, the projection is Linear -> LayerNorm -> tanh and each head has its own projection ("trunk"),
so the actor and each critic learn their own 100-d view of the shared encoder output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Normal

LOG_2 = math.log(2.0)


CONV_INITS = ("delta_orthogonal", "orthogonal")


def weight_init(m: nn.Module) -> None:
    """Orthogonal weights, zero biases (SAC-AE / DrQ-v2); convs get the ReLU gain since ReLU follows them."""
    if isinstance(m, nn.Linear):
        nn.init.orthogonal_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        conv_init(m, "orthogonal")


@torch.no_grad()
def conv_init(m: nn.Module, kind: str = "delta_orthogonal") -> None:
    """Init a conv's weight [out, in, k, k] with the ReLU gain and zero its bias; other modules are left alone.

    ``delta_orthogonal`` (Xiao et al. 2018, as SAC-AE's and the ViSaRL authors' ``weight_init``): zero everywhere
    but the kernel's centre tap, which is an orthogonal [out, in] matrix, so each conv starts as an orthogonal
    1x1 map. ``orthogonal``: the whole weight, flattened to [out, in * k * k], is orthogonal.
    """
    if not isinstance(m, nn.Conv2d):
        return
    gain = nn.init.calculate_gain("relu")
    if kind == "delta_orthogonal":
        kh, kw = m.weight.shape[-2:]
        if kh != kw or kh % 2 == 0:
            raise ValueError(f"delta-orthogonal init needs a square odd kernel, got {kh}x{kw}")
        m.weight.zero_()
        nn.init.orthogonal_(m.weight[:, :, kh // 2, kw // 2], gain)
    elif kind == "orthogonal":
        nn.init.orthogonal_(m.weight, gain=gain)
    else:
        raise ValueError(f"unknown conv init {kind!r}; known: {list(CONV_INITS)}")
    if m.bias is not None:
        nn.init.zeros_(m.bias)


def trunk(repr_dim: int, feature_dim: int) -> nn.Sequential:
    """Linear(repr_dim -> feature_dim) + LayerNorm + tanh: bounds the features the MLP sees (SAC-AE)."""
    return nn.Sequential(nn.Linear(repr_dim, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())


def mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> nn.Sequential:
    """``num_layers`` hidden Linear+ReLU layers of ``hidden_dim`` units, then a linear output layer."""
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers):
        layers += [nn.Linear(dim, hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


class SquashedNormal:
    """tanh(u) with u ~ Normal(loc, scale), independent over the last dim; actions lie in (-1, 1).

    Log-probabilities include the change-of-variables term sum_i log(1 - tanh(u_i)^2), written as
    2 * (log 2 - u - softplus(-2u)) for numerical stability (the form used by SB3 and torch's TanhTransform).
    """

    def __init__(self, loc: Tensor, scale: Tensor) -> None:
        self.loc = loc  # [B, A], pre-tanh mean
        self.scale = scale  # [B, A]
        self.base = Normal(loc, scale)

    @property
    def mean(self) -> Tensor:
        """The deterministic action tanh(loc), [B, A] (used for evaluation)."""
        return torch.tanh(self.loc)

    @staticmethod
    def _log_det_jacobian(u: Tensor) -> Tensor:
        return 2.0 * (LOG_2 - u - F.softplus(-2.0 * u))

    def _log_prob_pre_tanh(self, u: Tensor) -> Tensor:
        return (self.base.log_prob(u) - self._log_det_jacobian(u)).sum(-1)

    def rsample_with_log_prob(self) -> tuple[Tensor, Tensor]:
        """A reparameterized action [B, A] and its log-density [B], computed from u (no atanh needed)."""
        u = self.base.rsample()
        return torch.tanh(u), self._log_prob_pre_tanh(u)

    def rsample(self) -> Tensor:
        return torch.tanh(self.base.rsample())

    def sample(self) -> Tensor:
        with torch.no_grad():
            return torch.tanh(self.base.sample())

    def log_prob(self, action: Tensor, eps: float = 1e-6) -> Tensor:
        """Log-density [B] of given actions; inverts tanh, so actions at +-1 are clamped by ``eps``."""
        u = torch.atanh(action.clamp(-1.0 + eps, 1.0 - eps))
        return self._log_prob_pre_tanh(u)


class Actor(nn.Module):
    """Squashed-Gaussian policy: feat [B, repr_dim] -> SquashedNormal over [B, action_dim].

    The log-std is squashed into ``log_std_bounds`` with a tanh (SAC-AE's [-10, 2]) rather than clipped,
    so its gradient never vanishes at the bounds.
    """

    def __init__(
        self,
        repr_dim: int,
        action_dim: int,
        feature_dim: int = 100,
        hidden_dim: int = 1024,
        num_layers: int = 3,
        log_std_bounds: tuple[float, float] = (-10.0, 2.0),
    ) -> None:
        super().__init__()
        self.log_std_min, self.log_std_max = log_std_bounds
        self.trunk = trunk(repr_dim, feature_dim)
        self.policy = mlp(feature_dim, hidden_dim, 2 * action_dim, num_layers)
        self.apply(weight_init)

    def forward(self, feat: Tensor) -> SquashedNormal:
        # Heads may run under bf16 autocast; the distribution's math (exp, log-probs) is done in fp32.
        mu, log_std = self.policy(self.trunk(feat)).float().chunk(2, dim=-1)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(log_std) + 1.0)
        return SquashedNormal(mu, log_std.exp())


class QNetwork(nn.Module):
    """One Q-function: its own trunk on feat, then an MLP on [trunk(feat), action] -> Q [B] (fp32)."""

    def __init__(self, repr_dim: int, action_dim: int, feature_dim: int, hidden_dim: int, num_layers: int) -> None:
        super().__init__()
        self.trunk = trunk(repr_dim, feature_dim)
        self.q = mlp(feature_dim + action_dim, hidden_dim, 1, num_layers)

    def forward(self, feat: Tensor, action: Tensor) -> Tensor:
        h = self.trunk(feat)
        # Under autocast the trunk emits bf16; match the action's dtype so the concat is well typed.
        return self.q(torch.cat([h, action.to(h.dtype)], dim=-1)).squeeze(-1).float()


class Critic(nn.Module):
    """Twin Q-functions (clipped double Q, TD3/SAC): (feat [B, repr_dim], action [B, A]) -> (Q1 [B], Q2 [B])."""

    def __init__(
        self,
        repr_dim: int,
        action_dim: int,
        feature_dim: int = 100,
        hidden_dim: int = 1024,
        num_layers: int = 3,
    ) -> None:
        super().__init__()
        self.q1 = QNetwork(repr_dim, action_dim, feature_dim, hidden_dim, num_layers)
        self.q2 = QNetwork(repr_dim, action_dim, feature_dim, hidden_dim, num_layers)
        self.apply(weight_init)

    def forward(self, feat: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        return self.q1(feat, action), self.q2(feat, action)
