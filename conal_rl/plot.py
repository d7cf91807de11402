"""Success-rate curves from runs' evaluations: ``python -m conal_rl.plot RUN_DIR ...``.

One figure of the mean over tasks and one of every task, each with a line per
configuration, the mean over its runs (seeds) shaded by ± one standard error. A line is
named by its architecture (ablation switches included) and, where two configurations share
that, by the settings that differ (e.g. "MT-SAC (preset=laptop)"). Gymnasium sanity runs
have no success signal: their returns are drawn. Curves come from each run's
evaluations.csv.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from tqdm import tqdm

from conal_rl.analysis.curves import AXES, MEAN, Band, Curves, band, draw, read_curves
from conal_rl.analysis.grouping import group_runs
from conal_rl.common import CommandParser, UserError, run_cli
from conal_rl.training.preflight import load_config, run_dir_of

PROG = "python -m conal_rl.plot"


def evaluated_curves(run_dir: Path, metric: str) -> Curves:
    """``read_curves`` of a run that must have been evaluated (UserError otherwise)."""
    curves = read_curves(run_dir, metric)
    if not curves:
        raise UserError(f"{run_dir} has no evaluation logged yet (no rows in its "
                        "evaluations.csv)")
    return curves


def plot_runs(run_dirs: list[Path], out_dir: Path, name: str | None = None,
              progress: bool = True) -> list[Path]:
    """Draw the comparison of ``run_dirs`` into PNG files in ``out_dir``; returns them."""
    configs = [load_config(d) for d in run_dirs]
    groups = group_runs(configs, compare=True)
    benchmark = configs[0].benchmark
    metric = "return" if benchmark.startswith("gym:") else "success"
    # A bar on a terminal only, cleared when it ends (or an error ends it): an error stays
    # one line.
    with tqdm(run_dirs, desc="reading evaluations", unit="run", leave=False,
              disable=not progress or not sys.stderr.isatty()) as bar:
        runs = [evaluated_curves(d, metric) for d in bar]
    tasks = sorted(set.intersection(*(set(c) for c in runs)) - {MEAN},
                   key=list(runs[0]).index)
    from matplotlib.figure import Figure  # after the runs are read: a bad path answers first

    stem = name or benchmark.replace(":", "-")
    out_dir.mkdir(parents=True, exist_ok=True)
    ylabel = "success rate" if metric == "success" else "return"

    def bands(curve: str) -> list[Band]:
        return [band(label, [runs[i][curve] for i in members])
                for label, members in groups.items()]

    mean_fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = mean_fig.subplots()
    draw(ax, bands(MEAN), f"{benchmark}: evaluation {ylabel}, {MEAN} "
         "(shaded: ± s.e. over seeds)", metric)
    ax.set_xlabel(AXES["env_steps"])
    ax.set_ylabel(ylabel)
    ax.legend()
    paths = [out_dir / f"{stem}-{metric}.png"]
    mean_fig.savefig(paths[0], dpi=120)

    if len(tasks) > 1:
        cols = math.ceil(math.sqrt(len(tasks)))
        rows = math.ceil(len(tasks) / cols)
        task_fig = Figure(figsize=(3.2 * cols, 2.6 * rows + 0.6), layout="constrained")
        axes = list(task_fig.subplots(rows, cols, sharex=True, sharey=metric == "success",
                                      squeeze=False).flat)
        for i, (ax, task) in enumerate(zip(axes, tasks)):
            draw(ax, bands(task), task, metric)
            if i + cols >= len(tasks):  # nothing below: show its step ticks
                ax.tick_params(labelbottom=True)
        for ax in axes[len(tasks):]:
            ax.set_visible(False)
        handles, labels = task_fig.axes[0].get_legend_handles_labels()
        task_fig.legend(handles, labels, loc="outside right upper")
        task_fig.suptitle(f"{benchmark}: evaluation {ylabel} per task "
                          "(shaded: ± s.e. over seeds)")
        task_fig.supxlabel(AXES["env_steps"])
        paths.append(out_dir / f"{stem}-{metric}-per-task.png")
        task_fig.savefig(paths[1], dpi=100)
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog=PROG, description=__doc__.split("\n\n")[1])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run directories, of one benchmark; runs that differ only in "
                        "their seed (and where or how fast they ran) are seeds of one line")
    parser.add_argument("--out", type=Path, default=Path("plots"),
                        help="folder for the PNG files (default: %(default)s)")
    parser.add_argument("--name", default=None,
                        help="file name stem (default: the benchmark, e.g. MT10 gives "
                        "MT10-success.png and MT10-success-per-task.png)")
    return parser


def main(argv: list[str] | None = None) -> list[Path]:
    args = build_parser().parse_args(argv)

    def body() -> list[Path]:
        if args.out.exists() and not args.out.is_dir():
            raise UserError(f"--out {args.out} is a file, not a folder")
        run_dirs = [run_dir_of(p) for p in args.runs]
        try:
            paths = plot_runs(run_dirs, args.out, args.name)
        except OSError as e:  # the runs' files are read and checked before: this is --out
            raise UserError(f"--out {args.out}: cannot write the figures "
                            f"({e.strerror or type(e).__name__})") from None
        for path in paths:
            print(f"wrote {path}")
        return paths

    return run_cli(PROG, body, (UserError,))


if __name__ == "__main__":
    main()
