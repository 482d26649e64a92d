"""Frozen-encoder SAC on stored embeddings: the same numbers as re-encoding every batch, at the cost of an MLP.

With ``encoder: mmae`` each frame is encoded once, when observed, and stored (replay and shards) under a key that
names the encoder; the SAC update reads the stored embedding. These tests check that nothing changes but the cost:
losses, TD targets and gradients equal those of the re-encoding path on a fixed batch; a SIGKILLed run gets its
embeddings back from the shards bit for bit; a policy acts the same on a live frame and on its stored embedding.
"""

from __future__ import annotations

import copy
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _resume_helpers import env_for_subprocess as _env

from visarl.data.datamodules import TransitionBatch
from visarl.data.shards import ShardReader, list_shards
from visarl.fit import run
from visarl.mae import FrameEmbedder, build_multimae, load_encoder, save_checkpoint
from visarl.rl.encoders import IdentityEncoder, make_encoder
from visarl.rl.replay import Replay
from visarl.rl.sac import SACAgent, make_optimizers
from visarl.rl.stage import SACConfig

REPO = Path(__file__).resolve().parents[1]
TINY = "conf/rl/tiny.yaml"
IMG, B, A = 32, 16, 4
HEADS = SACConfig(feature_dim=16, hidden_dim=32, num_layers=2).agent_kwargs()
SCHEDULE = SACConfig().update_kwargs()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny rgb + saliency MultiMAE checkpoint at 32 px (random weights are as frozen as trained ones)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mmae") / "encoder.pt"
    save_checkpoint(build_multimae("tiny", ("rgb", "saliency"), image_size=IMG), path)
    return path


def _frames(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "rgb": rng.integers(0, 256, (n, IMG, IMG, 3), dtype=np.uint8),
        "saliency": rng.integers(0, 256, (n, IMG, IMG), dtype=np.uint8),
    }


def _chw(obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {
        "rgb": torch.from_numpy(obs["rgb"]).permute(0, 3, 1, 2).contiguous(),
        "saliency": torch.from_numpy(obs["saliency"]).unsqueeze(1).contiguous(),
    }


def _agents(ckpt: Path) -> tuple[SACAgent, SACAgent, FrameEmbedder]:
    """The re-encoding agent (frozen MultiMAE inside) and the stored-embedding agent, with identical heads."""
    frozen = load_encoder(ckpt)
    embedder = FrameEmbedder(load_encoder(ckpt))
    shapes = {"rgb": (3, IMG, IMG), "saliency": (1, IMG, IMG)}
    torch.manual_seed(1)
    reencode = SACAgent(make_encoder("mmae", "rgbs", shapes, module=frozen), A, **HEADS)
    stored = SACAgent(IdentityEncoder(embedder.dim, key=embedder.key), A, **HEADS)
    heads = {k: v for k, v in reencode.state_dict().items() if not k.startswith("encoder.")}
    missing, unexpected = stored.load_state_dict(heads, strict=False)
    assert not missing and not unexpected
    return reencode, stored, embedder


def _batches(embedder: FrameEmbedder) -> tuple[TransitionBatch, TransitionBatch]:
    obs, nxt = _frames(B, 2), _frames(B, 3)
    g = torch.Generator().manual_seed(4)
    common = {
        "action": torch.rand(B, A, generator=g) * 2 - 1,
        "reward": torch.rand(B, generator=g),
        "terminated": torch.rand(B, generator=g) < 0.2,
        "truncated": torch.zeros(B, dtype=torch.bool),
    }
    frames = TransitionBatch(obs=_chw(obs), next_obs=_chw(nxt), **common)
    key = embedder.key
    emb = TransitionBatch(
        obs={key: torch.from_numpy(embedder(obs))}, next_obs={key: torch.from_numpy(embedder(nxt))}, **common
    )
    return frames, emb


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_losses_targets_and_gradients_equal_reencoding(ckpt):
    reencode, stored, embedder = _agents(ckpt)
    frames, emb = _batches(embedder)
    # the embedding of a frame is the frozen encoder's output for it
    torch.testing.assert_close(reencode.encode(frames.obs), stored.encode(emb.obs))

    torch.manual_seed(7)
    target_a = reencode.td_target(frames)
    torch.manual_seed(7)
    target_b = stored.td_target(emb)
    torch.testing.assert_close(target_a, target_b)
    assert target_a.std() > 0  # not a degenerate batch

    for agent, batch in ((reencode, frames), (stored, emb)):
        agent.zero_grad(set_to_none=True)
        torch.manual_seed(8)
        qf_loss, _ = agent.critic_loss(batch)
        qf_loss.backward()
        agent._qf = qf_loss.detach()
        agent._critic_grads = _grads(agent.critic)
        agent.zero_grad(set_to_none=True)
        torch.manual_seed(9)
        actor_loss, alpha_loss, _ = agent.actor_and_alpha_loss(agent.encode(batch.obs))
        (actor_loss + alpha_loss).backward()
        agent._actor = (actor_loss.detach(), alpha_loss.detach())
        agent._actor_grads = _grads(agent.actor) | {"log_alpha": agent.log_alpha.grad.clone()}
    torch.testing.assert_close(reencode._qf, stored._qf)
    torch.testing.assert_close(reencode._actor, stored._actor)
    assert reencode._critic_grads.keys() == stored._critic_grads.keys() and len(stored._critic_grads) > 4
    for name, grad in reencode._critic_grads.items():
        torch.testing.assert_close(grad, stored._critic_grads[name], msg=name)
    for name, grad in reencode._actor_grads.items():
        torch.testing.assert_close(grad, stored._actor_grads[name], msg=name)


def test_full_updates_follow_the_same_trajectory(ckpt):
    """Several complete SAC updates (critic, actor, temperature, targets) leave both agents with the same weights."""
    reencode, stored, embedder = _agents(ckpt)
    frames, emb = _batches(embedder)
    opts_a, opts_b = make_optimizers(reencode, lr=1e-3), make_optimizers(stored, lr=1e-3)
    before = copy.deepcopy(stored.critic.state_dict())
    for step in range(4):
        torch.manual_seed(100 + step)
        ma = reencode.update(frames, opts_a, step, **SCHEDULE)
        torch.manual_seed(100 + step)
        mb = stored.update(emb, opts_b, step, **SCHEDULE)
        torch.testing.assert_close(ma["losses/qf_loss"], mb["losses/qf_loss"], rtol=1e-4, atol=1e-5)
    heads_a = {k: v for k, v in reencode.state_dict().items() if not k.startswith("encoder.")}
    for k, v in stored.state_dict().items():
        torch.testing.assert_close(v, heads_a[k], rtol=1e-4, atol=1e-5, msg=k)
    assert any(not torch.equal(v, stored.critic.state_dict()[k]) for k, v in before.items())  # it did learn


def test_replay_restores_embeddings_bit_for_bit(tmp_path, ckpt):
    embedder = FrameEmbedder(load_encoder(ckpt))
    key = embedder.key
    spec = {
        "rgb": ((3, IMG, IMG), np.dtype(np.uint8)),
        "state": ((39,), np.dtype(np.float32)),
        "saliency": ((1, IMG, IMG), np.dtype(np.uint8)),
        key: ((embedder.dim,), np.dtype(np.float32)),
    }

    def replay() -> Replay:
        return Replay(tmp_path, 1, 1000, (key,), spec, A, 8, {"task": "t", key: embedder.describe()}, prefix="t")

    def observe(seed: int) -> dict[str, np.ndarray]:
        obs = {**_frames(1, seed), "state": np.zeros((1, 39), np.float32)}
        return embedder.add_to(obs)

    first = replay()
    first.start(observe(0))
    for t in range(20):
        z = np.zeros(1)
        first.step(np.zeros((1, A), np.float32), z, z.astype(bool), z.astype(bool), z, observe(t + 1))
    shards = first.checkpoint()
    written = first.buffer.obs[key][: first.buffer.size].copy()
    first.close()

    again = replay()
    again.restore(shards)
    restored = again.buffer.obs[key][: again.buffer.size]
    on_disk = np.concatenate([ShardReader(tmp_path / s).read(key) for s in shards])
    assert restored.tobytes() == on_disk.tobytes()  # read back, never re-encoded
    # the same 21 embeddings the first run computed (a shard cut repeats a row: compare as sets of rows)
    assert {r.tobytes() for r in restored} == {r.tobytes() for r in written} and len(written) == 21
    assert ShardReader(tmp_path / shards[0]).attrs[key].startswith("visarl-multimae sha1=")


def test_a_shard_from_another_encoder_is_refused(tmp_path, ckpt):
    """Embeddings are stored under the encoder's digest: another encoder finds no field of its name."""
    embedder = FrameEmbedder(load_encoder(ckpt))
    other = FrameEmbedder(load_encoder(ckpt, modalities=("rgb",)))
    assert other.key != embedder.key
    spec = {"rgb": ((3, IMG, IMG), np.dtype(np.uint8)), "state": ((39,), np.dtype(np.float32))}
    spec |= {k.key: ((k.dim,), np.dtype(np.float32)) for k in (embedder, other)}
    writer = Replay(tmp_path, 1, 100, (embedder.key,), spec, A, 4, {"task": "t"}, prefix="t")
    obs = embedder.add_to({**_frames(1, 0), "state": np.zeros((1, 39), np.float32)})
    writer.start(obs)
    z = np.zeros(1)
    for _ in range(5):
        writer.step(np.zeros((1, A), np.float32), z, z.astype(bool), z.astype(bool), z, obs)
    shards = writer.checkpoint()
    writer.close()
    reader = Replay(tmp_path, 1, 100, (other.key,), spec, A, 4, {"task": "t"}, prefix="t")
    with pytest.raises(KeyError, match=other.key):
        reader.restore(shards)


def _mmae_overrides(tmp_path: Path, ckpt: Path) -> list[str]:
    return [
        f"output_dir={tmp_path}",
        "encoder=mmae",
        "variant=rgbs",
        f"encoder_ckpt={ckpt}",
        "saliency=oracle",
        "modalities=[rgb,saliency]",
    ]


def test_sigkill_resume_reloads_embeddings_and_policy_acts_alike(tmp_path, ckpt, monkeypatch):
    run_dir = tmp_path / "tiny" / "k"
    cmd = [sys.executable, "-m", "visarl.fit", "--config", TINY, *_mmae_overrides(tmp_path, ckpt), "run=k"]
    cmd.append("num_steps=90")
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 400
        while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert last.is_file(), proc.stderr.read() if proc.poll() is not None else "no checkpoint in time"

        def newer() -> list[Path]:  # rows written after the checkpoint: the kill then loses real work
            return [p for p in (run_dir / "replay").glob("*.h5") if p.stat().st_mtime_ns > last.stat().st_mtime_ns]

        while not newer() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    saved = torch.load(last, map_location="cpu", weights_only=True)["visarl"]["ranks"][0]["shards"]
    assert saved

    embedder = FrameEmbedder(load_encoder(ckpt))
    key = embedder.key
    on_disk = np.concatenate([ShardReader(run_dir / "replay" / s).read(key) for s in saved])

    captured: dict[str, np.ndarray] = {}
    calls = {"frames": 0}
    original_restore, original_call = Replay.restore, FrameEmbedder.__call__

    def restore(self: Replay, shards: list[str]) -> int:
        before = calls["frames"]
        out = original_restore(self, shards)
        captured["restored"] = self.buffer.obs[key][: self.buffer.size].copy()
        captured["encoded_during_restore"] = calls["frames"] - before
        return out

    def count(self: FrameEmbedder, obs: dict[str, np.ndarray]) -> np.ndarray:
        calls["frames"] += len(obs[self.inputs[0]])
        return original_call(self, obs)

    monkeypatch.setattr(Replay, "restore", restore)
    monkeypatch.setattr(FrameEmbedder, "__call__", count)
    summary = run(resume=str(run_dir))
    assert summary["env_step"] == 90
    assert captured["restored"].tobytes() == on_disk.tobytes()  # bit for bit from the shards
    assert captured["encoded_during_restore"] == 0 and calls["frames"] > 0  # only new frames were encoded

    # every stored embedding is the frozen encoder's output for the stored frame (and saliency)
    shards = list_shards(run_dir / "replay")
    rows = {k: np.concatenate([ShardReader(p).read(k) for p in shards]) for k in ("rgb", "saliency", key)}
    recomputed = original_call(embedder, rows)
    np.testing.assert_allclose(rows[key], recomputed, rtol=1e-5, atol=1e-5)
    assert all(ShardReader(p).attrs[key].startswith("visarl-multimae sha1=") for p in shards)  # which encoder

    # the trained policy acts alike on the live frame (re-encoded) and on its stored embedding
    from visarl.config import build
    from visarl.rl.stage import RLConfig, build_agent

    cfg = build(RLConfig, {**_cfg_dict(run_dir)})
    agent, _ = build_agent(cfg)
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    agent.load_state_dict({k.removeprefix("agent."): v for k, v in state.items() if k.startswith("agent.")})
    frozen = load_encoder(ckpt)
    shapes = {"rgb": (3, IMG, IMG), "saliency": (1, IMG, IMG)}
    live = SACAgent(make_encoder("mmae", "rgbs", shapes, module=frozen), A, **cfg.sac.agent_kwargs())
    live.load_state_dict({k: v for k, v in agent.state_dict().items() if not k.startswith("encoder.")}, strict=False)
    pick = np.arange(0, len(rows[key]), 7)
    frames = {"rgb": rows["rgb"][pick], "saliency": rows["saliency"][pick]}
    act_live = live.act(_chw(frames), deterministic=True)
    act_stored = agent.act({key: torch.from_numpy(rows[key][pick])}, deterministic=True)
    torch.testing.assert_close(act_live, act_stored, rtol=1e-5, atol=1e-5)
    assert act_stored.std() > 0


def _cfg_dict(run_dir: Path) -> dict:
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    return {k: v for k, v in d.items() if k not in ("name", "run")} | {"name": d["name"], "run": d["run"]}
