"""The representation probe at a CPU scale: does saliency pretraining help a frozen MultiMAE clone an expert?

    python benchmarks/probe.py                                  # reach + drawer-open, 3 seeds (about an hour, 2 cores)
    python benchmarks/probe.py --tasks reach --seeds 0          # one task, one seed
    python benchmarks/probe.py --out runs/bench_probe           # rerun: finished steps and cells are skipped
    python benchmarks/probe.py --out runs/bench_probe --summarize   # the table of what has finished; runs nothing

For each task, one pipeline (conf/experiment-style, written to ``<out>/<task>.yaml``) builds everything the rows
need, at a CPU scale: a pretraining dataset from the scripted expert with action noise (``collect policy:
scripted``), 30 frames clicked by the simulated annotator, a PiCANet trained on them (``--saliency-config``,
default the quickstart's 1/8-width, 30-epoch recipe), a saliency map for every frame, MultiMAE encoders on rgb and
on rgb + saliency (conf/cpu/pretrain.yaml, ``--epochs``), then the probe matrix (conf/probe/reach.yaml's rows: 25
demos per (task, seed), shared by the rows, BatchNorm + 2x256 MLP, 2000 BC steps, success over 50 episodes at
steps 1000 and 2000) for the rows state, MMAE RGB and MMAE RGB+Saliency (saliency predicted by the PiCANet).

Prints a table of final and best success (mean ± std over seeds) and the mean wall time of one probe per row,
and as its last line ``probe_state_success: X``, the state row's mean final success on reach. The table, with
every seed's numbers, the arguments and the commit, also goes to ``<out>/probe_table.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import visarl.fit
from visarl.core.io import atomic_write_json
from visarl.report.publish import checkout_commit
from visarl.report.results import collect_probe_results

PIPELINE = """\
stage: pipeline
task: {task}
steps:
  - name: collect
    config: conf/collect/scripted_reach.yaml
    overrides: ["data_dir={{data}}/replay", "env.task={{task}}", "num_steps={collect_steps}", "num_envs=1",
                "async_envs=false", "env.episode_length=200", "rows_per_shard=2500"]
  - name: annotate
    config: conf/quickstart/annotate.yaml
    overrides: ["task={{task}}", "data_dir={{data}}/replay", "store={{data}}/annotations/simulated.jsonl",
                "export={{data}}/annotations.h5"]
  - name: saliency
    config: {saliency_config}
    overrides: ["task={{task}}", "annotations={{data}}/annotations.h5"]
  - name: label
    config: conf/quickstart/label.yaml
    overrides: ["task={{task}}", "data_dir={{data}}/replay", "checkpoint={{step:saliency}}/picanet.pt"]
  - name: pretrain_rgb
    config: conf/cpu/pretrain.yaml
    overrides: ["task={{task}}", "data_dirs=[{{data}}/replay]", "modalities=[rgb]", "trainer.max_epochs={epochs}",
                "trainer.enable_progress_bar=false"]
  - name: pretrain_rgb_sal
    config: conf/cpu/pretrain.yaml
    overrides: ["task={{task}}", "data_dirs=[{{data}}/replay]", "modalities=[rgb,saliency]",
                "trainer.max_epochs={epochs}", "trainer.enable_progress_bar=false"]
  - name: matrix
    config: {matrix}
    overrides: ["tasks=[{{task}}]", "root={{run_dir}}/matrix/cells",
                "params.rgb_encoder={{step:pretrain_rgb}}/encoder.pt",
                "params.rgb_sal_encoder={{step:pretrain_rgb_sal}}/encoder.pt",
                "params.picanet={{step:saliency}}/picanet.pt", "params.demos={{run_dir}}/matrix/demos"]
"""

MATRIX = """\
# The probe matrix of benchmarks/probe.py (written by it): conf/probe/matrix.yaml's rows at the benchmark's sizes.
stage: experiment
tasks: [reach]
seeds: {seeds}
parallel: 1
params: {{rgb_encoder: "", rgb_sal_encoder: "", picanet: "", demos: ""}}
overrides: ["demo_dir={{demos}}/{{task}}/seed{{seed}}", "env.episode_length={episode_length}", "torch_threads=1",
            "trainer.enable_progress_bar=false"]
methods: {methods}
"""

ROWS = {
    "state": ("State", '{name: state, config: conf/probe/reach.yaml, overrides: ["encoder=state"]}'),
    "mmae_rgb": (
        "MMAE RGB",
        '{name: mmae_rgb, config: conf/probe/reach.yaml, overrides: ["encoder=mmae", "variant=rgb", '
        '"encoder_ckpt={rgb_encoder}", "modalities=[rgb]"]}',
    ),
    "mmae_rgb_sal": (
        "MMAE RGB+Saliency",
        '{name: mmae_rgb_sal, config: conf/probe/reach.yaml, overrides: ["encoder=mmae", "variant=rgbs", '
        '"encoder_ckpt={rgb_sal_encoder}", "modalities=[rgb,saliency]", "saliency=picanet", '
        '"saliency_ckpt={picanet}"]}',
    ),
}


def _fmt(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["reach", "drawer-open"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--collect-steps", type=int, default=5000, help="frames of the pretraining dataset")
    parser.add_argument("--epochs", type=int, default=20, help="MultiMAE pretraining epochs (conf/cpu/pretrain.yaml)")
    parser.add_argument(
        "--saliency-config",
        default="conf/quickstart/saliency.yaml",
        help="PiCANet recipe (conf/cpu/saliency.yaml: 1/4 width, 150 epochs, a few minutes more)",
    )
    parser.add_argument("--episode-length", type=int, default=150, help="probe episodes (the experts need < 100)")
    parser.add_argument("--out", default="runs/bench_probe")
    parser.add_argument("--summarize", action="store_true", help="print the table of the cells in --out; run nothing")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    matrix = out / "matrix.yaml"
    matrix.write_text(
        MATRIX.format(
            seeds="[" + ",".join(map(str, args.seeds)) + "]",
            episode_length=args.episode_length,
            methods="[" + ", ".join(ROWS[r][1] for r in args.rows) + "]",
        )
    )
    pipeline_seconds = {}
    for task in [] if args.summarize else args.tasks:
        config = out / f"{task}.yaml"
        config.write_text(
            PIPELINE.format(
                task=task,
                collect_steps=args.collect_steps,
                epochs=args.epochs,
                matrix=matrix,
                saliency_config=args.saliency_config,
            )
        )
        run_dir = out / "pipelines" / task
        t0 = time.perf_counter()
        if (run_dir / "config.yaml").exists():
            visarl.fit.run(resume=str(run_dir))
        else:
            visarl.fit.run(str(config), [f"output_dir={out}", "name=pipelines", f"run={task}"])
        pipeline_seconds[task] = time.perf_counter() - t0

    # the report stage's reader of probe runs, its method names being the rows' labels
    label_to_row = {label: row for row, (label, _) in ROWS.items() if row in args.rows}
    table: dict[tuple[str, str], dict[str, list[float]]] = {
        (row, task): {"seeds": [], "final": [], "best": [], "seconds": []} for task in args.tasks for row in args.rows
    }
    for task in args.tasks:
        for r in sorted(collect_probe_results([out / "pipelines" / task / "matrix" / "cells"]), key=lambda r: r.seed):
            row = label_to_row.get(r.method)
            if row is None or r.task != task or r.seed not in args.seeds or r.final_success is None:
                continue
            cell = table[(row, task)]
            cell["seeds"].append(r.seed)
            cell["final"].append(r.final_success)
            cell["best"].append(r.best_success)
            cell["seconds"].append(r.seconds)
    header = ["Method"] + [f"{t} {k}" for t in args.tasks for k in ("final", "best")] + ["s / probe"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in args.rows:
        cells, secs = [], []
        for task in args.tasks:
            c = table[(row, task)]
            cells += [_fmt(c["final"]), _fmt(c["best"])]
            secs += c["seconds"]
        wall = f"{statistics.mean(secs):.0f}" if secs else "—"
        print(f"| {ROWS[row][0]} | " + " | ".join(cells) + f" | {wall} |")
    for task, s in pipeline_seconds.items():
        print(f"pipeline {task}: {s / 60:.1f} min (data, PiCANet, labels, two MultiMAE encoders, probes)")
    atomic_write_json(
        out / "probe_table.json",
        {
            "commit": checkout_commit(Path(__file__).resolve().parent),
            "args": vars(args),
            "pipeline_seconds": pipeline_seconds,
            "cells": [{"row": row, "task": task, **cell} for (row, task), cell in table.items()],
        },
    )
    state = table.get(("state", "reach"), {}).get("final", [])
    print(f"probe_state_success: {statistics.mean(state) if state else float('nan'):.3f}")


if __name__ == "__main__":
    main()
