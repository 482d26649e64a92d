"""Publish an experiment's results into ``docs/results/``: a Table I, a Figure 3 PNG and a JSON, generated.

Nothing in ``docs/results/<name>.*`` is typed by hand: this module reads the rl cells under a directory,
names the commit of the checkout that ran them (refusing to guess when the checkout had local changes),
and writes

- ``<name>.json``: ``{"task", "env_steps", "methods": {method: [final success per seed]}, ...}``;
- ``<name>.png``: success-rate curves, mean ± standard error over seeds, one panel per task;
- ``<name>.md``: the table (final and best evaluation, mean ± sample std over seeds, per-seed values), the
  figure, and the exact command and commit.

Usage::

    python -m visarl.report.publish --cells runs/cpu/r1/matrix/cells --name cpu \\
        --command "python -m visarl.fit --config conf/experiment/cpu.yaml run=r1"
"""

from __future__ import annotations

import argparse
import json
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np

from visarl.core.io import atomic_savefig, atomic_write_text
from visarl.report.results import METHODS, RunResult, collect_results
from visarl.report.tables import aggregate_curves, mean_std


def checkout_commit(path: Path) -> str:
    """The commit of the git checkout holding ``path``, with ``+local changes`` when its tracked files differ."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown (not in a git checkout)"
    return commit + (" +local changes" if dirty else "")


def _ordered(methods: set[str]) -> list[str]:
    return [m for m in METHODS if m in methods] + sorted(methods - set(METHODS))


def finished(run: RunResult) -> bool:
    """A run that ran to its end (the rl stage writes ``summary.json`` last); others are still in progress."""
    return (run.run_dir / "summary.json").is_file()


def returns_curve(run: RunResult) -> tuple[np.ndarray, np.ndarray]:
    """Evaluation steps and mean episode returns from ``eval.json`` (success alone hides a rising return)."""
    path = run.run_dir / "eval.json"
    curve = json.loads(path.read_text()).get("curve", []) if path.is_file() else []
    return np.array([c["step"] for c in curve]), np.array([c.get("return", np.nan) for c in curve], dtype=float)


def summarise(results: list[RunResult]) -> dict:
    """Per (task, method): seeds, final and best success and final return per seed, and the steps reached."""
    by: dict[tuple[str, str], list[RunResult]] = defaultdict(list)
    for r in results:
        by[(r.task, r.method)].append(r)
    out: dict = {}
    for (task, method), runs in sorted(by.items()):
        runs = sorted(runs, key=lambda r: r.seed)
        out.setdefault(task, {})[method] = {
            "seeds": [r.seed for r in runs],
            "final": [r.final_success for r in runs],
            "best": [float(np.max(r.success)) if len(r.success) else None for r in runs],
            "final_return": [float(returns_curve(r)[1][-1]) if len(returns_curve(r)[1]) else None for r in runs],
            "last_step": [int(r.steps[-1]) if len(r.steps) else 0 for r in runs],
            "runs": [str(r.run_dir) for r in runs],
        }
    return out


def _per_method(summary: dict, tasks: list[str], key: str) -> dict:
    if len(tasks) == 1:
        return {m: v[key] for m, v in summary[tasks[0]].items()}
    return {t: {m: v[key] for m, v in summary[t].items()} for t in tasks}


def _fmt(values: list[float | None], digits: int = 2) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    mean, std = mean_std(vals)
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def write_figure(results: list[RunResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r.task for r in results})
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.8 * len(tasks), 6.2), squeeze=False)
    colors = plt.get_cmap("tab10")
    for col, task in enumerate(tasks):
        methods = _ordered({r.method for r in results if r.task == task})
        for k, method in enumerate(methods):
            runs = [r for r in results if r.task == task and r.method == method]
            success = aggregate_curves(runs)
            with_returns = [RunResult(r.run_dir, r.task, r.method, r.seed, None, *returns_curve(r)) for r in runs]
            for row, curve in enumerate((success, aggregate_curves(with_returns))):
                if curve is None:
                    continue
                steps, mean, sem = curve
                ax = axes[row, col]
                ax.plot(steps, mean, color=colors(k), lw=1.8, marker="o", ms=3, label=f"{method} (n={len(runs)})")
                ax.fill_between(steps, mean - sem, mean + sem, color=colors(k), alpha=0.2, lw=0)
        axes[0, col].set_title(task, fontsize=10)
        axes[0, col].set_ylim(-0.02, 1.02)
        axes[0, col].set_ylabel("success rate")
        axes[1, col].set_ylabel("episode return")
        for ax in axes[:, col]:
            ax.set_xlabel("environment steps")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Evaluation success and return (mean ± standard error over seeds)", fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def publish(cells: Path, out_dir: Path, name: str, command: str, title: str = "", notes: str = "") -> dict:
    """Write ``<name>.json``, ``<name>.png`` and ``<name>.md`` under ``out_dir``; returns the JSON."""
    found = collect_results([cells])
    results = [r for r in found if finished(r) and r.final_success is not None]
    in_progress = sorted(str(r.run_dir) for r in found if not finished(r))
    if not results:
        raise SystemExit(f"publish: no finished rl run under {cells}")
    summary = summarise(results)
    tasks = sorted(summary)
    commit = checkout_commit(cells)
    env_steps = max((int(r.steps[-1]) for r in results if len(r.steps)), default=0)
    doc = {
        "task": tasks[0] if len(tasks) == 1 else tasks,
        "env_steps": env_steps,
        # one task: {method: [final per seed]}; several: {task: {method: [...]}}
        "methods": _per_method(summary, tasks, "final"),
        "best": _per_method(summary, tasks, "best"),
        "seeds": _per_method(summary, tasks, "seeds"),
        "final_return": _per_method(summary, tasks, "final_return"),
        "in_progress": in_progress,
        "commit": commit,
        "command": command,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / f"{name}.json", json.dumps(doc, indent=2) + "\n")
    write_figure(results, out_dir / f"{name}.png")

    lines = [f"# {title or name}", ""]
    lines += [
        "Generated by `visarl.report.publish` from the runs themselves; do not edit by hand.",
        "",
        f"- command: `{command}`",
        f"- commit: `{commit}`",
        f'- published with: `python -m visarl.report.publish --cells {cells} --name {name} --command "..."`',
        "",
    ]
    for task in tasks:
        lines += [
            f"## Table I, {task} (success over the evaluation episodes; mean ± sample std over seeds)",
            "",
            "| Method | final success | best during training | per seed (final) | final return | env steps |",
            "|---|---|---|---|---|---|",
        ]
        for method in _ordered(set(summary[task])):
            v = summary[task][method]
            per_seed = ", ".join("—" if f is None else f"{f:.2f}" for f in v["final"])
            steps = "/".join(str(s) for s in v["last_step"])
            ret = _fmt(v["final_return"], 0)
            lines.append(f"| {method} | {_fmt(v['final'])} | {_fmt(v['best'])} | {per_seed} | {ret} | {steps} |")
        lines.append("")
    if in_progress:
        lines += ["Not counted (still running when this was published):", ""]
        lines += [f"- `{d}`" for d in in_progress] + [""]
    lines += ["## Figure 3 at this scale", "", f"![success curves]({name}.png)", ""]
    if notes:  # the reading of the numbers, written by people; the numbers above stay generated
        lines += [notes.rstrip(), ""]
    atomic_write_text(out_dir / f"{name}.md", "\n".join(lines))
    return doc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=Path, required=True, help="directory searched for rl runs")
    parser.add_argument("--name", required=True, help="file stem under --out (e.g. cpu)")
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    parser.add_argument("--command", required=True, help="the exact command that produced the runs")
    parser.add_argument("--title", default="")
    parser.add_argument("--notes", type=Path, help="markdown appended after the figure (what the numbers show)")
    args = parser.parse_args(argv)
    notes = args.notes.read_text() if args.notes else ""
    doc = publish(args.cells, args.out, args.name, args.command, args.title, notes)
    print(json.dumps({k: doc[k] for k in ("task", "env_steps", "methods", "commit")}, indent=1))


if __name__ == "__main__":
    main()
