"""`stage: pretrain`: MultiMAE masked pretraining on replay frames (ViSaRL Sec. II-C, Table II).

``python -m visarl.fit --config conf/pretrain/rgb_saliency.yaml task=reach`` trains on the frames (rgb and the
saliency maps the ``label`` stage added) of ``data/<task>/replay`` and writes, in the run directory:

- ``config.yaml`` (by visarl.fit), TensorBoard events (``train/loss``, ``train/loss_<output>``, ``train/lr``,
  ``train/images_per_s``, ``val/...``, Figure-6 ``reconstructions`` grids every N epochs),
- ``checkpoints/last.ckpt`` (+ the best by ``val/loss``) for ``--resume``,
- ``encoder.pt``: a :func:`visarl.mae.save_checkpoint` file, rewritten on each new best ``val/loss`` and at the
  end (final weights); the RL stage loads it with :func:`visarl.mae.load_encoder`,
- ``summary.json``: epochs, steps, schedule, parameter count, final losses, and per-rank weight fingerprints.

``modalities: [rgb]`` is the rgb-only baseline (no saliency needed in the shards); ``[rgb, saliency]`` is ViSaRL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visarl.config import ConfigError, RunConfig, choice
from visarl.core.io import atomic_write_json
from visarl.core.log import get_logger
from visarl.core.runtime import build_trainer, checkpoint_callbacks, quiet_lightning, resume_checkpoint
from visarl.data.shards import default_data_dir
from visarl.mae.augment import PairedAugment
from visarl.mae.frozen import save_checkpoint
from visarl.mae.loss import LOSS_KINDS, REDUCTIONS, ReconstructionLoss
from visarl.mae.masking import MASK_RATIO, default_visible
from visarl.mae.multimae import MODALITIES, NORM_SUFFIX, ModelConfig, MultiMAE, output_source
from visarl.registry import RunContext, register_stage

log = get_logger(__name__)

PAPER_EPOCHS = 200
"""Table II's epoch count (the text of Sec. II-C says 400; see conf/pretrain/rgb_saliency.yaml)."""


@dataclass
class OptimConfig:
    """AdamW and its schedule, as MultiMAE trains (Table II)."""

    base_lr: float = 1e-4
    """Table II's base learning rate: the peak is base_lr * batch_size * devices * nodes / lr_reference_batch."""
    lr_reference_batch: int | None = 256
    """Batch the base rate refers to: 256 (MultiMAE's definition, the one Table II cites); null: the per-device
    batch, i.e. peak = base_lr * devices * nodes (the authors' fork, 1e-4 on their one GPU)."""
    weight_decay: float = 0.05
    """AdamW decoupled weight decay (none on norms, biases, tokens and embeddings)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas (MultiMAE's default)."""
    warmup_lr: float = 1e-6
    """Learning rate at the first step; rises linearly to the peak over warmup_epochs."""
    warmup_epochs: float = 40
    """Warmup length in epochs (converted to optimiser steps)."""
    min_lr: float = 0.0
    """Where the per-step cosine decay heads after warmup."""

    def __post_init__(self) -> None:
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas: two numbers in [0, 1) expected, got {self.betas}")
        for key in ("base_lr", "warmup_lr", "min_lr", "weight_decay", "warmup_epochs"):
            if getattr(self, key) < 0:
                raise ConfigError(f"optim.{key}: must be >= 0, got {getattr(self, key)}")
        if self.base_lr <= 0:  # the schedule is a multiple of the peak rate
            raise ConfigError(f"optim.base_lr: must be positive, got {self.base_lr}")
        if self.lr_reference_batch is not None and self.lr_reference_batch <= 0:
            raise ConfigError(f"optim.lr_reference_batch: positive or null expected, got {self.lr_reference_batch}")


@dataclass
class AugmentConfig:
    """Training-frame augmentation, the same draw for every modality of an example (never applied to validation)."""

    crop: bool = True
    """Random resized crop: Table II's RandomResizedCrop (MultiMAE's DataAugmentationForMultiMAE). The paper is
    explicit, so it is on; the authors' fork trains without it (commented out in its dataset.py) and only flips:
    ``crop: false`` restores that."""
    crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])
    """Range of the crop's area as a fraction of the frame (MultiMAE/MAE: 0.2 to 1)."""
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333])
    """Range of the crop's aspect ratio (MultiMAE/MAE: 3/4 to 4/3)."""
    hflip: float = 0.5
    """Probability of a left-right flip of all modalities together (the authors' fork and MultiMAE: 0.5)."""

    def __post_init__(self) -> None:
        lo, hi = (self.crop_scale + [0, 0])[:2]
        if len(self.crop_scale) != 2 or not 0 < lo <= hi <= 1:
            raise ConfigError(f"augment.crop_scale: [lo, hi] with 0 < lo <= hi <= 1 expected, got {self.crop_scale}")
        if len(self.crop_ratio) != 2 or not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ConfigError(f"augment.crop_ratio: [lo, hi] with 0 < lo <= hi expected, got {self.crop_ratio}")
        if not 0 <= self.hflip <= 1:
            raise ConfigError(f"augment.hflip: a probability expected, got {self.hflip}")


@dataclass
class PretrainConfig(RunConfig):
    """Pretrain a MultiMAE on replay frames (Table II); trainer.max_epochs defaults to Table II's 200."""

    stage: str = "pretrain"
    task: str = "reach"
    """Task whose frames to use: data_dirs defaults to data/<task>/replay."""
    data_dirs: list[str] = field(default_factory=list)
    """Shard directories; empty means [data/<task>/replay]. Saliency must have been added by the label stage."""
    modalities: list[str] = field(default_factory=lambda: ["rgb", "saliency"])
    """Inputs and outputs: [rgb] is the rgb-only baseline, [rgb, saliency] ViSaRL."""
    batch_size: int = 512
    """Frames per optimiser step on each device."""
    cache: bool = True
    """Load the frames into memory once (200k 64x64 rgb + saliency frames: 3.3 GB)."""
    num_workers: int = 0
    """DataLoader worker processes (cached frames are a numpy gather away: 0 is usually enough)."""
    val_fraction: float = 0.02
    """Share of frames (whole episodes) held out for val/loss; 0 disables validation."""
    num_visible: int | None = None
    """Tokens the encoder sees, shared across modalities; null: (1 - mask_ratio) of all tokens, i.e. Table II's 32 of
    2 x 64 for rgb + saliency and 16 of 64 for rgb alone."""
    mask_ratio: float = MASK_RATIO
    """Share of tokens hidden when num_visible is null (Sec. II-B: "a high masking ratio m = 0.75")."""
    passes_per_epoch: int = 20
    """Passes over the training frames in one epoch: the authors' fork repeats its dataset 20 times per epoch
    (``__len__`` is 20 x frames), so Table II's 200 epochs and 40 warmup epochs count such epochs."""
    alpha: float = 1.0
    """Dirichlet concentration of the per-example split of visible tokens across modalities."""
    norm_rgb: bool = True
    """Per-patch normalised rgb targets (with model.norm_rgb_output it is the extra decoder that gets them)."""
    loss_weights: dict[str, float] = field(default_factory=dict)
    """Per-output loss weights (rgb, rgb_norm, saliency); unnamed outputs take the modality table's (saliency 10, as
    the authors' fork; the others 1)."""
    losses: dict[str, str] = field(default_factory=dict)
    """Per-output error, 'mse' or 'l1'; unnamed outputs take the modality table's (rgb mse, saliency l1, as the
    authors' fork; rgb_norm follows rgb)."""
    loss_reduction: str = "per_example"
    """'per_example': mean over each example's hidden pixels, then over examples (MultiMAE); 'pooled': over all
    hidden patches of the batch (MAE)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The network."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and learning-rate schedule."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Training-frame augmentation."""
    log_images_every_n_epochs: int = 10
    """Figure-6 reconstruction grids to TensorBoard every this many epochs (and after the last); 0: never."""
    num_log_images: int = 4
    """Frames (rows) in each grid."""

    def __post_init__(self) -> None:
        if self.trainer.max_epochs is None:
            self.trainer.max_epochs = PAPER_EPOCHS
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"modalities: a non-empty list of distinct names expected, got {self.modalities}")
        for m in self.modalities:
            choice("modalities[]", m, list(MODALITIES))
        if self.model.norm_rgb_output and "rgb" not in self.modalities:
            raise ConfigError("model.norm_rgb_output needs rgb in modalities")
        tokens = (self.model.image_size // self.model.patch_size) ** 2 * len(self.modalities)
        if not 0 <= self.mask_ratio < 1:
            raise ConfigError(f"mask_ratio: must be in [0, 1), got {self.mask_ratio}")
        if self.num_visible is None:  # filled in, so the resolved config names the number
            self.num_visible = default_visible(tokens, self.mask_ratio)
        if not 0 < self.num_visible <= tokens:
            raise ConfigError(
                f"num_visible: must be in [1, {tokens}] ({len(self.modalities)} modalities), got {self.num_visible}"
            )
        if self.batch_size <= 0 or self.num_workers < 0 or self.num_log_images < 0:
            raise ConfigError("batch_size must be positive, num_workers and num_log_images non-negative")
        if self.passes_per_epoch <= 0:
            raise ConfigError(f"passes_per_epoch: must be positive, got {self.passes_per_epoch}")
        choice("loss_reduction", self.loss_reduction, list(REDUCTIONS))
        for name, kind in self.losses.items():
            choice(f"losses.{name}", kind, list(LOSS_KINDS))
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction: must be in [0, 1), got {self.val_fraction}")
        if self.alpha <= 0:
            raise ConfigError(f"alpha: must be positive, got {self.alpha}")
        outputs = set(self.modalities) | ({"rgb" + NORM_SUFFIX} if self.model.norm_rgb_output else set())
        for key in ("loss_weights", "losses"):
            unknown = sorted(set(getattr(self, key)) - outputs)
            if unknown:
                raise ConfigError(f"{key}: {unknown} are not outputs of this model {sorted(outputs)}")

    def resolved_data_dirs(self) -> list[Path]:
        return [Path(d) for d in self.data_dirs] if self.data_dirs else [default_data_dir(self.task)]


def build_model(cfg: PretrainConfig, fused_attn: bool = True) -> MultiMAE:
    """The :class:`MultiMAE` a pretrain config describes."""
    return MultiMAE(tuple(cfg.modalities), **cfg.model.kwargs(), fused_attn=fused_attn)


def build_loss(cfg: PretrainConfig, model: MultiMAE) -> ReconstructionLoss:
    """The model's table loss, with the config's per-output weights and kinds on top."""
    loss_fn = ReconstructionLoss.for_model(model, norm_rgb=cfg.norm_rgb, reduction=cfg.loss_reduction)
    loss_fn.weights.update(cfg.loss_weights)
    for name, kind in cfg.losses.items():
        loss_fn.kinds[name] = kind
        if name == output_source(name) and name + NORM_SUFFIX in model.outputs and name + NORM_SUFFIX not in cfg.losses:
            loss_fn.kinds[name + NORM_SUFFIX] = kind  # rgb_norm follows rgb unless named
    return loss_fn


def build_augment(cfg: PretrainConfig) -> PairedAugment | None:
    """The training augmentation a config describes, or None when it does nothing."""
    a = cfg.augment
    if not a.crop and a.hflip == 0:
        return None
    return PairedAugment(a.crop, tuple(a.crop_scale), tuple(a.crop_ratio), a.hflip)


def build_datamodule(cfg: PretrainConfig) -> Any:
    """The FrameDataModule, set up now so that missing data or fields fail with a ConfigError before training."""
    from visarl.data.datamodules import FrameDataModule
    from visarl.data.shards import ShardError

    dirs = cfg.resolved_data_dirs()
    dm = FrameDataModule(
        [str(d) for d in dirs], cfg.batch_size, cfg.cache, cfg.num_workers, cfg.seed, cfg.val_fraction,
        keys=tuple(cfg.modalities),
    )  # fmt: skip
    try:
        dm.setup("fit")
    except (ShardError, FileNotFoundError) as e:
        raise ConfigError(f"pretrain data: {e}") from e
    except ValueError as e:  # e.g. too few episodes for a validation split
        raise ConfigError(f"pretrain data in {[str(d) for d in dirs]}: {e}") from e
    if cfg.passes_per_epoch > 1:
        # each frame passes_per_epoch times per epoch, in one shuffled order (the fork's 20 x dataset length)
        dm.train_set = dm.train_set.subset(np.tile(dm.train_set.ids, cfg.passes_per_epoch))
    size = dm.dataset.shapes["rgb" if "rgb" in dm.dataset.shapes else cfg.modalities[0]][-1]
    if size != cfg.model.image_size:
        raise ConfigError(
            f"frames in {[str(d) for d in dirs]} are {size}px but model.image_size is {cfg.model.image_size}"
        )
    return dm


def _fingerprint(model: torch.nn.Module) -> torch.Tensor:
    """Per-parameter sums in float64, ``[num_parameter_tensors]``: equal across ranks iff (practically) in sync."""
    return torch.stack([p.detach().double().sum() for p in model.parameters()])


def _callbacks(run_dir: Path, has_val: bool) -> list:
    import lightning.pytorch as pl

    class EncoderExport(pl.Callback):
        """``encoder.pt`` on each new best val/loss (after the sanity check) and at the end of training."""

        def __init__(self) -> None:
            self.best = float("inf")

        def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            val = trainer.callback_metrics.get("val/loss")
            if trainer.sanity_checking or val is None or float(val) >= self.best:
                return
            self.best = float(val)
            if trainer.is_global_zero:
                save_checkpoint(module.model, run_dir / "encoder.pt")

        def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            if trainer.is_global_zero:
                save_checkpoint(module.model, run_dir / "encoder.pt")

        def state_dict(self) -> dict[str, float]:
            return {"best": self.best}

        def load_state_dict(self, state: dict[str, float]) -> None:
            self.best = float(state.get("best", float("inf")))

    class RunRecord(pl.Callback):
        """Where fitting started (after a resume) and, gathered from every rank, weight and data fingerprints."""

        def __init__(self) -> None:
            self.start_epoch = self.start_step = 0
            self.fingerprints: list[list[float]] = []
            self.first_batch_sums: list[float] = []

        def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            self.start_epoch, self.start_step = trainer.current_epoch, trainer.global_step

        def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            fp = module.all_gather(_fingerprint(module.model).to(module.device))
            first = module.all_gather(
                torch.tensor(module.first_batch_sum or 0.0, dtype=torch.float64, device=module.device)
            )
            fp, first = fp.reshape(trainer.world_size, -1), first.reshape(trainer.world_size)
            self.fingerprints, self.first_batch_sums = fp.cpu().tolist(), first.cpu().tolist()

    ckpts = checkpoint_callbacks(
        run_dir, monitor="val/loss" if has_val else None, mode="min", best_filename="best-epoch{epoch:03d}"
    )
    return [*ckpts, EncoderExport(), RunRecord()]


@register_stage("pretrain", PretrainConfig)
def run_pretrain(cfg: PretrainConfig, ctx: RunContext) -> dict:
    """Train, export ``encoder.pt`` and return (and write) the run summary; see the module docstring."""
    from lightning.pytorch.accelerators import CUDAAccelerator

    from visarl.mae.module import MultiMAEModule

    run_dir = ctx.run_dir
    dm = build_datamodule(cfg)
    t = cfg.trainer
    ckpt_path = resume_checkpoint(run_dir, ctx.resume, "pretrain")
    callbacks = _callbacks(run_dir, dm.val_set is not None)
    record = callbacks[-1]  # (the Trainer adds callbacks of its own to the list)
    trainer = build_trainer(t, run_dir, callbacks=callbacks, limit_val_batches=None if dm.val_set is not None else 0)
    fused = (
        cfg.model.fused_attn if cfg.model.fused_attn is not None else isinstance(trainer.accelerator, CUDAAccelerator)
    )
    model = build_model(cfg, fused_attn=fused)
    module = MultiMAEModule(model, build_loss(cfg, model), cfg, build_augment(cfg))
    with quiet_lightning():
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    summary = {
        "run_dir": str(run_dir),
        "encoder": str(run_dir / "encoder.pt"),
        "modalities": list(cfg.modalities),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_encoder_parameters": sum(p.numel() for p in model.encoder.parameters()),
        "world_size": trainer.world_size,
        "start_epoch": record.start_epoch,
        "start_step": record.start_step,
        "epochs_completed": trainer.current_epoch,
        "global_step": trainer.global_step,
        "fused_attn": fused,
        "precision": t.precision,
        "schedule": module.schedule,
        "train_frames": len(dm.train_set) // cfg.passes_per_epoch,
        "passes_per_epoch": cfg.passes_per_epoch,
        "num_visible": cfg.num_visible,
        "val_frames": len(dm.val_set) if dm.val_set is not None else 0,
        "metrics": metrics,
        "rank_fingerprints": record.fingerprints,
        "rank_first_batch_sums": record.first_batch_sums,
    }
    if trainer.is_global_zero:
        atomic_write_json(run_dir / "summary.json", summary)
        steps, epochs = summary["global_step"], summary["epochs_completed"]
        log.info(f"pretrain: {steps} steps, {epochs} epochs; encoder at {summary['encoder']}")
    return summary
