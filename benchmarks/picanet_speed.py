"""PiCANet inference speed: the ViSaRL authors' decoder vs the full PiCANet of Liu et al., and pseudo-labelling.

1. Seconds a frame of the net's forward pass (eval, no_grad, float32, channels-last as the label/online paths run
   it) at each input size, for the authors' decoder (``decoder=authors``: conv4_3 onward, local attention at 28,
   56 and 112 px, none at 224, no conv5/fc6/fc7 or global cells) and the full one (``decoder=full``: adds conv5,
   fc6/fc7 and two global ReNet cells), the two timed in alternating rounds so load from other processes hits
   both alike; the speedup is the median over rounds of the per-round time ratio (full / authors).
2. Pseudo-labelling throughput: :class:`PiCANetSaliency` on uint8 64x64 frames at the chosen input size, float32
   vs bf16 autocast (alternating rounds), and how far bf16 maps are from float32 maps: MAE (0-1 scale) and the
   F-measure of the bf16 maps taking the float32 maps (> 0.5) as the target. With ``--weights`` and
   ``--annotations`` (a trained net and its annotation export), both precisions are also scored against the
   annotated maps, which is what "keeps the F-measure" means. ``--skip-label`` leaves this part out.

The last line is ``picanet_speedup_vs_full: X``, the full/authors time ratio at 224 px (the paper's input size).
The MAC ratio (about 52 / 34 GMAC a frame) bounds it where convolutions run at full speed; the global cells'
LSTMs (28 sequential steps per direction) are latency-bound, which pushes the time ratio above the MAC ratio on a
busy CPU or a GPU at batch 1 (ViSaRL reports 0.1 s vs 0.01 s a frame for removing the global cells).

    python benchmarks/picanet_speed.py [--sizes 224 128 64] [--rounds 5] [--batch 1] [--label-size 64]
        [--label-batch 32] [--weights data/reach/picanet.pt --annotations data/reach/annotations.h5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from visarl.saliency.metrics import GT_THRESHOLD, FMeasure, MeanAbsoluteError  # noqa: E402
from visarl.saliency.online import PiCANetSaliency  # noqa: E402
from visarl.saliency.picanet import DECODERS, PiCANet, load_picanet  # noqa: E402


def _timed(fn, repeats: int = 1) -> float:
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def count_macs(net: PiCANet, size: int) -> float:
    """Multiply-accumulates of one forward pass of one frame (convolutions and LSTMs; the rest is small), in G."""
    total = 0

    def conv_hook(m: torch.nn.Conv2d, inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1]
        total += out[0].numel() * m.in_channels // m.groups * k

    def lstm_hook(m: torch.nn.LSTM, inputs: tuple, out: tuple) -> None:
        nonlocal total
        seqs, steps, _ = inputs[0].shape  # batch_first: [sequences, steps, features]
        dirs = 2 if m.bidirectional else 1
        total += seqs * steps * dirs * 4 * m.hidden_size * (m.input_size + m.hidden_size)

    hooks = [m.register_forward_hook(conv_hook) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks += [m.register_forward_hook(lstm_hook) for m in net.modules() if isinstance(m, torch.nn.LSTM)]
    with torch.no_grad():
        net(torch.rand(1, 3, size, size, device=net.mean.device))
    for h in hooks:
        h.remove()
    return total / 1e9


def forward_speed(size: int, batch: int, rounds: int, device: torch.device, local_hidden: int) -> dict[str, float]:
    """Seconds a frame of each decoder, the median per-round ratio (full / authors), and each net's GMACs."""
    torch.manual_seed(0)
    nets = {
        d: PiCANet(size, decoder=d, local_hidden=local_hidden).to(device).eval().to(memory_format=torch.channels_last)
        for d in DECODERS
    }
    x = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {d: [] for d in DECODERS}

    def run(net: PiCANet) -> None:
        net(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        for net in nets.values():
            run(net)  # warm-up: oneDNN / cuDNN pick their kernels on the first call
        repeats = 10 if device.type == "cuda" else 1
        for r in range(rounds):
            for d in DECODERS if r % 2 == 0 else DECODERS[::-1]:
                times[d].append(_timed(lambda n=nets[d]: run(n), repeats) / batch)
    ratios = [t_full / t_auth for t_full, t_auth in zip(times["full"], times["authors"], strict=True)]
    out = {f"{d}_gmac": count_macs(net, size) for d, net in nets.items()}
    out.update({f"{d}_s": statistics.median(times[d]) for d in DECODERS})
    out["ratio"] = statistics.median(ratios)
    return out


def label_speed(
    net: PiCANet,
    frames: torch.Tensor,
    rounds: int,
    device: torch.device,
    batch: int,
    targets: torch.Tensor | None,
) -> dict[str, float]:
    """Frames/s of fp32 and bf16 labelling, their agreement, and (with targets) each one's F/MAE."""
    sources = {p: PiCANetSaliency(net, device=device, precision=p, batch_size=batch) for p in ("32", "bf16-mixed")}
    times: dict[str, list[float]] = {p: [] for p in sources}
    maps: dict[str, torch.Tensor] = {}
    for p, src in sources.items():
        maps[p] = src.predict(frames[:batch]).cpu()  # warm-up
    for r in range(rounds):
        for p in sources if r % 2 == 0 else reversed(list(sources)):
            t = _timed(lambda s=sources[p]: s.predict(frames))
            times[p].append(len(frames) / t)
    for p, src in sources.items():
        maps[p] = src.predict(frames).cpu()
    out = {f"fps_{p}": statistics.median(v) for p, v in times.items()}
    f, mae = FMeasure(), MeanAbsoluteError()  # map against map: the soft MAE
    f.update(maps["bf16-mixed"], (maps["32"] > 0.5).float())
    mae.update(maps["bf16-mixed"], maps["32"])
    agree = f.compute()
    out.update(agree_f_max=float(agree["max"]), agree_mae=float(mae.compute()))
    if targets is not None:
        for p in sources:
            f, mae = FMeasure(), MeanAbsoluteError(target_threshold=GT_THRESHOLD)  # as the saliency stage
            f.update(maps[p][: len(targets)], targets)
            mae.update(maps[p][: len(targets)], targets)
            res = f.compute()
            out[f"gt_f_max_{p}"] = float(res["max"])
            out[f"gt_f_adaptive_{p}"] = float(res["adaptive"])
            out[f"gt_mae_{p}"] = float(mae.compute())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 128, 64], help="net input sizes to time")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds (medians are reported)")
    parser.add_argument("--batch", type=int, default=1, help="frames per forward pass in part 1 (paper: per frame)")
    parser.add_argument("--label-size", type=int, default=64, help="net input size for pseudo-labelling")
    parser.add_argument("--label-frames", type=int, default=128, help="64x64 frames labelled per round")
    parser.add_argument("--label-batch", type=int, default=32, help="frames per labelling batch")
    parser.add_argument("--weights", default="", help="trained picanet.pt for part 2 (default: random init)")
    parser.add_argument("--annotations", default="", help="annotation export: score fp32 and bf16 against it")
    parser.add_argument("--local-hidden", type=int, default=128, help="local attention hidden width (paper: 128)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, sizes 64 and 128, few frames")
    parser.add_argument("--skip-label", action="store_true", help="time the decoders only (leave out part 2)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.sizes, args.label_frames = 2, [128, 64], 32
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"device: {name}; batch {args.batch}; local_hidden {args.local_hidden}; {args.rounds} alternating rounds, "
        "medians; GMAC = multiply-accumulates a frame (convs + LSTMs)"
    )

    print(
        f"{'input':>6} {'authors s/frame':>16} {'full s/frame':>13} {'authors fps':>12} {'full fps':>9} "
        f"{'full/authors time':>18} {'authors GMAC':>13} {'full GMAC':>10} {'full/authors MAC':>17}"
    )
    ratios = {}
    for size in args.sizes:
        r = forward_speed(size, args.batch, args.rounds, device, args.local_hidden)
        ratios[size] = r["ratio"]
        print(
            f"{size:>6} {r['authors_s']:>16.4f} {r['full_s']:>13.4f} {1 / r['authors_s']:>12.2f} "
            f"{1 / r['full_s']:>9.2f} {r['ratio']:>18.2f} {r['authors_gmac']:>13.1f} {r['full_gmac']:>10.1f} "
            f"{r['full_gmac'] / r['authors_gmac']:>17.2f}",
            flush=True,
        )
    if not args.skip_label:
        label_part(args, device)
    key = 224 if 224 in ratios else max(ratios)
    if key != 224:
        print(f"(224 px not timed; the speedup below is at {key} px)")
    print(f"picanet_speedup_vs_full: {ratios[key]:.2f}")


def label_part(args: argparse.Namespace, device: torch.device) -> None:
    """Part 2: pseudo-labelling throughput and bf16 agreement (see the module docstring)."""
    targets = None
    if args.annotations:
        from visarl.annotate.store import load_annotations

        ann = load_annotations(args.annotations)
        frames_np, targets = ann.frames, torch.from_numpy(ann.maps)[:, None]
    else:
        from visarl.data.shards import open_shards

        readers = open_shards(Path("data") / "reach" / "replay")
        if readers:
            frames_np = readers[0].read("rgb", np.arange(min(len(readers[0]), args.label_frames)))
        else:
            frames_np = np.random.default_rng(0).integers(0, 256, (args.label_frames, 64, 64, 3), dtype=np.uint8)
    reps = -(-args.label_frames // len(frames_np))
    frames = torch.from_numpy(np.concatenate([frames_np] * reps)[: args.label_frames]).permute(0, 3, 1, 2)
    if args.weights:
        net = load_picanet(args.weights)
        what = f"trained weights {args.weights} (input {net.input_size})"
    else:
        torch.manual_seed(0)
        net = PiCANet(args.label_size).eval()  # the default: the authors' decoder
        what = f"random-init net (input {args.label_size}; agreement on an untrained net is only indicative)"
    lab = label_speed(net, frames, args.rounds, device, args.label_batch, targets)
    print(f"pseudo-labelling, {what}, {len(frames)} frames of {tuple(frames.shape[-2:])} px, batch {args.label_batch}:")
    print(f"  fp32: {lab['fps_32']:.1f} frames/s   bf16 autocast: {lab['fps_bf16-mixed']:.1f} frames/s")
    print(
        f"  bf16 vs fp32 maps: MAE {lab['agree_mae']:.4f}, max-F of bf16 maps against fp32 maps > 0.5: "
        f"{lab['agree_f_max']:.3f}"
    )
    if targets is not None:
        for p in ("32", "bf16-mixed"):
            f_max, f_ad, mae = lab[f"gt_f_max_{p}"], lab[f"gt_f_adaptive_{p}"], lab[f"gt_mae_{p}"]
            print(f"  {p:>10} vs annotations: F max {f_max:.3f}, adaptive {f_ad:.3f}, MAE {mae:.4f}")


if __name__ == "__main__":
    main()
