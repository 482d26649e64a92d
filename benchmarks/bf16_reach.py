"""Does bf16 autocast of the paper's CNN change what pixel SAC learns on reach? fp32 vs ``encoder_precision: bf16``.

    python benchmarks/bf16_reach.py offline --data runs/quickstart/<run>/data/replay   # CPU, ~10 min
    python benchmarks/bf16_reach.py online                 # 2 seeds x 2 precisions, 30k steps each (a GPU)
    python benchmarks/bf16_reach.py online --steps 3000 --eval-every 1000 --eval-episodes 2 --parallel 1  # smoke

**offline** (what fits a CPU): three SAC agents with the paper's CNN and 3x1024 heads train on the same reach
transitions (shards from a collect stage: state-SAC frames with their rewards) from the same initial weights:
fp32 and bf16 see the same batches and the same sampling noise; a second fp32 agent sees another batch order.
Every ``--every`` updates each agent's Q(s, a) and deterministic action on 256 fixed probe transitions (drawn
once from the same data) are compared: bf16 changes nothing that matters when its distance from fp32 stays well
below the distance between the two fp32 agents (the noise SAC's training already has). Last line:
``bf16_vs_seed_q_distance: X`` (the final ratio of the two Q distances; < 1 means bf16 moves the critic less than
a change of batch order does).

**online** (needs a fast GPU to reach learning in minutes): each cell is a real ``python -m visarl.fit --config
conf/rl/cnn_rgb.yaml`` run (the Table I "CNN RGB" row: paper
CNN, heads of 3x1024, batch 128, lr 1e-4) with ``encoder_precision`` 32 or bf16 and the same seeds, so a pair of
runs starts from the same weights, layouts and random actions and differs only by bf16 rounding in the encoder.
bf16 "changes nothing" when the precision gap in success and return is within the spread between seeds of one
precision. ``--parallel`` runs cells side by side (on a GPU they share it); ``--timeout`` stops a cell and keeps the
evaluations it wrote (``eval.json`` is rewritten at every evaluation). Prints each cell's learning curve, then the
mean per precision. Last line: ``bf16_minus_fp32_success: X`` (final success, mean over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cell_command(args: argparse.Namespace, precision: str, seed: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "visarl.fit",
        "--config",
        str(ROOT / "conf/rl/cnn_rgb.yaml"),
        f"output_dir={args.out}",
        "name=bf16_reach",
        f"run={precision}_seed{seed}",
        f"seed={seed}",
        f"encoder_precision={precision}",
        f"env.task={args.task}",
        f"num_steps={args.steps}",
        f"num_envs={args.num_envs}",
        f"env.episode_length={args.episode_length}",
        f"eval.every={args.eval_every}",
        f"eval.episodes={args.eval_episodes}",
        f"eval.num_envs={min(args.eval_episodes, 5)}",
        f"checkpoint_every={args.steps}",
        "trainer.enable_progress_bar=false",
    ]


def online(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bf16_reach.py online")
    parser.add_argument("--task", default="reach")
    parser.add_argument("--steps", type=int, default=30_000, help="env steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--episode-length", type=int, default=150, help="reach is solved well inside 150 steps")
    parser.add_argument("--eval-every", type=int, default=5000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--num-envs", type=int, default=4, help="envs per run")
    parser.add_argument("--parallel", type=int, default=4, help="runs at a time")
    parser.add_argument("--timeout", type=float, default=0, help="seconds per run, 0: none (partial curves kept)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench"), help="output_dir of the runs")
    args = parser.parse_args(argv)

    cells = [(p, s) for s in args.seeds for p in ("32", "bf16")]
    pending, running = list(cells), []
    logs = Path(args.out) / "bf16_reach"
    logs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    while pending or running:
        while pending and len(running) < args.parallel:
            p, s = pending.pop(0)
            log = open(logs / f"{p}_seed{s}.log", "w")  # noqa: SIM115 - closed when the process ends
            proc = subprocess.Popen(cell_command(args, p, s), stdout=log, stderr=subprocess.STDOUT, env=os.environ)
            running.append((proc, log, time.perf_counter(), p, s))
        time.sleep(2)
        for item in list(running):
            proc, log, t0, p, s = item
            late = args.timeout and time.perf_counter() - t0 > args.timeout
            if proc.poll() is None and late:
                proc.kill()
                print(f"{p} seed {s}: stopped after {args.timeout:.0f} s (curve so far kept)", flush=True)
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                print(f"{p} seed {s}: exit {proc.returncode} after {time.perf_counter() - t0:.0f} s", flush=True)

    finals: dict[str, dict[str, list[float]]] = {p: {"success": [], "return": []} for p in ("32", "bf16")}
    print(f"\n{'run':<14} curve (env step: success / return)")
    for p, s in cells:
        path = logs / f"{p}_seed{s}" / "eval.json"
        if not path.exists():
            print(f"{p}_seed{s:<8} no evaluation written (see {logs / f'{p}_seed{s}.log'})")
            continue
        curve = json.loads(path.read_text())["curve"]
        points = "  ".join(f"{c['step']}: {c['success_rate']:.2f}/{c['return']:.0f}" for c in curve)
        print(f"{p + '_seed' + str(s):<14} {points}")
        if curve:
            finals[p]["success"].append(curve[-1]["success_rate"])
            finals[p]["return"].append(curve[-1]["return"])
    print(f"\nwall time {time.perf_counter() - start:.0f} s")
    for p, f in finals.items():
        if f["success"]:
            sd = statistics.pstdev(f["success"]) if len(f["success"]) > 1 else 0.0
            print(
                f"{p:>5}: final success {statistics.mean(f['success']):.2f} +- {sd:.2f}, "
                f"return {statistics.mean(f['return']):.0f} (seeds: {f['success']})"
            )
    if finals["32"]["success"] and finals["bf16"]["success"]:
        gap = statistics.mean(finals["bf16"]["success"]) - statistics.mean(finals["32"]["success"])
        print(f"bf16_minus_fp32_success: {gap:.2f}")


def offline(argv: list[str]) -> None:
    import numpy as np
    import torch

    from visarl.data.datamodules import ReplayBuffer, shard_readers
    from visarl.rl.encoders import PixelCNN
    from visarl.rl.sac import SACAgent, make_optimizers
    from visarl.rl.stage import SACConfig

    parser = argparse.ArgumentParser(prog="bf16_reach.py offline")
    parser.add_argument("--data", nargs="+", default=None, help="shard dirs (default: the newest quickstart run's)")
    parser.add_argument("--updates", type=int, default=120)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=1024, help="head width (paper: 1024)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.data is None:
        found = sorted(ROOT.glob("runs/quickstart/*/data/replay"))
        if not found:
            sys.exit("no --data given and no runs/quickstart/*/data/replay: run the quickstart or pass shard dirs")
        args.data = [str(found[-1])]
    readers = shard_readers(args.data, ["rgb"])
    rows = sum(len(r) for r in readers)
    size = readers[0].fields["rgb"][0][1]
    buf = ReplayBuffer(rows + 1, {"rgb": ((3, size, size), np.dtype(np.uint8))}, 4)
    for r in readers:
        buf.load_shard(r)
    print(f"{len(buf)} transitions from {args.data}; rewards mean {buf.reward[: buf.size].mean():.2f}")
    probe_batch = buf.sample(256, np.random.default_rng(12345))
    sac = SACConfig(hidden_dim=args.hidden)

    def make(dtype: torch.dtype | None, batch_seed: int) -> tuple:
        torch.manual_seed(0)  # the same initial weights for every agent
        agent = SACAgent(PixelCNN("rgb", (size, size)), 4, encoder_dtype=dtype, **sac.agent_kwargs())
        torch.manual_seed(batch_seed)  # the policy's sampling noise stream follows the batch seed
        opts = make_optimizers(agent, **sac.optimizer_kwargs())
        return agent, opts, np.random.default_rng(batch_seed), torch.get_rng_state()

    agents = {"fp32": make(None, 1), "bf16": make(torch.bfloat16, 1), "fp32_seed2": make(None, 2)}
    noise = {k: v[3] for k, v in agents.items()}

    @torch.no_grad()
    def probe(agent: SACAgent) -> tuple[torch.Tensor, torch.Tensor]:
        """min(Q1, Q2) [256] and the deterministic action [256, 4] on the probe transitions."""
        agent.eval()
        q1, q2 = agent.critic(agent.encode(probe_batch.obs), probe_batch.action)
        action = agent.act(probe_batch.obs, deterministic=True).float()
        agent.train()
        return torch.min(q1, q2).float(), action

    def rms(a: torch.Tensor, b: torch.Tensor) -> float:
        return (a - b).pow(2).mean().sqrt().item()

    print(
        f"{'update':>6} {'Q mean fp32/bf16/fp32_s2':>26} {'Q: bf16-fp32':>13} {'s2-fp32':>8} {'ratio':>6} "
        f"{'action: bf16-fp32':>18} {'s2-fp32':>8}"
    )
    ratio = float("nan")
    start = time.perf_counter()
    for u in range(0, args.updates + 1, args.every):
        out = {k: probe(a) for k, (a, *_rest) in agents.items()}
        q_bf16, q_seed = rms(out["bf16"][0], out["fp32"][0]), rms(out["fp32_seed2"][0], out["fp32"][0])
        a_bf16, a_seed = rms(out["bf16"][1], out["fp32"][1]), rms(out["fp32_seed2"][1], out["fp32"][1])
        ratio = q_bf16 / q_seed if q_seed > 0 else float("nan")
        means = "/".join(f"{out[k][0].mean().item():.2f}" for k in agents)
        print(
            f"{u:>6} {means:>26} {q_bf16:>13.4f} {q_seed:>8.4f} {ratio:>6.2f} {a_bf16:>18.4f} {a_seed:>8.4f}",
            flush=True,
        )
        if u == args.updates:
            break
        for k, (agent, opts, rng, _) in agents.items():
            torch.set_rng_state(noise[k])
            for i in range(u, u + args.every):
                agent.update(buf.sample(args.batch, rng), opts, i, **sac.update_kwargs())
            noise[k] = torch.get_rng_state()
    print(f"{args.updates} updates per agent in {time.perf_counter() - start:.0f} s")
    print(f"bf16_vs_seed_q_distance: {ratio:.2f}")


if __name__ == "__main__":
    modes = {"online": online, "offline": offline}
    if len(sys.argv) < 2 or sys.argv[1] not in modes:
        sys.exit(f"usage: {sys.argv[0]} {{online,offline}} [options]  (see the docstring)")
    modes[sys.argv[1]](sys.argv[2:])
