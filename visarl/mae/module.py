"""The MultiMAE pretraining LightningModule (ViSaRL Sec. II-C, Table II; MultiMAE's training loop).

The network and loss are passed in (plain nn.Modules); this module holds the step logic: uint8 frames to [0, 1]
floats on the device, the paired flip (or crop), Dirichlet masking, the reconstruction terms, AdamW with the
per-step warmup + cosine schedule, and logging (each loss term, lr, images/s, Figure-6 reconstruction grids).

Randomness (crops, masks) comes from one generator per rank seeded from ``(seed, rank, global_step)`` when each
training epoch starts, so DDP ranks draw different masks (as MultiMAE seeds ``seed + rank``) and a run resumed at an
epoch boundary draws what a run never stopped would have. Validation uses the same masks every epoch (a generator
reseeded from ``seed``), so ``val/loss`` compares weights, not mask luck.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from visarl.mae.augment import PairedAugment
from visarl.mae.loss import LossOutput, ReconstructionLoss
from visarl.mae.multimae import MultiMAE
from visarl.mae.optim import adamw, scaled_lr, warmup_cosine_lr
from visarl.mae.visualize import reconstruction_grid

if TYPE_CHECKING:
    from visarl.mae.stage import PretrainConfig


class MultiMAEModule(pl.LightningModule):
    """Masked multi-modal pretraining of ``model`` with ``loss_fn``; batches are dicts of uint8 ``[B, C, H, W]``.

    ``cfg`` is the pretrain config, read as is: ``batch_size``, ``num_visible``, ``alpha``, ``seed``, the image
    logging fields, ``optim`` and ``model.compile`` (the network itself is built from ``cfg.model`` by the caller).
    ``batch_size`` is per device: the peak learning rate is ``base_lr * batch_size * world_size / lr_reference_batch``
    (``lr_reference_batch=None``: divided by ``batch_size``, the authors' fork).
    ``log_images_every_n_epochs = 0`` turns the reconstruction grids off.
    """

    def __init__(
        self, model: MultiMAE, loss_fn: ReconstructionLoss, cfg: PretrainConfig, augment: PairedAugment | None = None
    ) -> None:
        super().__init__()
        self.model, self.loss_fn, self.augment = model, loss_fn, augment
        self.cfg = cfg
        self.num_visible, self.alpha, self.seed = cfg.num_visible, cfg.alpha, cfg.seed
        self.schedule: dict[str, float] = {}
        """peak_lr, total_steps, warmup_steps, steps_per_epoch: filled by :meth:`configure_optimizers`."""
        self._rng: torch.Generator | None = None
        self._viz_batch: dict[str, Tensor] | None = None
        self._last_batch_end: float | None = None
        self.first_batch_sum: float | None = None
        """Sum of this rank's first training batch (a DDP check that ranks see different data)."""

    # -- setup ----------------------------------------------------------------------------------------

    def configure_model(self) -> None:
        if self.cfg.model.compile and not getattr(self, "_compiled", False):
            # the encoder and decoders only: masking has data-dependent loops that would break the graph
            self.model.encoder.compile()
            for dec in self.model.decoders.values():
                dec.compile()
            self._compiled = True

    def on_train_epoch_start(self) -> None:
        # Masks and crops are drawn from a generator seeded by the step each epoch starts at, so a run resumed at an
        # epoch boundary draws what a run never stopped would have.
        self._rng = torch.Generator(device=self.device)
        self._rng.manual_seed(hash((self.seed, self.global_rank, self.global_step)) % (1 << 62))

    def on_train_start(self) -> None:
        # runs after a checkpoint's loops and optimiser were restored, so global_step is the resumed one
        # a resumed run restores the lr its checkpoint held; with a changed max_epochs that belongs to the old
        # schedule until the scheduler's next step, so set this step's value now
        sched = self.lr_schedulers()
        for group, base in zip(self.optimizers().param_groups, sched.base_lrs, strict=True):
            group["lr"] = base * self._lr_factor(self.global_step)

    def configure_optimizers(self) -> dict[str, Any]:
        trainer = self.trainer
        # max_epochs x batches per epoch, or max_steps if smaller (this call loads the train dataloader)
        total = int(trainer.estimated_stepping_batches)
        if trainer.train_dataloader is None:  # not loaded by the call above when only max_steps bounds the run
            trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches
        per_epoch = math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else total
        o, batch = self.cfg.optim, self.cfg.batch_size
        peak = scaled_lr(o.base_lr, batch * trainer.world_size, o.lr_reference_batch, batch)
        warmup = min(round(o.warmup_epochs * per_epoch), total)
        self.schedule = dict(peak_lr=peak, total_steps=total, warmup_steps=warmup, steps_per_epoch=per_epoch)
        opt = adamw(self.model, peak, o.weight_decay, tuple(o.betas))

        def factor(step: int) -> float:  # LambdaLR multiplies the peak (each group's initial lr) by this
            return warmup_cosine_lr(step, total, warmup, peak, o.warmup_lr, o.min_lr) / peak

        self._lr_factor = factor
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # -- steps ----------------------------------------------------------------------------------------

    def to_unit(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """uint8 frames -> float [0, 1], only the model's modalities."""
        return {
            m: batch[m].float() / 255.0 if batch[m].dtype == torch.uint8 else batch[m] for m in self.model.modalities
        }

    def _log_terms(self, prefix: str, loss: LossOutput, batch_size: int, **kw: Any) -> None:
        self.log(f"{prefix}/loss", loss.total, batch_size=batch_size, prog_bar=True, **kw)
        for name, term in loss.terms.items():
            self.log(f"{prefix}/loss_{name}", term, batch_size=batch_size, **kw)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        x = self.to_unit(batch)
        b = next(iter(x.values())).shape[0]
        if self.first_batch_sum is None:
            self.first_batch_sum = float(sum(v.double().sum() for v in x.values()))
        if self._viz_batch is None:
            self._viz_batch = {m: v[: self.cfg.num_log_images].detach().clone() for m, v in x.items()}
        if self.augment is not None:
            x = self.augment(x, self._rng)
        out = self.model(x, self.num_visible, self.alpha, generator=self._rng)
        loss = self.loss_fn(out.preds, x, out.masks)
        self._log_terms("train", loss, b)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=b)
        return loss.total

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Tensor], batch_idx: int) -> None:
        # throughput between consecutive batch ends: data, step and logging all count
        now = time.perf_counter()
        if self._last_batch_end is not None:
            images = next(iter(batch.values())).shape[0] * self.trainer.world_size
            self.log("train/images_per_s", images / max(now - self._last_batch_end, 1e-9), batch_size=1)
        self._last_batch_end = now

    def on_validation_epoch_start(self) -> None:
        self._val_rng = torch.Generator(device=self.device)
        self._val_rng.manual_seed(self.seed + 7919 * self.global_rank)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        x = self.to_unit(batch)
        b = next(iter(x.values())).shape[0]
        if batch_idx == 0:
            # preferred over training frames for the grids: held-out and never augmented
            self._viz_batch = {m: v[: self.cfg.num_log_images].detach().clone() for m, v in x.items()}
        out = self.model(x, self.num_visible, self.alpha, generator=self._val_rng)
        loss = self.loss_fn(out.preds, x, out.masks)
        self._log_terms("val", loss, b, sync_dist=True)
        return loss.total

    # -- images ---------------------------------------------------------------------------------------

    def on_train_epoch_end(self) -> None:
        self._last_batch_end = None  # the pause for validation is not training throughput
        n, epoch, max_epochs = self.cfg.log_images_every_n_epochs, self.current_epoch, self.trainer.max_epochs
        due = n > 0 and (epoch % n == 0 or (max_epochs is not None and epoch + 1 >= max_epochs))
        if not due or self._viz_batch is None or self.global_rank != 0:
            return
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return
        g = torch.Generator(device=self.device).manual_seed(self.seed)  # the same three masks every time
        grid = reconstruction_grid(self.model, self.loss_fn, self._viz_batch, 3, self.num_visible, self.alpha, g)
        experiment.add_image("reconstructions", grid.clamp(0, 1), self.global_step)
