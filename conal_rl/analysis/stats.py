"""Statistics over several runs: mean ± standard error and the interquartile mean.

Scores are ``[runs, tasks]`` matrices (e.g. success rates). Per task and overall we report
the mean over runs with its standard error; the interquartile mean (IQM) over all
run-task scores comes with a stratified-bootstrap 95% interval, as in Agarwal et al. 2021,
"Deep RL at the edge of the statistical precipice" (the ``rliable`` package). Numbers in,
numbers out: no I/O and nothing about runs or their configurations (that is grouping.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

IQM_RESAMPLES = 10_000


def mean_se(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error of the mean (sample std / sqrt(n)) along ``axis``; the
    standard error is NaN with fewer than two values."""
    values = np.asarray(values, dtype=float)
    n = values.shape[axis]
    mean = values.mean(axis=axis)
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    return mean, values.std(axis=axis, ddof=1) / np.sqrt(n)


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of all scores: the mean of the middle 50% (25% cut each end)."""
    from scipy import stats  # loaded when used: a command's flags are checked first

    return float(stats.trim_mean(np.asarray(scores, dtype=float), 0.25, axis=None))


def iqm_interval(scores: np.ndarray, confidence: float = 0.95,
                 resamples: int = IQM_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the IQM of ``scores [runs, tasks]``, stratified by
    task (runs are resampled within each task, as rliable does). NaN with one run."""
    from scipy import stats

    scores = np.asarray(scores, dtype=float)
    if scores.shape[0] < 2:
        return float("nan"), float("nan")

    def statistic(*per_task: np.ndarray, axis: int) -> np.ndarray:
        return stats.trim_mean(np.concatenate(per_task, axis=axis), 0.25, axis=axis)

    # Each task's column is one bootstrap sample: scipy resamples them independently.
    result = stats.bootstrap(tuple(scores.T), statistic, n_resamples=resamples,
                             confidence_level=confidence, method="percentile",
                             vectorized=True, axis=-1, rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return float(low), float(high)


@dataclass
class Summary:
    """One aggregate: a metric over ``num_runs`` runs of one configuration."""

    task_names: list[str]
    task_mean: np.ndarray  # [tasks]
    task_se: np.ndarray  # [tasks]; NaN for one run
    mean: float  # the mean over tasks, averaged over runs
    se: float  # its standard error over runs
    iqm: float
    iqm_ci: tuple[float, float]
    num_runs: int


def summarize(scores: np.ndarray, task_names: Sequence[str]) -> Summary:
    """Summary of ``scores [runs, tasks]``; tasks in the order of ``task_names``."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or scores.shape[1] != len(task_names):
        raise ValueError(f"expected scores [runs, {len(task_names)}], got {scores.shape}")
    task_mean, task_se = mean_se(scores)
    mean, se = mean_se(scores.mean(axis=1))
    return Summary(list(task_names), task_mean, task_se, float(mean), float(se),
                   iqm(scores), iqm_interval(scores), scores.shape[0])
