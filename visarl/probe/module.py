"""The probe's LightningModule: behaviour cloning on in-memory demo rows, evaluated in the env every K steps.

Each ``training_step`` draws a batch of demo rows with a generator seeded by (seed, step), so a resumed run draws
the same batches it would have drawn, and minimises the MSE to the expert's actions. Lightning's batches are only
a clock (as in the SAC loop). A :class:`ProbeEvaluation` callback evaluates after the optimizer step of every
``eval_every``-th step and of the last one; the checkpoint callback runs after it, so a checkpoint taken at an
evaluation step already holds that evaluation. ``probe.json`` is rewritten after each evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from visarl.core.io import atomic_write_json
from visarl.probe.policy import BCPolicy
from visarl.rl.evaluate import Evaluator
from visarl.rl.module import EnvStepCheckpoint, _seed


@dataclass
class ProbeSettings:
    """Plain values the module needs (the stage runner fills them from the config)."""

    steps: int
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    cosine: bool = True
    """Decay the learning rate to 0 over ``steps`` (cosine)."""
    eval_every: int = 1000
    seed: int = 0
    run_dir: str = "."
    info: dict[str, Any] | None = None
    """Extra keys written into probe.json (task, method, demo statistics)."""


def _to_tensor(x: np.ndarray) -> Tensor:
    """Shard layout -> model layout: images [N, H, W, C] -> [N, C, H, W], maps [N, H, W] -> [N, 1, H, W]."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.dtype == torch.uint8 and t.ndim == 4:
        return t.permute(0, 3, 1, 2).contiguous()
    if t.dtype == torch.uint8 and t.ndim == 3:
        return t.unsqueeze(1).contiguous()
    return t.float()


class BCProbe(pl.LightningModule):
    """Behaviour cloning of ``actions`` from ``obs`` (demo rows), with periodic env evaluation by ``evaluator``."""

    def __init__(
        self,
        policy: BCPolicy,
        settings: ProbeSettings,
        obs: dict[str, np.ndarray],
        actions: np.ndarray,
        evaluator: Evaluator | None,
    ) -> None:
        super().__init__()
        self.policy = policy
        self.settings = settings
        self._obs_np, self._actions_np = obs, actions
        self.evaluator = evaluator
        self.eval_history: list[dict[str, Any]] = []
        self.train_seconds = 0.0
        self.initial_bc_loss: float | None = None
        self.data: dict[str, Tensor] = {}
        self.actions = torch.zeros(0)

    def setup(self, stage: str) -> None:
        self.data = {k: _to_tensor(v) for k, v in self._obs_np.items()}
        self.actions = torch.from_numpy(np.ascontiguousarray(self._actions_np, dtype=np.float32))

    def configure_optimizers(self) -> Any:
        s = self.settings
        opt = torch.optim.AdamW(self.policy.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        if not s.cosine:
            return opt
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        t0 = time.perf_counter()
        s = self.settings
        g = torch.Generator().manual_seed(_seed(s.seed, int(self.global_step), "probe-batch"))
        idx = torch.randint(len(self.actions), (s.batch_size,), generator=g)
        obs = {k: v[idx].to(self.device) for k, v in self.data.items()}
        loss = F.mse_loss(self.policy(obs), self.actions[idx].to(self.device))
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        self.train_seconds += time.perf_counter() - t0
        return loss

    @torch.no_grad()
    def bc_loss(self) -> float:
        """MSE of the policy (eval mode) over every demo row."""
        was = self.policy.training
        self.policy.eval()
        losses = []
        for start in range(0, len(self.actions), 1024):
            obs = {k: v[start : start + 1024].to(self.device) for k, v in self.data.items()}
            target = self.actions[start : start + 1024].to(self.device)
            losses.append(F.mse_loss(self.policy(obs), target, reduction="sum").item())
        self.policy.train(was)
        return sum(losses) / max(1, self.actions.numel())

    def evaluate(self) -> dict[str, Any]:
        """Success over the evaluator's episodes at the current step; appended to the history and probe.json."""
        step = int(self.global_step)
        record: dict[str, Any] = {"step": step, "bc_loss": self.bc_loss()}
        if self.evaluator is not None:
            was = self.policy.training
            self.policy.eval()
            result = self.evaluator.run(self.policy.act, self.device, step)
            self.policy.train(was)
            record.update(result.record())
            if self.logger is not None:
                self.logger.log_metrics({"eval/success_rate": result.success_rate}, step=step)
                if result.strip is not None:
                    self.logger.experiment.add_image("eval/rollout", result.strip, step, dataformats="HWC")
        if self.logger is not None:
            self.logger.log_metrics({"eval/bc_loss": record["bc_loss"]}, step=step)
        self.eval_history = [r for r in self.eval_history if r["step"] != step] + [record]
        self.write_json()
        return record

    def summary(self) -> dict[str, Any]:
        evals = [r for r in self.eval_history if "success_rate" in r]
        best = max(evals, key=lambda r: (r["success_rate"], -r["step"])) if evals else None
        return {
            **(self.settings.info or {}),
            "step": int(self.global_step),
            "steps": self.settings.steps,
            "final": evals[-1] if evals and evals[-1]["step"] >= self.settings.steps else None,
            "best": best,
            "initial_bc_loss": self.initial_bc_loss,
            "curve": self.eval_history,
            "train_seconds": round(self.train_seconds, 2),
        }

    def write_json(self) -> None:
        atomic_write_json(Path(self.settings.run_dir) / "probe.json", self.summary())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["visarl_probe"] = {
            "eval_history": self.eval_history,
            "train_seconds": self.train_seconds,
            "initial_bc_loss": self.initial_bc_loss,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("visarl_probe")
        if state is None:
            raise ValueError("not a visarl probe checkpoint (no 'visarl_probe' entry)")
        self.eval_history = list(state["eval_history"])
        self.train_seconds = float(state["train_seconds"])
        self.initial_bc_loss = state.get("initial_bc_loss")


class ProbeEvaluation(pl.Callback):
    """Evaluates after the optimizer step of every ``every``-th step and of the last step (``steps``)."""

    def __init__(self, every: int, steps: int) -> None:
        self.every, self.steps = every, steps

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.global_step == 0 and not pl_module.eval_history:
            pl_module.initial_bc_loss = pl_module.bc_loss()  # the untrained policy's loss, for the curve's start
            pl_module.write_json()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = int(pl_module.global_step)
        if step >= self.steps or (self.every > 0 and step % self.every == 0):
            pl_module.evaluate()


class StepCheckpoint(EnvStepCheckpoint):
    """rl's atomic ``last.ckpt`` callback, triggered by optimizer steps (and at the last step)."""

    def __init__(self, dirpath: str | Path, every: int, steps: int) -> None:
        super().__init__(dirpath, every)
        self.steps = steps

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kw: Any) -> None:
        step = int(trainer.global_step)
        if step >= self.next_step or step >= self.steps:
            self.next_step = (step // self.every + 1) * self.every
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


ObserveFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
