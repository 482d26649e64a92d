"""Table I (markdown + CSV) and Figure 3 (PNG learning curves) from gathered run results."""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from visarl.core.io import atomic_savefig, atomic_write_text
from visarl.report.results import (
    METHODS,
    ORACLE_FOOTNOTE,
    ORACLE_MARK,
    PAPER_TABLE1,
    PROBE_STATE,
    TASKS,
    ProbeResult,
    RunResult,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MISSING = "—"


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1, None for a single seed) over seeds."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)


def table_cells(results: list[RunResult]) -> dict[tuple[str, str], tuple[float, float | None, int]]:
    """(row, task) -> (mean, std, number of seeds) over runs that finished an evaluation.

    The row is the run's ``label``: its method, or the method marked with a dagger when the policy read oracle
    saliency, so privileged runs never share a mean with PiCANet ones.
    """
    finals: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in results:
        if r.final_success is not None:
            finals[(r.label, r.task)].append(r.final_success)
    return {key: (*mean_std(vals), len(vals)) for key, vals in finals.items()}


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return MISSING
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _base(row: str) -> str:
    return row.removesuffix(f" {ORACLE_MARK}")


def _row_order(rows: set[str]) -> list[str]:
    """Table I's methods in the paper's order, each followed by its oracle row if any, then unknown methods."""
    order = []
    for m in METHODS:
        order += [m] + ([f"{m} {ORACLE_MARK}"] if f"{m} {ORACLE_MARK}" in rows else [])
    return order + sorted(rows - set(order))


def _rows(results: list[RunResult]) -> tuple[list[str], list[str], list[list[str]]]:
    cells = table_cells(results)
    methods = _row_order({m for m, _ in cells})
    tasks = list(TASKS) + sorted({t for _, t in cells} - set(TASKS))
    header = ["Method"]
    for t in tasks:
        header += [f"{t} (ours)", f"{t} (paper)"]
    header += ["Average (ours)", "Average (paper)", "seeds"]
    rows = []
    for m in methods:
        row, ours, seeds = [m], [], []
        paper = PAPER_TABLE1.get(_base(m), {})
        for t in tasks:
            mean, std, n = cells.get((m, t), (None, None, 0))
            row += [_fmt(mean, std), _fmt(*paper[t]) if t in paper else MISSING]
            ours.append(mean)
            seeds.append(n)
        # The average is shown only when every task has a result: a partial average would mislead.
        avg = None if any(v is None for v in ours) else float(np.mean(ours))
        paper_avg = float(np.mean([paper[t][0] for t in TASKS])) if all(t in paper for t in TASKS) else None
        row += [_fmt(avg, None), _fmt(paper_avg, None), "/".join(str(n) for n in seeds)]
        rows.append(row)
    return methods, header, rows


def write_table1(results: list[RunResult], out_dir: Path) -> tuple[Path, Path]:
    """Write ``table1.md`` and ``table1.csv``; missing cells are shown as missing, never filled in."""
    out_dir.mkdir(parents=True, exist_ok=True)
    methods, header, rows = _rows(results)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    oracle = any(m.endswith(ORACLE_MARK) for m in methods)
    md_path = atomic_write_text(
        out_dir / "table1.md",
        "Success rate (final evaluation; mean ± sample std over seeds; 'seeds' counts runs per task).\n\n"
        + "\n".join(md)
        + "\n"
        + (f"\n{ORACLE_FOOTNOTE}\n" if oracle else ""),
    )
    csv_path = atomic_write_text(out_dir / "table1.csv", _csv([header, *rows]))  # rows keep their dagger
    return md_path, csv_path


def _csv(rows: list[list[str]]) -> str:
    """``rows`` as CSV text (the csv module's line endings)."""
    text = io.StringIO(newline="")
    csv.writer(text).writerows(rows)
    return text.getvalue()


def aggregate_curves(runs: list[RunResult]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Mean and standard error over seeds on the union of evaluation steps that every seed reached."""
    runs = [r for r in runs if len(r.steps)]
    if not runs:
        return None
    last = min(int(r.steps[-1]) for r in runs)
    grid = np.unique(np.concatenate([r.steps[r.steps <= last] for r in runs]))
    values = np.stack([np.interp(grid, r.steps, r.success) for r in runs])
    mean = values.mean(axis=0)
    sem = values.std(axis=0, ddof=1) / math.sqrt(len(runs)) if len(runs) > 1 else np.zeros_like(mean)
    return grid, mean, sem


def write_figure3(results: list[RunResult], out_dir: Path) -> Path:
    """Figure 3: success-rate curves per task (columns), CNN methods on top and MultiMAE methods below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = list(TASKS) + sorted({r.task for r in results} - set(TASKS))
    rows = _row_order({r.label for r in results} | set(METHODS))
    panels = [
        ("CNN", [m for m in rows if m.startswith("CNN")]),
        ("MultiMAE", [m for m in rows if m.startswith("MMAE")]),
    ]
    fig, axes = plt.subplots(2, len(tasks), figsize=(3.6 * len(tasks), 6.4), squeeze=False, sharey=True)
    by_key: dict[tuple[str, str], list[RunResult]] = defaultdict(list)
    for r in results:
        by_key[(r.label, r.task)].append(r)
    colors = plt.get_cmap("tab10")
    for row, (family, methods) in enumerate(panels):
        for col, task in enumerate(tasks):
            ax = axes[row, col]
            drawn = 0
            for k, method in enumerate(methods):
                curve = aggregate_curves(by_key.get((method, task), []))
                if curve is None:
                    continue
                drawn += 1
                steps, mean, sem = curve
                ax.plot(steps, mean, color=colors(k), label=method, lw=1.6)
                ax.fill_between(steps, mean - sem, mean + sem, color=colors(k), alpha=0.2, lw=0)
            if not drawn:  # say so, rather than leave an empty axis that looks like a plotting bug
                ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes, color="0.5")
            ax.set_title(f"{task} ({family})", fontsize=10)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel("environment steps")
            if col == 0:
                ax.set_ylabel("success rate")
        handles = [plt.Line2D([], [], color=colors(k), lw=2) for k in range(len(methods))]
        axes[row, -1].legend(handles, methods, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("Success rate (mean ± standard error over seeds)", fontsize=11)
    fig.tight_layout()
    path = atomic_savefig(fig, out_dir / "figure3.png", dpi=120)
    plt.close(fig)
    return path


# -- probes -------------------------------------------------------------------------------------------

PROBE_METHODS: tuple[str, ...] = (PROBE_STATE, *METHODS)
"""Probe rows: the state sanity row, then Table I's methods."""


def probe_cells(results: list[ProbeResult]) -> dict[tuple[str, str], dict[str, tuple[float, float | None, int]]]:
    """(method, task) -> {"final": (mean, std, seeds), "best": (...)} over probes that reached their last step."""
    values: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: {"final": [], "best": []})
    for r in results:
        if r.final_success is not None:
            values[(r.method, r.task)]["final"].append(r.final_success)
            values[(r.method, r.task)]["best"].append(r.best_success if r.best_success is not None else math.nan)
    return {key: {k: (*mean_std(v), len(v)) for k, v in d.items()} for key, d in values.items()}


def probe_rows(results: list[ProbeResult]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the probe table: per task, final and best success (mean ± std over seeds)."""
    cells = probe_cells(results)
    methods = [m for m in PROBE_METHODS if any(k[0] == m for k in cells)]
    methods += sorted({m for m, _ in cells} - set(PROBE_METHODS))
    tasks = [t for t in TASKS if any(k[1] == t for k in cells)] + sorted({t for _, t in cells} - set(TASKS))
    header = ["Method"]
    for t in tasks:
        header += [f"{t} final", f"{t} best"]
    header += ["seeds"]
    rows = []
    for m in methods:
        row, seeds = [m], []
        for t in tasks:
            cell = cells.get((m, t))
            if cell is None:
                row += [MISSING, MISSING]
                seeds.append(0)
            else:
                row += [_fmt(*cell["final"][:2]), _fmt(*cell["best"][:2])]
                seeds.append(cell["final"][2])
        rows.append(row + ["/".join(str(n) for n in seeds)])
    return header, rows


def write_probe_table(results: list[ProbeResult], out_dir: Path) -> tuple[Path, Path]:
    """Write ``probe.md`` and ``probe.csv`` beside Table I."""
    out_dir.mkdir(parents=True, exist_ok=True)
    header, rows = probe_rows(results)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md_path = atomic_write_text(
        out_dir / "probe.md",
        "Probe: behaviour cloning from the scripted expert's demos; success rate at the last evaluation (final)\n"
        "and the best evaluation (best); mean ± sample std over seeds.\n\n" + "\n".join(md) + "\n",
    )
    csv_path = atomic_write_text(out_dir / "probe.csv", _csv([header, *rows]))
    return md_path, csv_path


def probe_figure(results: list[ProbeResult]) -> Figure:
    """Bars of final probe success per method (colours) and task (groups), with the seeds' std as error bars;
    a matplotlib Figure with a constrained layout (the title and the legend outside the axes stay inside it)."""
    import matplotlib
    from matplotlib.figure import Figure

    cells = probe_cells(results)
    methods = [m for m in PROBE_METHODS if any(k[0] == m for k in cells)]
    methods += sorted({m for m, _ in cells} - set(PROBE_METHODS))
    tasks = [t for t in TASKS if any(k[1] == t for k in cells)] + sorted({t for _, t in cells} - set(TASKS))
    fig = Figure(figsize=(max(4.0, 1.6 * len(tasks) * max(1, len(methods)) / 3 + 2), 3.6), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(methods))
    colors = matplotlib.colormaps["tab10"]
    for k, m in enumerate(methods):
        xs, means, stds = [], [], []
        for i, t in enumerate(tasks):
            cell = cells.get((m, t))
            if cell is None:
                continue
            mean, std, _ = cell["final"]
            xs.append(i - 0.4 + width * (k + 0.5))
            means.append(mean)
            stds.append(std or 0.0)
        ax.bar(xs, means, width, yerr=stds, color=colors(k % 10), label=m, capsize=2)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (final)")
    ax.set_title(
        "Probe: behaviour cloning from scripted-expert demos\n(final success, mean ± std over seeds)", fontsize=10
    )
    ax.grid(axis="y", alpha=0.3)
    if methods:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def write_probe_figure(results: list[ProbeResult], out_dir: Path) -> Path:
    """:func:`probe_figure` saved as ``<out_dir>/probe.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return atomic_savefig(probe_figure(results), out_dir / "probe.png", dpi=120)
