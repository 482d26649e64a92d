"""What ``notebooks/analysis.ipynb`` shows, as tested functions: a pipeline run's outputs found and drawn.

A pipeline run (``stage: pipeline``, e.g. ``conf/quickstart.yaml``) puts every step's run at
``<pipeline dir>/<step>/run/`` and its datasets in ``<pipeline dir>/data/`` (or the pipeline's ``data_root``).
From there the notebook shows Table I and Figure 3 (the report step), annotated vs predicted saliency for a few
of the frames PiCANet was not trained on (ViSaRL Fig. 4 style, with F-measure and MAE per frame as in its Sec.
III-A), and MultiMAE reconstructions under three random masks (ViSaRL Fig. 6). Every expected file that is
absent raises :class:`FileNotFoundError` naming it and the step that writes it.

Figures are built as plain :class:`matplotlib.figure.Figure` objects (not through pyplot), so nothing here
touches pyplot's global state; a notebook displays one by making it the last expression of a cell. The stages'
modules are imported inside the functions that need them, so the notebook's first cell loads no Lightning.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from matplotlib.figure import Figure
from torch import Tensor

PIPELINE_ENV = "VISARL_PIPELINE_DIR"
"""Environment variable that overrides the notebook's ``PIPELINE_DIR`` (the tests point it at a tiny run)."""


@dataclass(frozen=True)
class PipelinePaths:
    """Where a pipeline run keeps what the notebook reads (none of them need to exist; see :func:`require`)."""

    root: Path
    """The pipeline's run directory (holds ``pipeline_state.json``)."""
    data: Path
    """The pipeline's datasets folder ({data} in its step overrides)."""
    table1_md: Path
    table1_csv: Path
    figure3: Path
    annotations: Path
    """The annotation export (frames and clicked maps), written by the annotate step."""
    picanet: Path
    """PiCANet weights, written by the saliency step."""
    saliency_run: Path
    """The saliency step's run directory (its config.yaml gives the held-out split)."""
    encoder: Path
    """MultiMAE checkpoint (decoders included), written by the pretrain step."""
    pretrain_run: Path
    replay: Path
    """HDF5 shards of collected (and, after the label step, labelled) frames."""


def _read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) if path.is_file() else None
    return data if isinstance(data, dict) else {}


def repo_root(start: str | Path | None = None) -> Path:
    """The visarl checkout containing ``start`` (default: the working directory), found by its ``conf/`` and
    ``visarl/`` folders; ``start`` itself if none. Jupyter starts kernels in the notebook's folder, so relative
    run paths are taken from here rather than from the working directory."""
    here = Path(start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "conf").is_dir() and (d / "visarl").is_dir():
            return d
    return here


def find_pipeline_dir(value: str | Path | None = None, runs_root: str | Path = "runs/quickstart") -> Path:
    """The pipeline run to open: ``value`` if given (relative paths from :func:`repo_root`), else the newest run
    under ``runs_root`` that has a ``pipeline_state.json``. FileNotFoundError naming what is missing."""
    root = repo_root()
    if value:
        path = Path(value).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_dir():
            raise FileNotFoundError(f"pipeline directory {path} does not exist (set PIPELINE_DIR or ${PIPELINE_ENV})")
        return path
    base = Path(runs_root) if Path(runs_root).is_absolute() else root / runs_root
    runs = sorted(base.glob("*/pipeline_state.json"), key=lambda p: p.stat().st_mtime) if base.is_dir() else []
    if not runs:
        raise FileNotFoundError(
            f"no pipeline run under {base} (run `python -m visarl.fit --config conf/quickstart.yaml`, "
            f"or set PIPELINE_DIR / ${PIPELINE_ENV})"
        )
    return runs[-1].parent


def pipeline_paths(
    pipeline_dir: str | Path,
    report_step: str = "report",
    saliency_step: str = "saliency",
    pretrain_step: str = "pretrain_rgb_sal",
) -> PipelinePaths:
    """The output paths of a pipeline run; step names as in ``conf/quickstart.yaml``.

    The datasets folder is the pipeline's ``data_root`` from its ``config.yaml`` when set, else ``<dir>/data``.
    """
    root = Path(pipeline_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"pipeline directory {root} does not exist")
    data_root = _read_yaml(root / "config.yaml").get("data_root") or ""
    data = Path(data_root) if data_root else root / "data"
    report, saliency, pretrain = (root / s / "run" for s in (report_step, saliency_step, pretrain_step))
    return PipelinePaths(
        root=root,
        data=data,
        table1_md=report / "table1.md",
        table1_csv=report / "table1.csv",
        figure3=report / "figure3.png",
        annotations=data / "annotations.h5",
        picanet=saliency / "picanet.pt",
        saliency_run=saliency,
        encoder=pretrain / "encoder.pt",
        pretrain_run=pretrain,
        replay=data / "replay",
    )


def require(path: Path, what: str) -> Path:
    """``path`` if it exists, else FileNotFoundError naming the file and ``what`` should have written it."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {what}")
    return path


def read_table1(paths: PipelinePaths) -> str:
    """Table I as markdown, as the report step wrote it."""
    return require(paths.table1_md, "Table I is written by the pipeline's report step").read_text()


# -- saliency: annotated vs predicted -------------------------------------------------------------------------


@dataclass
class SaliencyExamples:
    """A few annotated frames with PiCANet's prediction and per-frame scores."""

    indices: np.ndarray
    """int ``[N]``: rows of the annotation export."""
    heldout: np.ndarray
    """bool ``[N]``: the frame was in the saliency step's held-out split (False: trained on, or split unknown)."""
    frames: np.ndarray
    """uint8 ``[N, H, W, 3]``."""
    annotated: np.ndarray
    """float32 ``[N, H, W]`` in [0, 1]: the maps built from the clicks."""
    predicted: np.ndarray
    """float32 ``[N, H, W]`` in [0, 1]: PiCANet at frame resolution."""
    f_max: np.ndarray
    """float ``[N]``: each frame's max F-measure (beta^2 = 0.3) over thresholds."""
    mae: np.ndarray
    """float ``[N]``: each frame's mean absolute error."""


def heldout_split(paths: PipelinePaths, num_annotated: int) -> np.ndarray | None:
    """Rows of the annotation export the saliency step held out, from its config.yaml (seed, val_fraction) and
    :func:`visarl.saliency.data.split_indices`; None when that config is absent."""
    from visarl.saliency.data import split_indices

    cfg = _read_yaml(paths.saliency_run / "config.yaml")
    if "seed" not in cfg or "val_fraction" not in cfg:
        return None
    return split_indices(num_annotated, float(cfg["val_fraction"]), int(cfg["seed"]))[1]


def per_frame_scores(predicted: Tensor, target: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Max F-measure and MAE of each frame on its own (maps ``[N, H, W]`` in [0, 1]) with the training metrics."""
    from visarl.saliency.metrics import FMeasure, MeanAbsoluteError

    f, mae = [], []
    for p, t in zip(predicted, target, strict=True):
        fm, ma = FMeasure(), MeanAbsoluteError()
        fm.update(p[None], t[None])
        ma.update(p[None], t[None])
        f.append(float(fm.compute()["max"]))
        mae.append(float(ma.compute()))
    return np.array(f), np.array(mae)


def saliency_examples(paths: PipelinePaths, num_frames: int = 4) -> SaliencyExamples:
    """``num_frames`` annotated frames, held-out ones first (then training ones if too few were held out), with
    PiCANet's predictions from ``picanet.pt`` and their scores against the annotated maps."""
    from visarl.annotate.store import load_annotations
    from visarl.saliency.online import PiCANetSaliency

    ann = load_annotations(require(paths.annotations, "the annotation export is written by the annotate step"))
    source = PiCANetSaliency.from_checkpoint(require(paths.picanet, "PiCANet weights are written by the saliency step"))
    n = len(ann.frames)
    held = heldout_split(paths, n)
    is_held = np.zeros(n, bool)
    if held is not None:
        is_held[held] = True
    order = np.concatenate([np.flatnonzero(is_held), np.flatnonzero(~is_held)])[:num_frames]
    frames = ann.frames[order]  # [N, H, W, 3]
    pred = source.predict(torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous())[:, 0].cpu()  # [N, H, W]
    target = torch.from_numpy(ann.maps[order]).float()
    f_max, mae = per_frame_scores(pred, target)
    return SaliencyExamples(order, is_held[order], frames, target.numpy(), pred.numpy(), f_max, mae)


def saliency_comparison_figure(examples: SaliencyExamples, tile: float = 2.2) -> Figure:
    """One row per frame: frame | annotated map | predicted map | overlay (prediction over the frame)."""
    n = len(examples.indices)
    fig = Figure(figsize=(4 * tile, n * tile + 0.4), layout="constrained")
    axes = fig.subplots(n, 4, squeeze=False)
    for i in range(n):
        split = "held-out" if examples.heldout[i] else "train"
        row = axes[i]
        row[0].imshow(examples.frames[i])
        row[0].set_title(f"frame {examples.indices[i]} ({split})", fontsize=8)
        row[1].imshow(examples.annotated[i], cmap="hot", vmin=0, vmax=1)
        row[1].set_title("annotated", fontsize=8)
        row[2].imshow(examples.predicted[i], cmap="hot", vmin=0, vmax=1)
        row[2].set_title(f"predicted: F {examples.f_max[i]:.2f}, MAE {examples.mae[i]:.3f}", fontsize=8)
        row[3].imshow(examples.frames[i])
        # opacity follows the prediction, so the frame shows through where PiCANet sees nothing salient
        row[3].imshow(examples.predicted[i], cmap="jet", vmin=0, vmax=1, alpha=0.75 * examples.predicted[i])
        row[3].set_title("overlay (predicted)", fontsize=8)
        for ax in row:
            ax.set_axis_off()
    return fig


# -- MultiMAE reconstructions ---------------------------------------------------------------------------------


def reconstruction_inputs(paths: PipelinePaths, modalities: Sequence[str], num_frames: int = 3) -> dict[str, Tensor]:
    """``num_frames`` labelled frames as model inputs ``{modality: float [B, C, H, W] in [0, 1]}``, spread over the
    pretrain step's validation episodes (its seed and val_fraction; all frames if it kept none)."""
    from visarl.data.datamodules import FrameDataModule

    replay = require(paths.replay, "the frame shards are written by the collect step")
    cfg = _read_yaml(paths.pretrain_run / "config.yaml")
    dm = FrameDataModule(
        [str(replay)], seed=int(cfg.get("seed", 0)), val_fraction=float(cfg.get("val_fraction", 0.0)),
        keys=tuple(modalities),
    )  # fmt: skip
    dm.setup()
    frames = dm.val_set if dm.val_set is not None else dm.dataset
    picks = np.linspace(0, len(frames) - 1, min(num_frames, len(frames))).round().astype(int)
    batch = frames.__getitems__(picks.tolist())  # uint8 [B, C, H, W]
    return {m: batch[m].float() / 255.0 for m in modalities}


def reconstruction_columns(modalities: Sequence[str], num_masks: int) -> list[str]:
    """Column labels of :func:`visarl.mae.visualize.reconstruction_grid` (its column order)."""
    cols = list(modalities)
    for k in range(1, num_masks + 1):
        for m in modalities:
            cols += [f"mask {k}: {m}", f"{m} recon."]
    return cols


def reconstruction_figure(
    model: Any,
    inputs: dict[str, Tensor],
    num_masks: int = 3,
    num_visible: int | None = None,
    alpha: float = 1.0,
    norm_rgb: bool = True,
    seed: int = 0,
    pad: int = 2,
) -> Figure:
    """ViSaRL Fig. 6: per frame (row), the inputs, then for each of ``num_masks`` random masks each modality's
    masked input (hidden patches grey) and reconstruction. ``model`` is a :class:`visarl.mae.MultiMAE`;
    ``norm_rgb`` must match the pretrain config (it says how the rgb decoder's output maps back to pixels)."""
    from visarl.mae.loss import WeightedMSE
    from visarl.mae.visualize import reconstruction_grid

    loss_fn = WeightedMSE.for_model(model, norm_rgb=norm_rgb)
    gen = torch.Generator().manual_seed(seed)
    grid = reconstruction_grid(model, loss_fn, inputs, num_masks, num_visible, alpha, gen)  # [3, H', W']
    image = grid.permute(1, 2, 0).clamp(0, 1).numpy()
    b, _, h, w = next(iter(inputs.values())).shape
    labels = reconstruction_columns(model.modalities, num_masks)
    fig = Figure(figsize=(image.shape[1] / 60 + 0.5, image.shape[0] / 60 + 1.2), layout="constrained")
    ax = fig.subplots()
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([pad + c * (w + pad) + w / 2 for c in range(len(labels))], labels, rotation=60, fontsize=7)
    ax.set_yticks([pad + r * (h + pad) + h / 2 for r in range(b)], [f"frame {r}" for r in range(b)], fontsize=7)
    ax.tick_params(length=0)
    ax.set_title(f"MultiMAE reconstructions, {num_visible} visible tokens, {num_masks} random masks", fontsize=9)
    return fig


def load_reconstruction_model(paths: PipelinePaths) -> tuple[Any, dict[str, Any]]:
    """The pretrained MultiMAE (decoders included) and the pretrain step's config (num_visible, alpha, norm_rgb)."""
    from visarl.mae import load_model

    model = load_model(require(paths.encoder, "the MultiMAE checkpoint is written by the pretrain step")).eval()
    return model, _read_yaml(paths.pretrain_run / "config.yaml")


def env_pipeline_dir(default: str = "") -> str:
    """``$VISARL_PIPELINE_DIR`` if set, else ``default``."""
    return os.environ.get(PIPELINE_ENV) or default
