"""`stage: saliency` (train PiCANet on annotations) and `stage: label` (predict a map for every stored frame).

    python -m visarl.fit --config conf/saliency/reach.yaml     # data/reach/annotations.h5 -> data/reach/picanet.pt
    python -m visarl.fit --config conf/label/reach.yaml        # data/reach/replay/*.h5 gain a `saliency` dataset

Saliency: a Lightning fit of :class:`SaliencyModule` on :class:`SaliencyDataModule` (ViSaRL Table III; the
split, augmentations and LR schedule are described there). The run directory gets TensorBoard events,
``checkpoints/last.ckpt`` (``--resume`` continues from it), ``picanet.pt`` (the selected weights as a plain
file: ``{"format": "visarl-picanet", "hparams", "state_dict"}``, read with ``torch.load(weights_only=True)``) and
``saliency.json`` (held-out metrics of the selected weights). ``selection: last`` (default) keeps the final
weights, so the held-out F-measure is not chosen on the frames it is reported on; ``selection: validation`` keeps
``checkpoints/best-*.ckpt``, the best max-F on a selection set carved from the training frames
(``selection_fraction``), never on the held-out ones. The weights are also copied to ``export_path`` (default
``data/<task>/picanet.pt``), where ``label`` and the RL stage find them from the task alone.

Label: every shard of ``data_dir`` is read whole, its frames go through :class:`PiCANetSaliency` in batches,
and the maps (uint8 ``[N, H, W]``, frame resolution) are added with :func:`visarl.data.shards.write_field`,
which copies the shard, adds the dataset and renames the copy over the original: an interrupted run leaves each
shard fully labelled or untouched. A rerun skips shards that already have the field, unless ``overwrite``; with
``overwrite`` and ``--resume`` it skips the shards this run already finished (``label_state.json``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visarl.config import ConfigError, RunConfig, choice
from visarl.core.io import atomic_copy, atomic_write_json
from visarl.core.log import get_logger
from visarl.core.progress import progress
from visarl.core.runtime import (
    build_trainer,
    checkpoint_callbacks,
    last_checkpoint,
    quiet_lightning,
    resume_checkpoint,
)
from visarl.data.shards import ShardError, ShardReader, default_data_dir, list_shards, write_field
from visarl.registry import RunContext, register_stage
from visarl.saliency.data import SaliencyDataModule, default_annotations, default_weights
from visarl.saliency.module import SaliencyModule
from visarl.saliency.online import PiCANetSaliency, resolve_device
from visarl.saliency.picanet import (
    DECODERS,
    IMAGENET_WEIGHTS,
    SALIENCY_LOSSES,
    PiCANet,
    load_picanet,
    save_picanet,
    side_strides,
)

log = get_logger(__name__)


@dataclass
class SaliencyConfig(RunConfig):
    """Train PiCANet on a task's annotations (ViSaRL Sec. III-C, Table III)."""

    stage: str = "saliency"
    task: str = "reach"
    """Task name; sets the default annotation and export paths."""
    annotations: str = ""
    """Annotation export to train on; default data/<task>/annotations.h5 (where `stage: annotate` writes it)."""
    export_path: str = ""
    """Where the best weights are copied for later stages; default data/<task>/picanet.pt; 'none' to skip."""
    input_size: int = 224
    """Side of the net's square input (paper: 224); frames are resized to it and predictions back."""
    decoder: str = "authors"
    """'authors' (ViSaRL authors' decoder: local cells at 28-112 px, none at 224, no global cells) or 'full'
    (PiCANet of Liu et al.: adds global cells on fc7 and conv5)."""
    width_mult: float = 1.0
    """Channel multiplier of the whole net (1.0: the paper's widths; small values for tests)."""
    local_hidden: int = 128
    """Hidden channels of the local attention's 7x7 logit conv (PiCANet: 128)."""
    fc6_dilation: int = 12
    """Dilation of fc6, full decoder only (PiCANet: 12 for 28 px maps; scale it down with input_size, e.g. 3 at 64)."""
    dropout: float = 0.5
    """Dropout after fc6, full decoder only (PiCANet: 0.5)."""
    backbone_weights: str = ""
    """VGG-16 encoder init: 'imagenet' (torchvision's weights via the torch hub cache; width_mult 1 only), a local
    torchvision VGG-16 state dict, or '' for random init (test-size nets). The paper configs use imagenet."""
    epochs: int = 1000
    """Training epochs (paper: 1000 on 30 frames)."""
    batch_size: int = 16
    """Frames per batch (paper: 16)."""
    lr: float = 3e-4
    """AdamW learning rate (paper: 3e-4)."""
    weight_decay: float = 0.005
    """AdamW weight decay (paper: 0.005)."""
    momentum: float = 0.9
    """AdamW beta1 (paper's 'momentum': 0.9)."""
    lr_decay: float = 0.1
    """Step LR decay factor (paper: 0.1)."""
    lr_decay_at: list[float] = field(default_factory=lambda: [0.35, 0.7])
    """Fractions of the epochs where the LR is multiplied by lr_decay (PiCANet's solver: 7k and 14k of 20k)."""
    side_weights: list[float] = field(default_factory=lambda: [0.5, 0.8, 0.8, 1.0])
    """Deep-supervision weights of the finest side outputs; coarser ones take the first (PiCANet)."""
    loss: str = "weighted_mse"
    """Per-side loss: 'weighted_mse' (the paper's WeightedMSE, Table III), 'bce' (PiCANet's, and what the authors'
    code trains with) or 'mse'. See docs/fidelity.md."""
    val_fraction: float = 0.2
    """Share of the annotated frames held out (paper: 20%); the split is fixed by the seed."""
    selection: str = "last"
    """Which weights are exported and reported: 'last' (the final epoch's; the authors save the final model too) or
    'validation' (the best max-F on a selection set taken from the training frames, never the held-out ones)."""
    selection_fraction: float = 0.2
    """Share of the training frames moved into the selection set when ``selection: validation``."""
    num_train: int = 0
    """Use only this many training frames (0 = all); the held-out frames stay the same (Table V sweep)."""
    color_jitter: list[float] = field(default_factory=lambda: [0.2, 0.2, 0.2, 0.02])
    """ColorJitter (brightness, contrast, saturation, hue) on training frames; zeros turn it off."""
    flip: bool = True
    """Random left-right mirror flip of frame and map together."""
    val_every: int = 10
    """Evaluate on the held-out frames (and maybe keep a best checkpoint) every this many epochs."""
    num_images: int = 6
    """Held-out frames shown in the TensorBoard image grid (0: no grid)."""
    num_workers: int = 0
    """DataLoader worker processes (0: load in the main process; the data is ~30 frames in memory)."""

    def __post_init__(self) -> None:
        choice("loss", self.loss, list(SALIENCY_LOSSES))
        choice("decoder", self.decoder, list(DECODERS))
        if self.input_size < 8 or self.input_size % 8:
            raise ConfigError(f"input_size: must be a positive multiple of 8, got {self.input_size}")
        for key in ("epochs", "batch_size", "val_every", "fc6_dilation", "local_hidden"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, key)}")
        choice("selection", self.selection, ["last", "validation"])
        if self.selection == "validation" and not 0 < self.selection_fraction < 1:
            raise ConfigError(f"selection_fraction: must be in (0, 1), got {self.selection_fraction}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction: must be in (0, 1), got {self.val_fraction}")
        if len(self.color_jitter) != 4 or min(self.color_jitter) < 0:
            raise ConfigError(
                f"color_jitter: need 4 values >= 0 (brightness, contrast, saturation, hue), got {self.color_jitter}"
            )
        if not 0 <= self.color_jitter[3] <= 0.5:
            raise ConfigError(f"color_jitter: hue must be in [0, 0.5], got {self.color_jitter[3]}")
        if self.backbone_weights == IMAGENET_WEIGHTS and self.width_mult != 1:
            raise ConfigError(
                f"backbone_weights: ImageNet VGG-16 weights fit width_mult 1 only, got width_mult={self.width_mult}; "
                "set backbone_weights='' (random init, as the tiny and quickstart configs do) or width_mult=1"
            )
        n_sides = len(side_strides(self.decoder))
        if not 1 <= len(self.side_weights) <= n_sides:
            raise ConfigError(
                f"side_weights: 1 to {n_sides} weights (the {self.decoder} decoder has {n_sides} side outputs), "
                f"got {self.side_weights}"
            )
        if self.trainer.max_epochs is not None and self.trainer.max_epochs != self.epochs:
            raise ConfigError("trainer.max_epochs: the saliency stage counts epochs with `epochs`; set that instead")

    def net_kwargs(self) -> dict[str, Any]:
        """The :class:`PiCANet` constructor's numbers from this config."""
        return {
            "input_size": self.input_size,
            "decoder": self.decoder,
            "width_mult": self.width_mult,
            "local_hidden": self.local_hidden,
            "fc6_dilation": self.fc6_dilation,
            "dropout": self.dropout,
        }


def check_saliency(cfg: SaliencyConfig) -> None:
    """The annotations must exist before the run directory is created."""
    ann_path = Path(cfg.annotations) if cfg.annotations else default_annotations(cfg.task)
    if not ann_path.is_file():
        raise ConfigError(
            f"annotations: {ann_path} does not exist; run `stage: annotate` for task {cfg.task!r} or set annotations="
        )


@register_stage("saliency", SaliencyConfig, check=check_saliency)
def run_saliency(cfg: SaliencyConfig, ctx: RunContext) -> dict[str, Any]:
    """Fit PiCANet, select its weights (``selection``), export ``picanet.pt``; returns the held-out metrics."""
    check_saliency(cfg)
    ann_path = Path(cfg.annotations) if cfg.annotations else default_annotations(cfg.task)
    dm = SaliencyDataModule(
        ann_path,
        batch_size=cfg.batch_size,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        num_train=cfg.num_train,
        color_jitter=cfg.color_jitter,
        flip=cfg.flip,
        num_workers=cfg.num_workers,
        select_fraction=cfg.selection_fraction if cfg.selection == "validation" else 0.0,
    )
    try:
        dm.setup()
    except ValueError as e:
        raise ConfigError(f"annotations: {e}") from e

    try:
        net = PiCANet(**cfg.net_kwargs(), backbone_weights=cfg.backbone_weights or None)
    except ValueError as e:  # a missing or foreign weights file, or ImageNet weights offline with nothing cached
        raise ConfigError(f"backbone_weights: {e}") from e
    module = SaliencyModule(
        net,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        betas=(cfg.momentum, 0.999),
        lr_decay=cfg.lr_decay,
        lr_decay_at=tuple(cfg.lr_decay_at),
        side_weights=tuple(cfg.side_weights),
        loss=cfg.loss,
        num_images=cfg.num_images,
    )
    # With selection: validation, the validation epochs run on the selection frames and the best of them is kept;
    # with selection: last, they run on the held-out frames for the learning curves only.
    monitor = "val/f_max" if cfg.selection == "validation" else None
    callbacks = checkpoint_callbacks(
        ctx.run_dir, every_n_epochs=cfg.val_every, monitor=monitor, mode="max", best_filename="best-{epoch:04d}"
    )
    best_cb = callbacks[1] if len(callbacks) > 1 else None
    trainer = build_trainer(
        cfg.trainer,
        ctx.run_dir,
        callbacks=callbacks,
        max_epochs=cfg.epochs,
        check_val_every_n_epoch=cfg.val_every,
        num_sanity_val_steps=0,
    )
    resume_from = resume_checkpoint(ctx.run_dir, ctx.resume, "saliency")
    last = last_checkpoint(ctx.run_dir)
    t0 = time.perf_counter()
    with quiet_lightning():
        trainer.fit(module, datamodule=dm, ckpt_path=resume_from)
        train_s = time.perf_counter() - t0
        trainer.save_checkpoint(last, weights_only=False)  # the final state too, when epochs % val_every != 0

        # Held-out metrics of the final weights, then of the selected ones: never chosen on the held-out frames.
        dm.validate_on = "heldout"
        final = _validate(trainer, module, dm)
        best_path = best_cb.best_model_path if best_cb is not None else ""
        if best_path:
            state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
            module.load_state_dict(state)
            best = _validate(trainer, module, dm)
        else:
            best = final
    weights = save_picanet(module.net, ctx.run_dir / "picanet.pt") if trainer.is_global_zero else None
    summary: dict[str, Any] = {
        "annotations": str(ann_path),
        "train_frames": len(dm.train_idx),
        "selection_frames": len(dm.select_idx),
        "heldout_frames": len(dm.val_idx),
        "selection": cfg.selection,
        "input_size": cfg.input_size,
        "epochs": cfg.epochs,
        "train_seconds": train_s,
        "final": final,
        "best": best,  # the selected weights' held-out metrics (= final with selection: last)
        "best_checkpoint": best_path,
        "weights": str(weights) if weights else "",
    }
    if weights is not None and cfg.export_path != "none":
        export = Path(cfg.export_path) if cfg.export_path else default_weights(cfg.task)
        atomic_copy(weights, export)
        summary["export_path"] = str(export)
    if trainer.is_global_zero:
        atomic_write_json(ctx.run_dir / "saliency.json", summary)
        f, b = final, best
        log.info(
            f"saliency: held-out F(max/adaptive) {f['f_max']:.3f}/{f['f_adaptive']:.3f}, MAE {f['mae']:.4f} (final); "
            f"{b['f_max']:.3f}/{b['f_adaptive']:.3f}, {b['mae']:.4f} (selected: {cfg.selection}) -> {weights}"
        )
    return summary


def _validate(trainer: Any, module: Any, dm: Any) -> dict[str, float]:
    (res,) = trainer.validate(module, datamodule=dm, verbose=False)
    return {k.removeprefix("val/"): float(v) for k, v in res.items()}


@dataclass
class LabelConfig(RunConfig):
    """Predict a saliency map for every frame of a task's shards with a trained PiCANet."""

    stage: str = "label"
    task: str = "reach"
    """Task name; sets the default data_dir and checkpoint."""
    data_dir: str = ""
    """Shard directory to label; default data/<task>/replay."""
    checkpoint: str = ""
    """PiCANet weights (`picanet.pt` from `stage: saliency`); default data/<task>/picanet.pt."""
    field_name: str = "saliency"
    """Name of the per-frame dataset added to each shard."""
    batch_size: int = 64
    """Frames per inference batch."""
    overwrite: bool = False
    """Relabel shards that already have the field (otherwise they are skipped)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {self.batch_size}")
        choice("trainer.precision", self.trainer.precision, ["32", "32-true", "bf16-mixed", "16-mixed"])
        if not self.field_name.isidentifier():
            raise ConfigError(f"field_name: {self.field_name!r} is not a plain dataset name")

    def trainer_fields(self) -> frozenset[str]:
        """Labelling builds no Trainer: it reads the device, the precision and whether to show a progress bar."""
        return frozenset({"accelerator", "precision", "enable_progress_bar"})


def _label_inputs(cfg: LabelConfig) -> tuple[Path, list[Path], Path]:
    """The shard directory, its shards (each opened and validated) and the PiCANet weights; ConfigError if any is
    missing or unreadable."""
    data_dir = Path(cfg.data_dir) if cfg.data_dir else default_data_dir(cfg.task)
    try:
        shards = list_shards(data_dir)
    except ShardError as e:  # a truncated or foreign .h5 among the shards; the message names it
        raise ConfigError(f"data_dir: {e}") from e
    if not shards:
        raise ConfigError(f"data_dir: no shards in {data_dir}; run `stage: collect` first or set data_dir=")
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else default_weights(cfg.task)
    if not ckpt.is_file():
        raise ConfigError(f"checkpoint: {ckpt} does not exist; run `stage: saliency` first or set checkpoint=")
    return data_dir, shards, ckpt


def check_label(cfg: LabelConfig) -> None:
    """Shards and weights, checked before the run directory is created."""
    _, _, ckpt = _label_inputs(cfg)
    try:
        load_picanet(ckpt)
    except ValueError as e:
        raise ConfigError(f"checkpoint: {e}") from e


@register_stage("label", LabelConfig, check=check_label)
def run_label(cfg: LabelConfig, ctx: RunContext) -> dict[str, Any]:
    """Label every shard of ``data_dir``; returns counts and throughput."""
    from torch.utils.tensorboard import SummaryWriter  # lazy: --list-stages imports this module, not TensorBoard

    data_dir, shards, ckpt = _label_inputs(cfg)
    device = resolve_device(cfg.trainer.accelerator)
    try:
        source = PiCANetSaliency.from_checkpoint(ckpt, device=device, precision=cfg.trainer.precision)
    except ValueError as e:
        raise ConfigError(f"checkpoint: {e}") from e

    state_file = ctx.run_dir / "label_state.json"
    finished: set[str] = set()
    if ctx.resume and state_file.is_file():
        finished = set(json.loads(state_file.read_text())["finished"])
    todo, skipped = [], []
    for path in shards:
        reader = ShardReader(path)
        has = cfg.field_name in reader.fields
        if (has and not cfg.overwrite) or path.name in finished:
            skipped.append(path.name)
        else:
            todo.append((path, len(reader.frame_indices()), len(reader)))
        reader.close()
    total_rows = sum(n for _, _, n in todo)
    log.info(f"label: {len(todo)} shards ({total_rows} rows) to label, {len(skipped)} already labelled, on {device}")

    tb = SummaryWriter(str(ctx.run_dir))
    done_rows, t_infer = 0, 0.0
    t0 = time.perf_counter()
    bar = progress(total_rows, f"label {cfg.task}", "frame", cfg.trainer.enable_progress_bar)
    try:
        for path, _, n_rows in todo:
            reader = ShardReader(path)
            try:
                rgb = reader.read("rgb")  # [N, H, W, 3] uint8; every row, continuation duplicates included
            except ShardError as e:  # damaged inside a dataset: found only when read
                raise ConfigError(f"data_dir: {e}") from e
            finally:
                reader.close()
            maps = np.empty(rgb.shape[:3], dtype=np.uint8)
            for start in range(0, n_rows, cfg.batch_size):
                chunk = torch.from_numpy(rgb[start : start + cfg.batch_size]).permute(0, 3, 1, 2)
                ti = time.perf_counter()
                maps[start : start + len(chunk)] = source(chunk)[:, 0].cpu().numpy()
                t_infer += time.perf_counter() - ti
                bar.update(len(chunk))
                fps = (done_rows + start + len(chunk)) / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(fps=f"{fps:.1f}", refresh=False)
            write_field(path, cfg.field_name, maps, overwrite=cfg.overwrite)  # atomic: copy, add, rename
            done_rows += n_rows
            finished.add(path.name)
            atomic_write_json(state_file, {"finished": sorted(finished)}, indent=None)
            tb.add_scalar("label/fps", done_rows / max(time.perf_counter() - t0, 1e-9), done_rows)
    finally:
        bar.close()
        tb.close()
    elapsed = time.perf_counter() - t0
    summary = {
        "data_dir": str(data_dir),
        "checkpoint": str(ckpt),
        "device": str(device),
        "precision": cfg.trainer.precision,
        "labelled_shards": len(todo),
        "skipped_shards": len(skipped),
        "frames": done_rows,
        "fps": done_rows / elapsed if elapsed > 0 else 0.0,
        "inference_fps": done_rows / t_infer if t_infer > 0 else 0.0,
    }
    atomic_write_json(ctx.run_dir / "label.json", summary)
    log.info(f"label: {done_rows} frames in {len(todo)} shards, {summary['fps']:.1f} frames/s ({len(skipped)} skipped)")
    return summary
