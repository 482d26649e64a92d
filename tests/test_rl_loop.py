"""The SAC loop: replay, stage rl and collect sac_state end to end, DDP on 2 CPU processes, SIGKILL + resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _resume_helpers import env_for_subprocess

from visarl.data.datamodules import ReplayBuffer, TransitionDataModule
from visarl.data.shards import ShardReader, dataset_info, list_shards
from visarl.fit import run
from visarl.rl.replay import Replay

REPO = Path(__file__).resolve().parents[1]
TINY = "conf/rl/tiny.yaml"  # 60 steps, 20-step episodes, eval every 30 over 2 episodes, checkpoints every 20


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir))
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]} | {
        f"image:{tag}": [] for tag in ea.Tags()["images"]
    }


# ---------------------------------------------------------------- replay


def _stream_obs(stream: np.ndarray, episode: np.ndarray, step: np.ndarray) -> dict[str, np.ndarray]:
    """Observations that spell out where they come from: state = (stream, episode, step, 0...)."""
    state = np.zeros((len(stream), 39), np.float32)
    state[:, 0], state[:, 1], state[:, 2] = stream, episode, step
    rgb = np.broadcast_to(step[:, None, None, None] % 256, (len(stream), 8, 8, 3)).astype(np.uint8)
    return {"rgb": rgb, "state": state}


@pytest.mark.parametrize("capacity", [10_000, 23])  # 23 rows: the ring wraps many times
def test_replay_transitions_never_cross_episodes(tmp_path, capacity):
    n, rng = 3, np.random.default_rng(0)
    spec = {"rgb": ((3, 8, 8), np.dtype(np.uint8)), "state": ((39,), np.dtype(np.float32))}
    replay = Replay(tmp_path, n, capacity, ("rgb", "state"), spec, 4, 16, {"task": "t"}, prefix="t")
    episode, step = np.arange(n), np.zeros(n, int)
    replay.start(_stream_obs(np.arange(n), episode, step))
    next_episode = n
    for _ in range(200):
        ended = rng.random(n) < 0.1  # episodes of random length, different per stream
        terminated = ended & (rng.random(n) < 0.5)
        truncated = ended & ~terminated
        action = rng.uniform(-1, 1, (n, 4))
        action[:, 0] = step / 1000  # tagged with the step of the frame it was chosen on
        step += 1
        replay.step(
            action,
            step.astype(float),
            terminated,
            truncated,
            np.zeros(n),
            _stream_obs(np.arange(n), episode, step),
        )
        if ended.any():
            idx = np.flatnonzero(ended)
            episode[idx] = np.arange(next_episode, next_episode + len(idx))
            next_episode += len(idx)
            step[idx] = 0
            replay.start(_stream_obs(idx, episode[idx], step[idx]), streams=idx)
    batch = replay.sample(4096, np.random.default_rng(1))
    s, s2 = batch.obs["state"].numpy(), batch.next_obs["state"].numpy()
    assert np.array_equal(s[:, 0], s2[:, 0]) and np.array_equal(s[:, 1], s2[:, 1])  # same stream and episode
    np.testing.assert_array_equal(s2[:, 2], s[:, 2] + 1)  # the very next step
    np.testing.assert_array_equal(batch.reward.numpy(), s2[:, 2])  # the reward that came with that step
    # each action is paired with the frame it was chosen on (the authors' sampler pairs frame t-1 with action t)
    np.testing.assert_allclose(batch.action[:, 0].numpy(), s[:, 2] / 1000, atol=1e-6)
    assert batch.obs["rgb"].shape == (4096, 3, 8, 8) and batch.obs["rgb"].dtype == torch.uint8
    if capacity == 23:
        assert len(replay.buffer) <= 23 and s[:, 2].max() > 0
    replay.close()
    # the shards hold every transition once, and the buffer reloaded from them samples the same way
    info = dataset_info(tmp_path)
    assert info.transitions == 200 * n
    buf = ReplayBuffer(10_000, {"state": spec["state"]}, 4)
    for path in list_shards(tmp_path):
        buf.load_shard(ShardReader(path))
    assert len(buf) == 200 * n
    b = buf.sample(1024, np.random.default_rng(2))
    np.testing.assert_array_equal(b.next_obs["state"][:, 2].numpy(), b.obs["state"][:, 2].numpy() + 1)
    np.testing.assert_array_equal(b.next_obs["state"][:, 1].numpy(), b.obs["state"][:, 1].numpy())


def _transitions(buf: ReplayBuffer) -> np.ndarray:
    """(stream, episode, step) of every transition a buffer holds, sorted: [T, 3]."""
    rows = np.flatnonzero(buf.has_next[: buf.size])
    tags = buf.obs["state"][rows, :3]
    return tags[np.lexsort(tags.T[::-1])]


def test_loop_replay_is_a_datamodule_cached_in_the_buffer_it_appends_to(tmp_path):
    n = 2
    spec = {"rgb": ((3, 8, 8), np.dtype(np.uint8)), "state": ((39,), np.dtype(np.float32))}
    replay = Replay(tmp_path, n, 1000, ("rgb", "state"), spec, 4, 16, {"task": "t"}, prefix="t", batch_size=64)
    dm = replay.datamodule
    assert isinstance(dm, TransitionDataModule) and dm.buffer is replay.buffer  # one in-memory replay
    streams, episode, step = np.arange(n), np.arange(n), np.zeros(n, int)
    replay.start(_stream_obs(streams, episode, step))

    def advance(k: int) -> None:
        for _ in range(k):
            step[:] += 1
            replay.step(np.zeros((n, 4)), np.ones(n), np.zeros(n, bool), np.zeros(n, bool), np.zeros(n),
                        _stream_obs(streams, episode, step))  # fmt: skip

    advance(5)
    batches = iter(dm.train_dataloader())  # the module's own DataLoader, in this process
    assert next(batches).obs["state"][:, 2].max() <= 4
    advance(20)  # appended after the iterator started: its next batches see them
    later = next(batches)
    assert later.obs["state"].shape == (64, 39) and later.obs["state"][:, 2].max() > 4
    assert replay.sample(8, np.random.default_rng(0)).obs["rgb"].shape == (8, 3, 8, 8)
    replay.close()
    # the shards it wrote, cached by a fresh module, hold exactly the transitions of the live one
    reloaded = TransitionDataModule(str(tmp_path), batch_size=8, cache=True)
    reloaded.setup()
    assert np.array_equal(_transitions(reloaded.buffer), _transitions(replay.buffer))
    assert len(reloaded.buffer) == 25 * n


# ---------------------------------------------------------------- stage rl / collect end to end


def test_stage_rl_tiny_cnn_rgbs_oracle(tmp_path):
    summary = run(TINY, [f"output_dir={tmp_path}", "run=r"])
    run_dir = tmp_path / "tiny" / "r"
    # shards: every transition once, with rgb, state and the oracle's saliency maps
    info = dataset_info(run_dir / "replay")
    assert info.transitions == 60 and "saliency" in info.fields
    for path in list_shards(run_dir / "replay"):  # 20-step episodes truncate after step 19, never terminate
        r = ShardReader(path).load(["truncated", "terminated", "has_next", "step"])
        assert not r["terminated"].any()
        assert np.array_equal(np.flatnonzero(r["truncated"]), np.flatnonzero(r["has_next"] & (r["step"] == 19)))
    reader = ShardReader(list_shards(run_dir / "replay")[0])
    sal, state = reader.read("saliency"), reader.read("state")
    assert sal.shape[1:] == (32, 32) and sal.dtype == np.uint8
    # independent check of one stored map: its peaks sit at the keypoints projected from the stored state
    from visarl.envs import make_env

    env = make_env("reach", image_size=32)
    xy, visible = env.keypoints_from_states(state[:1])
    env.close()
    for (x, y), v in zip(xy[0], visible[0], strict=True):
        if v:  # sigma 0.8 px at 32 px: the nearest pixel is at most (0.5, 0.5) off, >= exp(-0.39) = 0.68 of a peak
            assert sal[0, int(round(y)), int(round(x))] > 150
    assert (sal[0] < 10).mean() > 0.5  # background stays dark
    # evaluation: step 0, every 30 steps, and the end; curve and final in eval.json
    ev = json.loads((run_dir / "eval.json").read_text())
    assert ev["saliency"] == summary["saliency"] == "oracle"  # the privileged source is on record
    assert [c["step"] for c in ev["curve"]] == [0, 30, 60]
    assert ev["final"]["step"] == 60 and ev["final"]["episodes"] == 2 and ev["final"]["episode_length"] == 20
    assert 0.0 <= ev["final"]["success_rate"] <= 1.0
    tags = scalars(run_dir)
    for tag in (
        "losses/qf_loss",
        "losses/actor_loss",
        "losses/alpha_loss",
        "charts/sps",
        "charts/updates_per_s",
        "eval/success_rate",
        "eval/return",
        "eval/episode_length",
        "charts/episodic_return",
        "image:eval/rollout",
    ):
        assert tag in tags, tag
    assert [s for s, _ in tags["eval/success_rate"]] == [0, 30, 60]
    # updates start at learning_starts (10) and run once per env step after it
    assert summary["num_updates"] == 60 - 10 + 1 and summary["env_step"] == 60
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["visarl"]["env_step"] == 60 and len(ckpt["optimizer_states"]) == 3


def test_collect_sac_state_tiny(tmp_path):
    data = tmp_path / "data"
    summary = run("conf/collect/sac_tiny.yaml", [f"output_dir={tmp_path}", "run=c", f"data_dir={data}"])
    info = dataset_info(data)
    assert info.transitions == 50 and "saliency" not in info.fields
    rows = [ShardReader(p).load(["rgb", "state", "action"]) for p in list_shards(data)]
    rgb = np.concatenate([r["rgb"] for r in rows])
    assert rgb.shape[1:] == (32, 32, 3) and rgb.std() > 5  # real rendered frames are stored for pretraining
    # 2 envs: updates begin at env step 10; env steps 10, 12, ..., 50 are 21 vector steps of 2 updates each
    assert summary["num_updates"] == 42 and summary["env_steps"] == 50
    assert json.loads((tmp_path / "sac_tiny" / "c" / "collect.json").read_text())["transitions"] == 50


def test_same_seed_same_actions_and_losses(tmp_path):
    common = ["num_steps=24", "eval.every=0", "eval.final=false", "log_every=4", "sac.learning_starts=8"]

    def once(run_name: str, seed: int) -> tuple[np.ndarray, list]:
        run(TINY, [f"output_dir={tmp_path}", f"run={run_name}", f"seed={seed}", *common])
        run_dir = tmp_path / "tiny" / run_name
        actions = np.concatenate([ShardReader(p).read("action") for p in list_shards(run_dir / "replay")])
        return actions, scalars(run_dir)["losses/qf_loss"]

    (a1, l1), (a2, l2), (a3, l3) = once("a", 0), once("b", 0), once("c", 1)
    assert np.array_equal(a1, a2) and l1 == l2 and len(l1) == 5  # random warm-up and policy actions, losses
    assert not np.array_equal(a1, a3) and l1 != l3


# ---------------------------------------------------------------- DDP, resume (real processes)


def test_ddp_two_cpu_processes_average_gradients(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "visarl.fit",
        "--config",
        TINY,
        f"output_dir={tmp_path}",
        "run=d",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "eval.every=0",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env_for_subprocess(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "tiny" / "d"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["env_step"] == 60
    r0, r1 = summary["ranks"]
    # each rank ran its own envs and seed ...
    actions = {
        w: np.concatenate([ShardReader(run_dir / "replay" / s).read("action") for s in r["shards"]])
        for w, r in ((0, r0), (1, r1))
    }
    assert len(actions[0]) == len(actions[1]) > 0 and not np.allclose(actions[0][:5], actions[1][:5])
    assert all(s.split("-w")[1].startswith(str(w)) for w, r in ((0, r0), (1, r1)) for s in r["shards"])
    # ... yet after 26 updates on different batches the weights are bit-identical: the gradients were averaged.
    # (global env steps 10, 12, ..., 60: one update per rank per vector step)
    assert summary["num_updates"] == 26
    assert r0["params_sha1"] == r1["params_sha1"]
    assert dataset_info(run_dir / "replay").transitions == 60


def test_sigkill_then_resume_continues_from_checkpoint(tmp_path):
    run_dir = tmp_path / "tiny" / "k"
    cmd = [sys.executable, "-m", "visarl.fit", "--config", TINY, f"output_dir={tmp_path}", "run=k", "num_steps=90"]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env_for_subprocess(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 400  # generous: the machine may be shared
        while not ckpt.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ckpt.is_file(), proc.stderr.read() if proc.poll() is not None else "no checkpoint in time"

        # wait until the run has written rows after its checkpoint (a shard newer than it), then kill it hard
        def newer() -> list[Path]:
            return [p for p in (run_dir / "replay").glob("*.h5") if p.stat().st_mtime_ns > ckpt.stat().st_mtime_ns]

        while not newer() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["visarl"]
    step, updates = state["env_step"], state["num_updates"]
    assert 0 < step < 90 and updates == step - 10 + 1
    saved_shards = state["ranks"][0]["shards"]
    late = {p.name for p in (run_dir / "replay").glob("*.h5")} - set(saved_shards)
    assert late, "the run was killed before writing past its checkpoint"

    summary = run(resume=str(run_dir))
    # the rows written after the checkpoint were set aside, not reused, and no row is missing or doubled
    discarded = {p.name for p in (run_dir / "replay" / "discarded").rglob("*.h5")}
    assert late <= discarded
    info = dataset_info(run_dir / "replay")
    assert info.transitions == 90
    assert summary["env_step"] == 90 and summary["num_updates"] == 90 - 10 + 1  # continued the update count
    ev = json.loads((run_dir / "eval.json").read_text())
    assert [c["step"] for c in ev["curve"]] == [0, 30, 60, 90]  # none repeated, none missing
    # TensorBoard shows each eval step once: the killed run's events past the checkpoint are purged
    assert [s for s, _ in scalars(run_dir)["eval/success_rate"]] == [0, 30, 60, 90]


# ---------------------------------------------------------------- config


def test_standalone_configs_never_default_to_the_oracle():
    from visarl.config import build, load_yaml
    from visarl.rl.stage import RLConfig

    for name in ("saliency", "rgb_x_saliency", "rgbs"):
        raw = load_yaml(f"conf/rl/cnn_{name}.yaml")
        cfg = build(RLConfig, raw)
        assert cfg.saliency == "picanet" and cfg.saliency_ckpt == "data/reach/picanet.pt", name
    for path in sorted(Path("conf/rl").glob("*.yaml")):
        if path.name != "tiny.yaml":  # the test-size config reads the oracle on purpose (no PiCANet to train)
            assert load_yaml(path).get("saliency", "none") != "oracle", path


@pytest.mark.parametrize(
    "source,inputs,expected",
    [
        ("oracle", {"rgb", "saliency"}, {"saliency": "oracle"}),
        ("picanet", {"saliency"}, {"saliency": "picanet", "saliency_ckpt": "p.pt"}),
        ("oracle", {"rgb"}, {"saliency": "none"}),  # maps stored, but the policy never read them
        ("none", {"state"}, {"saliency": "none"}),
    ],
)
def test_saliency_record_names_what_the_policy_read(source, inputs, expected):
    from types import SimpleNamespace

    from visarl.rl.module import SACLoop

    loop = SimpleNamespace(cfg=SimpleNamespace(saliency=source, saliency_ckpt="p.pt"), _policy_inputs=lambda: inputs)
    assert SACLoop.saliency_record(loop) == expected


def test_rl_config_errors_name_the_keys(monkeypatch):
    from visarl.config import ConfigError, build
    from visarl.rl.stage import RLConfig, build_agent

    with pytest.raises(ConfigError, match=r"variant: 'rgbs'.*saliency: none.*saliency: oracle"):
        build(RLConfig, {"variant": "rgbs"})
    with pytest.raises(ConfigError, match="saliency_ckpt"):
        build(RLConfig, {"variant": "rgb_x_saliency", "saliency": "picanet"})
    with pytest.raises(ConfigError, match="encoder_ckpt"):
        build(RLConfig, {"encoder": "mmae", "variant": "rgb"})
    with pytest.raises(ConfigError, match="env.camera"):
        build(RLConfig, {"variant": "saliency", "saliency": "oracle", "env": {"camera": "gripperPOV"}})
    with pytest.raises(ConfigError, match="variant"):
        build(RLConfig, {"variant": "depth"})
    with pytest.raises(ConfigError, match="sac.log_std_min"):
        build(RLConfig, {"sac": {"log_std_min": 3.0}})
    cfg = build(RLConfig, {"variant": "rgbs", "saliency": "oracle"})
    assert cfg.obs_keys == ("rgb", "saliency") and cfg.sac.batch_size == 128 and cfg.num_steps == 1_000_000
    assert build(RLConfig, {"encoder": "identity"}).obs_keys == ("state",)
    with pytest.raises(ConfigError, match="encoder_precision"):
        build(RLConfig, {"encoder_precision": "fp8"})
    small = {"cnn_layers": 2, "cnn_filters": 4, "sac": {"hidden_dim": 8, "feature_dim": 8}, "env": {"image_size": 16}}
    agent, _ = build_agent(build(RLConfig, {**small, "encoder_precision": "bf16"}))
    assert agent.encoder_dtype == torch.bfloat16
    assert sum(isinstance(m, torch.nn.Conv2d) for m in agent.encoder.modules()) == 2  # cnn_layers
    assert agent.actor.trunk[0].out_features == 8  # the heads come from cfg.sac
    assert build_agent(build(RLConfig, {**small, "encoder_precision": "32"}))[0].encoder_dtype is None
    # 'auto' (the default): bf16 for the CNN only where bf16 convolutions are native; never for the state
    import visarl.rl.stage as rl_stage

    cfg = build(RLConfig, small)
    assert cfg.encoder_precision == "auto"
    for native, dtype in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(rl_stage, "native_bf16", lambda accelerator, native=native: native)
        assert build_agent(cfg)[0].encoder_dtype == dtype
        assert build_agent(build(RLConfig, {**small, "encoder": "identity"}))[0].encoder_dtype is None
    assert rl_stage.native_bf16("mps") is False and rl_stage.native_bf16("gpu") is False  # GPUs keep fp32


def test_mmae_encoder_from_checkpoint(tmp_path):
    """encoder: mmae loads a MultiMAE checkpoint as a frame embedder; modalities [rgb] is the pretrain-only row.

    The agent itself reads only the stored embedding (one key naming the encoder); the embedder encodes frames.
    """
    from visarl.config import ConfigError, build
    from visarl.mae import build_multimae, save_checkpoint
    from visarl.rl.encoders import is_trainable
    from visarl.rl.stage import RLConfig, build_agent

    torch.manual_seed(0)
    ckpt = tmp_path / "mmae.pt"
    save_checkpoint(build_multimae("tiny", ("rgb", "saliency"), image_size=32), ckpt)
    obs = {
        "rgb": np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8),
        "saliency": np.random.default_rng(1).integers(0, 256, (3, 32, 32), dtype=np.uint8),
    }
    keys_seen = set()
    for modalities, inputs in (([], ("rgb", "saliency")), (["rgb"], ("rgb",))):
        cfg = build(
            RLConfig,
            {
                "encoder": "mmae",
                "variant": "rgbs",
                "saliency": "oracle",
                "encoder_ckpt": str(ckpt),
                "modalities": modalities,
                "env": {"image_size": 32},
                "sac": {"hidden_dim": 32, "feature_dim": 16},
            },
        )
        agent, embedder = build_agent(cfg)
        assert embedder.inputs == inputs and embedder.dim == 64 and agent.obs_keys == (embedder.key,)
        assert not is_trainable(agent.encoder) and agent.encoder_target is None
        assert not any(p.requires_grad for p in embedder.encoder.parameters())
        feats = embedder(obs)
        assert feats.shape == (3, 64) and feats.dtype == np.float32 and np.isfinite(feats).all()
        keys_seen.add(embedder.key)
        if inputs == ("rgb",):  # saliency is ignored by the pretrain-only variant
            np.testing.assert_array_equal(embedder({**obs, "saliency": np.zeros_like(obs["saliency"])}), feats)
    assert len(keys_seen) == 2  # the same weights with other inputs give other embeddings: another name
    # variant rgb without modalities on a rgb+saliency checkpoint: rgb alone, like the pretrain-only row
    mmae = {"encoder": "mmae", "encoder_ckpt": str(ckpt), "env": {"image_size": 32}}
    assert build_agent(build(RLConfig, {**mmae, "variant": "rgb"}))[1].inputs == ("rgb",)
    rgbs = {**mmae, "variant": "rgbs", "saliency": "oracle"}
    with pytest.raises(ConfigError, match="encoder_ckpt"):
        build_agent(build(RLConfig, {**rgbs, "encoder_ckpt": str(tmp_path / "missing.pt")}))
    rgb_only = tmp_path / "rgb.pt"
    save_checkpoint(build_multimae("tiny", ("rgb",), image_size=32), rgb_only)
    with pytest.raises(ConfigError, match="encoder_ckpt"):  # the checkpoint has no saliency input
        build_agent(build(RLConfig, {**rgbs, "encoder_ckpt": str(rgb_only)}))
    small = build(RLConfig, {**mmae, "env": {"image_size": 16}})
    with pytest.raises(ConfigError, match="trained on 32x32"):  # encoder and env disagree on the frame size
        build_agent(small)


@pytest.mark.slow
def test_state_sac_learns_reach(tmp_path):
    """State SAC solves reach with 100-step episodes in 12k env steps (~8 min on 2 busy cores; 0.9 at 9k measured)."""
    overrides = [
        f"output_dir={tmp_path}",
        "run=learn",
        "encoder=identity",
        "saliency=none",
        "env.image_size=16",
        "env.episode_length=100",
        "num_steps=12000",
        "sac.hidden_dim=256",
        "sac.num_layers=2",
        "sac.feature_dim=64",
        "sac.batch_size=128",
        "sac.lr=1e-3",
        "sac.alpha_lr=1e-3",
        "sac.learning_starts=1000",
        "eval.every=3000",
        "eval.episodes=20",
        "eval.num_envs=1",
        "checkpoint_every=6000",
        "log_every=1000",
    ]
    run(TINY, overrides)
    curve = json.loads((tmp_path / "tiny" / "learn" / "eval.json").read_text())["curve"]
    assert curve[0]["success_rate"] < 0.2  # the untrained policy does not reach
    assert curve[-1]["success_rate"] >= 0.7 and curve[-1]["return"] > 3 * curve[0]["return"]


def test_initial_update_burst_replaces_the_first_steps_updates(tmp_path):
    """sac.initial_updates: the authors' burst when learning starts, counted once (7 + one per later step)."""
    common = [f"output_dir={tmp_path}", "eval.every=0", "eval.final=false", "sac.initial_updates=7"]
    summary = run(TINY, [*common, "run=b", "num_steps=30"])
    assert summary["num_updates"] == 7 + (30 - 10) and summary["env_step"] == 30


def test_mmae_rgb_without_saliency_evaluates_on_embeddings(tmp_path):
    """The MMAE RGB row (saliency: none): evaluation must embed its frames too, or the policy has no input."""
    from visarl.mae import build_multimae, save_checkpoint

    torch.manual_seed(0)
    ckpt = tmp_path / "rgb.pt"
    save_checkpoint(build_multimae("tiny", ("rgb",), image_size=32), ckpt)
    overrides = [
        f"output_dir={tmp_path}",
        "run=m",
        "encoder=mmae",
        "variant=rgb",
        "saliency=none",
        f"encoder_ckpt={ckpt}",
        "modalities=[rgb]",
        "num_steps=30",
    ]
    run(TINY, overrides)
    ev = json.loads((tmp_path / "tiny" / "m" / "eval.json").read_text())
    assert [c["step"] for c in ev["curve"]] == [0, 30] and ev["saliency"] == "none"
