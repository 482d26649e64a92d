"""`stage: annotate`: choose N frames of a task's shards and get a saliency map for each (ViSaRL Sec. III-B).

    python -m visarl.fit --config conf/annotate/reach.yaml              # a person clicks in the browser
    python -m visarl.fit --config conf/annotate/simulated_reach.yaml    # the simulated annotator, no server

``annotator: human`` serves the page (:mod:`visarl.annotate.server`) over the chosen frames, prints its URL and
blocks until the annotator presses Done (or Ctrl-C), then exports. ``annotator: simulated`` clicks on the
projected keypoints (:mod:`visarl.annotate.simulated`). Both write through one
:class:`~visarl.annotate.store.AnnotationStore`, so the journal and the HDF5 export have one format, and both
follow one task guidance (:mod:`visarl.annotate.guidance`: what to click, and the parts that matter), which
the page shows and the simulated annotator obeys.

Where the files go: beside the replay they index, not in the run directory. By default the journal is
``<data_dir>/../annotations/<annotator_id>.jsonl`` and the export ``<data_dir>/../annotations.h5`` (for the
default data_dir, ``data/<task>/annotations/...`` and ``data/<task>/annotations.h5``). A person's clicks are
the costliest data in the pipeline: they must outlive runs, running the same command again must resume them
(no ``--resume`` with a timestamped run to remember), and the saliency stage finds them from the task alone.
The frame choice is deterministic given the seed and the shards, and the journal records the frames (shard
references and a hash of the pixels), so a restart with the same config reopens the same frames and a changed
config (seed, num_frames, selection, new shards) is refused with a message rather than mixed in.

The export's file attributes record how the frames were chosen (``selection``, ``seed``, ``feature_size``,
``num_frames``, ``data_dir``), who clicked (``annotator_kind``, ``annotator_id``, the simulated annotator's
settings as JSON) and the resolved stage config (``config``). The run directory gets ``annotate.json`` (the
summary), and ``server.json`` (URL, port) while the page is being served.
"""

from __future__ import annotations

import errno
import json
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visarl.annotate.guidance import Guidance, check_parts, task_guidance
from visarl.annotate.select import (
    SELECTION_METHODS,
    Coverage,
    FramePool,
    coverage,
    frame_pool,
    pixel_scale,
    select_indices,
)
from visarl.annotate.server import serve
from visarl.annotate.simulated import SimulatedConfig, frame_rng, from_config, project_keypoints
from visarl.annotate.store import AnnotationStore, load_annotations
from visarl.config import ConfigError, RunConfig, choice, to_yaml
from visarl.core.io import atomic_write_json
from visarl.core.log import get_logger
from visarl.core.maps import COMBINE, COMBINE_MODES, REFERENCE_SIZE, SIGMA, frame_sigma
from visarl.data.shards import default_data_dir
from visarl.registry import RunContext, register_stage

log = get_logger(__name__)

COVERAGE_MAX_FRAMES = 50_000
"""With selection=random, coverage is reported only up to this many frames: it reads and downsamples every frame,
a cost that grows with the dataset and buys nothing but the number."""
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass
class AnnotateConfig(RunConfig):
    """Annotate N frames of a task's shards with click saliency maps."""

    stage: str = "annotate"
    data_dir: str = ""
    """Shard directory; default data/<task>/replay."""
    task: str = ""
    """Task name; default: the shards' task attribute (one of task or data_dir is needed)."""
    num_frames: int = 30
    """Frames to annotate (paper: 30 per task)."""
    selection: str = "random"
    """'random' (seeded uniform, as the paper) or 'diverse' (greedy k-center on downsampled frames)."""
    guidance: str = ""
    """What to click, shown on the page; default: the task's entry in visarl.annotate.guidance."""
    parts: list[str] = field(default_factory=list)
    """Parts that matter (gripper, object, goal): click labels and simulated targets; default: the task's guidance."""
    context_radius: int = 3
    """Neighbouring steps of the same episode the page shows as read-only context, each side."""
    feature_size: int = 16
    """Side of the downsampled colour frames 'diverse' compares (and coverage is measured on)."""
    annotator: str = "human"
    """'human' (web page) or 'simulated' (clicks on projected keypoints)."""
    annotator_id: str = ""
    """Who clicks, also the journal's file name; default 'human' or 'simulated'."""
    host: str = "127.0.0.1"
    """Address the page is served on (loopback only unless changed on purpose)."""
    port: int = 8765
    """Port of the page; 0 picks a free one."""
    open_browser: bool = False
    """Open the page in the default browser."""
    display_size: int = 512
    """Largest size the page draws a frame at when it fits it to the window, in screen pixels (zoom goes beyond)."""
    sigma: float = SIGMA
    """Gaussian sigma of a click in pixels at reference_size (paper: 10)."""
    reference_size: float = REFERENCE_SIZE
    """Resolution sigma (and simulated.jitter_px) is stated at: 400, the authors' annotation page; 0 = frame pixels."""
    combine: str = COMBINE
    """How click Gaussians combine: 'sum' (the authors', normalised to peak 1) or 'max'."""
    store: str = ""
    """Click journal; default <data_dir>/../annotations/<annotator_id>.jsonl."""
    export: str = ""
    """HDF5 export the saliency stage reads; default <data_dir>/../annotations.h5."""
    simulated: SimulatedConfig = field(default_factory=SimulatedConfig)
    """Click model of annotator=simulated."""

    def trainer_fields(self) -> frozenset[str]:
        """Annotation builds no Trainer: ``trainer.*`` is refused."""
        return frozenset()

    def __post_init__(self) -> None:
        choice("selection", self.selection, SELECTION_METHODS)
        choice("annotator", self.annotator, ["human", "simulated"])
        choice("combine", self.combine, COMBINE_MODES)
        if self.num_frames < 1:
            raise ConfigError(f"num_frames: must be positive, got {self.num_frames}")
        if self.parts:
            try:
                check_parts(self.parts)
            except ValueError as e:
                raise ConfigError(f"parts: {e}") from None
        if self.context_radius < 0:
            raise ConfigError(f"context_radius: must be >= 0, got {self.context_radius}")
        if self.feature_size < 1 or self.display_size < 1:
            raise ConfigError(
                f"feature_size and display_size must be positive, got {self.feature_size}, {self.display_size}"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: {self.port} is not in 0..65535")
        if not self.sigma > 0 or self.reference_size < 0:
            raise ConfigError(f"sigma must be > 0 and reference_size >= 0, got {self.sigma}, {self.reference_size}")
        if not self.data_dir and not self.task:
            raise ConfigError("give task=<name> (shards in data/<task>/replay) or data_dir=<shard directory>")
        if self.annotator_id and not _SAFE_ID.fullmatch(self.annotator_id):
            raise ConfigError(
                f"annotator_id: {self.annotator_id!r} must be letters, digits, '_', '.', '-' "
                "(it names the journal file)"
            )


def _same_task(a: str, b: str) -> bool:
    from visarl.envs import resolve_task  # lazy: importing visarl.envs loads MuJoCo and picks its GL backend

    try:
        return resolve_task(a) == resolve_task(b)
    except ValueError:
        return a == b


def resolve_paths(cfg: AnnotateConfig) -> tuple[Path, Path, Path, str]:
    """``(data_dir, store, export, annotator_id)`` with the defaults filled in."""
    data_dir = Path(cfg.data_dir) if cfg.data_dir else default_data_dir(cfg.task)
    who = cfg.annotator_id or cfg.annotator
    home = data_dir.parent
    store = Path(cfg.store) if cfg.store else home / "annotations" / f"{who}.jsonl"
    export = Path(cfg.export) if cfg.export else home / "annotations.h5"
    return data_dir, store, export, who


@register_stage("annotate", AnnotateConfig)
def run_annotate(cfg: AnnotateConfig, ctx: RunContext) -> dict:
    """Choose the frames, collect clicks (person or simulated), export; returns the summary."""
    data_dir, store_path, export_path, who = resolve_paths(cfg)
    try:
        pool = frame_pool(data_dir)
    except ValueError as e:  # no shards, or shards of mixed frame sizes
        raise ConfigError(f"data_dir: {e}") from None
    attrs = pool.readers[0].attrs
    task = cfg.task or str(attrs.get("task", ""))
    for r in pool.readers:
        if task and r.attrs.get("task") and not _same_task(task, str(r.attrs["task"])):
            raise ConfigError(f"task: {task!r}, but shard {r.path} holds task {r.attrs['task']!r}")
    if len(pool) < cfg.num_frames:
        raise ConfigError(
            f"num_frames: asked for {cfg.num_frames} frames but {data_dir} holds only {len(pool)} distinct frames; "
            "collect more or lower num_frames"
        )

    t0 = time.perf_counter()
    cover = Coverage(float("nan"), float("nan"))
    if cfg.selection == "diverse" or len(pool) <= COVERAGE_MAX_FRAMES:
        features = pool.features(cfg.feature_size)  # [N, s*s*3] uint8
        idx = select_indices(pool, cfg.num_frames, cfg.selection, cfg.seed, features=features)
        cover = coverage(features, idx, pixel_scale(features))
    else:  # random over a large dataset: reading every frame only to report coverage is not worth it
        idx = select_indices(pool, cfg.num_frames, cfg.selection, cfg.seed)
    refs = pool.refs(idx)
    frames = pool.read("rgb", idx)  # [N, H, W, 3] uint8
    guide = task_guidance(task, cfg.guidance, cfg.parts)
    log.info(
        f"annotate: {cfg.num_frames} of {len(pool)} frames of {task or '?'} from {data_dir}, selection={cfg.selection} "
        f"seed={cfg.seed} (coverage: mean {cover.mean:.4f}, max {cover.max:.4f} RMS at {cfg.feature_size}px; "
        f"{time.perf_counter() - t0:.1f}s)",
    )

    export_attrs: dict[str, Any] = {
        "selection": cfg.selection,
        "seed": int(cfg.seed),
        "feature_size": int(cfg.feature_size),
        "num_frames": int(cfg.num_frames),
        "data_dir": str(data_dir),
        "annotator_kind": cfg.annotator,
        "annotator_id": who,
        "coverage_mean": cover.mean,
        "coverage_max": cover.max,
        "config": to_yaml(cfg),
    }
    common = dict(
        sigma=cfg.sigma,
        reference_size=cfg.reference_size or None,
        combine=cfg.combine,
        task=task,
        annotator=who,
        guidance=guide.text,
        parts=guide.parts,
    )
    log.info(f"annotate: guidance: {guide.text} (parts: {', '.join(guide.parts)})")
    if cfg.annotator == "simulated":
        export_attrs["simulated"] = json.dumps(asdict(cfg.simulated))
        states = pool.read("state", idx)  # [N, 39]
        _simulate(cfg, pool, frames, refs, states, store_path, export_path, common, export_attrs, task, guide)
    else:
        context = pool.context(idx, cfg.context_radius)
        _serve(cfg, ctx, frames, refs, store_path, export_path, dict(common, context=context), export_attrs)

    ann = load_annotations(export_path)
    counts = [len(c) for c in ann.clicks]
    summary = {
        "task": task,
        "data_dir": str(data_dir),
        "store": str(store_path),
        "export": str(export_path),
        "annotator": cfg.annotator,
        "annotator_id": who,
        "selection": cfg.selection,
        "seed": cfg.seed,
        "num_frames": cfg.num_frames,
        "frames_available": len(pool),
        "frames_annotated": int(ann.annotated.sum()),
        "frames_nothing_salient": int(ann.nothing_salient.sum()),
        "clicks": int(sum(counts)),
        "clicks_per_frame_mean": float(np.mean(counts)),
        "clicks_per_frame_std": float(np.std(counts)),
        "coverage_mean": None if np.isnan(cover.mean) else cover.mean,
        "coverage_max": None if np.isnan(cover.max) else cover.max,
    }
    atomic_write_json(ctx.run_dir / "annotate.json", summary)
    log.info(
        f"annotate: {summary['frames_annotated']}/{cfg.num_frames} frames annotated, {summary['clicks']} clicks; "
        f"export {export_path}",
    )
    return summary


def _simulate(
    cfg: AnnotateConfig,
    pool: FramePool,
    frames: np.ndarray,
    refs: list,
    states: np.ndarray,
    store_path: Path,
    export_path: Path,
    common: dict,
    export_attrs: dict,
    task: str,
    guide: Guidance,
) -> None:
    """Simulated clicks on the guidance's parts of every frame, through the store; a rerun adds only what a
    killed run left out."""
    missing = [str(r.path) for r in pool.readers if not r.attrs.get("camera") or not r.attrs.get("task")]
    if missing:
        raise ConfigError(f"annotator=simulated needs the shards' task and camera attributes; {missing} lack them")
    h, w = frames.shape[1:3]
    xy, visible, kinds, hands = project_keypoints(states, task, str(pool.readers[0].attrs["camera"]), h, w)
    jitter = frame_sigma(cfg.simulated.jitter_px, h, w, cfg.reference_size or None) if cfg.simulated.jitter_px else 0.0
    annotator = from_config(cfg.simulated, jitter, guide.parts)
    try:
        # No fsync per click (a simulated session is regenerated, not typed); the export is fsync-ed when written.
        store = AnnotationStore(store_path, frames, refs, fsync=False, export_attrs=export_attrs, **common)
    except ValueError as e:  # the journal belongs to other frames, or is damaged
        raise ConfigError(f"store: {e}") from None
    with store:
        for i in range(len(frames)):
            planned, labels = annotator.labelled_frame_clicks(
                xy[i], visible[i], kinds, hands[i], h, w, frame_rng(cfg.seed, i)
            )
            done = store.clicks(i)
            if len(done) > len(planned) or not np.allclose(done, planned[: len(done)]):
                log.info(f"annotate: frame {i} already holds other clicks in {store_path}; kept as they are")
                continue
            for (x, y), label in zip(planned[len(done) :], labels[len(done) :], strict=True):
                store.click(i, float(x), float(y), label=label)
        store.mark_done()
        store.export(export_path)


def _serve(
    cfg: AnnotateConfig,
    ctx: RunContext,
    frames: np.ndarray,
    refs: list,
    store_path: Path,
    export_path: Path,
    common: dict,
    export_attrs: dict,
) -> None:
    """Serve the page until Done or Ctrl-C; the run directory's server.json says where while it runs."""
    info = ctx.run_dir / "server.json"

    def ready(app: Any) -> None:
        log.info(f"\n    annotate: open {app.url}\n")
        atomic_write_json(info, {"url": app.url, "host": app.host, "port": app.port}, indent=None)

    log.info(f"annotate: clicks are saved to {store_path} as they happen; Done exports {export_path}")
    try:
        serve(
            frames,
            refs,
            store_path,
            cfg.host,
            cfg.port,
            export_path=export_path,
            stop_when_done=True,
            open_browser=cfg.open_browser,
            ready=ready,
            display_size=cfg.display_size,
            export_attrs=export_attrs,
            **common,
        )
    except OSError as e:
        if not isinstance(e, socket.gaierror) and e.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            raise
        raise ConfigError(f"cannot serve on {cfg.host}:{cfg.port} ({e}); pass port=0 for a free port") from None
    except ValueError as e:  # the journal belongs to other frames, or is damaged
        raise ConfigError(f"store: {e}") from None
    finally:
        info.unlink(missing_ok=True)
