"""The behaviour-cloning policy of the probe: an encoder, BatchNorm on its features, and an MLP to actions."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


class BCPolicy(nn.Module):
    """obs ``{key: [B, ...]}`` -> actions ``[B, action_dim]``: ``encoder`` -> BatchNorm1d -> MLP (ReLU) -> Linear.

    ``encoder`` is any module with ``obs_keys`` and ``out_dim`` (the state or a stored embedding through an
    identity, or a CNN trained end to end by the BC loss). BatchNorm on the input is the R3M / CortexBench choice:
    it puts raw states (metres, quaternions) and embeddings of any scale on one footing. ``norm_eps`` is its
    variance floor: features that barely vary over the demos (a resting object's quaternion) would otherwise be
    divided by a near-zero std and their tiny differences blown up at evaluation time. Outputs are unbounded;
    :meth:`act` clips them to the action box.
    """

    def __init__(
        self,
        encoder: nn.Module,
        action_dim: int,
        hidden_dim: int = 256,
        num_layers: int = 2,
        input_norm: bool = True,
        norm_eps: float = 0.1,
    ) -> None:
        super().__init__()
        if num_layers < 1 or hidden_dim < 1 or action_dim < 1:
            raise ValueError(
                f"need num_layers, hidden_dim, action_dim >= 1; got {num_layers}, {hidden_dim}, {action_dim}"
            )
        self.encoder = encoder
        self.obs_keys: tuple[str, ...] = tuple(encoder.obs_keys)
        self.action_dim = action_dim
        dim = int(encoder.out_dim)
        self.norm = nn.BatchNorm1d(dim, eps=norm_eps) if input_norm else nn.Identity()
        layers: list[nn.Module] = []
        for _ in range(num_layers):
            layers += [nn.Linear(dim, hidden_dim), nn.ReLU(inplace=True)]
            dim = hidden_dim
        layers.append(nn.Linear(dim, action_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        return self.mlp(self.norm(self.encoder(obs)))  # [B, A]

    @torch.no_grad()
    def act(self, obs: Mapping[str, Tensor]) -> Tensor:
        """Actions clipped to [-1, 1] (the expert's and the env's action box)."""
        return self(obs).clamp(-1.0, 1.0)
