"""Choose the laptop preset by measurement: MT-SAC candidates on MT10, each trained for a
wall-clock budget (not a step budget), their success against training minutes.

    python -m benchmarks.experiments.laptop_sweep [--minutes 60] [--seeds 1] [--candidates a,b,...]
        [--jobs 1] [--runs-dir runs/laptop-sweep] [--out-dir benchmarks/results/laptop-sweep]
        [--eval-episodes N] [--eval-every N] [--report-only]

Every candidate is a row of benchmarks.experiments.success (``--arch mtsac --preset laptop`` plus
the
candidate's flags), so its runs resume, are skipped when finished, and are extended when
``--minutes`` grows: screen every candidate at ``--minutes 15``, then continue the best
ones with ``--minutes 60``. Besides success.py's report (final success per candidate),
this writes ``minutes.md``/``.json``/``.png``: the mean success at fixed training minutes
and the success-against-minutes curves. The runs are success.py's Ray Tune trials (a local
Ray, or a cluster with ``--address``). Run one job per free core: each run is one
process with one torch thread (the env and the update take turns), so two runs on two
cores do not slow each other down much; wall-clock budgets need an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from benchmarks.experiments import success
from benchmarks.experiments.learner_study import PLAIN
from benchmarks.experiments.minute_curves import minutes_band, value_at
from benchmarks.experiments.success_runs import register_rows
from benchmarks.report_files import header, now, save
from conal_rl.analysis.curves import AXES, MEAN, draw, read_curves
from conal_rl.analysis.stats import mean_se
from conal_rl.common import CommandParser, finite_or_none
from conal_rl.training.config import add_config_arguments
from conal_rl.training.rundir import RunDir, read_json

PROG = "python -m benchmarks.experiments.laptop_sweep"
BENCHMARK, BUDGET = "MT10", "laptop"
# Every candidate names its learner (PLAIN: the one before the preset took LayerNorm and 2
# updates per env step), so that it trains the same whatever the preset's defaults.
# name -> (training flags on top of the laptop preset, what it tries)
CANDIDATES: dict[str, tuple[tuple[str, ...], str]] = {
    "w128x3-b32": (("--hidden", "128,128,128", "--batch-per-task", "32", *PLAIN),
                   "3x128, 32 per task: small nets, the most env steps"),
    "w128x3-b64-u2": (("--hidden", "128,128,128", "--batch-per-task", "64", "--no-layer-norm",
                       "--updates-per-step", "2"),
                      "3x128, 64 per task, 2 updates per env step: more learning per sample"),
    "w256x3-b64": (("--hidden", "256,256,256", "--batch-per-task", "64", *PLAIN),
                   "3x256, 64 per task: bigger nets, fewer env steps"),
    "w256x2-b128": (("--hidden", "256,256", "--batch-per-task", "128", *PLAIN),
                    "2x256, 128 per task: shallower, larger batches"),
    "w400x3-b128": (("--hidden", "400,400,400", "--batch-per-task", "128", *PLAIN),
                    "3x400, 128 per task: the paper's nets and batch"),
    "w128x3-b32-lr1e3": (("--hidden", "128,128,128", "--batch-per-task", "32", "--lr", "1e-3",
                          *PLAIN),
                         "3x128, 32 per task, learning rate 1e-3"),
    # The learner's levers (benchmarks.experiments.learner_study), under a wall-clock budget:
    # more learning per sample against fewer env steps per minute.
    "w128x3-b32-ln-u2": (("--hidden", "128,128,128", "--batch-per-task", "32",
                          "--layer-norm", "--updates-per-step", "2"),
                         "3x128, 32 per task, LayerNorm, 2 updates per env step"),
    "w128x3-b32-ln": (("--hidden", "128,128,128", "--batch-per-task", "32", "--layer-norm",
                       "--updates-per-step", "1"),
                      "3x128, 32 per task, LayerNorm"),
}
MARKS = (5, 10, 15, 20, 30, 45, 60)  # training minutes at which the table reads success


def rows() -> dict[str, tuple[str, tuple[str, ...], str]]:
    return {name: ("conal_rl.train", ("--arch", "mtsac", *flags), label)
            for name, (flags, label) in CANDIDATES.items()}


def read_minutes_curve(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Mean success over tasks against training minutes; empty before the first evaluation."""
    curves = read_curves(run_dir, "success", "train_minutes")
    return curves.get(MEAN, (np.zeros(0), np.zeros(0)))


def candidate_summary(name: str, run_dirs: list[Path], budget: float) -> dict:
    marks = [m for m in MARKS if m <= budget] or [budget]
    at_marks, finals, steps, updates, walls = [], [], [], [], []
    for d in run_dirs:
        minutes, values = read_minutes_curve(d)
        if not len(minutes):
            continue
        # Marks the run has not trained to yet (a stopped or shorter run) stay blank.
        at_marks.append(value_at(minutes, values, np.array(marks, dtype=float)))
        finals.append(values[-1])
        timing = RunDir(d).timing() or {}
        steps.append(timing.get("env_steps", np.nan))
        updates.append(timing.get("updates", np.nan))
        walls.append(timing.get("train_wall", np.nan))
    entry = {"candidate": name, "label": CANDIDATES[name][1],
             "flags": " ".join(CANDIDATES[name][0]), "runs": len(finals), "marks": marks}
    if finals:
        mean, se = mean_se(np.array(finals))
        entry |= {"final_mean": float(mean), "final_se": float(se),
                  "at_marks": [finite_or_none(float(v))
                               for v in _mean_of_known(np.array(at_marks), axis=0)],
                  "env_steps": float(_mean_of_known(steps)),
                  "updates": float(_mean_of_known(updates)),
                  "train_minutes": float(_mean_of_known(walls)) / 60}
    return entry


def _mean_of_known(values, axis=None):
    """The mean over the non-NaN values; NaN, silently, where there are none (a mark no run
    has reached yet, runs without a timing.json): blank in the report, not a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def markdown(payload: dict) -> str:
    marks = payload["marks"]
    lines = [*header(f"Laptop sweep: MT-SAC on {BENCHMARK}, success against training minutes",
                     payload["commands"], payload["machine"], payload.get("date")),
             f"Budget: {payload['minutes']} training minutes per run (evaluation excluded), "
             "preset `laptop` plus each candidate's flags; success is Meta-World's mean over "
             "the 10 tasks of the latest evaluation at or before each mark (mean over runs).",
             "",
             "| candidate | flags | runs | env steps | updates | "
             + " | ".join(f"{m} min" for m in marks) + " | final |",
             "|---|---|---|---|---|" + "---|" * len(marks) + "---|"]
    for c in payload["candidates"]:
        if not c["runs"]:
            lines.append(f"| {c['candidate']} | `{c['flags']}` | 0 | | |"
                         + " |" * len(marks) + " |")
            continue
        cells = [("" if v is None else f"{v:.2f}") for v in c["at_marks"]]
        cells += [""] * (len(marks) - len(cells))
        counts = [("running" if math.isnan(c[k]) else f"{c[k]:,.0f}")
                  for k in ("env_steps", "updates")]
        final = f"{c['final_mean']:.2f}" + (f" ± {c['final_se']:.2f}" if c["runs"] > 1 else "")
        lines.append(f"| {c['candidate']} | `{c['flags']}` | {c['runs']} | "
                     + " | ".join(counts + cells) + f" | {final} |")
    return "\n".join(lines) + "\n"


def plot(curves: dict[str, list[tuple[np.ndarray, np.ndarray]]], budget: float,
         path: Path) -> None:
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    draw(ax, [minutes_band(name, runs, budget) for name, runs in curves.items() if runs],
         "Laptop sweep: MT-SAC success against wall-clock training time", "success")
    ax.set(xlabel=AXES["train_minutes"], ylabel="mean success (MT10)")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog=PROG, description=__doc__.split("\n\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="candidates: " + "; ".join(
                                         f"{k}: {v[1]}" for k, v in CANDIDATES.items()))
    parser.add_argument("--seeds", type=int, default=1, help="seeds per candidate "
                        "(default: %(default)s)")
    parser.add_argument("--candidates", default=",".join(CANDIDATES),
                        help="comma-separated (default: all)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at the same time, at most one per core (default: 1)")
    parser.add_argument("--address", default=None,
                        help="an existing Ray cluster, as benchmarks.experiments.success's "
                        "--address (default: $RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/laptop-sweep"),
                        help="where the runs go, in MT10-laptop/<candidate>-s<seed> "
                        "(default: %(default)s)")
    parser.add_argument("--out-dir", type=Path,
                        default=Path("benchmarks/results/laptop-sweep"),
                        help="where minutes.md/.json/.png and success.py's report go "
                        "(default: %(default)s)")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild the reports from the runs there are; train nothing")
    # Training's own flags, given to every run: the wall-clock budget (here 60 minutes by
    # default) and the evaluations (the laptop preset's by default; more often gives a finer
    # curve and costs evaluation time).
    add_config_arguments(parser.add_argument_group("training flags, given to every run"),
                         only=("minutes", "eval_every", "eval_episodes"))
    parser.set_defaults(minutes=60)
    return parser


def recorded_command(argv: list[str], names: list[str], args: argparse.Namespace) -> str:
    """The call as given, plus the candidates and minutes it ran where they were left to
    their defaults: a bare command in the report would otherwise read as all candidates at
    whatever the defaults are when it is read."""
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    extra = ([] if "--candidates" in given else ["--candidates", ",".join(names)]) + (
        [] if "--minutes" in given else ["--minutes", f"{args.minutes:g}"])
    return " ".join([PROG, *argv, *extra])


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    names = [c.strip() for c in args.candidates.split(",") if c.strip()]
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown or not names:
        build_parser().error(f"unknown candidates {unknown}; valid: {', '.join(CANDIDATES)}")
    if not 0 < args.minutes < math.inf:  # NaN too
        build_parser().error(f"--minutes must be a positive number, got {args.minutes}")
    for flag in ("seeds", "jobs", "eval_episodes"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            build_parser().error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.eval_every is not None and args.eval_every < 0:
        build_parser().error(f"--eval-every must not be negative, got {args.eval_every}")
    command = recorded_command(sys.argv[1:] if argv is None else list(argv), names, args)
    register_rows(rows())
    success_argv = ["--benchmark", BENCHMARK, "--budget", BUDGET, "--archs", ",".join(names),
                    "--seeds", str(args.seeds), "--jobs", str(args.jobs), "--device", "cpu",
                    "--minutes", str(args.minutes), "--runs-dir", str(args.runs_dir),
                    "--out-dir", str(args.out_dir)] + (["--report-only"] * args.report_only)
    for flag in ("eval_episodes", "eval_every", "address"):
        if getattr(args, flag) is not None:
            success_argv += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    report, failed = success.table(success_argv)
    # The minutes report covers every candidate with runs, also those of earlier calls.
    root = args.runs_dir / f"{BENCHMARK}-{BUDGET}"
    names = [n for n in CANDIDATES if n in names or list(root.glob(f"{n}-s*"))]
    run_dirs = {n: sorted(root.glob(f"{n}-s*")) for n in names}
    stem = args.out_dir / "minutes"
    previous = read_json(stem.with_suffix(".json")) or {}
    payload = {
        "minutes": args.minutes,
        # the machine that trained (success.py's report keeps it); a text in older reports
        "machine": report.get("machine", previous.get("machine", "?")),
        "date": now(),
        "commands": [*previous.get("commands", []), command],
        "marks": [m for m in MARKS if m <= args.minutes] or [args.minutes],
        "candidates": [candidate_summary(n, run_dirs[n], args.minutes) for n in names],
    }
    save(stem, payload, markdown(payload))
    plot({n: [c for c in map(read_minutes_curve, run_dirs[n]) if len(c[0])] for n in names},
         args.minutes, stem.with_suffix(".png"))
    if failed:
        raise SystemExit(failed)
    return payload


if __name__ == "__main__":
    main()
