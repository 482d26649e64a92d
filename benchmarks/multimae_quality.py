"""Cross-modal reconstruction: saliency predicted from rgb-only visible tokens against a mean-saliency-map predictor.

1. Collects random-policy frames of one Meta-World task (``stage: collect``) and labels them with ORACLE saliency
   maps: Gaussian clicks (sigma 10 px at 224 px, as annotations) at the gripper, object and goal projected from the
   stored states (:mod:`visarl.mae.oracle`), standing in for the PiCANet ``label`` stage.
2. Pretrains a MultiMAE on rgb + saliency with ``stage: pretrain`` (Dirichlet masking, the paired flip, rgb MSE and
   saliency L1; ``--crop`` adds the RandomResizedCrop) at a short schedule; whole episodes (new object/goal layouts)
   are held out.
3. On the held-out frames, shows the encoder ``--visible`` random rgb tokens and no saliency token, and scores the
   saliency decoder's full map by MSE against the oracle map; the baseline predicts the training frames' mean map.

Defaults (about 8 minutes on a shared 2-core CPU): drawer-open, the tiny model (0.4M parameters), 3000 steps of 32
frames, peak lr 3e-3, saliency loss weight 10. Measured on this CPU at 2000 steps (one thread), with the recipe
before the authors' fork was followed (crop on, saliency MSE, [0, 1] rgb, final encoder norm): drawer-open 0.76
with these settings, 0.95 with saliency weight 1 (saliency MSE is ~100x smaller than the normalised-rgb term, so
unweighted it barely moves the shared encoder in a short run), 0.11 with weight 10 and no crop (the crop's zooms
make the short run harder). On reach, whose object and goal are 1-2 pixel dots at 64 px, 3000 steps stay near
the mean map (0.98): the model learns the prior before it learns to find such small things.

Last line: ``cross_modal_mse_ratio: X`` = model MSE / mean-map MSE (below 1: the model reads saliency off rgb).
``--size`` picks the model (tiny / small / paper), ``--steps`` the training length, ``--data`` reuses a labelled
shard directory. Run: ``python benchmarks/multimae_quality.py [--task reach] [--size small --steps 1500]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from visarl.mae import unpatchify  # noqa: E402

SIZES = {  # widths given to the pretrain config (its model.size=tiny keeps mlp_ratio etc. alike)
    "tiny": dict(dim=64, depth=1, num_heads=2, decoder_dim=64, decoder_depth=1, decoder_heads=2),
    "small": dict(dim=128, depth=2, num_heads=4, decoder_dim=128, decoder_depth=1, decoder_heads=4),
    "paper": dict(dim=256, depth=4, num_heads=4, decoder_dim=256, decoder_depth=3, decoder_heads=4),
}


def collect(root: Path, task: str, frames: int, episode_length: int, seed: int) -> Path:
    import visarl.fit
    from visarl.mae.oracle import label_shards_with_oracle

    data = root / "replay"
    overrides = [
        f"env.task={task}", f"env.episode_length={episode_length}", f"num_steps={frames}", "rows_per_shard=2000",
        f"data_dir={data}", f"output_dir={root}/runs", "run=collect", f"seed={seed}", "num_envs=1",
    ]  # fmt: skip
    visarl.fit.run("conf/collect/random_tiny.yaml", overrides)
    label_shards_with_oracle(data)
    return data


@torch.no_grad()
def evaluate(model: torch.nn.Module, frames: dict[str, np.ndarray], mean_map: np.ndarray, visible: int) -> dict:
    """MSEs over every saliency pixel of the held-out frames: model (rgb tokens only) and mean map."""
    model.eval()
    g = torch.Generator().manual_seed(0)
    n, tokens = len(frames["rgb"]), model.num_tokens
    err_model = err_mean = 0.0
    for lo in range(0, n, 256):
        rgb = torch.from_numpy(frames["rgb"][lo : lo + 256]).float() / 255.0
        sal = torch.from_numpy(frames["saliency"][lo : lo + 256]).float() / 255.0
        b = len(rgb)
        rank = torch.rand(b, tokens, generator=g).argsort(1).argsort(1)
        masks = {"rgb": rank >= visible, "saliency": torch.ones(b, tokens, dtype=torch.bool)}
        out = model({"rgb": rgb, "saliency": sal}, masks=masks)
        pred = unpatchify(out.preds["saliency"].float(), model.patch_size).clamp(0, 1)  # [B, 1, H, W]
        err_model += float(((pred - sal) ** 2).sum())
        err_mean += float(((torch.from_numpy(mean_map)[None, None] - sal) ** 2).sum())
    pixels = n * frames["saliency"][0].size
    return {"model_mse": err_model / pixels, "mean_map_mse": err_mean / pixels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny", help="model widths (tiny: 0.4M parameters)")
    parser.add_argument("--task", default="drawer-open")
    parser.add_argument("--frames", type=int, default=4000, help="random-policy steps to collect")
    parser.add_argument("--episode-length", type=int, default=20, help="short episodes: more object/goal layouts")
    parser.add_argument("--steps", type=int, default=3000, help="pretraining optimiser steps")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (short schedule)")
    parser.add_argument("--saliency-weight", type=float, default=10.0, help="loss weight of the saliency term")
    parser.add_argument("--crop", action="store_true", help="pretrain with the RandomResizedCrop (default: flip only)")
    parser.add_argument("--no-raw-rgb", action="store_true", help="no raw-pixel rgb decoder (model.norm_rgb_output)")
    parser.add_argument("--visible", type=int, default=32, help="rgb tokens shown at evaluation")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--data", type=Path, default=None, help="an already labelled shard directory")
    parser.add_argument("--workdir", type=Path, default=None, help="where data and runs go (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import visarl.fit
    from visarl.data.datamodules import FrameDataModule
    from visarl.mae import load_model

    t0 = time.perf_counter()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="multimae_quality_"))
    root.mkdir(parents=True, exist_ok=True)
    data = args.data or collect(root, args.task, args.frames, args.episode_length, args.seed)
    t_data = time.perf_counter() - t0

    # the split the stage makes (same seed and fraction): whole episodes, so held-out layouts are new
    val_fraction = 0.15
    dm = FrameDataModule([str(data)], args.batch, True, 0, args.seed, val_fraction, ("rgb", "saliency"))
    dm.setup("fit")
    steps_per_epoch = -(-len(dm.train_set) // args.batch)
    epochs = -(-args.steps // steps_per_epoch)
    overrides = [
        f"data_dirs=[{data}]", f"output_dir={root}/runs", f"run=pretrain-{args.size}", f"seed={args.seed}",
        f"batch_size={args.batch}", f"val_fraction={val_fraction}", f"optim.base_lr={args.lr * 256 / args.batch}",
        f"optim.warmup_epochs={0.05 * args.steps / steps_per_epoch}", f"trainer.max_steps={args.steps}",
        f"trainer.max_epochs={epochs}", f"trainer.precision={args.precision}", "trainer.log_every_n_steps=20",
        "trainer.accelerator=auto", f"log_images_every_n_epochs={max(epochs // 4, 1)}",
        f"loss_weights={{saliency: {args.saliency_weight}}}", f"augment.crop={args.crop}",
        f"model.norm_rgb_output={not args.no_raw_rgb}", *[f"model.{k}={v}" for k, v in SIZES[args.size].items()],
    ]  # fmt: skip
    t1 = time.perf_counter()
    summary = visarl.fit.run("conf/pretrain/tiny.yaml", overrides)
    t_train = time.perf_counter() - t1

    train = dm.train_set.__getitems__(range(len(dm.train_set)))  # {key: uint8 [N, C, H, W]}
    held = dm.val_set.__getitems__(range(len(dm.val_set)))
    mean_map = train["saliency"].float().div(255.0).mean(0)[0].numpy()  # the best constant predictor
    frames = {k: v.numpy() for k, v in held.items()}
    model = load_model(summary["encoder"])
    result = evaluate(model, frames, mean_map, args.visible)
    all_rgb = evaluate(model, frames, mean_map, model.num_tokens)
    report = {
        "task": args.task, "size": args.size, "parameters": summary["num_parameters"], "data": str(data),
        "train_frames": len(dm.train_set), "held_out_frames": len(dm.val_set), "steps": summary["global_step"],
        "batch": args.batch, "peak_lr": summary["schedule"]["peak_lr"], "saliency_weight": args.saliency_weight,
        "crop": args.crop, "raw_rgb_decoder": not args.no_raw_rgb, "torch_threads": torch.get_num_threads(),
        "final_val_loss": summary["metrics"].get("val/loss"), "visible_rgb_tokens": args.visible, **result,
        "model_mse_all_64_rgb_tokens": all_rgb["model_mse"],
        "ratio_all_64_rgb_tokens": all_rgb["model_mse"] / all_rgb["mean_map_mse"],
        "seconds_data": round(t_data, 1), "seconds_train": round(t_train, 1), "run_dir": summary["run_dir"],
    }  # fmt: skip
    print(json.dumps(report, indent=2))
    print(f"cross_modal_mse_ratio: {result['model_mse'] / result['mean_map_mse']:.3f}")


if __name__ == "__main__":
    main()
