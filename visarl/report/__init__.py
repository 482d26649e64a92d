"""Aggregation of rl runs into the paper's Table I and Figure 3."""

from visarl.report.results import METHODS, PAPER_TABLE1, TASKS, RunResult, collect_results, load_run, method_of
from visarl.report.tables import aggregate_curves, table_cells, write_figure3, write_table1

__all__ = [
    "METHODS",
    "PAPER_TABLE1",
    "TASKS",
    "RunResult",
    "aggregate_curves",
    "collect_results",
    "load_run",
    "method_of",
    "table_cells",
    "write_figure3",
    "write_table1",
]
