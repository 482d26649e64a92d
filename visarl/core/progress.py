"""Progress bars for visarl's own loops (collect, label, demos, evaluation rollouts): one look, a known total.

A bar is made only with its total, so tqdm can show the rate and the time left; it is drawn by rank zero only,
since every rank of a multi-process run steps the same loop.
"""

from __future__ import annotations

from tqdm import tqdm

from visarl.core.log import process_rank


def progress(total: int, desc: str, unit: str, enabled: bool = True, leave: bool = True) -> tqdm:
    """A tqdm bar over ``total`` ``unit``s; ``enabled=False`` (or a rank other than zero) draws nothing.

    ``leave=False`` clears the bar when it closes: for inner loops (an evaluation inside training) whose
    finished bars would only fill the console.
    """
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        dynamic_ncols=True,
        leave=leave,
        disable=not enabled or process_rank() != 0,
    )
