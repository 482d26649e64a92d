"""The LightningModule that trains PiCANet on annotated frames (ViSaRL Table III, following PiCANet [8]).

Optimiser: AdamW (lr 3e-4, weight decay 0.005, beta1 = the table's momentum 0.9). LR decay 0.1 as PiCANet's own
solver applies it: a step decay by 0.1 at fixed fractions of training (its Caffe solver steps every 7000 of
20000 iterations, i.e. at 35% and 70%); here at ``lr_decay_at`` fractions of ``max_epochs``, stepped per epoch.
Loss: deep supervision over every cell's side output (:func:`deep_supervision_loss`) against the map resized
to the net's input size. Frames are resized up to the net's input size; for the metrics the prediction is
resized back down to frame resolution and compared with the map there.

Logged: ``train/loss``, ``train/lr``; on held-out frames ``val/loss``, ``val/f_adaptive``, ``val/f_max`` (the
F-measure with beta^2 = 0.3, adaptive threshold and max of the mean F curve over 256 levels) and ``val/mae``, all
as PySODMetrics defines them (:mod:`visarl.saliency.metrics`: against the target binarised at 128/255), plus
``val/mae_soft`` (against the soft target map); and an image grid per validation (rows: frame, target, prediction,
overlay) to TensorBoard as ``val/examples``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from visarl.saliency.metrics import GT_THRESHOLD, FMeasure, MeanAbsoluteError
from visarl.saliency.picanet import SALIENCY_LOSSES, PiCANet, deep_supervision_loss, to_frame_size, to_net_input


class SaliencyModule(pl.LightningModule):
    """Trains a given :class:`PiCANet`; batches are ``{"rgb": uint8 [B, 3, H, W], "saliency": [B, 1, H, W]}``."""

    def __init__(
        self,
        net: PiCANet,
        lr: float = 3e-4,
        weight_decay: float = 0.005,
        betas: tuple[float, float] = (0.9, 0.999),
        lr_decay: float = 0.1,
        lr_decay_at: Sequence[float] = (0.35, 0.7),
        side_weights: Sequence[float] = (0.5, 0.8, 0.8, 1.0),
        loss: str = "weighted_mse",
        num_images: int = 6,
    ) -> None:
        super().__init__()
        if loss not in SALIENCY_LOSSES:
            raise ValueError(f"loss must be one of {SALIENCY_LOSSES}, got {loss!r}")
        self.net = net
        self.save_hyperparameters(ignore=["net"])
        # The net's own numbers travel in the checkpoint, so it can be rebuilt without the config.
        self.hparams["net_hparams"] = dict(net.hparams)
        self.f_measure = FMeasure()
        self.mae = MeanAbsoluteError(target_threshold=GT_THRESHOLD)  # PySODMetrics' MAE: binarised target
        self.mae_soft = MeanAbsoluteError()
        self._examples: dict[str, Tensor] | None = None

    def forward(self, rgb: Tensor) -> Tensor:
        """uint8 frames ``[B, 3, H, W]`` -> predicted maps ``[B, 1, H, W]`` in [0, 1] at frame resolution."""
        out = self.net(to_net_input(rgb, self.net.input_size))
        return to_frame_size(out.final, rgb.shape[-2], rgb.shape[-1])

    def _loss(self, rgb: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        size = self.net.input_size
        out = self.net(to_net_input(rgb, size))
        t = target if target.shape[-2:] == (size, size) else to_frame_size(target, size, size)
        loss = deep_supervision_loss(out.sides, t, self.hparams.side_weights, self.hparams.loss)
        return loss, out.final

    def on_train_start(self) -> None:
        # A resumed run restores the scheduler's milestones from its checkpoint; recompute them from the current
        # epoch budget so that `--resume ... epochs=N` decays at the fractions of N.
        for cfg in self.trainer.lr_scheduler_configs:
            if isinstance(cfg.scheduler, torch.optim.lr_scheduler.MultiStepLR):
                cfg.scheduler.milestones = Counter(self._milestones())

    def _milestones(self) -> list[int]:
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        return sorted({max(1, round(f * epochs)) for f in self.hparams.lr_decay_at if 0 < f < 1})

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, _ = self._loss(batch["rgb"], batch["saliency"])
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["rgb"]))
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        rgb, target = batch["rgb"], batch["saliency"]
        loss, final = self._loss(rgb, target)
        pred = to_frame_size(final, rgb.shape[-2], rgb.shape[-1]).float()  # [B, 1, H, W] at frame resolution
        self.f_measure.update(pred, target)
        self.mae.update(pred, target)
        self.mae_soft.update(pred, target)
        self.log("val/loss", loss, on_step=False, on_epoch=True, batch_size=len(rgb))
        n = self.hparams.num_images
        if batch_idx == 0 and n > 0:
            self._examples = {"rgb": rgb[:n].detach(), "target": target[:n].detach(), "pred": pred[:n].detach()}

    def on_validation_epoch_end(self) -> None:
        f = self.f_measure.compute()
        self.log_dict(
            {
                "val/f_adaptive": f["adaptive"],
                "val/f_max": f["max"],
                "val/mae": self.mae.compute(),
                "val/mae_soft": self.mae_soft.compute(),
            }
        )
        for metric in (self.f_measure, self.mae, self.mae_soft):
            metric.reset()
        if self._examples is not None and not self.trainer.sanity_checking:
            self._log_examples(**self._examples)
        self._examples = None

    def _log_examples(self, rgb: Tensor, target: Tensor, pred: Tensor) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return  # no TensorBoard logger
        experiment.add_image("val/examples", example_grid(rgb, target, pred), self.current_epoch)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        decay, no_decay = [], []
        for p in self.net.parameters():
            # No decay on biases (the PiCANet solver's decay_mult 0) nor on BatchNorm scales (usual with AdamW).
            (no_decay if p.ndim <= 1 else decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr,
            betas=tuple(hp.betas),
        )
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=self._milestones(), gamma=hp.lr_decay)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def example_grid(rgb: Tensor, target: Tensor, pred: Tensor) -> Tensor:
    """Image grid ``[3, 4*H + pad, N*W + pad]`` in [0, 1]: rows of frames, target maps, predicted maps, and the
    prediction overlaid on the frame (dimmed frame, prediction in red)."""
    from torchvision.utils import make_grid

    frame = rgb.float().cpu() / 255.0  # [N, 3, H, W]
    t = target.float().cpu().clamp(0, 1).expand(-1, 3, -1, -1)
    p = pred.float().cpu().clamp(0, 1).expand(-1, 3, -1, -1)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    overlay = 0.5 * frame * (1 - p[:, :1]) + p[:, :1] * red + 0.5 * frame * p[:, :1]
    return make_grid(torch.cat([frame, t, p, overlay.clamp(0, 1)]), nrow=len(frame), padding=2)
