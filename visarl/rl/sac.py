"""Soft Actor-Critic update math as plain PyTorch (no Lightning, no env).

SAC with twin critics, target critics and a learned temperature (Haarnoja et al. 2018), arranged as in
SAC-AE / DrQ for pixels: one encoder shared by actor and critics, trained by the critic loss only (the actor
sees detached features). The ViSaRL authors' target critic reads the online encoder's features (no target
encoder; the default here too); ``target_encoder=True`` adds SAC-AE's slow target copy of a trainable encoder.

A LightningModule with manual optimization drives it either piece by piece (``encode``, ``critic_loss``,
``actor_and_alpha_loss``, ``soft_update_target``) or with one call per step::

    optimizers = SACOptimizers(*self.optimizers())
    metrics = agent.update(batch, optimizers, step, **cfg.sac.update_kwargs(), backward=self.manual_backward)

Hyperparameters have no defaults here: they live in :class:`visarl.rl.stage.SACConfig`, whose ``agent_kwargs``,
``update_kwargs`` and ``optimizer_kwargs`` give the numbers these functions take.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call

from visarl.data.datamodules import TransitionBatch
from visarl.rl.encoders import is_trainable
from visarl.rl.networks import Actor, Critic


class SACOptimizers(NamedTuple):
    """One optimizer per loss: critic (+ trainable encoder), actor, temperature."""

    critic: torch.optim.Optimizer
    actor: torch.optim.Optimizer
    alpha: torch.optim.Optimizer


@torch.no_grad()
def polyak_update(params: Iterable[Tensor], target_params: Iterable[Tensor], tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, in place (SB3's ``polyak_update``)."""
    params, target_params = list(params), list(target_params)
    if len(params) != len(target_params):
        raise ValueError(f"polyak_update: {len(params)} source vs {len(target_params)} target tensors")
    for p, tp in zip(params, target_params, strict=True):
        tp.lerp_(p, tau)


def soft_td_target(
    reward: Tensor,
    terminated: Tensor,
    next_q1: Tensor,
    next_q2: Tensor,
    next_log_prob: Tensor,
    alpha: Tensor | float,
    discount: float,
) -> Tensor:
    """r + discount * (1 - terminated) * (min(Q1', Q2') - alpha * log pi(a'|s')), all [B].

    Only ``terminated`` stops bootstrapping: a time-limit truncation is not a property of the state, so
    its value is still V(s') (Pardo et al. 2018; SB3's ``handle_timeout_termination``).
    """
    not_done = 1.0 - terminated.float()
    next_v = torch.min(next_q1, next_q2) - alpha * next_log_prob
    return reward.float() + discount * not_done * next_v


class SACAgent(nn.Module):
    """Encoder, actor, twin critics, their targets and the temperature.

    Widths are numbers so tests can use narrow heads; the paper's (Appendix F) are :class:`SACConfig`'s defaults.
    ``target_entropy`` defaults to -|A|; the temperature starts at ``init_temperature``.
    ``encoder_dtype`` (e.g. ``torch.bfloat16``) autocasts the encoder alone; heads, losses and optimizers stay fp32.
    """

    def __init__(
        self,
        encoder: nn.Module,
        action_dim: int,
        *,
        feature_dim: int,
        hidden_dim: int,
        num_layers: int,
        discount: float,
        init_temperature: float,
        log_std_bounds: tuple[float, float],
        target_encoder: bool,
        target_entropy: float | None = None,
        encoder_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        repr_dim: int = encoder.out_dim
        self.obs_keys: tuple[str, ...] = tuple(encoder.obs_keys)
        self.action_dim = action_dim
        self.discount = discount
        self.target_entropy = float(-action_dim if target_entropy is None else target_entropy)
        self.actor = Actor(repr_dim, action_dim, feature_dim, hidden_dim, num_layers, log_std_bounds)
        self.critic = Critic(repr_dim, action_dim, feature_dim, hidden_dim, num_layers)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        # With ``target_encoder`` a learned encoder gets a slow target copy for the target critic (SAC-AE, DrQ);
        # otherwise (the ViSaRL authors' code) and for identity and frozen encoders the online encoder serves both.
        self.encoder_target = (
            copy.deepcopy(encoder).requires_grad_(False) if target_encoder and is_trainable(encoder) else None
        )
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init_temperature)))
        # Autocast for the encoder alone (e.g. bf16): the convs are ~90% of a pixel update, while Q-values,
        # log-probs, losses and the optimizer stay fp32 (bf16 Q-values near 1000 would be +-4 apart).
        self.encoder_dtype = encoder_dtype

    def _run_encoder(self, encoder: nn.Module, obs: Mapping[str, Tensor]) -> Tensor:
        if self.encoder_dtype is None:
            return encoder(obs)
        device_type = next(iter(obs.values())).device.type
        with torch.autocast(device_type, dtype=self.encoder_dtype):
            return encoder(obs).float()

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.exp()

    def encode(self, obs: Mapping[str, Tensor]) -> Tensor:
        """Features [B, repr_dim] from the online encoder (with grad for a trainable encoder)."""
        return self._run_encoder(self.encoder, obs)

    @torch.no_grad()
    def td_target(self, batch: TransitionBatch) -> Tensor:
        """The soft TD target [B] (fp32) for ``batch``, with a freshly sampled next action."""
        # The policy picks a' from the online encoder's features (it was trained on those); the target
        # critic scores it on the target encoder's features when there is one (SAC-AE / DrQ), else on the same.
        next_feat = self._run_encoder(self.encoder, batch.next_obs)
        if self.encoder_target is None:
            next_feat_target = next_feat
        else:
            next_feat_target = self._run_encoder(self.encoder_target, batch.next_obs)
        next_action, next_log_prob = self.actor(next_feat).rsample_with_log_prob()
        next_q1, next_q2 = self.critic_target(next_feat_target, next_action)
        return soft_td_target(
            batch.reward.reshape(-1),
            batch.terminated.reshape(-1),
            next_q1,
            next_q2,
            next_log_prob,
            self.alpha.detach(),
            self.discount,
        )

    def critic_loss(self, batch: TransitionBatch, feat: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """MSE of both critics to the soft TD target; gradients reach the critics and a trainable encoder.

        Pass ``feat = encode(batch.obs)`` to share one encoder pass with the actor update.
        """
        if feat is None:
            feat = self.encode(batch.obs)
        target = self.td_target(batch)
        q1, q2 = self.critic(feat, batch.action)  # fp32 outputs even under autocast
        qf1_loss = (q1 - target).pow(2).mean()
        qf2_loss = (q2 - target).pow(2).mean()
        qf_loss = qf1_loss + qf2_loss
        metrics = {
            "losses/qf1_values": q1.detach().mean(),
            "losses/qf2_values": q2.detach().mean(),
            "losses/qf1_loss": qf1_loss.detach(),
            "losses/qf2_loss": qf2_loss.detach(),
            "losses/qf_loss": qf_loss.detach() / 2.0,  # cleanrl logs the mean of the two
            "charts/target_q": target.mean(),
        }
        return qf_loss, metrics

    def actor_and_alpha_loss(self, feat: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Actor loss E[alpha * log pi - min Q] and temperature loss; ``feat`` is detached here.

        The critics are evaluated with detached parameters, so the actor loss leaves no gradient on them
        (and computes none); the temperature loss sees log pi detached. The two losses thus touch disjoint
        parameters and may be summed into one backward pass.
        """
        feat = feat.detach()  # the encoder learns from the critic only (SAC-AE, DrQ)
        action, log_prob = self.actor(feat).rsample_with_log_prob()
        frozen_critic = {k: v.detach() for k, v in self.critic.named_parameters()}
        q1, q2 = functional_call(self.critic, frozen_critic, (feat, action))
        alpha = self.alpha
        actor_loss = (alpha.detach() * log_prob - torch.min(q1, q2)).mean()
        # d/d log_alpha = -alpha * E[log pi + H_target]: positive when entropy -log pi exceeds the target,
        # so gradient descent lowers alpha then, and raises it when entropy is below the target.
        alpha_loss = -(alpha * (log_prob.detach() + self.target_entropy)).mean()
        metrics = {
            "losses/actor_loss": actor_loss.detach(),
            "losses/alpha_loss": alpha_loss.detach(),
            "charts/alpha": alpha.detach(),
            "charts/entropy": -log_prob.detach().mean(),
        }
        return actor_loss, alpha_loss, metrics

    @torch.no_grad()
    def soft_update_target(self, tau: float, encoder_tau: float | None = None) -> None:
        """Polyak-average the critic (and a trainable encoder, with ``encoder_tau`` or ``tau``) into the targets."""
        polyak_update(self.critic.parameters(), self.critic_target.parameters(), tau)
        if self.encoder_target is not None:
            enc_tau = tau if encoder_tau is None else encoder_tau
            polyak_update(self.encoder.parameters(), self.encoder_target.parameters(), enc_tau)
            # Buffers (e.g. normalisation statistics) are copied, not averaged.
            for b, tb in zip(self.encoder.buffers(), self.encoder_target.buffers(), strict=True):
                tb.copy_(b)

    @torch.no_grad()
    def act(self, obs: Mapping[str, Tensor], deterministic: bool = False) -> Tensor:
        """Actions [B, A] in [-1, 1]: the squashed mean if ``deterministic`` (evaluation), else a sample."""
        dist = self.actor(self.encode(obs))
        return dist.mean if deterministic else dist.sample()

    def update(
        self,
        batch: TransitionBatch,
        optimizers: SACOptimizers,
        step: int,
        *,
        actor_update_freq: int,
        target_update_freq: int,
        tau: float,
        encoder_tau: float | None,
        autocast_dtype: torch.dtype | None = None,
        backward: Callable[[Tensor], None] | None = None,
    ) -> dict[str, Tensor]:
        """One SAC step: critic always, actor and temperature every ``actor_update_freq`` steps, targets every
        ``target_update_freq`` steps. Forward passes run under autocast when ``autocast_dtype`` is given
        (losses stay fp32); with None the surrounding autocast state applies. ``backward`` defaults to
        ``loss.backward()``; Lightning passes ``manual_backward``.
        Returns detached metric tensors (no host sync).
        """
        backward = backward if backward is not None else Tensor.backward
        device_type = batch.action.device.type

        def autocast() -> contextlib.AbstractContextManager:
            # None inherits the caller's context, so Lightning's precision plugin (which wraps training_step in
            # autocast) is not switched off in here.
            if autocast_dtype is None:
                return contextlib.nullcontext()
            return torch.autocast(device_type, dtype=autocast_dtype)

        with autocast():
            feat = self.encode(batch.obs)  # one encoder pass, shared by critic and actor
            qf_loss, metrics = self.critic_loss(batch, feat)
        optimizers.critic.zero_grad(set_to_none=True)
        backward(qf_loss)
        optimizers.critic.step()

        if step % actor_update_freq == 0:
            with autocast():
                actor_loss, alpha_loss, actor_metrics = self.actor_and_alpha_loss(feat)
            optimizers.actor.zero_grad(set_to_none=True)
            optimizers.alpha.zero_grad(set_to_none=True)
            backward(actor_loss + alpha_loss)  # disjoint parameters: one pass serves both
            optimizers.actor.step()
            optimizers.alpha.step()
            metrics.update(actor_metrics)

        if step % target_update_freq == 0:
            self.soft_update_target(tau, encoder_tau)
        return metrics


def make_optimizers(
    agent: SACAgent,
    lr: float,
    alpha_lr: float | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    alpha_betas: tuple[float, float] = (0.9, 0.999),
) -> SACOptimizers:
    """Adam for critic + trainable encoder, actor, and temperature (``alpha_lr`` None: ``lr`` for all three).

    Parameters with ``requires_grad=False`` (targets, a frozen encoder) are left out.
    """
    critic_params = [p for p in (*agent.encoder.parameters(), *agent.critic.parameters()) if p.requires_grad]
    return SACOptimizers(
        critic=torch.optim.Adam(critic_params, lr=lr, betas=betas),
        actor=torch.optim.Adam(agent.actor.parameters(), lr=lr, betas=betas),
        alpha=torch.optim.Adam([agent.log_alpha], lr=lr if alpha_lr is None else alpha_lr, betas=alpha_betas),
    )
