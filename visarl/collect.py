"""`stage: collect`: run a policy in vectorized pixel envs and write every transition to HDF5 shards.

``policy: random`` acts uniformly at random. ``policy: scripted`` runs Meta-World's scripted expert for the task
(``metaworld.policies``) with optional Gaussian action noise (``action_noise``): a competent dataset in render time
only, an alternative to state-SAC replay for building a pretraining dataset quickly.
``policy: sac_state`` trains state-based SAC on the task with the
SAC loop of ``stage: rl`` (:func:`visarl.rl.stage.fit_sac`), rendering and storing every frame: its replay is the
paper's 200k-frame pretraining dataset (Sec. II-C), and it resumes from checkpoints like any SAC run. The other
policies checkpoint after each completed shard (``collect_state.json``: the transitions in complete shards), so a
killed run resumed with ``--resume`` collects only the rest, from freshly seeded envs.

A stage runner beside :mod:`visarl.pipeline`: it combines storage (:mod:`visarl.data`) with the SAC loop
(:mod:`visarl.rl`), so it sits above both and neither knows the other.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from visarl.config import ConfigError, choice, to_yaml
from visarl.core.io import atomic_write_json
from visarl.core.log import get_logger
from visarl.core.progress import progress
from visarl.data.shards import ShardReader, ShardWriter, default_data_dir, list_shards, producer_attrs, summarize
from visarl.envs import EnvConfig, env_kwargs, make_vector_env
from visarl.envs.experts import ScriptedExpert
from visarl.registry import RunContext, register_stage
from visarl.rl.stage import EvalConfig, SACRunConfig, build_agent, check_saliency_source, fit_sac

log = get_logger(__name__)


@dataclass
class CollectConfig(SACRunConfig):
    """Collect transitions from a task into replay shards (SAC settings apply to ``policy: sac_state``)."""

    stage: str = "collect"
    env: EnvConfig = field(default_factory=EnvConfig)
    """The pixel environment."""
    policy: str = "random"
    """Which policy acts: 'random' (uniform actions), 'scripted' (Meta-World's scripted expert for the task) or
    'sac_state' (state-based SAC, learning as it collects)."""
    action_noise: float = 0.0
    """``policy: scripted``: std of Gaussian noise added to the expert's actions (then clipped to [-1, 1])."""
    num_steps: int = 2000
    """Transitions to collect in total, over all envs (the paper's datasets hold 200k frames)."""
    num_envs: int = 1
    """Environments stepped in parallel, each in its own worker process when > 1."""
    rows_per_shard: int = 5000
    """Rows (frames) per HDF5 shard."""
    data_dir: str = ""
    """Where shards go; default data/<task>/replay."""
    append: bool = False
    """Allow adding shards to a data_dir that already holds some (otherwise that is an error)."""
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(every=0, episodes=10))
    """Evaluation of the sac_state policy: by default only at the end, over 10 episodes (collection is the goal)."""

    def __post_init__(self) -> None:
        choice("policy", self.policy, ["random", "scripted", "sac_state"])
        if self.action_noise < 0:
            raise ConfigError(f"action_noise: must be >= 0, got {self.action_noise}")
        self._check_loop()
        if self.policy != "sac_state" and (self.saliency != "none" or self.saliency_ckpt):
            raise ConfigError(
                f"saliency: policy {self.policy!r} stores no saliency maps (only policy: sac_state labels frames as it "
                "collects); remove saliency and saliency_ckpt, or add maps later with `stage: label`"
            )

    def trainer_fields(self) -> frozenset[str] | None:
        """Only ``policy: sac_state`` builds a Trainer; the others read only whether to show a progress bar."""
        return None if self.policy == "sac_state" else frozenset({"enable_progress_bar"})


@register_stage("collect", CollectConfig, check=check_saliency_source)
def run_collect(cfg: CollectConfig, ctx: RunContext) -> dict:
    """Collect ``cfg.num_steps`` transitions; on resume, only what the run's shards still lack."""
    data_dir = Path(cfg.data_dir) if cfg.data_dir else default_data_dir(cfg.env.task)
    if cfg.policy == "sac_state":
        return _collect_sac_state(cfg, ctx, data_dir)
    state_file = ctx.run_dir / "collect_state.json"
    done_steps = done_shards = 0
    if ctx.resume and state_file.exists():
        state = json.loads(state_file.read_text())
        done_steps, done_shards = int(state["steps_written"]), int(state.get("shards", 0))
    elif list_shards(data_dir) and not cfg.append and not ctx.resume:
        raise ConfigError(
            f"data_dir {data_dir} already holds {len(list_shards(data_dir))} shards; "
            "pass append=true to add to them or data_dir=<another folder>"
        )
    remaining = cfg.num_steps - done_steps
    if remaining <= 0:
        log.info(f"collect: nothing left to do, {done_steps} steps already in {data_dir}")
        return summarize(data_dir)

    attrs = producer_attrs(cfg.env, to_yaml(cfg))
    # A resumed run seeds its envs differently, so it does not replay the episodes it already wrote.
    seed = cfg.seed + 1000 * (done_steps > 0) * (1 + done_steps)
    envs = make_vector_env(cfg.num_envs, seed=seed, asynchronous=cfg.async_envs, **env_kwargs(cfg.env))
    rng = np.random.default_rng(seed)
    expert = None
    if cfg.policy == "scripted":
        expert = ScriptedExpert(cfg.env.task, cfg.action_noise, rng)
    writer = ShardWriter(data_dir, rows_per_shard=cfg.rows_per_shard, attrs=attrs)

    from torch.utils.tensorboard import SummaryWriter  # lazy: --list-stages imports this module, not TensorBoard

    tb = SummaryWriter(str(ctx.run_dir))
    obs, _ = envs.reset(seed=seed)
    for i in range(cfg.num_envs):
        writer.add_first(i, {k: v[i] for k, v in obs.items()})
    needs_reset = np.zeros(cfg.num_envs, dtype=bool)
    ep_return = np.zeros(cfg.num_envs)
    ep_success = np.zeros(cfg.num_envs, dtype=bool)  # success at any step of the running episode
    returns: list[float] = []
    successes: list[float] = []
    steps = durable = counted = 0  # transitions stepped; of those, the ones in the first `counted` completed shards
    t0 = time.perf_counter()
    bar = progress(remaining, f"collect {cfg.env.task}", "step", cfg.trainer.enable_progress_bar)
    try:
        while steps < remaining:
            before = steps
            if expert is not None:  # actions of envs about to autoreset are ignored by the vector env
                action = expert(obs["state"])
            else:
                action = rng.uniform(-1.0, 1.0, size=envs.action_space.shape).astype(np.float32)
            obs, reward, terminated, truncated, info = envs.step(action)
            for i in range(cfg.num_envs):
                frame = {k: v[i] for k, v in obs.items()}
                if needs_reset[i]:  # gymnasium's next-step autoreset: this obs starts a new episode
                    writer.add_first(i, frame)
                    needs_reset[i] = False
                    continue
                success = float(info["success"][i])
                writer.add_step(i, action[i], float(reward[i]), bool(terminated[i]), bool(truncated[i]), success, frame)
                ep_return[i] += reward[i]
                ep_success[i] |= success > 0
                steps += 1
                if terminated[i] or truncated[i]:
                    needs_reset[i] = True
                    returns.append(float(ep_return[i]))
                    successes.append(float(ep_success[i]))
                    tb.add_scalar("charts/episode_return", ep_return[i], done_steps + steps)
                    tb.add_scalar("charts/episode_success", float(ep_success[i]), done_steps + steps)
                    ep_return[i], ep_success[i] = 0.0, False
            bar.update(steps - before)
            if len(writer.shard_paths) > counted:  # a shard was completed: its transitions are durable, a checkpoint
                durable += _transitions_in(writer.shard_paths[counted:])
                counted = len(writer.shard_paths)
                _save_state(state_file, done_steps + durable, done_shards + counted)
            fps = steps / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(fps=f"{fps:.0f}", episodes=len(returns), refresh=False)
            if steps // 100 != before // 100:
                tb.add_scalar("charts/fps", fps, done_steps + steps)
    finally:
        bar.close()
        writer.close()
        envs.close()
        tb.close()
        _save_state(state_file, done_steps + steps, done_shards + len(writer.shard_paths))
    summary = summarize(data_dir)
    summary.update(data_dir=str(data_dir), episodes_finished=len(returns), fps=steps / (time.perf_counter() - t0))
    summary["resumed_from"] = done_steps
    if returns:
        summary["mean_return"] = float(np.mean(returns))
        summary["success_rate"] = float(np.mean(successes))
    summary["policy"] = cfg.policy
    atomic_write_json(ctx.run_dir / "collect.json", summary)
    log.info(
        f"collect: wrote {done_steps + steps} steps of {cfg.env.task} to {data_dir} ({len(writer.shard_paths)} shards)"
    )
    return summary


def _transitions_in(shards: list[Path]) -> int:
    total = 0
    for path in shards:
        reader = ShardReader(path)
        try:
            total += len(reader.transition_indices())
        finally:
            reader.close()
    return total


def _save_state(path: Path, steps_written: int, shards: int) -> None:
    """``collect_state.json``: the transitions in the run's complete shards (what --resume need not collect again)."""
    atomic_write_json(path, {"steps_written": steps_written, "shards": shards})


def _collect_sac_state(cfg: CollectConfig, ctx: RunContext, data_dir: Path) -> dict:
    """Train state SAC while storing rendered frames; the shards in ``data_dir`` are the dataset."""
    if not ctx.resume and list_shards(data_dir) and not cfg.append:
        raise ConfigError(
            f"data_dir {data_dir} already holds {len(list_shards(data_dir))} shards; "
            "pass append=true to add to them or data_dir=<another folder>"
        )
    attrs = producer_attrs(cfg.env, to_yaml(cfg))
    agent, _ = build_agent(cfg)  # the 39-d state: SAC learns the task fast, frames are only stored
    t0 = time.perf_counter()
    result = fit_sac(cfg, ctx, agent, data_dir=data_dir, shard_attrs=attrs)
    summary = summarize(data_dir)
    summary.update(
        data_dir=str(data_dir),
        policy=cfg.policy,
        env_steps=result.get("env_step"),
        num_updates=result.get("num_updates"),
        final_eval=result.get("final_eval"),
        seconds=time.perf_counter() - t0,
    )
    atomic_write_json(ctx.run_dir / "collect.json", summary)
    log.info(f"collect: {cfg.num_steps} SAC steps of {cfg.env.task} stored in {data_dir}")
    return summary
