"""`stage: pretrain` (visarl.mae.stage, visarl.mae.module): end to end on real frames, schedule, weight decay, crops,
DDP on 2 CPU processes, bf16-mixed, resume, and the RL-side loading of the exported encoder."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms  # noqa: F401  (before any rendering: Mesa's LLVM, then torchvision's, can crash)

import visarl.fit
from visarl.config import ConfigError
from visarl.mae import WeightedMSE, build_multimae, load_encoder, load_model, patchify, stage, unpatchify
from visarl.mae.augment import PairedAugment, PairedRandomResizedCrop, crop_resize, sample_crop_boxes
from visarl.mae.module import MultiMAEModule
from visarl.mae.optim import param_groups, scaled_lr, warmup_cosine_lr
from visarl.mae.visualize import reconstruction_grid

REPO = Path(__file__).resolve().parents[1]
TINY = "conf/pretrain/tiny.yaml"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Real Meta-World frames (the tiny collect config: 3 episodes of reach) as shards, without and with oracle
    saliency maps (keypoints projected from the stored states, drawn as annotation clicks)."""
    from visarl.mae.oracle import label_shards_with_oracle

    root = tmp_path_factory.mktemp("pretrain")
    visarl.fit.run("conf/collect/random_tiny.yaml", [f"data_dir={root}/raw", f"output_dir={root}/runs", "run=c"])
    shutil.copytree(root / "raw", root / "labelled")
    assert label_shards_with_oracle(root / "labelled") > 60
    return {"root": root, "raw": root / "raw", "labelled": root / "labelled"}


def tiny_run(data: dict[str, Path], run: str, *extra: str) -> tuple[dict, Path]:
    overrides = [f"data_dirs=[{data['labelled']}]", f"output_dir={data['root']}/runs", f"run={run}", *extra]
    return visarl.fit.run(TINY, overrides), data["root"] / "runs" / "tiny" / run


def scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for f in sorted(run_dir.glob("events.out.tfevents.*")):
        ea = EventAccumulator(str(f), size_guidance={"scalars": 0, "images": 0})
        ea.Reload()
        for tag in ea.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in ea.Scalars(tag)})
        for tag in ea.Tags()["images"]:
            out.setdefault("images/" + tag, {}).update({e.step: (e.height, e.width) for e in ea.Images(tag)})
    return out


def multimae_schedule(peak: float, total: int, warmup: int, start: float = 1e-6, final: float = 0.0) -> np.ndarray:
    """MultiMAE's per-step schedule written independently: np.linspace warmup, then the cosine over the rest."""
    warm = np.linspace(start, peak, warmup) if warmup > 0 else np.zeros(0)
    i = np.arange(total - warmup)
    return np.concatenate([warm, final + 0.5 * (peak - final) * (1 + np.cos(np.pi * i / len(i)))])


@pytest.fixture(scope="module")
def main_run(data) -> tuple[dict, Path]:
    return tiny_run(data, "main", "trainer.max_epochs=4")


# ---------------------------------------------------------------- end to end


def test_stage_end_to_end(main_run, data):
    summary, run_dir = main_run
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert summary["epochs_completed"] == 4 and summary["train_frames"] + summary["val_frames"] >= 60
    assert summary["val_frames"] > 0
    # encoder.pt holds the final weights (== last.ckpt's), loadable by the RL side's call
    enc = load_encoder(run_dir / "encoder.pt", ("rgb", "saliency"), "mean")
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for k, v in enc.encoder.state_dict().items():
        torch.testing.assert_close(v, ckpt["state_dict"][f"model.encoder.{k}"], rtol=0, atol=0)
    x = {"rgb": torch.rand(3, 3, 64, 64), "saliency": torch.rand(3, 1, 64, 64)}
    assert enc(x).shape == (3, 64) and not enc.training
    assert load_encoder(run_dir / "encoder.pt", ("rgb",), "mean")(x["rgb"]).shape == (3, 64)  # pretrain-only variant
    assert set(load_model(run_dir / "encoder.pt").outputs) == {"rgb", "saliency", "rgb_norm"}


def test_logs_every_term_and_figure6_grids(main_run):
    summary, run_dir = main_run
    logged = scalars(run_dir)
    for split in ("train", "val"):
        for term in ("loss", "loss_rgb", "loss_rgb_norm", "loss_saliency"):
            assert f"{split}/{term}" in logged, f"{split}/{term}"
    assert all(v > 0 for v in logged["train/images_per_s"].values())
    # one grid per epoch (every 1 in tiny.yaml): 2 rows of 2 originals + 3 masks x 2 modalities x (masked, pasted)
    grids = logged["images/reconstructions"]
    assert len(grids) == 4
    assert set(grids.values()) == {(2 * 66 + 2, 14 * 66 + 2)}


def test_lr_schedule_matches_multimae(main_run):
    summary, run_dir = main_run
    s = summary["schedule"]
    per_epoch = math.ceil(summary["train_frames"] / 16)
    assert s["steps_per_epoch"] == per_epoch and s["total_steps"] == 4 * per_epoch
    assert s["warmup_steps"] == per_epoch  # tiny.yaml: 1 warmup epoch
    assert s["peak_lr"] == pytest.approx(0.02 * 16 / 256)  # base lr x total batch / 256
    expect = multimae_schedule(s["peak_lr"], s["total_steps"], s["warmup_steps"])
    lr = scalars(run_dir)["train/lr"]
    assert sorted(lr) == list(range(s["total_steps"]))
    np.testing.assert_allclose([lr[i] for i in sorted(lr)], expect, rtol=1e-5)
    assert expect[0] == pytest.approx(1e-6) and expect.max() == pytest.approx(s["peak_lr"])


def test_loss_falls(main_run):
    val = scalars(main_run[1])["val/loss"]
    first, last = val[min(val)], val[max(val)]
    assert last < 0.8 * first, (first, last)


def test_resume_continues_the_epoch_count(main_run, data):
    _, run_dir = main_run
    copy = run_dir.parent / "resumed"
    shutil.copytree(run_dir, copy)
    before = json.loads((copy / "summary.json").read_text())
    summary = visarl.fit.run(resume=str(copy), overrides=["trainer.max_epochs=5"])
    per_epoch = before["schedule"]["steps_per_epoch"]
    assert summary["start_epoch"] == 4 and summary["start_step"] == 4 * per_epoch
    assert summary["epochs_completed"] == 5 and summary["global_step"] == 5 * per_epoch
    # the resumed steps follow the schedule of the new length from their first step on
    expect = multimae_schedule(before["schedule"]["peak_lr"], 5 * per_epoch, per_epoch)
    lr = scalars(copy)["train/lr"]
    resumed = range(4 * per_epoch, 5 * per_epoch)
    np.testing.assert_allclose([lr[i] for i in resumed], expect[4 * per_epoch :], rtol=1e-5)


def test_resume_after_a_plateau_continues_from_the_last_epoch(data):
    # A learning rate far below float32 resolution and validation masks fixed across epochs: val/loss is the same
    # every epoch, so only epoch 0 is ever a best. last.ckpt must still follow the last epoch, or --resume would
    # redo epochs 1 and 2.
    zero = ["optim.base_lr=1e-30", "optim.warmup_lr=0", "optim.min_lr=0", "log_images_every_n_epochs=0"]
    first, run_dir = tiny_run(data, "plateau", "trainer.max_epochs=3", *zero)
    val = scalars(run_dir)["val/loss"]
    assert len(set(val.values())) == 1, val  # the plateau this test is about
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["epoch"] == 2
    assert [p.name for p in (run_dir / "checkpoints").glob("best-*")] == ["best-epoch000.ckpt"]
    summary = visarl.fit.run(resume=str(run_dir), overrides=["trainer.max_epochs=4"])
    per_epoch = first["schedule"]["steps_per_epoch"]
    assert summary["start_epoch"] == 3 and summary["start_step"] == 3 * per_epoch
    assert summary["epochs_completed"] == 4


def test_resume_from_a_corrupt_checkpoint_is_a_clean_error(main_run, tmp_path, capsys):
    _, run_dir = main_run
    copy = tmp_path / "corrupt"
    shutil.copytree(run_dir, copy)
    last = copy / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    assert visarl.fit.main(["--resume", str(copy)]) == 2
    err = capsys.readouterr().err
    assert str(last) in err and "Traceback" not in err


def test_rgb_only_baseline_needs_no_saliency(data):
    summary, run_dir = tiny_run(
        {**data, "labelled": data["raw"]}, "rgb_only", "modalities=[rgb]", "trainer.max_epochs=1"
    )
    assert summary["modalities"] == ["rgb"]
    assert load_encoder(run_dir / "encoder.pt").modalities == ("rgb",)


def test_missing_saliency_is_a_clear_error(data):
    with pytest.raises(ConfigError, match=r"saliency.*label stage") as info:
        tiny_run({**data, "labelled": data["raw"]}, "no_saliency")
    assert str(data["raw"]) in str(info.value)


def test_ddp_two_cpu_processes_stay_in_sync(data):
    out = data["root"] / "ddp_runs"
    cmd = [
        sys.executable, "-m", "visarl.fit", "--config", TINY, f"data_dirs=[{data['labelled']}]", f"output_dir={out}",
        "run=ddp", "trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu", "trainer.max_epochs=2",
        "log_images_every_n_epochs=0",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in (out / "tiny").iterdir()] == ["ddp"]  # the second rank reopened rank 0's run
    summary = json.loads((out / "tiny" / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["schedule"]["peak_lr"] == pytest.approx(0.02 * 16 * 2 / 256)  # total batch = 16 x 2 devices
    first = summary["rank_first_batch_sums"]
    assert first[0] != first[1]  # the ranks trained on different frames...
    fp = summary["rank_fingerprints"]
    assert fp[0] == fp[1]  # ...and ended with identical weights
    saved = load_model(out / "tiny" / "ddp" / "encoder.pt")
    np.testing.assert_allclose(fp[0], [p.detach().double().sum().item() for p in saved.parameters()], rtol=1e-12)


def test_ddp_from_python_is_refused_with_advice(data):
    # Lightning would start the second rank by re-running this process's command line (pytest here)
    with pytest.raises(ConfigError, match="python -m visarl.fit"):
        tiny_run(data, "ddp_py", "trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu")


# ---------------------------------------------------------------- module pieces


def synthetic_batches(n: int, b: int = 8, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "rgb": torch.randint(0, 256, (b, 3, 64, 64), generator=g, dtype=torch.uint8),
            "saliency": torch.randint(0, 256, (b, 1, 64, 64), generator=g, dtype=torch.uint8),
        }
        for _ in range(n)
    ]


def test_bf16_mixed_step_and_weight_decay_groups(tmp_path):
    torch.manual_seed(0)
    model = build_multimae("tiny", ("rgb", "saliency"), norm_rgb_output=True)
    cfg = stage.PretrainConfig(
        batch_size=8,
        model=stage.ModelConfig(size="tiny", norm_rgb_output=True),
        optim=stage.OptimConfig(weight_decay=0.07),
    )
    module = MultiMAEModule(model, WeightedMSE.for_model(model), cfg, PairedRandomResizedCrop())
    dtypes = []
    model.decoders["saliency"].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, precision="bf16-mixed", max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(synthetic_batches(2), batch_size=None))
    assert trainer.global_step == 2 and dtypes == [torch.bfloat16] * 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # mixed: fp32 master weights
    assert not torch.equal(before["encoder.blocks.0.attn.qkv.weight"], model.encoder.blocks[0].attn.qkv.weight)
    # the fitted optimiser (the module reads cfg.optim): decay only on weight matrices and the patch projection
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in trainer.optimizers[0].param_groups}
    assert set(groups) == {0.07, 0.0} and groups[0.07] | groups[0.0] == set(names.values())
    no_decay = {
        "encoder.global_token", "encoder.blocks.0.norm1.bias", "encoder.blocks.0.attn.qkv.bias",
        "encoder.input_adapters.rgb.modality_embed", "encoder.input_adapters.saliency.proj.bias",
        "decoders.rgb.mask_token", "decoders.saliency.modality_embed", "decoders.rgb_norm.query_norm.weight",
    }  # fmt: skip
    decay = {
        "encoder.blocks.0.attn.qkv.weight", "encoder.blocks.0.mlp.fc1.weight", "encoder.input_adapters.rgb.proj.weight",
        "decoders.rgb.cross_attn.kv.weight", "decoders.saliency.head.weight",
    }  # fmt: skip
    assert no_decay <= groups[0.0] and decay <= groups[0.07]
    assert all(model.get_parameter(n).ndim >= 2 for n in groups[0.07])


def test_param_groups_respect_skip_and_frozen():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    net[2].weight.requires_grad_(False)
    decay, no_decay = param_groups(net, 0.1, skip={"0.weight"})
    assert decay["params"] == [] and decay["weight_decay"] == 0.1
    assert [p.shape for p in no_decay["params"]] == [(4, 3), (4,), (4,), (4,), (2,)]


@pytest.mark.parametrize("total,warmup", [(50, 10), (7, 1), (9, 0), (5, 5), (40, 3)])
def test_warmup_cosine_matches_multimae(total, warmup):
    ours = [warmup_cosine_lr(s, total, warmup, 0.002, 1e-6, 1e-5) for s in range(total)]
    np.testing.assert_allclose(ours, multimae_schedule(0.002, total, warmup, 1e-6, 1e-5), rtol=1e-12)
    assert scaled_lr(1e-4, 512) == pytest.approx(2e-4) and scaled_lr(1e-4, 512 * 8) == pytest.approx(1.6e-3)


# ---------------------------------------------------------------- crops


def test_crop_is_identical_across_modalities():
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(16, 3, 64, 64, generator=g)
    out = PairedRandomResizedCrop(hflip=0.5)({"rgb": rgb, "saliency": rgb[:, 1:2].clone()}, generator=g)
    assert out["rgb"].shape == rgb.shape and out["saliency"].shape == (16, 1, 64, 64)
    torch.testing.assert_close(out["saliency"], out["rgb"][:, 1:2], rtol=0, atol=0)  # same box, same flip
    assert (out["rgb"] - rgb).abs().amax(dim=(1, 2, 3)).min() > 0.05  # and it did crop every example


def test_crop_resize_equals_crop_then_bilinear_resize():
    x = torch.rand(3, 2, 64, 64)
    boxes = torch.tensor([[0, 0, 64, 64], [10, 5, 32, 40], [30, 20, 17, 23]])
    out = crop_resize(x, boxes, (64, 64))
    for i, (t, left, h, w) in enumerate(boxes.tolist()):
        ref = F.interpolate(x[i : i + 1, :, t : t + h, left : left + w], size=(64, 64), mode="bilinear")
        torch.testing.assert_close(out[i : i + 1], ref, atol=1e-5, rtol=0)
    flipped = crop_resize(x, boxes, (64, 64), flip=torch.tensor([True, False, True]))
    torch.testing.assert_close(flipped[0], x[0].flip(-1), atol=1e-5, rtol=0)


def test_crop_boxes_follow_the_scale_and_ratio_ranges():
    boxes = sample_crop_boxes(20000, 64, 64, (0.2, 1.0), (0.75, 4 / 3), torch.Generator().manual_seed(1))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 64).all() and (left + w <= 64).all()
    area = h * w / 64**2
    assert area.min() > 0.18 and area.max() <= 1.0
    # rounding to whole pixels moves the ratio a little past its range
    assert ((w / h) > 0.7).all() and ((w / h) < 1.42).all()
    # the same distribution as torchvision's RandomResizedCrop.get_params (MultiMAE's sampler)
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    ref = torch.tensor(
        [RandomResizedCrop.get_params(torch.zeros(1, 64, 64), [0.2, 1.0], [0.75, 4 / 3]) for _ in range(4000)]
    )
    ref_area = ref[:, 2] * ref[:, 3] / 64**2
    for q in (0.1, 0.5, 0.9):
        assert abs(area.quantile(q).item() - ref_area.quantile(q).item()) < 0.03, q
    assert abs(top.float().mean().item() - ref[:, 0].float().mean().item()) < 1.0


# ---------------------------------------------------------------- the authors' recipe: flip, token budget, epochs


def test_default_flip_is_paired_across_modalities_and_exact():
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(400, 3, 64, 64, generator=g)
    sal = rgb[:, :1].clone()
    out = PairedAugment()({"rgb": rgb, "saliency": sal}, generator=g)  # the default: flip with p = 0.5, no crop
    flipped = (out["rgb"] == rgb.flip(-1)).flatten(1).all(1)
    kept = (out["rgb"] == rgb).flatten(1).all(1)
    assert bool((flipped | kept).all())  # a mirror image or untouched: no resampling
    assert 150 < int(flipped.sum()) < 250  # about half
    torch.testing.assert_close(out["saliency"], out["rgb"][:, :1], rtol=0, atol=0)  # the same flip for saliency
    assert PairedAugment(hflip=0.0)({"rgb": rgb}, generator=g)["rgb"] is rgb


@pytest.mark.parametrize(
    "config,overrides,visible",
    [
        ("conf/pretrain/rgb.yaml", [], 16),
        ("conf/pretrain/rgb_saliency.yaml", [], 32),
        ("conf/pretrain/rgb_saliency.yaml", ["num_visible=null"], 32),
        ("conf/pretrain/rgb_saliency.yaml", ["num_visible=null", "modalities=[rgb]"], 16),
        ("conf/quickstart/pretrain.yaml", [], 32),
        ("conf/quickstart/pretrain.yaml", ["modalities=[rgb]"], 16),
    ],
)
def test_visible_token_budget_is_a_quarter_of_the_tokens(config, overrides, visible):
    cfg, _, _ = visarl.fit.resolve(config, None, ["run=x", *overrides])
    assert cfg.num_visible == visible  # 75% masked: Table II's 32 of 128, Sec. II-B's m = 0.75 for rgb alone


def test_paper_configs_follow_the_authors_recipe():
    for config in ("conf/pretrain/rgb.yaml", "conf/pretrain/rgb_saliency.yaml"):
        cfg, _, _ = visarl.fit.resolve(config, None, ["run=x"])
        assert cfg.passes_per_epoch == 20 and cfg.augment.crop and cfg.augment.hflip == 0.5  # Table II's crop
        assert cfg.model.global_token and not cfg.model.final_norm and cfg.model.input_norm == "imagenet"
        model = stage.build_model(cfg)
        loss_fn = stage.build_loss(cfg, model)
        kinds = {n: (loss_fn.kind(n), loss_fn.weight(n)) for n in model.outputs}
        expect = {"rgb": ("mse", 1.0), "rgb_norm": ("mse", 1.0), "saliency": ("l1", 10.0)}
        assert kinds == {n: expect[n] for n in cfg.modalities + ["rgb_norm"]}
    cfg, _, _ = visarl.fit.resolve("conf/pretrain/rgb_saliency.yaml", None, ["run=x", "losses={saliency: mse}"])
    assert stage.build_loss(cfg, stage.build_model(cfg)).kind("saliency") == "mse"
    cfg, _, _ = visarl.fit.resolve("conf/pretrain/rgb.yaml", None, ["run=x", "losses={rgb: l1}"])
    loss_fn = stage.build_loss(cfg, stage.build_model(cfg))
    assert loss_fn.kind("rgb") == "l1" and loss_fn.kind("rgb_norm") == "l1"  # rgb_norm follows rgb
    with pytest.raises(ConfigError, match="losses"):
        visarl.fit.resolve("conf/pretrain/rgb.yaml", None, ["run=x", "losses={saliency: l1}"])
    with pytest.raises(ConfigError, match="l2"):
        visarl.fit.resolve("conf/pretrain/rgb.yaml", None, ["run=x", "losses={rgb: l2}"])


def test_an_epoch_is_passes_per_epoch_shuffled_passes(data):
    cfg, _, _ = visarl.fit.resolve(TINY, None, ["run=x", f"data_dirs=[{data['labelled']}]", "passes_per_epoch=3"])
    dm = stage.build_datamodule(cfg)
    distinct = len(set(dm.train_set.ids.tolist()))
    assert len(dm.train_set) == 3 * distinct
    seen = np.concatenate([b["rgb"].flatten(1)[:, :64].numpy() for b in dm.train_dataloader()])
    _, counts = np.unique(seen, axis=0, return_counts=True)
    assert len(counts) <= distinct and (counts % 3 == 0).all()  # every frame exactly 3 times an epoch
    assert len(seen) == 3 * distinct


def test_peak_lr_reference_batch():
    assert scaled_lr(1e-4, 512) == pytest.approx(2e-4)  # Table II's base lr as MultiMAE defines it
    assert scaled_lr(1e-4, 512, None, 512) == pytest.approx(1e-4)  # the authors' fork on one device
    assert scaled_lr(1e-4, 1024, None, 512) == pytest.approx(2e-4)  # ... on two


# ---------------------------------------------------------------- figure 6 grid


def test_reconstruction_grid_pastes_predictions_into_hidden_patches_only():
    torch.manual_seed(0)
    model = build_multimae("tiny", ("rgb", "saliency"))
    loss_fn = WeightedMSE.for_model(model)  # rgb targets normalised per patch: the grid maps them back
    x = {"rgb": torch.rand(2, 3, 64, 64), "saliency": torch.rand(2, 1, 64, 64)}
    grid = reconstruction_grid(model, loss_fn, x, num_masks=1, generator=torch.Generator().manual_seed(3))
    masks = model.sample_masks(2, 32, 1.0, torch.Generator().manual_seed(3))
    assert grid.shape == (3, 2 * 66 + 2, 6 * 66 + 2)

    def tile(row: int, col: int) -> torch.Tensor:
        return grid[:, 2 + 66 * row : 66 * row + 66, 2 + 66 * col : 66 * col + 66]

    for row in range(2):
        hidden = masks["rgb"][row]
        given = patchify(x["rgb"][row : row + 1], 8)[0]
        masked, pasted = patchify(tile(row, 2)[None], 8)[0], patchify(tile(row, 3)[None], 8)[0]
        torch.testing.assert_close(masked[~hidden], given[~hidden])
        assert (masked[hidden] == 0.5).all()
        torch.testing.assert_close(pasted[~hidden], given[~hidden])
        assert not torch.allclose(pasted[hidden], given[hidden], atol=0.05)
        torch.testing.assert_close(tile(row, 0), unpatchify(given[None], 8)[0])


@pytest.mark.parametrize("input_norm", ["imagenet", "none"])
def test_grid_maps_a_perfect_prediction_back_to_the_pixels(input_norm):
    """Targets live in the encoder's space (ImageNet-standardised rgb, per-patch normalised rgb_norm): a prediction
    equal to its target is drawn as the input pixels."""
    from visarl.mae.visualize import prediction_pixels

    model = build_multimae("tiny", ("rgb", "saliency"), norm_rgb_output=True, input_norm=input_norm)
    loss_fn = WeightedMSE.for_model(model)
    x = {"rgb": torch.rand(2, 3, 64, 64), "saliency": torch.rand(2, 1, 64, 64)}
    for name in ("rgb", "rgb_norm", "saliency"):
        src = name.removesuffix("_norm")
        pixels = prediction_pixels(model, loss_fn, name, loss_fn.target(name, x), x)
        torch.testing.assert_close(pixels, patchify(x[src], 8), atol=1e-4, rtol=0)
