"""Gather RL runs into (task, method, seed) results: final success and the success-rate learning curve.

A run is any directory holding a ``config.yaml`` whose ``stage`` is ``rl``. Its final success comes from
``eval.json`` (the last evaluation over ``eval.episodes`` rollouts); its curve from the TensorBoard event
files (tag ``eval/success_rate``), falling back to the curve stored in ``eval.json``. Runs that have not
finished an evaluation are reported as missing, never filled in.

A run whose policy read oracle saliency (keypoints projected from the simulator state: privileged information the
paper's method does not have) is its own row, its method name marked with :data:`ORACLE_MARK`. The source comes from
``eval.json``'s ``saliency`` record, or for runs written before it from the config's ``saliency`` key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from visarl.rl.encoders import PIXEL_VARIANTS

SUCCESS_TAG = "eval/success_rate"

# The paper's Table I (mean, std over 3 seeds of the success rate over 50 rollouts), for side-by-side columns.
PAPER_TABLE1: dict[str, dict[str, tuple[float, float]]] = {
    "CNN RGB": {
        "reach": (0.39, 0.13),
        "drawer-open": (0.18, 0.25),
        "faucet-open": (0.82, 0.02),
        "door-open": (0.42, 0.04),
    },
    "CNN Saliency": {
        "reach": (0.04, 0.01),
        "drawer-open": (0.04, 0.02),
        "faucet-open": (0.01, 0.01),
        "door-open": (0.10, 0.06),
    },
    "CNN RGB x Saliency": {
        "reach": (0.38, 0.05),
        "drawer-open": (0.09, 0.04),
        "faucet-open": (0.71, 0.16),
        "door-open": (0.22, 0.10),
    },
    "CNN RGBS": {
        "reach": (0.51, 0.07),
        "drawer-open": (0.48, 0.07),
        "faucet-open": (0.85, 0.01),
        "door-open": (0.48, 0.07),
    },
    "MMAE RGB": {
        "reach": (0.49, 0.03),
        "drawer-open": (0.83, 0.20),
        "faucet-open": (0.19, 0.03),
        "door-open": (0.35, 0.19),
    },
    "MMAE RGB+Saliency(PO)": {
        "reach": (0.48, 0.06),
        "drawer-open": (0.88, 0.21),
        "faucet-open": (0.40, 0.21),
        "door-open": (0.52, 0.08),
    },
    "MMAE RGB+Saliency": {
        "reach": (0.62, 0.05),
        "drawer-open": (0.94, 0.03),
        "faucet-open": (0.61, 0.16),
        "door-open": (0.64, 0.02),
    },
}
METHODS: tuple[str, ...] = tuple(PAPER_TABLE1)
"""Table I's rows, in the paper's order."""
TASKS: tuple[str, ...] = ("reach", "drawer-open", "faucet-open", "door-open")
"""Table I's columns, in the paper's order."""
ORACLE_MARK = "†"
"""Marks a Table I row (and its footnote) whose policy read oracle saliency."""
ORACLE_FOOTNOTE = (
    f"{ORACLE_MARK} Saliency from the oracle: keypoints projected from the simulator state, privileged information "
    "the paper's method (saliency predicted by PiCANet from the frame) does not have. Not comparable to the paper."
)
_READS_SALIENCY = ("CNN Saliency", "CNN RGB x Saliency", "CNN RGBS", "MMAE RGB+Saliency")
_CNN_VARIANTS = {
    "rgb": "CNN RGB",
    "saliency": "CNN Saliency",
    "rgb_x_saliency": "CNN RGB x Saliency",
    "rgbs": "CNN RGBS",
}


@dataclass
class RunResult:
    """One RL run, reduced to what Table I and Figure 3 need."""

    run_dir: Path
    task: str
    method: str
    seed: int
    final_success: float | None
    """Success rate of the last evaluation, None when the run has not evaluated yet."""
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    success: np.ndarray = field(default_factory=lambda: np.zeros(0))
    saliency: str = "none"
    """Source of the saliency maps the policy read: none, picanet or oracle (privileged)."""

    @property
    def label(self) -> str:
        """The row this run belongs to: its method, marked when the policy read oracle saliency."""
        return f"{self.method} {ORACLE_MARK}" if self.saliency == "oracle" else self.method


def short_task(task: str) -> str:
    """'reach-v3' -> 'reach' (Table I's names)."""
    return task[:-3] if task.endswith("-v3") else task


def _pretrained_modalities(ckpt: str) -> list[str] | None:
    """Modalities a MultiMAE checkpoint was pretrained on, read from its hparams (no unpickling)."""
    import torch

    try:
        blob = torch.load(ckpt, map_location="cpu", weights_only=True)
        return list(blob["hparams"]["modalities"])
    except Exception:
        return None


def method_of(cfg: dict) -> str:
    """Table I's method name for the resolved ``config.yaml`` of an rl (or probe) run: its ``encoder``, ``variant``,
    ``modalities`` and ``encoder_ckpt`` fields."""
    encoder, variant = str(cfg.get("encoder")), str(cfg.get("variant", "rgb"))
    if encoder == "cnn":
        return _CNN_VARIANTS.get(variant, f"CNN {variant}")
    if encoder == "mmae":
        # the frozen encoder's inputs, as RLConfig.obs_keys: the modalities given, else the variant's
        used = list(cfg.get("modalities") or (PIXEL_VARIANTS[variant].obs_keys if variant in PIXEL_VARIANTS else []))
        if "saliency" in used:
            return "MMAE RGB+Saliency"
        ckpt = cfg.get("encoder_ckpt")
        pre = _pretrained_modalities(ckpt) if ckpt else None
        return "MMAE RGB+Saliency(PO)" if pre and "saliency" in pre else "MMAE RGB"
    return encoder


def read_scalars(run_dir: Path, tag: str = SUCCESS_TAG) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one scalar tag over every TensorBoard event file under ``run_dir``, sorted by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    for events in sorted(run_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags().get("scalars", []):
            for ev in acc.Scalars(tag):
                points[int(ev.step)] = float(ev.value)  # a resumed run rewrites a step: the later file wins
    steps = np.array(sorted(points), dtype=np.int64)
    return steps, np.array([points[s] for s in steps], dtype=np.float64)


def load_run(run_dir: Path) -> RunResult | None:
    """A RunResult for an rl run directory, or None when the directory is not an rl run."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        return None
    cfg = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=True)
    if not isinstance(cfg, dict) or cfg.get("stage") != "rl":
        return None
    task = short_task(str(cfg["env"]["task"]))
    final = None
    method = method_of(cfg)
    # Runs written before eval.json recorded the source: the config's, when the method reads saliency at all.
    saliency = str(cfg.get("saliency") or "none") if method in _READS_SALIENCY else "none"
    steps, success = read_scalars(run_dir)
    eval_path = run_dir / "eval.json"
    if eval_path.is_file():
        data = json.loads(eval_path.read_text())
        saliency = str(data.get("saliency", saliency))
        final_block = data.get("final") or {}
        if "success_rate" in final_block:
            final = float(final_block["success_rate"])
        curve = data.get("curve") or []
        if len(steps) == 0 and curve:
            steps = np.array([c["step"] for c in curve], dtype=np.int64)
            success = np.array([c["success_rate"] for c in curve], dtype=np.float64)
    return RunResult(run_dir, task, method, int(cfg.get("seed", 0)), final, steps, success, saliency)


def collect_results(roots: list[str | Path]) -> list[RunResult]:
    """Every rl run under the given directories."""
    results = []
    for root in roots:
        for cfg_path in sorted(Path(root).rglob("config.yaml")):
            result = load_run(cfg_path.parent)
            if result is not None:
                results.append(result)
    return results


# -- probes -------------------------------------------------------------------------------------------

PROBE_STATE = "State"
"""The probe's sanity row: behaviour cloning from the 39-d state the scripted expert itself reads."""


@dataclass
class ProbeResult:
    """One probe run (``stage: probe``): best and final success over its evaluations."""

    run_dir: Path
    task: str
    method: str
    seed: int
    final_success: float | None
    """Success rate of the evaluation at the last step, None while the probe has not reached it."""
    best_success: float | None
    seconds: float | None = None
    """Wall time of the probe's last session (demos, labels, embeddings, training and evaluations)."""


def load_probe(run_dir: Path) -> ProbeResult | None:
    """A ProbeResult for a probe run directory, or None when the directory is not a probe run."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        return None
    cfg = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=True)
    if not isinstance(cfg, dict) or cfg.get("stage") != "probe":
        return None
    task = short_task(str(cfg["env"]["task"]))
    method = PROBE_STATE if cfg.get("encoder") == "state" else method_of(cfg)
    final = best = seconds = None
    path = run_dir / "probe.json"
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("final"):
            final = float(data["final"]["success_rate"])
        if data.get("best"):
            best = float(data["best"]["success_rate"])
        seconds = (data.get("seconds") or {}).get("total")
    return ProbeResult(run_dir, task, method, int(cfg.get("seed", 0)), final, best, seconds)


def collect_probe_results(roots: list[str | Path]) -> list[ProbeResult]:
    """Every probe run under the given directories."""
    results = []
    for root in roots:
        for cfg_path in sorted(Path(root).rglob("config.yaml")):
            result = load_probe(cfg_path.parent)
            if result is not None:
                results.append(result)
    return results
