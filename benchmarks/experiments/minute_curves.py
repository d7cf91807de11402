"""The benchmarks' curves against training minutes (the wall-clock budget's own axis),
built on conal_rl.analysis.curves.read_curves.

Runs of one row evaluate at the same env steps, so their curves average point by point
(conal_rl.analysis.curves.band). Against minutes every run evaluates at its own times:
each is read on a shared grid as its latest evaluation at or before each point (what a
user stopping the run then has).
"""

from __future__ import annotations

import numpy as np

from conal_rl.analysis.curves import Band
from conal_rl.analysis.stats import mean_se

# A minutes-bound run stops at the first env step past its budget and evaluates there, a
# few seconds late: a grid point within this many minutes before an evaluation reads it.
MARK_GRACE = 0.1


def value_at(xs: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The latest value at or before each grid point, give or take ``MARK_GRACE``; nan
    before the first evaluation and past the last one (a run not trained that far)."""
    index = np.searchsorted(xs - MARK_GRACE, grid, side="right") - 1
    read = np.where(index >= 0, values[np.maximum(index, 0)], np.nan)
    return np.where(grid <= (xs[-1] if len(xs) else -np.inf) + MARK_GRACE, read, np.nan)


def minutes_band(label: str, curves: list[tuple[np.ndarray, np.ndarray]],
                 minutes: float, points: int = 241) -> Band:
    """Mean ± s.e. over runs on a grid of training minutes, up to where every run got."""
    grid = np.linspace(0, minutes, points)
    values = np.array([value_at(m, v, grid) for m, v in curves])
    keep = ~np.isnan(values).any(axis=0)
    mean, se = mean_se(values[:, keep])
    return Band(label, len(curves), grid[keep], mean, se)
