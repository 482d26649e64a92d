"""The resume contract, one test over every stage that checkpoints (collect with policy sac_state, label, saliency,
pretrain, rl): a real ``python -m visarl.fit`` killed with SIGKILL after its second checkpoint and continued with
``--resume`` starts from its latest checkpoint, never from the best one, and finishes with what a run that was
never killed writes.

``collect`` is here twice: ``policy: sac_state`` (SAC checkpoints) and ``policy: random`` (the transitions of its
completed shards, ``collect_state.json``; ``scripted`` shares that code).

Label and pretrain are deterministic across a resume, so their outputs are compared value for value (pretrain's
every logged metric but throughput, every weight of encoder.pt). The others are compared by what is deterministic:
counters, step indices, dataset sizes, file names, tensor names and shapes.
- rl and collect: a resumed run resets its envs with a new seed so that it does not replay the episodes it already
  stored.
- saliency: the first data loader iterator of a resumed fit, with its shuffle and augmentations, draws from torch's
  global generator, which Lightning does not checkpoint.
Pretrain is made to plateau (a learning rate below float32 resolution, fixed validation masks) so that its best
checkpoint stays at epoch 0 while the latest moves on. Saliency (learning rate 0; its batch norms still move) is
killed only once its best checkpoint is older than its latest, which the seeded run reaches within its 8 epochs.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision.transforms  # noqa: F401  (before any rendering: Mesa's LLVM, then torchvision's, can crash)
from _label_helpers import tiny_weights, write_shards
from _resume_helpers import Start, fit_command, kill_when, read_checkpoint, record_fit_starts

from visarl.data.shards import ShardReader, dataset_info, list_shards
from visarl.fit import run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Progress = tuple[int, int]
"""(checkpoints written so far, the counter the latest one holds: env step, optimizer step or shards done)."""


@dataclass(frozen=True)
class Inputs:
    frames: Path  # shards of a tiny random collection
    labelled: Path  # the same with oracle saliency maps (pretrain's rgb + saliency input)
    annotations: Path  # keypoint clicks on 20 of those frames (saliency's input)
    label_shards: Path  # 8 shards of random frames to label
    picanet: Path  # an untrained PiCANet at 128 px: slow enough that label can be killed between shards


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    from visarl.mae.oracle import label_shards_with_oracle
    from visarl.saliency.data import keypoint_annotations

    root = tmp_path_factory.mktemp("resume_inputs")
    run("conf/collect/random_tiny.yaml", [f"output_dir={root}/runs", "run=c", f"data_dir={root}/frames"])
    shutil.copytree(root / "frames", root / "labelled")
    label_shards_with_oracle(root / "labelled")
    annotations = keypoint_annotations(root / "frames", root / "annotations.h5", num_frames=20, seed=0)
    write_shards(root / "label_shards", num_steps=128, rows_per_shard=16)
    return Inputs(
        root / "frames", root / "labelled", annotations, root / "label_shards", tiny_weights(root / "p.pt", 128)
    )


# ---------------------------------------------------------------- what each stage checkpoints and writes


def files(run_dir: Path, *skip: str) -> list[str]:
    """The run directory's files, less TensorBoard event files (one per process, so a resumed run has more) and
    the folders in ``skip`` (compared by content instead). Best checkpoints count, whatever their epoch."""
    return sorted(
        "checkpoints/best-*.ckpt" if p.name.startswith("best-") else str(p.relative_to(run_dir))
        for p in run_dir.rglob("*")
        if p.is_file() and not p.name.startswith("events.out.tfevents") and p.relative_to(run_dir).parts[0] not in skip
    )


def shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a torch file, by its dotted key."""

    def walk(obj: Any, prefix: str) -> dict[str, tuple[int, ...]]:
        if isinstance(obj, torch.Tensor):
            return {prefix: tuple(obj.shape)}
        if isinstance(obj, dict):
            return {k: v for key, val in obj.items() for k, v in walk(val, f"{prefix}.{key}").items()}
        return {}

    found = walk(torch.load(path, map_location="cpu", weights_only=True), "")
    assert found, f"no tensors in {path}"
    return found


def sac_progress(every: int) -> Callable[[Path], Progress | None]:
    def progress(run_dir: Path) -> Progress | None:
        ckpt = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
        if ckpt is None:
            return None
        step = int(ckpt["visarl"]["env_step"])
        return step // every, step

    return progress


def epoch_progress(run_dir: Path) -> Progress | None:
    """Lightning stages checkpoint after every epoch here (``val_every=1``)."""
    ckpt = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    return None if ckpt is None else (int(ckpt["epoch"]) + 1, int(ckpt["global_step"]))


def best_step(run_dir: Path) -> int | None:
    """The optimizer step of the best checkpoint, None while there is none (or it is being written)."""
    best = list((run_dir / "checkpoints").glob("best-*.ckpt"))
    ckpt = read_checkpoint(best[0]) if len(best) == 1 else None
    return None if ckpt is None else int(ckpt["global_step"])


def label_progress(run_dir: Path) -> Progress | None:
    state = run_dir / "label_state.json"
    if not state.is_file():
        return None
    done = len(json.loads(state.read_text())["finished"])
    return done, done


def collect_state_progress(run_dir: Path) -> Progress | None:
    state = run_dir / "collect_state.json"
    if not state.is_file():
        return None
    saved = json.loads(state.read_text())
    return int(saved["shards"]), int(saved["steps_written"])


def random_collect_outputs(run_dir: Path, own: Path) -> dict[str, Any]:
    info = dataset_info(own / "data")
    return {
        "files": files(run_dir),
        "transitions": (json.loads((run_dir / "collect.json").read_text())["transitions"], info.transitions),
        "fields": sorted(info.fields),
        "state": json.loads((run_dir / "collect_state.json").read_text())["steps_written"],
    }


def rl_outputs(run_dir: Path, own: Path) -> dict[str, Any]:
    summary = json.loads((run_dir / "summary.json").read_text())
    curve = json.loads((run_dir / "eval.json").read_text())["curve"]
    return {
        "files": files(run_dir, "replay"),
        "env_step": summary["env_step"],
        "num_updates": summary["num_updates"],
        "eval_steps": [c["step"] for c in curve],
        "transitions": dataset_info(run_dir / "replay").transitions,
        "last_ckpt_step": torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["visarl"]["env_step"],
    }


def collect_outputs(run_dir: Path, own: Path) -> dict[str, Any]:
    summary = json.loads((run_dir / "collect.json").read_text())
    info = dataset_info(own / "data")
    return {
        "files": files(run_dir),
        "counts": {k: summary[k] for k in ("transitions", "env_steps", "num_updates")},
        "transitions": info.transitions,
        "fields": sorted(info.fields),
    }


def saliency_outputs(run_dir: Path, own: Path) -> dict[str, Any]:
    summary = json.loads((run_dir / "saliency.json").read_text())
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return {
        "files": files(run_dir),
        "counts": {k: summary[k] for k in ("epochs", "train_frames", "selection_frames", "heldout_frames")},
        "metrics": {k: sorted(summary[k]) for k in ("final", "best")},
        "last": (last["epoch"], last["global_step"]),
        "weights": shapes(run_dir / "picanet.pt"),
    }


def pretrain_outputs(run_dir: Path, own: Path) -> dict[str, Any]:
    summary = json.loads((run_dir / "summary.json").read_text())
    encoder = torch.load(run_dir / "encoder.pt", map_location="cpu", weights_only=True)["state_dict"]
    return {
        "files": files(run_dir),
        "counts": {k: summary[k] for k in ("epochs_completed", "global_step", "train_frames", "val_frames")},
        "metrics": {k: v for k, v in summary["metrics"].items() if k != "train/images_per_s"},
        "encoder": {k: (tuple(v.shape), v.numpy().tobytes()) for k, v in encoder.items()},
    }


def label_outputs(run_dir: Path, own: Path) -> dict[str, Any]:
    maps = {p.name: ShardReader(p).read("saliency") for p in list_shards(own / "replay")}
    return {
        "files": files(run_dir),
        "finished": json.loads((run_dir / "label_state.json").read_text())["finished"],
        "maps": {name: (m.shape, m.dtype.str, m.tobytes()) for name, m in maps.items()},
    }


@dataclass(frozen=True)
class Stage:
    """One stage under the contract: how to run it at test size and read what it checkpointed and wrote."""

    config: str
    overrides: Callable[[Inputs, Path], list[str]]  # (inputs, the run's own scratch folder) -> overrides
    progress: Callable[[Path], Progress | None]  # run dir -> its latest checkpoint's Progress, None before one
    started: Callable[[list[Start], dict], int]  # (fit starts, resumed summary) -> the counter it resumed from
    outputs: Callable[[Path, Path], dict[str, Any]]  # (run dir, scratch folder) -> what a never-killed run matches
    best: Callable[[Path], int | None] | None = None  # run dir -> the best checkpoint's counter, where one is kept

    def ready_to_kill(self, run_dir: Path) -> bool:
        """Two checkpoints written and, where a best one is kept, the best older than the latest."""
        checkpoints, counter = self.progress(run_dir) or (0, 0)
        best = self.best(run_dir) if self.best is not None else -1
        return checkpoints >= 2 and best is not None and best < counter


def _label_overrides(inputs: Inputs, own: Path) -> list[str]:
    shutil.copytree(inputs.label_shards, own / "replay")  # label writes into its shards: each run its own copy
    return [f"data_dir={own / 'replay'}", f"checkpoint={inputs.picanet}", "batch_size=8"]


ZERO_LR = ["optim.base_lr=1e-30", "optim.warmup_lr=0", "optim.min_lr=0"]  # weights that never move: a plateau

STAGES = {
    "rl": Stage(
        "conf/rl/tiny.yaml",  # checkpoints every 20 env steps, evaluates every 30
        lambda i, own: ["num_steps=60"],
        sac_progress(20),
        lambda starts, summary: starts[0].env_step,
        rl_outputs,
    ),
    "collect": Stage(
        "conf/collect/sac_tiny.yaml",
        lambda i, own: [f"data_dir={own / 'data'}", "checkpoint_every=10"],
        sac_progress(10),
        lambda starts, summary: starts[0].env_step,
        collect_outputs,
    ),
    "collect_random": Stage(
        "conf/collect/random_tiny.yaml",  # 20-step episodes, 32 rows a shard: ~6 shards
        lambda i, own: [f"data_dir={own / 'data'}", "num_steps=180"],
        collect_state_progress,
        lambda starts, summary: summary["resumed_from"],
        random_collect_outputs,
    ),
    "saliency": Stage(
        "conf/saliency/tiny.yaml",
        lambda i, own: (
            [f"annotations={i.annotations}", "export_path=none", "epochs=8", "val_every=1"]
            + ["selection=validation", "lr=0", "num_images=0"]
        ),
        epoch_progress,
        lambda starts, summary: starts[0].global_step,
        saliency_outputs,
        best=best_step,
    ),
    "pretrain": Stage(
        "conf/pretrain/tiny.yaml",
        lambda i, own: [f"data_dirs=[{i.labelled}]", "trainer.max_epochs=6", "log_images_every_n_epochs=0", *ZERO_LR],
        epoch_progress,
        lambda starts, summary: summary["start_step"],
        pretrain_outputs,
        best=best_step,
    ),
    "label": Stage(
        "conf/label/tiny.yaml",
        _label_overrides,
        label_progress,
        lambda starts, summary: summary["skipped_shards"],  # shards finished before the kill are not redone
        label_outputs,
    ),
}


@pytest.mark.parametrize("name", list(STAGES))
def test_sigkill_after_the_second_checkpoint_then_resume(name, inputs, tmp_path, monkeypatch) -> None:
    stage = STAGES[name]
    runs = tmp_path / "runs"

    def start(run_name: str) -> tuple[Path, Path, list[str]]:
        own = tmp_path / run_name
        own.mkdir()
        overrides = [*stage.overrides(inputs, own), f"output_dir={runs}", f"run={run_name}"]
        return runs / Path(stage.config).stem / run_name, own, overrides

    killed_dir, killed_own, overrides = start("killed")
    kill_when(fit_command(stage.config, overrides), lambda: stage.ready_to_kill(killed_dir))
    _, saved = stage.progress(killed_dir)

    starts = record_fit_starts(monkeypatch)
    resumed = run(resume=str(killed_dir))
    assert stage.started(starts[:1], resumed) == saved  # from the latest checkpoint, not the best or the start

    never_dir, never_own, overrides = start("never")
    run(stage.config, overrides)
    assert stage.outputs(killed_dir, killed_own) == stage.outputs(never_dir, never_own)
