"""Which learner levers pay: MT-SAC on MT10 with each lever alone and the promising
combinations, the same seeds for every variant, at an env-step budget.

    python -m benchmarks.experiments.learner_study [--variants a,b,...] [--seeds 3] [--jobs 2]
        [--total-steps 300000] [--eval-every 50000] [--eval-episodes 10]
        [--runs-dir runs/learner-study] [--out-dir benchmarks/results/learner-study]
        [--report-only]

Every variant is a row of benchmarks.experiments.success (``--arch mtsac --preset laptop`` plus the
variant's flags, no wall-clock budget), so its runs resume, are skipped when finished and
are extended when ``--total-steps`` grows; calling it with more ``--seeds`` adds seeds.
Besides success.py's report this writes ``learner.md``/``.json``/``.png``: per variant
the final success and the success averaged over every evaluation (the curve's mean: single
evaluations at these budgets swing by about 0.1), each with its difference from ``base``
paired by seed and a 95% t-interval, and the training time per env step, read from the
success report's records of the runs (which outlive the runs' folders).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from benchmarks.experiments import success
from benchmarks.experiments.success_runs import register_rows
from benchmarks.report_files import header, now, save
from conal_rl.analysis.curves import band, draw
from conal_rl.common import CommandParser
from conal_rl.training.rundir import read_json

PROG = "python -m benchmarks.experiments.learner_study"
BENCHMARK, BUDGET, BASE = "MT10", "laptop", "base"
PLAIN = ("--no-layer-norm", "--updates-per-step", "1")  # the learner before LayerNorm, u2
LN = ("--layer-norm", "--updates-per-step", "1")
LN_U2 = ("--layer-norm", "--updates-per-step", "2")
# name -> (training flags on top of the laptop preset's MT-SAC, what it tries). Every variant
# names its LayerNorm and updates per env step: it trains the same whatever the preset's.
VARIANTS: dict[str, tuple[tuple[str, ...], str]] = {
    BASE: (PLAIN, "the learner before the study: 3x128, 32 per task, 1 update per env step"),
    "ln": (LN, "LayerNorm after every hidden module (both nets)"),
    "u2": (("--no-layer-norm", "--updates-per-step", "2"), "2 updates per env step"),
    "ln-u2": (LN_U2, "LayerNorm, 2 updates per env step"),
    "ln-res": ((*LN, "--residual"), "LayerNorm and residual connections"),
    "field": ((*PLAIN, "--batch-per-task", "128", "--max-grad-norm", "1", "--weight-init",
               "he-uniform"),
              "the field's settings: 128 per task, gradient norms clipped at 1, He-uniform"),
    "obsnorm": ((*PLAIN, "--normalize-obs"), "observations standardized by running statistics"),
    "bf16": ((*PLAIN, "--precision", "bf16"),
             "the update's products in bf16 (a CPU with bf16 units)"),
    "ln-wd": ((*LN, "--weight-decay", "1e-4"),
              "LayerNorm, AdamW weight decay 1e-4 (BRO's regularization)"),
    "ln-u2-reset": ((*LN_U2, "--reset-every", "100000"),
                    "LayerNorm, 2 updates per env step, resets every 100k updates (BRO)"),
    "ln-b128": ((*LN, "--batch-per-task", "128"), "LayerNorm, 128 per task"),
    "ln-u4": (("--layer-norm", "--updates-per-step", "4"), "LayerNorm, 4 updates per env step"),
}
DEFAULT_VARIANTS = ("base", "ln", "u2", "ln-u2", "ln-res", "field")


def rows() -> dict[str, tuple[str, tuple[str, ...], str]]:
    return {f"learner-{name}": ("conal_rl.train", ("--arch", "mtsac", *flags), label)
            for name, (flags, label) in VARIANTS.items()}


def run_figures(record: dict) -> dict | None:
    """A run's final success, the mean over its evaluations and its time per env step, from
    its record in the success report (which outlives the run's folder)."""
    steps, curve = (record.get("curves") or {}).get("env_steps", ((), ()))
    values = [v for v in curve if v is not None]
    if not values:
        return None
    return {"final": float(record["mean"]), "curve": float(np.mean(values)),
            "env_steps": int(steps[-1]),
            "ms_per_env_step": 1e3 * record["train_wall_s"] / record["env_steps"]}


def paired(values: dict[int, float], base: dict[int, float]) -> dict | None:
    """Mean difference to base over the seeds both have, with its 95% t-interval."""
    seeds = sorted(set(values) & set(base))
    if not seeds:
        return None
    d = np.array([values[s] - base[s] for s in seeds])
    if len(d) < 2:
        return {"mean": float(d.mean()), "low": None, "high": None, "seeds": len(d)}
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return {"mean": float(d.mean()), "low": float(d.mean() - half),
            "high": float(d.mean() + half), "seeds": len(d)}


def summarize(report_rows: list[dict], names: list[str], total_steps: int) -> list[dict]:
    """Per variant, from the success report's rows: its runs that reached ``total_steps``,
    their final and curve-mean success, the differences from base paired by seed."""
    records = {r["row"]: r.get("runs", []) for r in report_rows}
    done = {}
    for n in names:
        figures = {run["seed"]: run_figures(run) for run in records.get(f"learner-{n}", [])}
        done[n] = {s: f for s, f in figures.items() if f and f["env_steps"] >= total_steps}
    out = []
    for n in names:
        figs = done[n]
        entry = {"variant": n, "flags": " ".join(VARIANTS[n][0]), "label": VARIANTS[n][1],
                 "seeds": sorted(figs)}
        for key in ("final", "curve"):
            values = np.array([f[key] for f in figs.values()])
            if len(values):
                entry[key] = {"mean": float(values.mean()),
                              "se": float(values.std(ddof=1) / np.sqrt(len(values)))
                              if len(values) > 1 else None}
            entry[f"{key}_vs_base"] = paired({s: f[key] for s, f in figs.items()},
                                             {s: f[key] for s, f in done[BASE].items()}
                                             ) if BASE in done and n != BASE else None
        ms = [f["ms_per_env_step"] for f in figs.values()]
        entry["ms_per_env_step"] = float(np.mean(ms)) if ms else None
        out.append(entry)
    base_ms = next((e["ms_per_env_step"] for e in out if e["variant"] == BASE), None)
    for e in out:  # the training time per env step relative to base's
        e["time_vs_base"] = (e["ms_per_env_step"] / base_ms
                             if e["ms_per_env_step"] and base_ms else None)
    return out


def _cell(x: dict | None, interval: bool = False) -> str:
    if not x:
        return "-"
    if interval:
        ci = "" if x["low"] is None else f" [{x['low']:+.2f}, {x['high']:+.2f}]"
        return f"{x['mean']:+.2f}{ci}"
    return f"{x['mean']:.2f}" + ("" if x["se"] is None else f" ± {x['se']:.2f}")


def markdown(payload: dict) -> str:
    lines = [*header(f"Learner study: MT-SAC on {BENCHMARK}, {payload['total_steps']:,} env "
                     "steps", payload["commands"], payload["machine"], payload["date"]),
             "",
             f"Every variant: `--arch mtsac --preset {BUDGET} --minutes 0` plus its flags, the "
             "same seeds; evaluations every "
             f"{payload['eval_every']:,} env steps with {payload['eval_episodes']} episodes per "
             "task (deterministic policy). Final: the last evaluation; curve: the mean of "
             "every evaluation (the area under the curve over its length); mean ± standard "
             "error over seeds. Δ: the difference from `base` paired by seed, with its 95% "
             "t-interval (a lever pays beyond noise where the interval excludes 0). Time: "
             "training wall per env step and per update (evaluations excluded), on the "
             "machine above, two runs at a time (one per core).",
             "",
             "| variant | flags | seeds | final | Δ final | curve | Δ curve | ms/env step | "
             "× base |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v in payload["variants"]:
        ms, ratio = v.get("ms_per_env_step"), v.get("time_vs_base")
        ratio = "-" if ratio is None else f"{ratio:.2f}"
        lines.append(
            f"| {v['variant']} | `{v['flags'] or '(none)'}` | {len(v['seeds'])} | "
            f"{_cell(v.get('final'))} | {_cell(v.get('final_vs_base'), True)} | "
            f"{_cell(v.get('curve'))} | {_cell(v.get('curve_vs_base'), True)} | "
            f"{'-' if ms is None else f'{ms:.2f}'} | {ratio} |")
    lines += ["", "Variants: " + "; ".join(f"`{v['variant']}`: {v['label']}"
                                           for v in payload["variants"]) + "."]
    return "\n".join(lines) + "\n"


def plot(report_rows: list[dict], names: list[str], total_steps: int, path: Path) -> None:
    """Mean success against env steps per variant, over its runs that reached the budget
    (the seeds the table counts), from the success report's records."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    records = {r["row"]: r.get("runs", []) for r in report_rows}
    bands = []
    for n in names:
        curves = [run.get("curves", {}).get("env_steps") for run in records.get(f"learner-{n}", [])]
        curves = [(np.array(x, dtype=float), np.array([np.nan if y is None else y for y in ys]))
                  for x, ys in (c for c in curves if c and len(c[0]))
                  if x[-1] >= total_steps]
        if curves:
            bands.append(band(n, curves))
    draw(ax, bands, f"Learner study: MT-SAC on {BENCHMARK}", "success")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog=PROG, description=__doc__.split("\n\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="variants: " + "; ".join(f"{k}: {v[1]}"
                                                           for k, v in VARIANTS.items()))
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help="comma-separated; base is always included (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per variant "
                        "(default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="runs at the same time, at most one per core (default: 2)")
    parser.add_argument("--total-steps", type=int, default=300_000,
                        help="env steps per run, all tasks (default: %(default)s)")
    parser.add_argument("--eval-every", type=int, default=50_000,
                        help="env steps between evaluations (default: %(default)s)")
    parser.add_argument("--eval-episodes", type=int, default=10,
                        help="evaluation episodes per task (default: %(default)s)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/learner-study"))
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results/learner-study"))
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild the reports from the runs there are; train nothing")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    names = [BASE] + [n.strip() for n in args.variants.split(",") if n.strip() not in ("", BASE)]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    for flag in ("seeds", "jobs", "total_steps", "eval_every", "eval_episodes"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got "
                         f"{getattr(args, flag)}")
    register_rows(rows())
    success_argv = ["--benchmark", BENCHMARK, "--budget", BUDGET,
                    "--archs", ",".join(f"learner-{n}" for n in names),
                    "--seeds", str(args.seeds), "--jobs", str(args.jobs), "--device", "cpu",
                    "--minutes", "0", "--total-steps", str(args.total_steps),
                    "--eval-every", str(args.eval_every),
                    "--eval-episodes", str(args.eval_episodes),
                    "--runs-dir", str(args.runs_dir), "--out-dir", str(args.out_dir)
                    ] + (["--report-only"] * args.report_only)
    report, failed = success.table(success_argv)
    # the success report's rows: records of every finished run, kept when run folders go
    table = report.get("rows") or (read_json(args.out_dir / f"{BENCHMARK}-{BUDGET}.json")
                                   or {}).get("rows", [])
    stem = args.out_dir / "learner"
    previous = read_json(stem.with_suffix(".json")) or {}
    command = " ".join([PROG, *(sys.argv[1:] if argv is None else argv)])
    payload = {"machine": report.get("machine", previous.get("machine", "?")), "date": now(),
               "commands": [*previous.get("commands", []), command][-5:],
               "total_steps": args.total_steps, "eval_every": args.eval_every,
               "eval_episodes": args.eval_episodes,
               "variants": summarize(table, names, args.total_steps)}
    save(stem, payload, markdown(payload))
    plot(table, names, args.total_steps, stem.with_suffix(".png"))
    if failed:
        raise SystemExit(failed)
    return payload


if __name__ == "__main__":
    main()
