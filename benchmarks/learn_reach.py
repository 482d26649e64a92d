"""Does visarl's state SAC learn Meta-World reach? Side by side with Stable-Baselines3's SAC, same budget.

    python benchmarks/learn_reach.py                       # 100k env steps, seed 0 (about 40-60 min on 2 cores)
    python benchmarks/learn_reach.py --budget 1500 --eval-episodes 2 --hidden 32   # smoke test, ~1-2 min

Both agents see the 39-d state of the same env class (``MetaWorldPixelEnv``, frames rendered at
``--image-size`` and unused), 500-step episodes, and share the budget of env steps, the seeds, the network
(heads of 3 hidden layers of ``--hidden`` units: 256 by default, narrower than the paper's 1024 so that both
fit the hour on this CPU) and the SAC settings visarl defaults to (batch 128, Adam lr 1e-4, initial temperature
0.1, discount 0.99, tau 0.005, target update every 2 steps, 1000 random steps). SB3 updates its actor every
step (it has no actor delay) and has no 100-d LayerNorm projection before its MLPs; visarl runs its own defaults.

Each agent is evaluated at the end over ``--eval-episodes`` deterministic episodes of the same layouts (visarl's
evaluator, success = any success in the episode, as Meta-World counts it). Last line: ``reach_success: X``
(visarl's success rate, mean over seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import visarl.fit
from visarl.envs import make_vector_env
from visarl.rl.evaluate import Evaluator
from visarl.rl.module import _seed

CONFIG = """\
stage: rl
encoder: identity
env:
  task: reach
  image_size: {image_size}
sac:
  hidden_dim: {hidden}
eval:
  every: 0
  episodes: {episodes}
  num_envs: 5
num_steps: {budget}
async_envs: false
checkpoint_every: {budget}
log_every: 5000
rows_per_shard: 5000
torch_threads: {threads}
trainer:
  precision: "{precision}"
  enable_progress_bar: false
"""


def run_visarl(args: argparse.Namespace, seed: int, out: Path) -> tuple[float, float]:
    config = out / "learn_reach_visarl.yaml"
    config.write_text(
        CONFIG.format(
            image_size=args.image_size,
            hidden=args.hidden,
            episodes=args.eval_episodes,
            budget=args.budget,
            threads=args.threads,
            precision=args.precision,
        )
    )
    t0 = time.perf_counter()
    summary = visarl.fit.run(
        str(config), [f"output_dir={out}", f"run=visarl-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}", f"seed={seed}"]
    )
    return float(summary["final_eval"]["success_rate"]), time.perf_counter() - t0


def run_sb3(args: argparse.Namespace, seed: int) -> tuple[float, float]:
    import gymnasium as gym
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import Logger

    from visarl.envs import make_env

    class StateOnly(gym.ObservationWrapper):
        def __init__(self, env: gym.Env) -> None:
            super().__init__(env)
            self.observation_space = env.observation_space["state"]

        def observation(self, obs: dict) -> np.ndarray:
            return obs["state"]

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    env = StateOnly(make_env("reach", seed=seed, image_size=args.image_size))
    model = SAC(
        "MlpPolicy",
        env,
        learning_rate=1e-4,
        buffer_size=args.budget,
        learning_starts=1000,
        batch_size=128,
        tau=0.005,
        gamma=0.99,
        ent_coef="auto_0.1",
        target_update_interval=2,
        policy_kwargs={"net_arch": [args.hidden] * 3},
        seed=seed,
        device="cpu",
    )
    model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default logger makes a /tmp/SB3-* dir
    model.learn(total_timesteps=args.budget, progress_bar=False)
    env.close()

    def make(n: int) -> gym.vector.VectorEnv:
        return make_vector_env(n, seed=None, asynchronous=False, autoreset_mode="SameStep", image_size=args.image_size)

    # the same evaluation layouts as visarl's evaluator uses for this seed
    evaluator = Evaluator(make, 5, args.eval_episodes, _seed(seed, "eval-envs"), ("state",))

    def policy(obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.from_numpy(model.predict(obs["state"].numpy(), deterministic=True)[0])

    result = evaluator.run(policy, "cpu", args.budget)
    evaluator.close()
    return result.success_rate, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, default=100_000, help="env steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--hidden", type=int, default=256, help="hidden units of the 3 MLP layers of each head")
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=16, help="rendered (and stored) but unused frames")
    parser.add_argument("--precision", default="32", help="visarl's trainer.precision, e.g. bf16-mixed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both (1 is fastest when busy)")
    parser.add_argument("--skip-sb3", action="store_true")
    parser.add_argument("--out", default="runs/bench_learn_reach")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        ours, t_ours = run_visarl(args, seed, out)
        print(f"seed {seed}: visarl success {ours:.2f} in {t_ours / 60:.1f} min", flush=True)
        row = {"seed": seed, "visarl_success": ours, "visarl_minutes": t_ours / 60}
        if not args.skip_sb3:
            theirs, t_theirs = run_sb3(args, seed)
            print(f"seed {seed}: sb3 success {theirs:.2f} in {t_theirs / 60:.1f} min", flush=True)
            row.update(sb3_success=theirs, sb3_minutes=t_theirs / 60)
        rows.append(row)
    (out / "learn_reach.json").write_text(json.dumps({"args": vars(args), "runs": rows}, indent=2))
    mean = statistics.mean(r["visarl_success"] for r in rows)
    if not args.skip_sb3:
        print(f"sb3 mean success: {statistics.mean(r['sb3_success'] for r in rows):.2f}")
    print(f"budget {args.budget} env steps, heads 3x{args.hidden}, seeds {args.seeds}")
    print(f"reach_success: {mean:.2f}")


if __name__ == "__main__":
    main()
