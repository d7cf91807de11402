"""Evaluation curves of runs from their TensorBoard logs, and bands of mean ± s.e. over
seeds drawn on a matplotlib axis (the plot command and the benchmarks' reports)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conal_rl.analysis.aggregate import mean_se
from conal_rl.common import UserError

METRIC_TAGS = {"success": ("eval/mean_success", "eval_success/"),
               "return": ("eval/mean_return", "eval_return/")}
MEAN = "mean over tasks"


Curves = dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (env steps, values)


def read_curves(run_dir: Path, metric: str) -> Curves:
    """The run's evaluation curves of ``metric``: the mean over tasks (key ``MEAN``) and
    one per task. A step logged twice (a resumed run) keeps its last value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    mean_tag, task_prefix = METRIC_TAGS[metric]
    curves: Curves = {}
    for tag in accumulator.Tags()["scalars"]:
        if tag == mean_tag or tag.startswith(task_prefix):
            by_step = {e.step: e.value for e in accumulator.Scalars(tag)}
            steps = np.array(sorted(by_step))
            name = MEAN if tag == mean_tag else tag.removeprefix(task_prefix)
            curves[name] = (steps, np.array([by_step[s] for s in steps]))
    if MEAN not in curves:
        raise UserError(f"{run_dir} has no evaluation logged yet (no {mean_tag} in its "
                        "TensorBoard events)")
    return curves


@dataclass
class Band:
    """One architecture's curve: mean and standard error over its runs at shared steps."""

    label: str
    runs: int
    steps: np.ndarray
    mean: np.ndarray
    se: np.ndarray


def band(label: str, curves: list[tuple[np.ndarray, np.ndarray]]) -> Band:
    """Runs are compared at the steps all of them evaluated (a shorter run cuts the rest)."""
    common = curves[0][0]
    for steps, _ in curves[1:]:
        common = np.intersect1d(common, steps)
    values = np.array([v[np.isin(s, common)] for s, v in curves])
    mean, se = mean_se(values)
    return Band(label, len(curves), common, mean, se)


def draw(ax, bands: list[Band], title: str, metric: str) -> None:
    for b in bands:
        line, = ax.plot(b.steps, b.mean, marker="." if len(b.steps) < 30 else None,
                        label=f"{b.label} ({b.runs} seed{'s' * (b.runs > 1)})")
        if b.runs > 1:
            ax.fill_between(b.steps, b.mean - b.se, b.mean + b.se, alpha=0.25, linewidth=0,
                            color=line.get_color())
    ax.set_title(title, fontsize="medium")
    if metric == "success":
        ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
