"""SAC pieces: encoders and variants, actor/critic heads, the update math, saliency sources."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from visarl.config import ConfigError
from visarl.data.datamodules import TransitionBatch
from visarl.mae import FrozenEncoder, build_multimae
from visarl.rl.encoders import PIXEL_VARIANTS, IdentityEncoder, PixelCNN, make_encoder
from visarl.rl.networks import Actor, Critic
from visarl.rl.sac import SACAgent, make_optimizers, polyak_update, soft_td_target
from visarl.rl.saliency_source import OracleSaliency
from visarl.rl.stage import SACConfig

A = 4  # Meta-World action size
PAPER = SACConfig()  # the one place SAC's defaults live
WIDTHS = dict(feature_dim=16, hidden_dim=32, num_layers=3)
SMALL = {**PAPER.agent_kwargs(), **WIDTHS}
SCHEDULE = PAPER.update_kwargs()
IMG = 16  # small frames: 16 -> 7 -> 5 -> 3 with 3 unpadded conv layers


def pixel_obs(batch: int, size: int = IMG, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "rgb": torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g),
        "saliency": torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8, generator=g),
        "state": torch.randn(batch, 39, generator=g),
    }


def make_batch(batch: int = 8, seed: int = 0, terminated=None, truncated=None) -> TransitionBatch:
    g = torch.Generator().manual_seed(seed + 1)
    return TransitionBatch(
        obs=pixel_obs(batch, seed=seed),
        action=torch.rand(batch, A, generator=g) * 2 - 1,
        reward=torch.randn(batch, generator=g),
        next_obs=pixel_obs(batch, seed=seed + 100),
        terminated=torch.zeros(batch, dtype=torch.bool) if terminated is None else terminated,
        truncated=torch.zeros(batch, dtype=torch.bool) if truncated is None else truncated,
    )


def small_cnn(variant: str = "rgbs") -> PixelCNN:
    return PixelCNN(variant, (IMG, IMG), num_layers=3, num_filters=8)


def cnn_agent(seed: int = 0, **kw) -> SACAgent:
    torch.manual_seed(seed)
    return SACAgent(small_cnn(), A, **{**SMALL, **kw})


def params_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- encoders


def test_paper_cnn_is_the_authors_unpadded_stack():
    enc = PixelCNN("rgb", (64, 64))
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 11
    assert all(c.out_channels == 32 and c.kernel_size == (3, 3) for c in convs)
    assert [c.stride for c in convs] == [(2, 2)] + [(1, 1)] * 10
    assert all(c.padding == (0, 0) for c in convs)  # Appendix F: "no padding"; the authors' SharedCNN
    # ReLU between convs, none after the last (the authors' and SAC-AE's encoders)
    assert isinstance(enc.convs[-1], nn.Conv2d) and sum(isinstance(m, nn.ReLU) for m in enc.convs) == 10
    assert enc.out_shape == (32, 11, 11) and enc.out_dim == 3872  # 64 -> 31 -> 29 -> ... -> 11
    out = enc({"rgb": torch.zeros(2, 3, 64, 64, dtype=torch.uint8)})
    assert out.shape == (2, 3872)
    assert PixelCNN("rgb", (84, 84)).out_shape == (32, 21, 21)
    # One pixel of padding on the first conv gives the 32x12x12 that Appendix F also states.
    padded = PixelCNN("rgb", (64, 64), first_padding=1, last_relu=True)
    assert padded.out_dim == 4608 and isinstance(padded.convs[-1], nn.ReLU)
    assert padded({"rgb": torch.zeros(1, 3, 64, 64, dtype=torch.uint8)}).shape == (1, 4608)


def test_conv_init_delta_orthogonal_and_orthogonal():
    torch.manual_seed(0)
    enc = PixelCNN("rgbs", (32, 32), num_layers=3)
    for conv in (m for m in enc.modules() if isinstance(m, nn.Conv2d)):
        w = conv.weight.detach()
        centre = w[:, :, 1, 1]
        off = w.clone()
        off[:, :, 1, 1] = 0
        assert torch.equal(off, torch.zeros_like(off)) and torch.equal(conv.bias, torch.zeros_like(conv.bias))
        # the centre tap is orthogonal with the ReLU gain: columns (in <= out) orthonormal up to gain^2 = 2
        torch.testing.assert_close(centre.T @ centre, 2.0 * torch.eye(centre.shape[1]), atol=1e-5, rtol=0)
    full = PixelCNN("rgbs", (32, 32), num_layers=3, init="orthogonal")
    w = full.convs[2].weight.detach().flatten(1)  # [32, 288]: rows orthonormal up to gain^2
    assert (w[:, [0, 1, 2, 3, 5, 6, 7, 8]].abs().sum() > 0).item()
    torch.testing.assert_close(w @ w.T, 2.0 * torch.eye(32), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="init"):
        PixelCNN("rgb", (32, 32), init="xavier")


@pytest.mark.parametrize("variant,channels", [("rgb", 3), ("saliency", 1), ("rgb_x_saliency", 3), ("rgbs", 4)])
def test_pixel_variant_inputs_and_shapes(variant, channels):
    enc = small_cnn(variant)
    assert enc.convs[0].in_channels == channels
    obs = pixel_obs(5)
    rgb = obs["rgb"].numpy().astype(np.float64) / 255
    sal = obs["saliency"].numpy().astype(np.float64) / 255
    expected = {
        "rgb": rgb,
        "saliency": sal,
        "rgb_x_saliency": rgb * sal,
        "rgbs": np.concatenate([rgb, sal], axis=1),
    }[variant]  # in [0, 1], not centred (the authors only divide by 255)
    np.testing.assert_allclose(enc.preprocess(obs).numpy(), expected, atol=1e-6)
    centred = PixelCNN(variant, (IMG, IMG), num_layers=3, num_filters=8, center=True)
    np.testing.assert_allclose(centred.preprocess(obs).numpy(), expected - 0.5, atol=1e-6)
    assert set(enc.obs_keys) == {"rgb", "saliency"} & set(PIXEL_VARIANTS[variant].obs_keys)
    out = enc(obs)
    assert out.shape == (5, enc.out_dim) == (5, 8 * 3 * 3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, enc.convs(enc.preprocess(obs)).flatten(1))  # [C, H, W] order, any layout
    # Float maps in [0, 1] are accepted as well as uint8 and give the same input.
    as_float = {k: (v.float() / 255 if v.dtype == torch.uint8 else v) for k, v in obs.items()}
    torch.testing.assert_close(enc.preprocess(as_float), enc.preprocess(obs))


@pytest.mark.parametrize("variant", ["saliency", "rgbs", "rgb_x_saliency"])
def test_saliency_scale_restores_the_authors_double_division(variant):
    obs = pixel_obs(3)
    ours = PixelCNN(variant, (IMG, IMG), num_layers=3, num_filters=8)
    theirs = PixelCNN(variant, (IMG, IMG), num_layers=3, num_filters=8, saliency_scale=1 / 255)
    x, y = ours.preprocess(obs), theirs.preprocess(obs)
    if variant == "rgb_x_saliency":  # a mask of rgb: their rgb * map / 255 is already in [0, 1]
        torch.testing.assert_close(x, y)
        return
    torch.testing.assert_close(y[:, -1:], x[:, -1:] / 255)  # the map's channel is 255x weaker
    torch.testing.assert_close(y[:, :-1], x[:, :-1])  # rgb untouched
    assert x[:, -1].max() > 0.9  # ours spans [0, 1] like rgb


def test_encoder_missing_key_is_named():
    with pytest.raises(KeyError, match="saliency"):
        small_cnn("rgbs")({"rgb": torch.zeros(1, 3, IMG, IMG, dtype=torch.uint8)})


def test_make_encoder_factory():
    shapes = {"rgb": (3, 64, 64), "saliency": (1, 64, 64), "state": (39,)}
    ident = make_encoder("identity", "rgb", shapes)
    assert isinstance(ident, IdentityEncoder) and ident.out_dim == 39 and ident.obs_keys == ("state",)
    assert ident({"state": torch.ones(2, 39, dtype=torch.float64)}).dtype == torch.float32
    cnn = make_encoder("cnn", "rgbs", shapes)
    assert isinstance(cnn, PixelCNN) and cnn.out_dim == 3872 and cnn.obs_keys == ("rgb", "saliency")
    padded = make_encoder("cnn", "rgbs", shapes, first_padding=1, saliency_scale=0.5, center=True)
    assert padded.out_dim == 4608 and padded.saliency_scale == 0.5 and padded.center
    with pytest.raises(ConfigError, match="encoder"):
        make_encoder("resnet", "rgb", shapes)
    with pytest.raises(ConfigError, match="variant"):
        make_encoder("cnn", "rgbd", shapes)
    with pytest.raises(ConfigError, match="saliency"):
        make_encoder("cnn", "rgbs", {"rgb": (3, 64, 64)})
    with pytest.raises(ConfigError, match="module"):
        make_encoder("mmae", "rgb", shapes)
    with pytest.raises(ConfigError, match="encoder"):
        make_encoder("frozen", "rgb", shapes)  # the one name of the frozen MultiMAE is "mmae"


def test_frozen_encoder_never_changes():
    torch.manual_seed(0)
    shapes = {"rgb": (3, IMG, IMG), "saliency": (1, IMG, IMG)}
    frozen = FrozenEncoder.from_model(build_multimae("tiny", ("rgb", "saliency"), image_size=IMG, patch_size=4))
    enc = make_encoder("mmae", "rgbs", shapes, module=frozen)
    assert enc is frozen and enc.out_dim == 64 and enc.obs_keys == ("rgb", "saliency")
    with pytest.raises(ConfigError, match="reads"):
        make_encoder("mmae", "rgb", shapes, module=frozen)  # the rgb variant gives no saliency
    with pytest.raises(ConfigError, match=f"trained on {IMG}x{IMG}"):
        make_encoder("mmae", "rgbs", {"rgb": (3, 32, 32), "saliency": (1, 32, 32)}, module=frozen)
    u8 = pixel_obs(2)
    unit = {k: u8[k].float() / 255.0 for k in ("rgb", "saliency")}
    torch.testing.assert_close(enc(u8), enc(unit))  # replay's uint8 frames and [0, 1] floats alike
    agent = SACAgent(enc, A, **SMALL)
    assert agent.encoder_target is None
    before = params_of(enc)
    opts = make_optimizers(agent, lr=1e-2)
    optimized = {id(p) for o in opts for group in o.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in enc.parameters()}
    agent.train()
    assert not enc.training  # stays in eval: dropout off, the same obs gives the same features
    obs = pixel_obs(3)
    f1, f2 = agent.encode(obs), agent.encode(obs)
    assert torch.equal(f1, f2) and not f1.requires_grad
    for step in range(3):
        every_step = {**SCHEDULE, "actor_update_freq": 1, "target_update_freq": 1}
        agent.update(make_batch(seed=step), opts, step, **every_step)
    assert all(p.grad is None for p in enc.parameters())
    assert same(before, params_of(enc))


# ---------------------------------------------------------------- heads


def test_head_structure_at_paper_size():
    with torch.device("meta"):  # shapes only: skips the slow orthogonal init of 1024x1024 weights
        actor, critic = Actor(4608, A), Critic(4608, A)
    linears = [m for m in actor.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (4608, 100),
        (100, 1024),
        (1024, 1024),
        (1024, 1024),
        (1024, 2 * A),
    ]
    assert isinstance(actor.trunk[1], nn.LayerNorm) and isinstance(actor.trunk[2], nn.Tanh)
    for q in (critic.q1, critic.q2):
        dims = [(m.in_features, m.out_features) for m in q.modules() if isinstance(m, nn.Linear)]
        assert dims == [(4608, 100), (100 + A, 1024), (1024, 1024), (1024, 1024), (1024, 1)]
    assert critic.q1.trunk[0].weight is not critic.q2.trunk[0].weight  # each Q has its own trunk


def test_actor_critic_shapes_and_action_bounds():
    torch.manual_seed(0)
    actor, critic = Actor(32, A, **WIDTHS), Critic(32, A, **WIDTHS)
    feat = torch.randn(7, 32) * 100  # large features push tanh towards saturation
    dist = actor(feat)
    for a in (dist.sample(), dist.rsample(), dist.mean, dist.rsample_with_log_prob()[0]):
        assert a.shape == (7, A) and (a.abs() <= 1).all()
    assert dist.rsample_with_log_prob()[1].shape == (7,)
    assert ((dist.scale >= math.exp(-10) - 1e-12) & (dist.scale <= math.exp(2) + 1e-6)).all()
    q1, q2 = critic(feat, dist.sample())
    assert q1.shape == q2.shape == (7,) and not torch.equal(q1, q2)


def test_log_prob_matches_tanh_gaussian_density():
    torch.manual_seed(1)
    actor = Actor(12, 3, **WIDTHS, log_std_bounds=(-2.0, 0.0))
    dist = actor(torch.randn(64, 12))
    action, log_prob = dist.rsample_with_log_prob()
    a = action.detach().double().numpy()
    mu, std = dist.loc.detach().double().numpy(), dist.scale.detach().double().numpy()
    u = np.arctanh(a)
    gauss = np.exp(-0.5 * ((u - mu) / std) ** 2) / (std * np.sqrt(2 * np.pi))
    expected = np.log(np.prod(gauss / (1 - a**2), axis=-1))  # density of a = tanh(u), change of variables
    np.testing.assert_allclose(log_prob.detach().numpy(), expected, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(dist.log_prob(action.detach()).detach().numpy(), expected, rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------- update math


def test_soft_td_target_hand_computed():
    reward = torch.tensor([1.0, 1.0, 1.0, -2.0])
    terminated = torch.tensor([False, True, False, False])
    q1 = torch.tensor([2.0, 2.0, 2.0, 5.0])
    q2 = torch.tensor([3.0, 1.0, 4.0, 4.0])
    logp = torch.tensor([-1.0, -1.0, 0.5, 2.0])
    target = soft_td_target(reward, terminated, q1, q2, logp, alpha=0.5, discount=0.9)
    # 1 + .9*(2 + .5); 1 (terminal); 1 + .9*(2 - .25); -2 + .9*(4 - 1)
    torch.testing.assert_close(target, torch.tensor([3.25, 1.0, 2.575, 0.7]))


def test_no_target_encoder_by_default_target_critic_reads_online_features():
    agent = cnn_agent()
    assert agent.encoder_target is None  # the authors' SAC: no target encoder
    batch = make_batch()
    torch.manual_seed(5)
    target = agent.td_target(batch)
    torch.manual_seed(5)
    with torch.no_grad():
        feat = agent.encoder(batch.next_obs)
        next_action, logp = agent.actor(feat).rsample_with_log_prob()
        q1, q2 = agent.critic_target(feat, next_action)
    expected = batch.reward + 0.99 * (torch.min(q1, q2) - agent.alpha * logp)
    torch.testing.assert_close(target, expected)
    enc0 = params_of(agent.encoder)
    agent.soft_update_target(tau=0.5)  # no target encoder to average: the online encoder is untouched
    assert same(enc0, params_of(agent.encoder))
    assert cnn_agent(target_encoder=True).encoder_target is not None


def test_terminated_stops_bootstrap_truncated_does_not():
    agent = cnn_agent(target_encoder=True)
    with torch.no_grad():  # make the target encoder differ from the online one, as it does after training
        for p in agent.encoder_target.parameters():
            p.add_(0.1 * torch.randn_like(p))  # not a rescaling: the trunks' LayerNorm would undo that
    terminated = torch.tensor([1, 0, 0, 0, 1, 0, 0, 0], dtype=torch.bool)
    truncated = torch.tensor([0, 1, 0, 0, 1, 0, 1, 0], dtype=torch.bool)
    batch = make_batch(terminated=terminated, truncated=truncated)
    torch.manual_seed(5)
    target = agent.td_target(batch)
    # Independent recomputation of the same sampled next actions (same RNG draw).
    torch.manual_seed(5)
    with torch.no_grad():
        next_action, logp = agent.actor(agent.encoder(batch.next_obs)).rsample_with_log_prob()
        q1, q2 = agent.critic_target(agent.encoder_target(batch.next_obs), next_action)
    alpha = agent.alpha.item()
    for i in range(8):
        bootstrap = 0.0 if terminated[i] else 0.99 * (min(q1[i].item(), q2[i].item()) - alpha * logp[i].item())
        assert target[i].item() == pytest.approx(batch.reward[i].item() + bootstrap, abs=1e-5)
    assert target[0].item() == pytest.approx(batch.reward[0].item(), abs=1e-6)
    assert target[1].item() != pytest.approx(batch.reward[1].item(), abs=1e-3)  # truncated still bootstraps


def test_critic_loss_falls_on_fixed_batch():
    torch.manual_seed(0)
    shapes = {"state": (39,)}
    heads = {**SMALL, "feature_dim": 32, "hidden_dim": 64, "num_layers": 2}
    agent = SACAgent(make_encoder("identity", "", shapes), A, **heads)
    opt = torch.optim.Adam(agent.critic.parameters(), lr=1e-3)
    batch = make_batch(batch=32)
    losses = []
    for _ in range(50):
        loss, metrics = agent.critic_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert metrics["losses/qf_loss"].item() == pytest.approx(loss.item() / 2)
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5])


def test_polyak_update_hand_computed():
    src = [torch.tensor([3.0, -1.0]), torch.tensor(2.0)]
    tgt = [torch.tensor([1.0, 1.0]), torch.tensor(0.0)]
    polyak_update(src, tgt, 0.25)
    torch.testing.assert_close(tgt[0], torch.tensor([1.5, 0.5]))  # 0.75 * 1 + 0.25 * 3, 0.75 - 0.25
    torch.testing.assert_close(tgt[1], torch.tensor(0.5))


def test_soft_update_target_agent():
    agent = cnn_agent(target_encoder=True)
    with torch.no_grad():
        for p in agent.critic.parameters():
            p.fill_(1.0)
        for p in agent.critic_target.parameters():
            p.fill_(-1.0)
        for p in agent.encoder.parameters():
            p.fill_(2.0)
        for p in agent.encoder_target.parameters():
            p.fill_(0.0)
    agent.soft_update_target(tau=0.1, encoder_tau=0.5)
    assert all(torch.allclose(p, torch.full_like(p, -0.8)) for p in agent.critic_target.parameters())  # .9*-1 + .1
    assert all(torch.allclose(p, torch.full_like(p, 1.0)) for p in agent.encoder_target.parameters())  # .5*0 + .5*2
    assert all(torch.allclose(p, torch.full_like(p, 1.0)) for p in agent.critic.parameters())  # source untouched
    assert not any(p.requires_grad for p in (*agent.critic_target.parameters(), *agent.encoder_target.parameters()))


@pytest.mark.parametrize("target_entropy,direction", [(50.0, +1), (-50.0, -1)])
def test_temperature_moves_towards_target_entropy(target_entropy, direction):
    # Entropy of a 4-d squashed Gaussian is far below +50 (alpha must rise) and far above -50 (alpha must fall).
    agent = cnn_agent(target_entropy=target_entropy)
    opt = torch.optim.SGD([agent.log_alpha], lr=0.1)
    feat = agent.encode(make_batch().obs)
    torch.manual_seed(3)
    _, alpha_loss, metrics = agent.actor_and_alpha_loss(feat)
    alpha_loss.backward()
    # d loss / d log_alpha = -alpha * E[log pi + target] = alpha * (entropy - target)
    expected_grad = agent.alpha.item() * (metrics["charts/entropy"].item() - target_entropy)
    assert agent.log_alpha.grad.item() == pytest.approx(expected_grad, rel=1e-5)
    before = agent.alpha.item()
    opt.step()
    assert (agent.alpha.item() - before) * direction > 0


def test_actor_update_leaves_encoder_critic_update_changes_it():
    agent = cnn_agent()
    opts = make_optimizers(agent, lr=1e-3)
    batch = make_batch()
    enc0, critic0, actor0 = params_of(agent.encoder), params_of(agent.critic), params_of(agent.actor)
    feat = agent.encode(batch.obs)
    actor_loss, alpha_loss, _ = agent.actor_and_alpha_loss(feat)
    (actor_loss + alpha_loss).backward()
    assert all(p.grad is None for p in agent.encoder.parameters())
    assert all(p.grad is None for p in agent.critic.parameters())  # critics evaluated with frozen parameters
    opts.actor.step()
    opts.critic.step()  # nothing to apply: no gradients reached encoder or critic
    assert same(enc0, params_of(agent.encoder)) and same(critic0, params_of(agent.critic))
    assert not same(actor0, params_of(agent.actor))
    loss, _ = agent.critic_loss(batch)
    opts.critic.zero_grad()
    loss.backward()
    opts.critic.step()
    assert not same(enc0, params_of(agent.encoder))
    assert all(not torch.equal(enc0[k], v) for k, v in params_of(agent.encoder).items())  # every conv moved


def test_every_trainable_parameter_gets_a_gradient():
    agent = cnn_agent()
    batch = make_batch()
    feat = agent.encode(batch.obs)
    qf_loss, _ = agent.critic_loss(batch, feat)
    actor_loss, alpha_loss, _ = agent.actor_and_alpha_loss(feat)
    (qf_loss + actor_loss + alpha_loss).backward()
    trainable = [(n, p) for n, p in agent.named_parameters() if p.requires_grad]
    assert {n.split(".")[0] for n, _ in trainable} == {"encoder", "actor", "critic", "log_alpha"}
    for name, p in trainable:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in agent.critic_target.parameters())


def test_update_schedule_and_metrics():
    agent = cnn_agent()
    opts = make_optimizers(agent, PAPER.lr)
    actor0, target0 = params_of(agent.actor), {k: v.clone() for k, v in agent.critic_target.state_dict().items()}
    m1 = agent.update(make_batch(), opts, step=1, **SCHEDULE)
    assert "losses/actor_loss" not in m1 and same(actor0, params_of(agent.actor))
    assert all(torch.equal(v, agent.critic_target.state_dict()[k]) for k, v in target0.items())
    m2 = agent.update(make_batch(seed=1), opts, step=2, **SCHEDULE)
    for key in ("losses/qf_loss", "losses/qf1_values", "losses/actor_loss", "losses/alpha_loss", "charts/alpha"):
        assert key in m2 and torch.isfinite(m2[key]) and not m2[key].requires_grad
    assert not same(actor0, params_of(agent.actor))
    assert not all(torch.equal(v, agent.critic_target.state_dict()[k]) for k, v in target0.items())


def test_bf16_autocast_update_keeps_fp32_losses():
    agent = cnn_agent()
    opts = make_optimizers(agent, PAPER.lr)
    batch = make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feat = agent.encode(batch.obs)
        assert feat.dtype == torch.bfloat16  # the convs really ran in bf16
        qf_loss, _ = agent.critic_loss(batch, feat)
        actor_loss, alpha_loss, _ = agent.actor_and_alpha_loss(feat)
        q1, q2 = agent.critic(feat, batch.action)
        dist = agent.actor(feat)
    # Heads ran in bf16 but hand fp32 values to the loss math (no bf16 rounding of Q or log-std).
    assert q1.dtype == q2.dtype == dist.loc.dtype == dist.scale.dtype == torch.float32
    assert qf_loss.dtype == actor_loss.dtype == alpha_loss.dtype == torch.float32
    metrics = agent.update(batch, opts, step=0, **SCHEDULE, autocast_dtype=torch.bfloat16)
    assert all(torch.isfinite(v) for v in metrics.values())
    assert all(p.dtype == torch.float32 for p in agent.parameters())


def test_update_without_dtype_inherits_the_callers_autocast():
    # Lightning's bf16-mixed wraps training_step in autocast; update(autocast_dtype=None) must not switch it off.
    agent = cnn_agent()
    seen = []
    agent.encoder.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        agent.update(make_batch(), make_optimizers(agent, PAPER.lr), step=0, **SCHEDULE)
    agent.update(make_batch(), make_optimizers(agent, PAPER.lr), step=0, **SCHEDULE)
    assert seen[0] == torch.bfloat16 and seen[-1] == torch.float32


def test_encoder_only_autocast_keeps_heads_fp32():
    agent = cnn_agent(encoder_dtype=torch.bfloat16, target_encoder=True)
    conv_out, trunk_out = [], []
    agent.encoder.convs.register_forward_hook(lambda mod, inp, out: conv_out.append(out.dtype))
    agent.critic.q1.trunk.register_forward_hook(lambda mod, inp, out: trunk_out.append(out.dtype))
    batch = make_batch()
    feat = agent.encode(batch.obs)
    assert conv_out[-1] == torch.bfloat16 and feat.dtype == torch.float32
    q1, _ = agent.critic(feat, batch.action)
    assert trunk_out[-1] == torch.float32 and q1.dtype == torch.float32
    metrics = agent.update(batch, make_optimizers(agent, PAPER.lr), step=0, **SCHEDULE)
    assert all(torch.isfinite(v) for v in metrics.values())
    assert agent.encoder_target is not None and conv_out.count(torch.bfloat16) >= 3  # obs, next obs (online, target)
    # close to the fp32 features: bf16 keeps ~3 significant digits
    fp32 = cnn_agent(target_encoder=True)
    fp32.load_state_dict(agent.state_dict())
    torch.testing.assert_close(agent.encode(batch.obs), fp32.encode(batch.obs), rtol=0.05, atol=0.02)


def test_same_seed_same_actions_and_losses():
    def run(seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        agent = cnn_agent(seed)
        opts = make_optimizers(agent, PAPER.lr)
        torch.manual_seed(seed)
        actions = agent.act(pixel_obs(4))
        metrics = agent.update(make_batch(), opts, step=0, **SCHEDULE)
        return actions, metrics

    (a1, m1), (a2, m2), (a3, _) = run(0), run(0), run(1)
    assert torch.equal(a1, a2) and not torch.equal(a1, a3)
    assert all(torch.equal(m1[k], m2[k]) for k in m1)


def test_act_deterministic_is_squashed_mean():
    agent = cnn_agent()
    obs = pixel_obs(3)
    a = agent.act(obs, deterministic=True)
    assert torch.equal(a, agent.act(obs, deterministic=True))
    torch.testing.assert_close(a, torch.tanh(agent.actor(agent.encode(obs)).loc).detach())
    s = agent.act(obs)
    assert s.shape == (3, A) and (s.abs() <= 1).all() and not torch.equal(s, a)


# ---------------------------------------------------------------- saliency


def test_oracle_saliency_blobs():
    oracle = OracleSaliency()
    s = oracle.sigma_px(64, 96)
    assert s == pytest.approx(10 * 96 / 400)  # isotropic, scaled by the longer side (visarl.core.maps)
    kp = np.array([[[10.0, 20.0], [50.0, 40.0]], [[30.0, 30.0], [0.0, 0.0]]])
    vis = np.array([[True, True], [True, False]])
    maps = oracle.render(kp, vis, 64, 96)
    assert maps.shape == (2, 1, 64, 96) and maps.dtype == torch.uint8
    assert maps[0, 0, 20, 10] == 255 and maps[0, 0, 40, 50] == 255 and maps[1, 0, 30, 30] == 255
    assert maps[1, 0, 0, 0] == 0  # the invisible keypoint draws nothing
    # 2 px to the right of / below a lone blob's centre: 255 * exp(-0.5 * (2 / sigma)^2).
    assert maps[1, 0, 30, 32].item() == round(255 * math.exp(-0.5 * (2 / s) ** 2))
    assert maps[1, 0, 32, 30].item() == round(255 * math.exp(-0.5 * (2 / s) ** 2))

    rgb = torch.zeros(2, 3, 64, 96, dtype=torch.uint8)
    called = OracleSaliency(lambda states: (kp, vis))(rgb, np.zeros((2, 39)))
    assert torch.equal(called, maps)
    with pytest.raises(ValueError, match="batch"):
        OracleSaliency(lambda states: (kp[:1], vis[:1]))(rgb, None)


def test_sac_hyperparameters_have_one_default():
    """SACConfig holds SAC's defaults; the agent, its update and its optimizers take every number from it."""
    import inspect

    def defaults(fn) -> set[str]:
        return {n for n, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}

    assert defaults(SACAgent.__init__) == {"target_entropy", "encoder_dtype"}  # not config fields
    assert defaults(SACAgent.update) == {"autocast_dtype", "backward"}
    assert "lr" not in defaults(make_optimizers) and "tau" not in defaults(SACAgent.soft_update_target)
    agent = SACAgent(IdentityEncoder(39), A, **PAPER.agent_kwargs())
    assert agent.discount == PAPER.discount and agent.alpha.item() == pytest.approx(PAPER.init_temperature)
    assert agent.actor.trunk[0].out_features == PAPER.feature_dim
