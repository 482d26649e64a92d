"""Gradient updates per second: visarl's SAC against Stable-Baselines3's SAC, same networks, same CPU, one run.

    python benchmarks/sac_updates.py [--rounds 3] [--updates 5] [--threads 1] [--no-bf16] [--device cuda]

Two cases, as in issue 3:

- state: 39-d Meta-World state, heads of 3x1024 hidden units, batch 256;
- pixel: the paper's CNN (11 unpadded conv layers of 32 filters, 64x64x3 -> 32x11x11) with Linear(3872 -> 100) +
  LayerNorm + tanh and heads of 3x1024, batch 128. SB3 gets the same CNN (channels-last, like visarl's) and
  projection as a custom features extractor shared by actor and critic (``share_features_extractor=True``, its
  fastest setting; its critic target keeps its own copy), net_arch [1024] * 3.

Each update includes drawing the batch from the algorithm's own replay (filled with random data). ``visarl`` is its
default: actor and temperature every 2nd update (the paper's SAC-AE settings) and ``encoder_precision: auto``, which
autocasts the CNN alone to bf16 on a CPU with native bf16 convolutions (this one: AVX512-BF16; heads, losses and
optimizer stay fp32; ``benchmarks/bf16_reach.py`` compares what it learns with fp32). Other rows:
``visarl_fp32`` (the CNN in fp32 too), ``visarl_actor_every_step`` (SB3's schedule, fp32) and ``visarl_bf16`` (all
under bf16 autocast, as ``trainer.precision=bf16-mixed``). Per update SB3 runs the CNN forward 4 times and backward
once, visarl 3 and 1, so at equal kernel speed fp32 tops out near 1.2-1.5x. torch.compile was measured and left
out: no gain over oneDNN's convs on this CPU (0.84 vs 0.90 updates/s fp32, 1.66 vs 1.67 bf16) for ~45 s of
compilation.
The machine is shared, so methods are interleaved in rounds and medians reported. Last line:
``sac_update_speedup_vs_sb3: X`` (pixel case, visarl's default / SB3).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch

from visarl.data.datamodules import ReplayBuffer
from visarl.rl.encoders import IdentityEncoder, PixelCNN
from visarl.rl.module import batch_to
from visarl.rl.networks import trunk
from visarl.rl.sac import SACAgent, make_optimizers
from visarl.rl.stage import SACConfig, native_bf16

A = 4
STATE_DIM = 39
IMG = 64


# ---------------------------------------------------------------- visarl


def visarl_step_fn(
    pixel: bool,
    batch: int,
    actor_every: int,
    autocast: torch.dtype | None,
    encoder_dtype: torch.dtype | None = None,
    rows: int = 2000,
    device: str = "cpu",
) -> Callable[[], None]:
    torch.manual_seed(0)
    if pixel:
        encoder = PixelCNN("rgb", (IMG, IMG))
        spec = {"rgb": ((3, IMG, IMG), np.dtype(np.uint8))}
    else:
        encoder = IdentityEncoder(STATE_DIM)
        spec = {"state": ((STATE_DIM,), np.dtype(np.float32))}
    sac = SACConfig(actor_update_freq=actor_every)  # paper heads: Linear -> 100 + LayerNorm + tanh, 3 x 1024
    agent = SACAgent(encoder, A, encoder_dtype=encoder_dtype, **sac.agent_kwargs()).to(device)
    opts = make_optimizers(agent, **sac.optimizer_kwargs())
    buf = ReplayBuffer(rows + 1, spec, A)
    rng = np.random.default_rng(0)
    obs = {
        k: rng.integers(0, 255, (rows + 1, *s), dtype=np.uint8)
        if d == np.uint8
        else rng.standard_normal((rows + 1, *s)).astype(d)
        for k, (s, d) in spec.items()
    }
    r = buf.add_obs(obs)
    buf.add_transitions(
        r[:-1],
        r[1:],
        rng.uniform(-1, 1, (rows, A)),
        rng.standard_normal(rows),
        np.zeros(rows, bool),
        np.zeros(rows, bool),
    )
    step = [0]

    def update() -> None:
        sample = batch_to(buf.sample(batch, rng), torch.device(device))
        agent.update(sample, opts, step[0], **sac.update_kwargs(), autocast_dtype=autocast)
        step[0] += 1

    return update


# ---------------------------------------------------------------- Stable-Baselines3


class PaperCNNExtractor:
    """Built lazily (SB3 imported only when benchmarking): the paper CNN + projection as an SB3 extractor."""

    @staticmethod
    def cls() -> type:
        from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

        class _Extractor(BaseFeaturesExtractor):
            def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 100) -> None:
                super().__init__(observation_space, features_dim)
                # SB3 scaled images to [0, 1]; the same CNN (channels-last, unpadded, not centred) as visarl's
                self.cnn = PixelCNN("rgb", (IMG, IMG))
                self.proj = trunk(self.cnn.out_dim, features_dim)

            def forward(self, obs: torch.Tensor) -> torch.Tensor:
                return self.proj(self.cnn({"rgb": obs}))

        return _Extractor


class _DummyEnv(gym.Env):
    def __init__(self, pixel: bool) -> None:
        self.observation_space = (
            gym.spaces.Box(0, 255, (3, IMG, IMG), np.uint8) if pixel else gym.spaces.Box(-10, 10, (STATE_DIM,))
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (A,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple:
        return self.observation_space.sample(), {}

    def step(self, action: np.ndarray) -> tuple:
        return self.observation_space.sample(), 0.0, False, False, {}


def sb3_step_fn(pixel: bool, batch: int, rows: int = 2000, device: str = "cpu") -> Callable[[], None]:
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import Logger

    torch.manual_seed(0)
    policy_kwargs: dict = {"net_arch": [1024, 1024, 1024]}
    if pixel:
        policy_kwargs.update(
            features_extractor_class=PaperCNNExtractor.cls(),
            features_extractor_kwargs={"features_dim": 100},
            share_features_extractor=True,
        )
    model = SAC(
        "CnnPolicy" if pixel else "MlpPolicy",
        _DummyEnv(pixel),
        buffer_size=rows,
        batch_size=batch,
        learning_rate=1e-4,
        ent_coef="auto_0.1",
        policy_kwargs=policy_kwargs,
        device=device,
        seed=0,
    )
    model.set_logger(Logger(folder=None, output_formats=[]))  # configure() would litter /tmp with SB3-* dirs
    rb = model.replay_buffer
    rng = np.random.default_rng(0)
    shape = rb.observations.shape
    if pixel:
        rb.observations[:] = rng.integers(0, 255, shape, dtype=np.uint8)
        rb.next_observations[:] = rng.integers(0, 255, shape, dtype=np.uint8)
    else:
        rb.observations[:] = rng.standard_normal(shape)
        rb.next_observations[:] = rng.standard_normal(shape)
    rb.actions[:] = rng.uniform(-1, 1, rb.actions.shape)
    rb.rewards[:] = rng.standard_normal(rb.rewards.shape)
    rb.full = True

    def update() -> None:
        model.train(gradient_steps=1, batch_size=batch)

    return update


# ---------------------------------------------------------------- timing


def rate(fn: Callable[[], None], updates: int) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(updates):
        fn()
    sync()
    return updates / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--updates", type=int, default=5, help="pixel updates per method per round (x3 for state)")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", help="skip the all-bf16 row")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (0: torch's default); 1 is steadiest on a shared CPU"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both libraries run on it)")
    args = parser.parse_args()
    dev = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name() if dev.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}")
    # visarl's default encoder_precision ('auto'): bf16 for the CNN on a CPU with native bf16 convolutions
    default_dtype = torch.bfloat16 if native_bf16("cuda" if dev.startswith("cuda") else "cpu") else None
    print(f"visarl's default encoder precision here: {'bf16' if default_dtype else 'fp32'} (encoder_precision: auto)")
    results: dict[str, float] = {}
    for case, pixel, batch, updates in (("state", False, 256, 3 * args.updates), ("pixel", True, 128, args.updates)):
        methods = {
            f"{case}/visarl": visarl_step_fn(pixel, batch, 2, None, default_dtype if pixel else None, device=dev),
            f"{case}/visarl_fp32": visarl_step_fn(pixel, batch, 2, None, device=dev),
            f"{case}/visarl_actor_every_step": visarl_step_fn(pixel, batch, 1, None, device=dev),
            f"{case}/sb3": sb3_step_fn(pixel, batch, device=dev),
        }
        if not pixel or default_dtype is None:
            del methods[f"{case}/visarl_fp32"]  # the same as the default row
        if args.bf16:
            methods[f"{case}/visarl_bf16"] = visarl_step_fn(pixel, batch, 2, torch.bfloat16, device=dev)
        for fn in methods.values():  # warm-up: allocator, oneDNN kernels, Adam state
            rate(fn, 2)
        rates: dict[str, list[float]] = {k: [] for k in methods}
        for _ in range(args.rounds):
            for name, fn in methods.items():
                rates[name].append(rate(fn, updates))
        for name, values in rates.items():
            results[name] = statistics.median(values)
            print(
                f"{name}: {results[name]:.2f} updates/s (median of {args.rounds}; min {min(values):.2f}, "
                f"max {max(values):.2f})",
                flush=True,
            )
        print(f"{case} speedup vs sb3: {results[f'{case}/visarl'] / results[f'{case}/sb3']:.2f}x", flush=True)
    print(f"sac_update_speedup_vs_sb3: {results['pixel/visarl'] / results['pixel/sb3']:.2f}")


if __name__ == "__main__":
    main()
