"""Evaluation curves of runs, read from their evaluations table, and bands of mean ± s.e.
over seeds drawn on a matplotlib axis (the plot command and the benchmarks' reports).

The evaluations table (``RunDir.evaluations``, written by
conal_rl.training.runs.record_evaluation) holds a row per task and
evaluation: the env steps and training minutes it was taken at, the success rate (an
empty cell for gymnasium sanity runs, which have returns only) and the mean return.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conal_rl.analysis.stats import mean_se
from conal_rl.common import UserError, as_float
from conal_rl.training.rundir import RunDir

METRICS = ("success", "return")
# What a curve can be drawn against, and its axis label.
AXES = {"env_steps": "env steps (all tasks; training phase)",
        "train_minutes": "training minutes (evaluation excluded)"}
MEAN = "mean over tasks"

Curves = dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (x, values)


def read_curves(run_dir: Path, metric: str = "success", x: str = "env_steps") -> Curves:
    """The run's evaluation curves of ``metric`` against ``x`` (a key of ``AXES``), in
    the order of env steps: the mean over tasks (key ``MEAN``) and one per task. An
    evaluation repeated at the same env step (a resumed run) keeps its last values. Empty
    before the run's first evaluation."""
    if metric not in METRICS or x not in AXES:
        raise ValueError(f"metric must be one of {METRICS} and x one of {tuple(AXES)}, got "
                         f"{metric!r} and {x!r}")
    path = RunDir(run_dir).evaluations
    if not path.exists():
        return {}
    at: dict[int, tuple[float, dict[str, float]]] = {}  # env step -> (x, task -> value)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or ()
            missing = [c for c in ("env_steps", "task", metric, x) if c not in columns]
            if columns and missing:
                raise UserError(f"{path} has no {', '.join(missing)} column (not an "
                                f"{path.name}, or written by an older version?)")
            for row in reader:
                try:
                    if None in row.values() or None in row:  # cut short, or cells too many
                        raise ValueError
                    step = int(row["env_steps"])
                    tasks = at.get(step, (0.0, {}))[1]
                    tasks[row["task"]] = as_float(row[metric])
                    at[step] = (as_float(row[x]), tasks)
                except (TypeError, ValueError):
                    raise UserError(f"{path}, line {reader.line_num}: not an evaluation row "
                                    "(truncated or another file?)") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path} is not a readable {path.name} ({type(e).__name__})"
                        ) from None
    if not at:
        return {}
    steps = sorted(at)
    xs = np.array([at[s][0] for s in steps])
    curves = {MEAN: (xs, np.array([np.mean(list(at[s][1].values())) for s in steps]))}
    for task in dict.fromkeys(t for s in steps for t in at[s][1]):
        have = [i for i, s in enumerate(steps) if task in at[s][1]]
        curves[task] = (xs[have], np.array([at[steps[i]][1][task] for i in have]))
    return curves


@dataclass
class Band:
    """One configuration's curve: mean and standard error over its runs at shared x."""

    label: str
    runs: int
    steps: np.ndarray
    mean: np.ndarray
    se: np.ndarray


def band(label: str, curves: list[tuple[np.ndarray, np.ndarray]]) -> Band:
    """Runs are compared at the x all of them evaluated at (a shorter run cuts the rest):
    env steps, which the runs of one configuration share."""
    common = curves[0][0]
    for steps, _ in curves[1:]:
        common = np.intersect1d(common, steps)
    values = np.array([v[np.isin(s, common)] for s, v in curves])
    mean, se = mean_se(values)
    return Band(label, len(curves), common, mean, se)


def draw(ax, bands: list[Band], title: str, metric: str) -> None:
    for i, b in enumerate(bands):  # colours repeat after ten: the line style tells them apart
        line, = ax.plot(b.steps, b.mean, marker="." if len(b.steps) < 30 else None,
                        linestyle=("-", "--", ":")[i // 10 % 3],
                        label=f"{b.label} ({b.runs} seed{'s' * (b.runs > 1)})")
        if b.runs > 1:
            ax.fill_between(b.steps, b.mean - b.se, b.mean + b.se, alpha=0.25, linewidth=0,
                            color=line.get_color())
    ax.set_title(title, fontsize="medium")
    if metric == "success":
        ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
