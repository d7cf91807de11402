"""Runs side by side at equal env steps: the mean success over tasks of each run at each of
its evaluations, with the training minutes it had taken by then. For runs that no success
table launched (a long MT50 run beside its baseline, a resumed run against a fresh one);
``benchmarks.experiments.success`` compares seeds of configurations it runs itself.

    python -m benchmarks.experiments.curves_table RUN_DIR ... [--out STEM]
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.report_files import command, header, save
from conal_rl.analysis.curves import MEAN, read_curves
from conal_rl.common import CommandParser, UserError
from conal_rl.training.rundir import RunDir

PROG = "python -m benchmarks.experiments.curves_table"


def run_entry(run_dir: Path) -> dict:
    """A run's configuration, its curve of mean success and where it stopped."""
    run = RunDir(run_dir)
    config = run.read_config()
    if config is None:
        raise ValueError(f"no readable {run.config.name}")
    steps, success = read_curves(run_dir).get(MEAN, ((), ()))  # none before an evaluation
    minutes, _ = read_curves(run_dir, x="train_minutes").get(MEAN, ((), ()))
    return {"run": run_dir.name, "benchmark": config["benchmark"], "arch": config["arch"],
            "preset": config.get("preset"), "seed": config.get("seed"),
            "points": [{"env_steps": int(s), "train_minutes": float(m), "success": float(v)}
                       for s, m, v in zip(steps, minutes, success)],
            "timing": run.timing() or {}}


def markdown(payload: dict) -> str:
    runs = payload["runs"]
    steps = sorted({p["env_steps"] for r in runs for p in r["points"]})
    at = [{p["env_steps"]: p for p in r["points"]} for r in runs]
    lines = [*header("Runs side by side at equal env steps", payload["command"]), "",
             "Mean success over tasks at each evaluation (the run's training minutes by "
             "then, its search included); -: no evaluation at that step. Env steps of the "
             "training phase (a CoNAL search's steps are not on this axis).", "",
             "| env steps | " + " | ".join(f"{r['run']} ({r['arch']})" for r in runs) + " |",
             "|---|" + "---|" * len(runs)]
    for step in steps:
        cells = [f"{p['success']:.2f} ({p['train_minutes']:.1f} min)" if (p := a.get(step))
                 else "-" for a in at]
        lines.append(f"| {step:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = CommandParser(prog=PROG, description=__doc__)
    parser.add_argument("runs", nargs="+", help="run directories (with evaluations.csv)")
    parser.add_argument("--out", default="benchmarks/results/curves",
                        help="output stem: STEM.json and STEM.md (default: %(default)s)")
    args = parser.parse_args(argv)
    runs = []
    for path in map(Path, args.runs):
        config = RunDir(path).config
        if not config.is_file():
            parser.error(f"{path}: not a run directory (no {config.name})")
        try:
            entry = run_entry(path)
        except (UserError, KeyError, ValueError, OSError) as e:
            parser.error(f"{path}: {e}")
        if not entry["points"]:
            parser.error(f"{path}: no evaluation yet")
        runs.append(entry)
    if len({r["benchmark"] for r in runs}) > 1:
        parser.error("runs of different benchmarks: " + ", ".join(
            f"{r['run']} ({r['benchmark']})" for r in runs))
    payload = {"command": command(PROG, argv), "runs": runs}
    save(Path(args.out), payload, markdown(payload))
    return payload


if __name__ == "__main__":
    main()
