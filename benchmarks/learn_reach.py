"""Does visarl's state SAC learn Meta-World reach? Side by side with Stable-Baselines3's SAC, on equal terms.

    python benchmarks/learn_reach.py                                   # 100k env steps x 5 seeds x 2 (hours on 2 cores)
    python benchmarks/learn_reach.py --steps 20000 --seeds 0 1 2 3 4 --eval-episodes 10   # reduced run
    python benchmarks/learn_reach.py --steps 1500 --seeds 0 --eval-episodes 2 --hidden 32  # smoke test, ~1-2 min

What is equal (so a gap between the two is the implementation's, not the setup's):

- env: the 39-d state of the same env class (``MetaWorldPixelEnv``, frames rendered at ``--image-size`` and unused,
  by both), 500-step episodes, truncation bootstraps in both (SB3's ``handle_timeout_termination``);
- networks: visarl's heads in both. The actor is Linear(39 -> 100) + LayerNorm + tanh (SB3: a features extractor),
  then 3 ReLU layers of ``--hidden`` units (256 by default; the paper's 1024 would not fit the CPU budget) and the
  output layer. Each Q-function has its own such trunk before its MLP on [trunk(s), a] (SB3: a critic whose
  features extractor is the identity and whose Q-networks each hold a trunk). Orthogonal init in both;
- schedule: 1000 uniformly random steps, then one update per env step, batch 128, Adam lr 1e-4 for actor, critics
  and temperature (initial 0.1, target entropy -|A|), discount 0.99, tau 0.005, and the actor, the temperature and
  the target critics all updated at every step. That is the one schedule both can express: SB3 has no actor delay,
  and its ``target_update_interval`` counts gradient steps inside one ``train()`` call, so with one gradient step
  per call an interval of 2 still updates every step. visarl's defaults (actor and targets every 2nd update, a burst
  of 1000 updates when learning starts) are therefore switched off here;
- evaluation: visarl's evaluator for both, the same layouts per seed, ``--eval-episodes`` deterministic episodes;
  success = any success in the episode, as Meta-World counts it.

What differs: SB3 clamps the actor's log-std to [-20, 2], visarl squashes it into [-10, 2] with a tanh; SB3's actor
ends in two Linear(hidden, 4) layers (mean, log-std) where visarl's has one Linear(hidden, 8) (the same function).

Per seed both agents run; the summary gives mean ± sample std over seeds. Last lines
``sb3_reach_success: Y`` and ``reach_success: X`` (visarl), means over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import visarl.fit
from visarl.envs import make_vector_env
from visarl.rl.evaluate import Evaluator
from visarl.rl.module import _seed
from visarl.rl.networks import mlp, trunk, weight_init

FEATURE_DIM = 100  # the paper's projection width (Appendix F), visarl's sac.feature_dim
LEARNING_STARTS = 1000

CONFIG = """\
stage: rl
encoder: identity
env:
  task: reach
  image_size: {image_size}
sac:
  hidden_dim: {hidden}
  feature_dim: {feature_dim}
  num_layers: 3
  learning_starts: {learning_starts}
  initial_updates: 0      # SB3 has no burst
  actor_update_freq: 1    # SB3 has no actor delay
  target_update_freq: 1   # SB3 with gradient_steps 1 updates its targets every step
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
            feature_dim=FEATURE_DIM,
            learning_starts=LEARNING_STARTS,
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


def sb3_policy_class(hidden: int) -> type:
    """An SB3 SACPolicy whose actor and critics are visarl's heads (built lazily: SB3 imported only here)."""
    from stable_baselines3.common.policies import ContinuousCritic
    from stable_baselines3.common.preprocessing import get_action_dim
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor
    from stable_baselines3.sac.policies import SACPolicy

    class Trunk(BaseFeaturesExtractor):
        """visarl's Linear + LayerNorm + tanh projection, as the actor's features extractor."""

        def __init__(self, observation_space: Any, features_dim: int = FEATURE_DIM) -> None:
            super().__init__(observation_space, features_dim)
            self.trunk = trunk(int(np.prod(observation_space.shape)), features_dim)

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return self.trunk(obs.flatten(1))

    class TrunkQ(nn.Module):
        """visarl's QNetwork on SB3's [s, a] input: its own trunk on s, then the MLP on [trunk(s), a]."""

        def __init__(self, obs_dim: int, action_dim: int) -> None:
            super().__init__()
            self.obs_dim = obs_dim
            self.trunk = trunk(obs_dim, FEATURE_DIM)
            self.q = mlp(FEATURE_DIM + action_dim, hidden, 1, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.trunk(x[:, : self.obs_dim])
            return self.q(torch.cat([h, x[:, self.obs_dim :]], dim=1))

    class TrunkCritic(ContinuousCritic):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            action_dim = get_action_dim(self.action_space)
            self.q_networks = []
            for idx in range(self.n_critics):
                q_net = TrunkQ(int(kwargs["features_dim"]), action_dim)
                self.add_module(f"qf{idx}", q_net)  # replaces SB3's plain MLP of the same name
                self.q_networks.append(q_net)

    class VisarlHeadsPolicy(SACPolicy):
        def make_critic(self, features_extractor: Any = None) -> ContinuousCritic:
            # the critic sees the raw state; each of its Q-networks projects it with its own trunk
            kwargs = self._update_features_extractor(self.critic_kwargs, FlattenExtractor(self.observation_space))
            return TrunkCritic(**kwargs).to(self.device)

    return VisarlHeadsPolicy, Trunk


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
    policy, extractor = sb3_policy_class(args.hidden)
    model = SAC(
        policy,
        env,
        learning_rate=1e-4,
        buffer_size=args.budget,
        learning_starts=LEARNING_STARTS,
        batch_size=128,
        tau=0.005,
        gamma=0.99,
        train_freq=1,
        gradient_steps=1,
        ent_coef="auto_0.1",
        target_update_interval=1,
        policy_kwargs={
            "net_arch": [args.hidden] * 3,
            "features_extractor_class": extractor,
            "share_features_extractor": False,
        },
        seed=seed,
        device="cpu",
    )
    with torch.no_grad():  # visarl's orthogonal init; the targets start as copies, as SB3 makes them
        model.policy.actor.apply(weight_init)
        model.policy.critic.apply(weight_init)
        model.policy.critic_target.load_state_dict(model.policy.critic.state_dict())
    model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default logger makes a /tmp/SB3-* dir
    model.learn(total_timesteps=args.budget, progress_bar=False)
    env.close()

    def make(n: int) -> gym.vector.VectorEnv:
        return make_vector_env(n, seed=None, asynchronous=False, autoreset_mode="SameStep", image_size=args.image_size)

    # the same evaluation layouts as visarl's evaluator uses for this seed
    evaluator = Evaluator(make, 5, args.eval_episodes, _seed(seed, "eval-envs"), ("state",))

    def act(obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.from_numpy(model.predict(obs["state"].numpy(), deterministic=True)[0])

    result = evaluator.run(act, "cpu", args.budget)
    evaluator.close()
    return result.success_rate, time.perf_counter() - t0


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.2f} ± {std:.2f} ({len(values)} seeds)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", "--steps", dest="budget", type=int, default=100_000, help="env steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--hidden", type=int, default=256, help="hidden units of the 3 MLP layers of each head")
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=16, help="rendered (and stored) but unused frames")
    parser.add_argument("--precision", default="32", help="visarl's trainer.precision, e.g. bf16-mixed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both (1 is fastest when busy)")
    parser.add_argument("--skip-sb3", action="store_true")
    parser.add_argument("--out", default="runs/bench_learn_reach")
    parser.add_argument(
        "--summarize",
        nargs="+",
        metavar="JSON",
        help="print the summary of finished runs (learn_reach.json files of runs split over processes) and exit",
    )
    args = parser.parse_args()
    if args.summarize:
        runs = [json.loads(Path(f).read_text()) for f in args.summarize]
        settings = {(r["args"]["budget"], r["args"]["hidden"], r["args"]["eval_episodes"]) for r in runs}
        if len(settings) > 1:
            parser.error(f"--summarize: the files were run with different settings {sorted(settings)}")
        args.budget, args.hidden, args.eval_episodes = settings.pop()
        rows = sorted((row for r in runs for row in r["runs"]), key=lambda row: row["seed"])
        args.seeds, args.skip_sb3 = [row["seed"] for row in rows], any("sb3_success" not in row for row in rows)
        summarize(args, rows)
        return
    if args.budget <= LEARNING_STARTS:
        parser.error(f"--steps must exceed the {LEARNING_STARTS} random steps before learning starts")
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
    summarize(args, rows)


def summarize(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """Per-seed lines, then mean ± std over seeds; the last lines are the two headline figures."""
    for r in rows:
        sb3 = f"  sb3 {r['sb3_success']:.2f} ({r['sb3_minutes']:.1f} min)" if "sb3_success" in r else ""
        print(f"seed {r['seed']}: visarl {r['visarl_success']:.2f} ({r['visarl_minutes']:.1f} min){sb3}")
    ours = [r["visarl_success"] for r in rows]
    print(f"budget {args.budget} env steps, heads 100 + 3x{args.hidden}, same schedule, seeds {args.seeds}")
    print(f"visarl success: {mean_std(ours)}")
    if not args.skip_sb3:
        theirs = [r["sb3_success"] for r in rows]
        print(f"sb3 success:    {mean_std(theirs)}")
        print(f"sb3_reach_success: {statistics.mean(theirs):.2f}")
    print(f"reach_success: {statistics.mean(ours):.2f}")


if __name__ == "__main__":
    main()
