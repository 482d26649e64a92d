"""stage: saliency end to end at tiny size: split, augmentations, a falling loss, checkpoints, weights, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from visarl.config import ConfigError
from visarl.fit import run
from visarl.saliency.data import AnnotatedFrames, SaliencyDataModule, keypoint_annotations, split_indices
from visarl.saliency.picanet import PiCANet, load_picanet

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "conf" / "saliency" / "tiny.yaml")


@pytest.fixture(scope="module")
def replay(tmp_path_factory) -> Path:
    """Shards of a tiny random-policy collection."""
    root = tmp_path_factory.mktemp("saliency")
    run(str(REPO / "conf/collect/random_tiny.yaml"), [f"output_dir={root}/runs", "run=c", f"data_dir={root}/replay"])
    return root / "replay"


@pytest.fixture(scope="module")
def annotations(replay) -> Path:
    """20 frames, one click on each in-frame keypoint (gripper, puck, goal), maps with the default settings."""
    return keypoint_annotations(replay, replay.parent / "annotations.h5", num_frames=20, seed=0)


@pytest.fixture(scope="module")
def wide_annotations(replay) -> Path:
    """The same clicks with blobs 1.8x wider (sigma 10 px at 224 px: 2.9 px here): a net of test size learns to
    place these within the 20 epochs a test can afford; the default 1.6 px blobs need the paper-size training."""
    return keypoint_annotations(replay, replay.parent / "wide.h5", num_frames=20, seed=0, reference_size=224)


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets: intra-op threads only add overhead on a shared CPU
    yield
    torch.set_num_threads(n)


def test_keypoint_annotations_put_blobs_on_keypoints(annotations) -> None:
    from visarl.annotate.store import load_annotations

    ann = load_annotations(annotations)
    assert ann.frames.shape == (20, 64, 64, 3) and ann.maps.shape == (20, 64, 64)
    for clicks, m in zip(ann.clicks, ann.maps, strict=True):
        assert 1 <= len(clicks) <= 3  # gripper, puck, goal when in the frame
        for x, y in clicks:  # every click is a local peak of its map at height ~1
            assert m[int(round(y)), int(round(x))] > 0.85
    assert 0.002 < (ann.maps > 0.5).mean() < 0.05  # small blobs: sigma 10 px at 400 is 1.6 px here


def test_split_is_fixed_by_the_seed() -> None:
    train, val = split_indices(30, 0.2, seed=3)
    assert (len(train), len(val)) == (24, 6)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(30))
    again = split_indices(30, 0.2, seed=3)
    assert np.array_equal(again[1], val) and np.array_equal(again[0], train)
    assert not np.array_equal(split_indices(30, 0.2, seed=4)[1], val)
    assert [len(v) for _, v in (split_indices(n, 0.2, 0) for n in (2, 5, 10))] == [1, 1, 2]


def test_num_train_subsets_keep_the_heldout_frames(annotations) -> None:
    sets = {}
    for k in (4, 8, 0):
        dm = SaliencyDataModule(annotations, seed=1, num_train=k)
        dm.setup()
        sets[k] = (set(dm.train_idx.tolist()), set(dm.val_idx.tolist()))
    assert len(sets[4][0]) == 4 and len(sets[8][0]) == 8 and len(sets[0][0]) == 16
    assert sets[4][1] == sets[8][1] == sets[0][1] and len(sets[0][1]) == 4
    assert sets[4][0] < sets[8][0] < sets[0][0]  # nested: a smaller set is part of a larger one
    with pytest.raises(ValueError, match="num_train=17"):
        SaliencyDataModule(annotations, num_train=17).setup()


def test_flip_moves_frame_and_map_together() -> None:
    frames = np.zeros((1, 8, 8, 3), np.uint8)
    frames[0, 2, 1] = 255  # a marker pixel at (row 2, col 1)
    maps = np.zeros((1, 8, 8), np.float32)
    maps[0, 2, 1] = 1.0
    ds = AnnotatedFrames(frames, maps, augment=True, flip=True)
    torch.manual_seed(0)
    cols = set()
    for _ in range(40):
        s = ds[0]
        assert s["rgb"].dtype == torch.uint8 and s["rgb"].shape == (3, 8, 8)
        assert s["saliency"].shape == (1, 8, 8)
        marker = torch.nonzero(s["rgb"][0] == 255).tolist()
        peak = torch.nonzero(s["saliency"][0] == 1).tolist()
        assert marker == peak
        cols.add(peak[0][1])
    assert cols == {1, 6}  # both unflipped and mirrored draws happened


def test_color_jitter_changes_frames_not_maps() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    maps = rng.random((1, 16, 16)).astype(np.float32)
    ds = AnnotatedFrames(frames, maps, augment=True, color_jitter=(0.4, 0.4, 0.4, 0.1), flip=False)
    torch.manual_seed(0)
    outs = [ds[0] for _ in range(5)]
    assert any(not torch.equal(o["rgb"], torch.from_numpy(frames[0]).permute(2, 0, 1)) for o in outs)
    assert all(torch.equal(o["saliency"][0], torch.from_numpy(maps[0])) for o in outs)
    plain = AnnotatedFrames(frames, maps)[0]
    assert torch.equal(plain["rgb"], torch.from_numpy(frames[0]).permute(2, 0, 1))


@pytest.mark.parametrize("loss", ["weighted_mse", "bce"])
def test_training_loss_falls_and_heldout_error_drops(wide_annotations, loss: str) -> None:
    """20 epochs on 16 frames: the epoch loss falls well below the loss of a constant prediction (the maps' mean:
    the sides start near it, so only localising the blobs gets below it), and the held-out loss falls and max-F
    rises against the untrained net (and, with BCE, the held-out MAE falls)."""
    import lightning.pytorch as pl

    from visarl.saliency.module import SaliencyModule
    from visarl.saliency.picanet import deep_supervision_loss, side_strides

    pl.seed_everything(0, verbose=False)
    dm = SaliencyDataModule(wide_annotations, batch_size=8, seed=0)
    dm.setup()
    maps = dm.train_set.maps  # [16, 1, 64, 64]
    net = PiCANet(64, width_mult=1 / 16)  # the authors' decoder: sides at strides 8, 4, 2, 1
    constant = [torch.full((len(maps), 1, 64 // d, 64 // d), maps.mean().item()) for d in side_strides("authors")]
    constant_loss = deep_supervision_loss(constant, maps, kind=loss).item()
    module = SaliencyModule(net, lr=3e-3, loss=loss)
    losses: list[float] = []

    class Record(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            losses.append(float(trainer.callback_metrics["train/loss"]))

    trainer = pl.Trainer(
        max_epochs=20,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=100,
        callbacks=[Record()],
    )
    (before,) = trainer.validate(module, datamodule=dm, verbose=False)
    trainer.fit(module, datamodule=dm)
    (after,) = trainer.validate(module, datamodule=dm, verbose=False)
    assert len(losses) == 20 and np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.85 * constant_loss < losses[0], (losses, constant_loss)
    assert after["val/f_max"] > before["val/f_max"] + 0.05, (before, after)
    assert after["val/loss"] < before["val/loss"], (before, after)
    if loss == "bce":  # WeightedMSE weighs salient pixels up to 20x, trading background MAE for recall
        assert after["val/mae"] < before["val/mae"], (before, after)


def _scalars(run_dir: Path) -> tuple[dict[str, list[float]], set[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[float]] = {}
    images: set[str] = set()
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
        images |= set(acc.Tags()["images"])
    return scalars, images


def test_stage_end_to_end(annotations, tmp_path) -> None:
    export = tmp_path / "data" / "picanet.pt"
    summary = run(TINY, [f"output_dir={tmp_path}/runs", "run=a", f"annotations={annotations}", f"export_path={export}"])
    run_dir = tmp_path / "runs" / "tiny" / "a"
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "last.ckpt").is_file()
    # selection: last (the default): no best checkpoint, the final weights are exported and reported
    assert not list(ckpts.glob("best-*.ckpt")) and summary["best_checkpoint"] == "" and summary["selection"] == "last"
    assert summary["train_frames"] == 16 and summary["heldout_frames"] == 4 and summary["selection_frames"] == 0

    # The plain weights file: plain tensors and numbers, the final weights, the config's numbers.
    blob = torch.load(run_dir / "picanet.pt", weights_only=True)
    assert blob["format"] == "visarl-picanet"
    assert blob["hparams"]["input_size"] == 64 and blob["hparams"]["width_mult"] == 0.0625
    last_state = torch.load(ckpts / "last.ckpt", weights_only=True)["state_dict"]
    for k, v in blob["state_dict"].items():
        torch.testing.assert_close(v, last_state[f"net.{k}"])
    assert export.read_bytes() == (run_dir / "picanet.pt").read_bytes()
    net = load_picanet(export)
    assert isinstance(net, PiCANet) and not net.training
    from_ckpt = load_picanet(ckpts / "last.ckpt")  # the Lightning checkpoint itself loads too (weights_only)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(from_ckpt(x).final, net(x).final)

    # Metrics and images in TensorBoard; the summary's numbers are held-out metrics in range.
    scalars, images = _scalars(run_dir)
    for tag in ("train/loss", "train/lr", "val/f_max", "val/f_adaptive", "val/mae", "val/mae_soft", "val/loss"):
        assert tag in scalars and np.isfinite(scalars[tag]).all(), tag
    assert len(scalars["train/loss"]) == 4  # one per epoch
    assert "val/examples" in images
    saved = json.loads((run_dir / "saliency.json").read_text())
    for which in ("final", "best"):
        assert 0 <= saved[which]["f_max"] <= 1 and 0 <= saved[which]["mae"] <= 1
    assert saved["best"] == saved["final"]
    assert saved["final"]["f_max"] == pytest.approx(scalars["val/f_max"][1], abs=1e-6)  # epoch 4 on held-out


def test_selection_on_validation_never_uses_the_heldout_frames(annotations, tmp_path) -> None:
    base = [f"output_dir={tmp_path}/runs", f"annotations={annotations}", "export_path=none"]
    summary = run(TINY, [*base, "run=v", "selection=validation"])
    run_dir = tmp_path / "runs" / "tiny" / "v"
    # 20 frames: 4 held out as before; the 16 others give 3 selection frames and 13 training frames
    assert summary["heldout_frames"] == 4 and summary["selection_frames"] == 3 and summary["train_frames"] == 13
    best = list((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1 and summary["best_checkpoint"] == str(best[0])
    blob = torch.load(run_dir / "picanet.pt", weights_only=True)
    best_state = torch.load(best[0], weights_only=True)["state_dict"]
    for k, v in blob["state_dict"].items():  # the exported weights are the selected ones
        torch.testing.assert_close(v, best_state[f"net.{k}"])
    # the validation epochs during training scored the selection frames; the reported numbers the held-out ones
    scalars, _ = _scalars(run_dir)
    selection_scores = scalars["val/f_max"][:2]
    callbacks = torch.load(best[0], weights_only=False)["callbacks"]
    ckpt_score = next(float(v["best_model_score"]) for k, v in callbacks.items() if "'monitor': 'val/f_max'" in k)
    assert ckpt_score == pytest.approx(max(selection_scores), abs=1e-6)

    from visarl.saliency.data import SaliencyDataModule

    dm = SaliencyDataModule(annotations, select_fraction=0.2)
    dm.setup()
    plain = SaliencyDataModule(annotations)
    plain.setup()
    assert np.array_equal(dm.val_idx, plain.val_idx)  # the reported frames do not depend on the selection
    assert not set(dm.select_idx) & set(dm.val_idx) and not set(dm.select_idx) & set(dm.train_idx)
    assert sorted([*dm.select_idx, *dm.train_idx]) == sorted(plain.train_idx)
    with pytest.raises(ConfigError, match="selection"):
        run(TINY, [*base, "run=w", "selection=best"])


def test_resume_continues_from_last_checkpoint(annotations, tmp_path) -> None:
    base = [f"output_dir={tmp_path}/runs", f"annotations={annotations}", "export_path=none"]
    run(TINY, [*base, "run=r", "epochs=2", "val_every=4"])  # last.ckpt of the final epoch even so
    run_dir = tmp_path / "runs" / "tiny" / "r"
    first = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert first["global_step"] == 4  # 16 frames, batch 8: 2 steps an epoch
    run(resume=str(run_dir), overrides=["epochs=4"])
    second = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert second["global_step"] == 8 and second["epoch"] == first["epoch"] + 2
    scalars, _ = _scalars(run_dir)
    assert len(scalars["train/loss"]) == 4  # epochs 0-1, then 2-3: no epoch repeated


def test_bad_inputs_get_clear_errors(annotations, tmp_path) -> None:
    base = [f"output_dir={tmp_path}/runs", "export_path=none"]
    with pytest.raises(ConfigError, match=r"missing\.h5"):
        run(TINY, [*base, "run=a", f"annotations={tmp_path}/missing.h5"])
    foreign = tmp_path / "foreign.h5"
    foreign.write_bytes(b"not hdf5")
    with pytest.raises(ConfigError, match=r"foreign\.h5"):
        run(TINY, [*base, "run=b", f"annotations={foreign}"])
    with pytest.raises(ConfigError, match="input_size"):
        run(TINY, [*base, "run=c", "input_size=60"])
    with pytest.raises(ConfigError, match="epochs"):
        run(TINY, [*base, "run=d", "trainer.max_epochs=3"])
    with pytest.raises(ConfigError, match=r"backbone_weights: ImageNet VGG-16 weights fit width_mult 1 only"):
        run(TINY, [*base, "run=e", "backbone_weights=imagenet"])
    with pytest.raises(ConfigError, match="decoder"):
        run(TINY, [*base, "run=f", "decoder=global"])
    with pytest.raises(ConfigError, match="authors decoder has 4 side outputs"):
        run(TINY, [*base, "run=g", "side_weights=[1,1,1,1,1]"])
    with pytest.raises(ConfigError, match=r"backbone_weights: .*nothing\.pth"):
        run(TINY, [*base, "run=h", f"annotations={annotations}", f"backbone_weights={tmp_path}/nothing.pth"])
