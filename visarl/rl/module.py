"""The SAC loop as a LightningModule: vectorized envs in, replay shards and a trained agent out.

Each ``training_step`` is one step of the rank's vector env (``num_envs`` transitions), written to the in-memory
replay and to HDF5 shards, followed by ``num_envs * updates_per_step`` SAC updates on batches drawn from the
replay. The batches Lightning hands in are only a clock (an endless iterable of zeros): the data comes from the
envs. Lightning owns devices and precision (``bf16-mixed`` wraps training_step in autocast); optimization is
manual (three optimizers, an actor updated every other step), and under DDP every rank runs its own envs with its
own seed while ``manual_backward`` averages the gradients (``find_unused_parameters=True``: the critic loss does
not reach the actor and the actor loss does not reach the critic or the encoder).

Counters are global: ``env_step`` counts transitions over all ranks (the x axis of every TensorBoard curve, as in
cleanrl), ``num_updates`` the SAC updates each rank made. Checkpoints hold both, the replay's shard list per rank,
every RNG state per rank and the evaluation history, so a killed run resumes where its last checkpoint was.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, IterableDataset

from visarl.core.io import atomic_write_json
from visarl.core.log import get_logger
from visarl.data.datamodules import TransitionBatch
from visarl.envs import env_kwargs
from visarl.mae.frozen import FrameEmbedder
from visarl.rl.evaluate import Evaluator, done_info, final_obs, to_policy_obs
from visarl.rl.replay import Replay, safe_prefix
from visarl.rl.sac import SACAgent, SACOptimizers, make_optimizers
from visarl.rl.saliency_source import labeller, make_saliency_source

log = get_logger(__name__)

if TYPE_CHECKING:
    from visarl.rl.stage import SACRunConfig


class _Clock(IterableDataset):
    """Endless zeros: Lightning's batches only pace the loop; the envs provide the data."""

    def __iter__(self) -> Iterator[int]:
        while True:
            yield 0


def clock_loader() -> DataLoader:
    return DataLoader(_Clock(), batch_size=None)


def _seed(*parts: int | str) -> int:
    """A 31-bit seed derived from ``parts`` (SeedSequence mixes them; nearby inputs give unrelated seeds)."""
    words = [
        p if isinstance(p, int) else int.from_bytes(hashlib.sha1(p.encode()).digest()[:4], "little") for p in parts
    ]
    return int(np.random.SeedSequence([w % (1 << 63) for w in words]).generate_state(1)[0] >> 1)


def batch_to(batch: TransitionBatch, device: torch.device) -> TransitionBatch:
    non_blocking = device.type == "cuda"
    return TransitionBatch(
        obs={k: v.to(device, non_blocking=non_blocking) for k, v in batch.obs.items()},
        action=batch.action.to(device, non_blocking=non_blocking),
        reward=batch.reward.to(device, non_blocking=non_blocking),
        next_obs={k: v.to(device, non_blocking=non_blocking) for k, v in batch.next_obs.items()},
        terminated=batch.terminated.to(device, non_blocking=non_blocking),
        truncated=batch.truncated.to(device, non_blocking=non_blocking),
    )


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _gather(obj: Any) -> list[Any]:
    """``obj`` from every rank (a one-element list without DDP)."""
    if not _distributed():
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def params_digest(module: torch.nn.Module) -> str:
    """SHA-1 of every parameter's bytes, in order: equal digests mean bit-identical weights."""
    h = hashlib.sha1()
    for p in module.parameters():
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class SACLoop(pl.LightningModule):
    """SAC with vectorized envs, replay shards, periodic evaluation and resumable state (see the module doc)."""

    def __init__(
        self,
        agent: SACAgent,
        cfg: SACRunConfig,
        *,
        run_dir: str | Path,
        data_dir: str | Path,
        shard_attrs: dict[str, Any],
        embedder: FrameEmbedder | None = None,
    ) -> None:
        """``cfg`` is the run's config, read as is (``cfg.sac``, ``cfg.eval``, the loop fields); the keywords are
        what the runner resolves at run time: the run directory, where the replay shards go and their attributes."""
        super().__init__()
        self.automatic_optimization = False
        self.agent = agent
        self.cfg = cfg
        self.run_dir, self.data_dir = Path(run_dir), Path(data_dir)
        self.shard_attrs = dict(shard_attrs)
        self.env_kwargs = env_kwargs(cfg.env)
        # A frozen encoder runs here, once per observed frame, never on a batch: the agent reads its stored output.
        self.embedder = embedder
        if embedder is not None and agent.obs_keys != (embedder.key,):
            raise ValueError(f"an agent on stored embeddings reads ({embedder.key!r},), not {agent.obs_keys}")
        # counters and history (checkpointed)
        self.env_step = 0
        self.num_updates = 0
        self.eval_history: list[dict[str, Any]] = []
        self.next_eval = 0
        self.rank_vector_steps = 0
        self._update_debt = 0.0
        self._restored: dict[str, Any] | None = None
        # runtime (built in on_fit_start)
        self.envs: Any = None
        self.replay: Replay | None = None
        self.evaluator: Evaluator | None = None
        self._label: Any = None
        self._obs: dict[str, np.ndarray] = {}
        self._metrics: dict[str, torch.Tensor] = {}
        self.summary: dict[str, Any] = {}

    # -- setup ---------------------------------------------------------------------------------------

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return list(make_optimizers(self.agent, **self.cfg.sac.optimizer_kwargs()))

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self._trainer is not None else 0

    def _make_envs(self, n: int) -> Any:
        from visarl.envs import make_vector_env

        return make_vector_env(
            n, seed=None, asynchronous=self.cfg.async_envs, autoreset_mode="SameStep", **self.env_kwargs
        )

    def on_fit_start(self) -> None:
        cfg, rank = self.cfg, self.rank
        self.envs = self._make_envs(cfg.num_envs)
        if cfg.saliency != "none":
            camera = self.envs.get_attr("camera_model")[0]
            n_objects = int(self.envs.get_attr("n_objects")[0])
            source = make_saliency_source(
                cfg.saliency,
                camera=camera,
                n_objects=n_objects,
                checkpoint=cfg.saliency_ckpt,
                sigma=cfg.saliency_sigma,
                device=self.device,
            )
            self._label = labeller(source, self.device)
        height, width = self.envs.single_observation_space["rgb"].shape[:2]
        spec = {
            "rgb": ((3, height, width), np.dtype(np.uint8)),
            "state": (self.envs.single_observation_space["state"].shape, np.dtype(np.float32)),
            "saliency": ((1, height, width), np.dtype(np.uint8)),
        }
        if self.embedder is not None:
            self.embedder.to(self.device)
            spec[self.embedder.key] = ((self.embedder.dim,), np.dtype(np.float32))
        capacity = cfg.sac.replay_size if cfg.sac.replay_size > 0 else cfg.num_steps // self.world_size
        # rows beyond transitions: each episode's last observation, and a repeated row per stream at each shard cut
        capacity += capacity // max(1, cfg.env.episode_length) + capacity // 100 + 4 * cfg.num_envs + 2
        self.replay = Replay(
            self.data_dir,
            num_streams=cfg.num_envs,
            capacity=capacity,
            buffer_keys=self.agent.obs_keys,
            obs_spec=spec,
            action_dim=self.agent.action_dim,
            rows_per_shard=cfg.rows_per_shard,
            attrs=self.shard_attrs,
            prefix=safe_prefix(f"{cfg.name}-{cfg.run}"),
            writer_id=rank,
            batch_size=cfg.sac.batch_size,
        )
        ranks = (self._restored or {}).get("ranks")
        if ranks is not None and len(ranks) != self.world_size:
            raise RuntimeError(f"checkpoint was written by {len(ranks)} ranks; this run has {self.world_size}")
        mine = ranks[rank] if ranks is not None else None
        reloaded = self.replay.restore(mine["shards"] if mine else [])
        if mine is not None:
            self.rank_vector_steps = int(mine["vector_steps"])
            self._update_debt = float(mine["update_debt"])
            log.info(
                f"[rank {rank}] resumed at env step {self.env_step}, update {self.num_updates}, "
                f"{reloaded} transitions reloaded from {len(mine['shards'])} shards"
            )
        # The env's layouts come from the seed given at reset: a resumed run resets with a new one, so it does not
        # replay the episodes it already stored.
        obs, _ = self.envs.reset(seed=_seed(cfg.seed, rank, self.env_step, "train-envs"))
        self._obs = self._observe(dict(obs))
        self.replay.start(self._obs)
        self._ep_return = np.zeros(cfg.num_envs)
        self._ep_len = np.zeros(cfg.num_envs, int)
        self._ep_success = np.zeros(cfg.num_envs, bool)
        if rank == 0 and (cfg.eval.every > 0 or cfg.eval.final):
            self.evaluator = Evaluator(
                self._make_envs,
                cfg.eval.num_envs,
                cfg.eval.episodes,
                _seed(cfg.seed, "eval-envs"),
                self.agent.obs_keys,
                # the policy reads what the loop derives from a frame: an embedding, or a map
                self._observe_for_policy
                if self.embedder is not None or self._policy_inputs() - {"rgb", "state"}
                else None,
                cfg.eval.strip_frames,
                progress=cfg.trainer.enable_progress_bar,
            )

    def on_train_start(self) -> None:
        cfg = self.cfg
        mine = self._restored["ranks"][self.rank] if self._restored else None
        if mine is not None:  # last, so nothing else consumes random numbers after the restore
            random.setstate(_tuples(mine["rng_python"]))
            np.random.set_state(_numpy_state(mine["rng_numpy"]))
            torch.set_rng_state(mine["rng_torch"])
            if self.device.type == "cuda" and mine.get("rng_cuda") is not None:
                torch.cuda.set_rng_state(mine["rng_cuda"], self.device)
            self.np_rng = np.random.default_rng()
            self.np_rng.bit_generator.state = mine["rng_sampler"]
        else:
            # each rank its own stream for exploration noise and replay sampling
            torch.manual_seed(_seed(cfg.seed, self.rank, "torch"))
            self.np_rng = np.random.default_rng(_seed(cfg.seed, self.rank, "sampler"))
        self._t_log, self._step_log, self._updates_log = time.perf_counter(), self.env_step, self.num_updates
        if cfg.eval.every > 0 and self.env_step == 0 and self.next_eval == 0:
            self._evaluate()  # the learning curve starts at the untrained policy

    def _policy_inputs(self) -> set[str]:
        """The env observation keys the policy depends on (through the frozen encoder, if there is one)."""
        return set(self.embedder.inputs if self.embedder is not None else self.agent.obs_keys)

    def saliency_record(self) -> dict[str, str]:
        """Where the saliency maps the policy reads came from: ``{"saliency": "none" | "picanet" | "oracle"}``
        (and the PiCANet checkpoint). "oracle" is privileged simulator state; the report marks such runs."""
        cfg = self.cfg
        source = cfg.saliency if "saliency" in self._policy_inputs() else "none"
        record = {"saliency": source}
        if source == "picanet":
            record["saliency_ckpt"] = cfg.saliency_ckpt
        return record

    def _observe(self, obs: dict[str, np.ndarray], for_policy: bool = False) -> dict[str, np.ndarray]:
        """Add what the loop derives from a frame: its online saliency map, then its frozen-encoder embedding.

        Training stores a map whenever the run has a saliency source; ``for_policy`` (evaluation) computes one
        only when the policy reads it.
        """
        if self._label is not None and (not for_policy or "saliency" in self._policy_inputs()):
            obs["saliency"] = self._label(obs["rgb"], obs["state"])  # [n, H, W] uint8
        if self.embedder is not None:
            self.embedder.add_to(obs)  # [n, D] float32, computed once per frame
        return obs

    def _observe_for_policy(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._observe(obs, for_policy=True)

    # -- the loop ------------------------------------------------------------------------------------

    def training_step(self, batch: Any, batch_idx: int) -> None:
        cfg, sac = self.cfg, self.cfg.sac
        if self.env_step >= cfg.num_steps:
            self.trainer.should_stop = True
            return
        before = self.env_step
        self._env_step()
        if self.env_step >= sac.learning_starts:
            if before < sac.learning_starts and sac.initial_updates > 0:
                # the burst: decided from the step count alone, so a resumed run never repeats it
                self._update_debt += sac.initial_updates
            else:
                self._update_debt += cfg.num_envs * sac.updates_per_step
            optimizers = SACOptimizers(*self.optimizers())
            while self._update_debt >= 1.0:
                self._update(optimizers)
                self._update_debt -= 1.0
        if cfg.eval.every > 0 and self.env_step >= self.next_eval:
            self._evaluate()
        if self.env_step // cfg.log_every > self._step_log // cfg.log_every:
            self._log_charts()
        if self.env_step >= cfg.num_steps:
            last = self.eval_history[-1]["step"] if self.eval_history else None
            if cfg.eval.final and last != self.env_step:
                self._evaluate()
            self.trainer.should_stop = True

    def _env_step(self) -> None:
        n = self.cfg.num_envs
        if self.env_step < self.cfg.sac.learning_starts:
            action = self.np_rng.uniform(-1.0, 1.0, (n, self.agent.action_dim)).astype(np.float32)
        else:
            obs = to_policy_obs(self._obs, self.agent.obs_keys, self.device)
            action = self.agent.act(obs).float().cpu().numpy()  # the one host sync per env step
        nxt, reward, terminated, truncated, info = self.envs.step(action)
        terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
        done = terminated | truncated
        success = done_info(info, "success", done)
        last = final_obs(nxt, info, done) if done.any() else dict(nxt)
        if self._label is not None or self.embedder is not None:
            # one batched call for the step's frames and the new episodes' first frames
            frames = self._observe({k: np.concatenate((last[k], nxt[k][done])) for k in ("rgb", "state")})
            nxt = dict(nxt)
            for k in frames.keys() - {"rgb", "state"}:
                last[k] = frames[k][:n]
                nxt[k] = np.empty_like(frames[k][:n])
                nxt[k][~done] = frames[k][:n][~done]
                nxt[k][done] = frames[k][n:]
        self.replay.step(action, reward, terminated, truncated, success, last)
        if done.any():
            self.replay.start({k: v[done] for k, v in nxt.items()}, streams=np.flatnonzero(done))
        self._obs = dict(nxt)
        self.rank_vector_steps += 1
        self.env_step = self.rank_vector_steps * n * self.world_size
        self._ep_return += reward
        self._ep_len += 1
        self._ep_success |= success > 0
        for i in np.flatnonzero(done):
            self._log(
                {
                    "charts/episodic_return": float(self._ep_return[i]),
                    "charts/episodic_length": int(self._ep_len[i]),
                    "charts/episodic_success": float(self._ep_success[i]),
                }
            )
        self._ep_return[done], self._ep_len[done], self._ep_success[done] = 0.0, 0, False

    def _update(self, optimizers: SACOptimizers) -> None:
        sac = self.cfg.sac
        batch = batch_to(self.replay.sample(sac.batch_size, self.np_rng), self.device)
        metrics = self.agent.update(
            batch, optimizers, self.num_updates, **sac.update_kwargs(), backward=self.manual_backward
        )
        self._metrics.update(metrics)  # keeps the actor's latest metrics through critic-only steps
        self.num_updates += 1

    # -- logging and evaluation ----------------------------------------------------------------------

    def _log(self, scalars: dict[str, float]) -> None:
        if self.logger is not None and self.rank == 0:
            self.logger.log_metrics(scalars, step=self.env_step)

    def _log_charts(self) -> None:
        now = time.perf_counter()
        dt = max(now - self._t_log, 1e-9)
        scalars = {
            "charts/sps": (self.env_step - self._step_log) / dt,
            "charts/updates_per_s": (self.num_updates - self._updates_log) / dt,
            "charts/num_updates": float(self.num_updates),
        }
        scalars.update({k: float(v) for k, v in self._metrics.items()})  # the only .item()s: every log_every steps
        self._log(scalars)
        self.log("sps", scalars["charts/sps"], prog_bar=True, logger=False, on_step=True)
        self.log("env_step", float(self.env_step), prog_bar=True, logger=False, on_step=True)
        self._t_log, self._step_log, self._updates_log = now, self.env_step, self.num_updates

    def _evaluate(self) -> None:
        every = self.cfg.eval.every
        self.next_eval = (self.env_step // every + 1) * every if every > 0 else 1 << 62
        if self.rank != 0 or self.evaluator is None:
            return
        was_training = self.agent.training
        self.agent.eval()
        result = self.evaluator.run(lambda obs: self.agent.act(obs, deterministic=True), self.device, self.env_step)
        self.agent.train(was_training)
        self.eval_history.append(result.record())
        self._log(
            {
                "eval/success_rate": result.success_rate,
                "eval/return": result.episode_return,
                "eval/episode_length": result.episode_length,
            }
        )
        if self.logger is not None and result.strip is not None:
            self.logger.experiment.add_image("eval/rollout", result.strip, self.env_step, dataformats="HWC")
        self._write_eval_json()

    def _write_eval_json(self) -> None:
        final = self.eval_history[-1] if self.eval_history else None
        atomic_write_json(
            self.run_dir / "eval.json",
            {
                "task": self.cfg.env.task,
                **self.saliency_record(),
                "env_step": self.env_step,
                "final": final,
                "curve": self.eval_history,
            },
        )

    # -- checkpoints ---------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        mine = {
            "vector_steps": self.rank_vector_steps,
            "update_debt": self._update_debt,
            "shards": self.replay.checkpoint() if self.replay is not None else [],
            "rng_python": _lists(random.getstate()),
            "rng_numpy": _lists(np.random.get_state()),
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "rng_sampler": self.np_rng.bit_generator.state,
        }
        checkpoint["visarl"] = {
            "env_step": self.env_step,
            "num_updates": self.num_updates,
            "next_eval": self.next_eval,
            "eval_history": self.eval_history,
            "settings": _plain(asdict(self.cfg)),
            "ranks": _gather(mine),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("visarl")
        if state is None:
            raise ValueError("not a visarl SAC checkpoint (no 'visarl' entry)")
        self.env_step = int(state["env_step"])
        self.num_updates = int(state["num_updates"])
        self.next_eval = int(state["next_eval"])
        self.eval_history = list(state["eval_history"])
        self._restored = state

    # -- the end -------------------------------------------------------------------------------------

    def on_train_end(self) -> None:
        digest = params_digest(self.agent)
        shards = self.replay.checkpoint() if self.replay is not None else []
        per_rank = _gather(
            {"rank": self.rank, "params_sha1": digest, "shards": shards, "transitions": len(self.replay.buffer)}
        )
        self.summary = {
            "env_step": self.env_step,
            "num_updates": self.num_updates,
            "world_size": self.world_size,
            **self.saliency_record(),
            "final_eval": self.eval_history[-1] if self.eval_history else None,
            "data_dir": str(self.data_dir),
            "ranks": per_rank,
        }
        if self.rank == 0:
            atomic_write_json(self.run_dir / "summary.json", self.summary)
        self.close()

    def close(self) -> None:
        """Close envs and the shard writer (idempotent; the runner calls it after a failure too)."""
        if self.replay is not None:
            self.replay.close()
        for thing in (self.envs, self.evaluator):
            if thing is not None:
                thing.close()
        self.envs = None
        self.evaluator = None


# -- RNG states as weights_only-loadable values -------------------------------------------------------


def _lists(state: Any) -> Any:
    """Tuples -> lists and numpy arrays -> lists, recursively (``torch.load(weights_only=True)`` reads those)."""
    if isinstance(state, np.ndarray):
        return state.tolist()
    if isinstance(state, (tuple, list)):
        return [_lists(x) for x in state]
    return state


def _tuples(state: Any) -> Any:
    if isinstance(state, list):
        return tuple(_tuples(x) for x in state)
    return state


def _numpy_state(state: list) -> tuple:
    kind, keys, pos, has_gauss, cached = state
    return kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class EnvStepCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint(save_last=True)`` triggered every ``every`` env steps and when training stops.

    Two changes to the stock callback: the trigger counts env steps (``trainer.global_step`` counts optimizer
    steps of all three optimizers under manual optimization), and ``last.ckpt`` is replaced atomically (written
    to a temporary name, then renamed), so a SIGKILL during a save leaves the previous checkpoint intact.
    """

    def __init__(self, dirpath: str | Path, every: int) -> None:
        super().__init__(dirpath=str(dirpath), save_last=True, save_top_k=0, enable_version_counter=False)
        self.every = int(every)
        self.next_step = self.every

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kw: Any) -> None:
        step = int(pl_module.env_step)
        if step >= self.next_step or trainer.should_stop:
            self.next_step = (step // self.every + 1) * self.every
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass  # the clock's epoch never ends; saving is driven by env steps only

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        path = Path(filepath)
        tmp = path.with_name(f".{path.name}.tmp")
        trainer.save_checkpoint(str(tmp), self.save_weights_only)  # every rank builds it; rank 0 writes
        if trainer.is_global_zero:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        trainer.strategy.barrier("EnvStepCheckpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = str(path)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "next_step": self.next_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.next_step = int(state_dict.get("next_step", self.every))
