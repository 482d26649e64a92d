"""Frozen-MultiMAE SAC: updates on stored embeddings vs re-encoding every batch vs Stable-Baselines3, one run.

    python benchmarks/frozen_updates.py [--rounds 3] [--updates 3] [--threads 1] [--loop-steps 150]
                                        [--picanet-config conf/saliency/reach.yaml] [--skip-sb3] [--skip-loop]

Paper sizes throughout: a MultiMAE of Table II (width 256, 4 layers, 4 heads) on rgb + saliency at 64x64 with 8x8
patches (128 tokens), the frozen encoder's state the mean of its 128 token embeddings (256-d), SAC heads
Linear(256 -> 100) + LayerNorm + tanh and 3 x 1024 hidden units, batch 128. The weights are random: the cost of a
forward pass does not depend on them.

Update rows (each includes drawing the batch from the method's own replay, filled with random data):

- ``visarl_stored``: visarl's path for ``encoder: mmae``: each frame was encoded once when observed, the update
  reads the 256-d embeddings from the replay and never runs the encoder;
- ``visarl_reencode``: the previous path, the same update with the frozen encoder inside the agent, re-encoding
  the batch's 128 observations and 128 next observations at every update;
- ``sb3``: Stable-Baselines3's SAC with the same frozen encoder and the same Linear + LayerNorm + tanh trunk as a
  features extractor (one per actor and critic, as visarl's heads each have their own trunk), net_arch 3 x 1024.
  SB3 encodes observations in its features extractor at every update (4 encoder passes of 128 frames: critic,
  critic target, actor on s and on s'), which is its design, not a handicap we added.

Whole loop (``--skip-loop`` to leave out): env steps/s of ``conf/rl/mmae_rgb_sal.yaml`` through ``visarl.fit``
(env step and render, online PiCANet on the new frame, encode, SAC update), after ``learning_starts``, with the
stored-embedding path and with the re-encoding path patched in. The PiCANet is built from ``--picanet-config``
(random weights, the config's input size and width): the paper's 224-px PiCANet costs about a second a frame on
this CPU and then dominates both paths; ``--picanet-config conf/quickstart/saliency.yaml`` gives the CPU-scale net.

Last line: ``frozen_update_speedup: X`` (visarl_stored / visarl_reencode updates/s).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from visarl.data.datamodules import ReplayBuffer
from visarl.mae import FrameEmbedder, build_multimae, load_encoder, save_checkpoint
from visarl.rl.encoders import IdentityEncoder, make_encoder, to_unit
from visarl.rl.module import batch_to
from visarl.rl.networks import trunk
from visarl.rl.sac import SACAgent, make_optimizers
from visarl.rl.stage import SACConfig

A, IMG, B = 4, 64, 128
ROWS = 2000


def paper_checkpoint(folder: Path) -> Path:
    torch.manual_seed(0)
    path = folder / "mmae_paper.pt"
    save_checkpoint(build_multimae("paper", ("rgb", "saliency"), image_size=IMG), path)
    return path


def _fill(buf: ReplayBuffer, obs: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    r = buf.add_obs(obs)
    n = len(r) - 1
    buf.add_transitions(
        r[:-1], r[1:], rng.uniform(-1, 1, (n, A)), rng.standard_normal(n), np.zeros(n, bool), np.zeros(n, bool)
    )


def visarl_fn(ckpt: Path, stored: bool) -> Callable[[], None]:
    rng = np.random.default_rng(0)
    frames = {
        "rgb": rng.integers(0, 256, (ROWS + 1, 3, IMG, IMG), dtype=np.uint8),
        "saliency": rng.integers(0, 256, (ROWS + 1, 1, IMG, IMG), dtype=np.uint8),
    }
    torch.manual_seed(0)
    if stored:
        embedder = FrameEmbedder(load_encoder(ckpt))
        shard_layout = {"rgb": frames["rgb"].transpose(0, 2, 3, 1), "saliency": frames["saliency"][:, 0]}
        obs = {embedder.key: embedder(shard_layout)}
        encoder: nn.Module = IdentityEncoder(embedder.dim, key=embedder.key)
        spec = {embedder.key: ((embedder.dim,), np.dtype(np.float32))}
    else:
        frozen = load_encoder(ckpt)
        shapes = {"rgb": (3, IMG, IMG), "saliency": (1, IMG, IMG)}
        encoder = make_encoder("mmae", "rgbs", shapes, module=frozen)
        u8 = np.dtype(np.uint8)
        obs, spec = frames, {"rgb": ((3, IMG, IMG), u8), "saliency": ((1, IMG, IMG), u8)}
    sac = SACConfig()  # paper heads: 100-d trunk, 3 x 1024
    agent = SACAgent(encoder, A, **sac.agent_kwargs())
    opts = make_optimizers(agent, **sac.optimizer_kwargs())
    buf = ReplayBuffer(ROWS + 1, spec, A)
    _fill(buf, obs, rng)
    step = [0]

    def update() -> None:
        agent.update(batch_to(buf.sample(B, rng), torch.device("cpu")), opts, step[0], **sac.update_kwargs())
        step[0] += 1

    return update


def sb3_fn(ckpt: Path) -> Callable[[], None]:
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    frozen = load_encoder(ckpt)

    class FrozenMultiMAEExtractor(BaseFeaturesExtractor):
        """The frozen MultiMAE (shared, never trained) + a trainable Linear -> 100 + LayerNorm + tanh trunk."""

        def __init__(self, observation_space: gym.spaces.Dict, features_dim: int = 100) -> None:
            super().__init__(observation_space, features_dim)
            self.frozen = [frozen]  # a list: not a submodule, so SB3's optimizers never see its weights
            self.proj = trunk(frozen.out_dim, features_dim)

        def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.proj(self.frozen[0]({k: to_unit(v) for k, v in obs.items()}))

    class ImagesEnv(gym.Env):
        observation_space = gym.spaces.Dict(
            {
                "rgb": gym.spaces.Box(0, 255, (3, IMG, IMG), np.uint8),
                "saliency": gym.spaces.Box(0, 255, (1, IMG, IMG), np.uint8),
            }
        )
        action_space = gym.spaces.Box(-1.0, 1.0, (A,), np.float32)

        def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple:
            return self.observation_space.sample(), {}

        def step(self, action: np.ndarray) -> tuple:
            return self.observation_space.sample(), 0.0, False, False, {}

    torch.manual_seed(0)
    model = SAC(
        "MultiInputPolicy",
        ImagesEnv(),
        buffer_size=ROWS,
        batch_size=B,
        learning_rate=1e-4,
        ent_coef="auto_0.1",
        policy_kwargs={
            "net_arch": [1024, 1024, 1024],
            "features_extractor_class": FrozenMultiMAEExtractor,
            "share_features_extractor": False,
            "normalize_images": False,  # the extractor scales uint8 to [0, 1] itself, as visarl's encoder does
        },
        device="cpu",
        seed=0,
    )
    model.set_logger(Logger(folder=None, output_formats=[]))
    rb = model.replay_buffer
    rng = np.random.default_rng(0)
    for k in ("rgb", "saliency"):
        rb.observations[k][:] = rng.integers(0, 256, rb.observations[k].shape, dtype=np.uint8)
        rb.next_observations[k][:] = rng.integers(0, 256, rb.next_observations[k].shape, dtype=np.uint8)
    rb.actions[:] = rng.uniform(-1, 1, rb.actions.shape)
    rb.rewards[:] = rng.standard_normal(rb.rewards.shape)
    rb.full = True
    return lambda: model.train(gradient_steps=1, batch_size=B)


def rate(fn: Callable[[], None], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t0)


# ---------------------------------------------------------------- whole loop


def loop_rate(ckpt: Path, picanet: Path, folder: Path, steps: int, reencode: bool, threads: int) -> float:
    """Env steps/s of conf/rl/mmae_rgb_sal.yaml after learning starts (charts/sps from the run's TensorBoard)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import visarl.rl.stage as rl_stage
    from visarl.fit import run

    start = 100
    name = "reencode" if reencode else "stored"
    overrides = [
        f"output_dir={folder}",
        f"run={name}",
        f"encoder_ckpt={ckpt}",
        f"saliency_ckpt={picanet}",
        f"num_steps={start + steps}",
        f"sac.learning_starts={start}",
        "sac.initial_updates=0",  # time steady-state steps, not the one-off burst when learning starts
        "eval.every=0",
        "eval.final=false",
        f"log_every={steps // 3}",
        f"checkpoint_every={10 * steps}",
        "async_envs=false",
        f"torch_threads={threads}",
        "trainer.enable_progress_bar=false",
    ]
    original = rl_stage.build_agent

    def reencoding_agent(cfg):  # the previous path: the frozen encoder inside the agent
        agent, embedder = original(cfg)
        frozen = embedder.encoder
        shapes = {"rgb": (3, IMG, IMG), "saliency": (1, IMG, IMG)}
        enc = make_encoder("mmae", "rgbs", shapes, module=frozen)
        enc.obs_keys = embedder.inputs
        return SACAgent(enc, A, **cfg.sac.agent_kwargs()), None

    if reencode:
        rl_stage.build_agent = reencoding_agent
    try:
        run("conf/rl/mmae_rgb_sal.yaml", overrides)
    finally:
        rl_stage.build_agent = original
    ea = EventAccumulator(str(folder / "mmae_rgb_sal" / name))
    ea.Reload()
    sps = [e.value for e in ea.Scalars("charts/sps") if e.step > start]
    return statistics.median(sps)


def random_picanet(config: str, folder: Path) -> Path:
    from visarl.fit import resolve
    from visarl.saliency.picanet import PiCANet, save_picanet

    cfg, _, _ = resolve(config, None, [])
    torch.manual_seed(0)
    return save_picanet(PiCANet(**cfg.net_kwargs()), folder / "picanet.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--updates", type=int, default=3, help="updates per method per round (x20 when stored)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--loop-steps", type=int, default=150, help="env steps timed per whole-loop run")
    parser.add_argument("--picanet-config", default="conf/saliency/reach.yaml", help="PiCANet size for the loop")
    parser.add_argument("--skip-sb3", action="store_true")
    parser.add_argument("--skip-loop", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt = paper_checkpoint(folder)
        methods = {"visarl_stored": visarl_fn(ckpt, True), "visarl_reencode": visarl_fn(ckpt, False)}
        if not args.skip_sb3:
            methods["sb3"] = sb3_fn(ckpt)
        counts = {k: args.updates * (20 if k == "visarl_stored" else 1) for k in methods}
        for fn in methods.values():
            rate(fn, 2)  # warm-up: allocator, kernels, Adam state
        rates: dict[str, list[float]] = {k: [] for k in methods}
        for _ in range(args.rounds):
            for name, fn in methods.items():
                rates[name].append(rate(fn, counts[name]))
        result = {k: statistics.median(v) for k, v in rates.items()}
        print("| update path | updates/s | ms/update |")
        print("|---|---|---|")
        for name, r in result.items():
            print(f"| {name} | {r:.2f} | {1000 / r:.0f} |", flush=True)
        if "sb3" in result:
            print(f"visarl_stored vs sb3: {result['visarl_stored'] / result['sb3']:.1f}x")
        if not args.skip_loop:
            picanet = random_picanet(args.picanet_config, folder)
            print(f"whole loop (conf/rl/mmae_rgb_sal.yaml, PiCANet of {args.picanet_config}, {args.loop_steps} steps):")
            before = loop_rate(ckpt, picanet, folder, args.loop_steps, True, args.threads)
            after = loop_rate(ckpt, picanet, folder, args.loop_steps, False, args.threads)
            print(f"| loop | env steps/s |\n|---|---|\n| re-encoding (before) | {before:.2f} |")
            print(f"| stored embeddings (after) | {after:.2f} |")
            print(f"loop_speedup: {after / before:.2f}")
    print(f"frozen_update_speedup: {result['visarl_stored'] / result['visarl_reencode']:.1f}")


if __name__ == "__main__":
    main()
