"""MultiMAE pretraining step speed: a plain eager fp32 step against visarl's fast path, side by side.

One training step = uint8 frames -> [0, 1] floats, the paired flip, Dirichlet masking, forward of the
paper-size model (rgb + saliency, 32 visible tokens, rgb / rgb_norm / saliency decoders: 13.0M parameters), the
reconstruction loss (rgb MSE, saliency L1), backward and an AdamW step: what ``stage: pretrain`` does per batch,
without Lightning.

- ``eager``: fp32, softmax(QK^T)V attention, ``torch.optim.AdamW`` with per-parameter loops (foreach/fused off).
- ``fast``: what the pretrain stage runs with ``trainer.precision=bf16-mixed`` and ``model.fused_attn`` left to
  choose: bf16 autocast, fused AdamW, and on CUDA fused scaled-dot-product attention; on the CPU the eager
  attention kernel, which measured faster than the fused one under bf16 here (``--all`` shows both). With
  ``--compile`` the fast path also ``torch.compile``-s the encoder and decoders (``model.compile=true``).

Paths are timed in turns (one step of each, repeated), so load from other processes on a shared machine falls
on all of them alike; the reported figure is the median. Last line: ``multimae_fast_vs_eager: X`` (fast images/s
over eager images/s). Measured on the shared 2-core EPYC (avx512_bf16), one thread: batch 128 eager 14.4 img/s,
fast 33.8 (2.34x; bf16 + fused attention 26.6, fp32 + fused 16.3, fast + compile 35.0 after a 100 s compile);
batch 512 eager 10.2 img/s, fast 28.5 (2.79x).
Run: ``python benchmarks/multimae_speed.py [--batch 512] [--threads 1] [--compile] [--all]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from visarl.mae import ReconstructionLoss, build_multimae  # noqa: E402
from visarl.mae.augment import PairedAugment  # noqa: E402
from visarl.mae.optim import adamw, param_groups  # noqa: E402


def make_step(
    model: torch.nn.Module, opt: torch.optim.Optimizer, bf16: bool, device: torch.device
) -> Callable[[dict[str, torch.Tensor]], float]:
    loss_fn = ReconstructionLoss.for_model(model)
    augment = PairedAugment()  # the pretrain default: flip p = 0.5 (augment.crop=true adds the crop)
    gen = torch.Generator(device=device).manual_seed(0)

    def step(batch: dict[str, torch.Tensor]) -> float:
        x = {k: v.to(device, non_blocking=True).float() / 255.0 for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            x = augment(x, gen)
            out = model(x, 32, 1.0, generator=gen)
            loss = loss_fn(out.preds, x, out.masks).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128, help="frames per step (the paper's is 512)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per path")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="add torch.compile to the fast path")
    parser.add_argument("--all", action="store_true", help="also time fp32 + fused attention and bf16 + fused")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    torch.manual_seed(0)
    base = build_multimae("paper", ("rgb", "saliency"), norm_rgb_output=True).to(device)
    n_params = sum(p.numel() for p in base.parameters())

    def variant(fused_attn: bool, bf16: bool, fast_opt: bool, compile: bool = False) -> Callable:
        model = copy.deepcopy(base)
        model.set_fused_attn(fused_attn)
        if compile:
            model.encoder.compile()
            for dec in model.decoders.values():
                dec.compile()
        if fast_opt:
            opt = adamw(model, 1e-4)
        else:
            opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95), foreach=False, fused=False)
        return make_step(model, opt, bf16, device)

    fast_fused = not cpu  # the stage's model.fused_attn=None rule
    paths = {
        "eager fp32": variant(False, False, False),
        "fast (bf16, " + ("fused" if fast_fused else "eager") + " attn, fused AdamW)": variant(fast_fused, True, True),
    }
    fast_name = list(paths)[1]
    if args.compile:
        fast_name = "fast + torch.compile"
        paths[fast_name] = variant(fast_fused, True, True, compile=True)
    if args.all:
        paths["fp32, fused attn"] = variant(True, False, False)
        paths["bf16, " + ("eager" if fast_fused else "fused") + " attn, fused AdamW"] = variant(
            not fast_fused, True, True
        )

    g = torch.Generator().manual_seed(1)
    batch = {
        "rgb": torch.randint(0, 256, (args.batch, 3, 64, 64), generator=g, dtype=torch.uint8),
        "saliency": torch.randint(0, 256, (args.batch, 1, 64, 64), generator=g, dtype=torch.uint8),
    }
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"MultiMAE paper size ({n_params / 1e6:.1f}M parameters), batch {args.batch}, device {device}, "
          f"{torch.get_num_threads()} CPU threads")  # fmt: skip
    for name, step in paths.items():  # warm-up (and compilation) is not timed
        t = time.perf_counter()
        step(batch)
        sync()
        print(f"  warm-up {name}: {time.perf_counter() - t:.1f} s", flush=True)
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.steps):
        for name, step in paths.items():
            sync()
            t = time.perf_counter()
            step(batch)
            sync()
            times[name].append(time.perf_counter() - t)
    rate = {name: args.batch / statistics.median(ts) for name, ts in times.items()}
    print(f"{'path':<48} {'median s/step':>14} {'images/s':>10}  steps (s)")
    for name, ts in times.items():
        print(f"{name:<48} {statistics.median(ts):>14.3f} {rate[name]:>10.1f}  {' '.join(f'{t:.2f}' for t in ts)}")
    print(f"multimae_fast_vs_eager: {rate[fast_name] / rate['eager fp32']:.2f}")


if __name__ == "__main__":
    main()
