"""Evaluate trained runs: ``python -m conal_rl.evaluate RUN_DIR [RUN_DIR ...]``.

Runs the evaluation protocol (envs/evaluation.py) on each run's last checkpoint, writes
eval.json and eval.csv into each run directory, and prints one table: per task the
success rate and mean return, the mean over tasks, and for several runs (seeds of one
configuration) mean ± standard error over runs and the IQM with its bootstrap 95% interval.
--compare puts configurations side by side, one column each: runs that share every
setting but the seed are seeds of one configuration, named by its architecture and, where
two share that, by the settings that differ (e.g. "MT-SAC (preset=laptop)").
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from conal_rl.analysis.grouping import arch_label, group_runs
from conal_rl.analysis.stats import Summary, summarize
from conal_rl.common import (
    DEVICES,
    CheckpointError,
    CommandParser,
    UserError,
    as_float,
    finite_or_none,
    resolve_device,
    run_cli,
)
from conal_rl.training.config import TrainConfig
from conal_rl.training.preflight import load_config, run_dir_of
from conal_rl.training.rundir import RunDir, read_json
from envs import Benchmark, EvalResult, UnknownBenchmark, evaluate

if TYPE_CHECKING:  # torch and the runs load after the flags and files are checked
    import torch

    from conal_rl.training.runs import LoadedRun

PROG = "python -m conal_rl.evaluate"
DEFAULT_EPISODES = 50  # per task, as in the Meta-World multi-task literature
USER_ERRORS = (UserError, UnknownBenchmark)


# ---- evaluating ----------------------------------------------------------------------------
@dataclass
class RunEvaluation:
    run_dir: Path
    config: TrainConfig
    env_steps: int  # of the checkpoint
    seed: int  # of the evaluation envs
    parameters: dict[str, int]  # actor, critic
    result: EvalResult


def evaluate_run(run: LoadedRun, bench: Benchmark, seed: int, episodes: int,
                 device: torch.device | str, progress: bool = True) -> RunEvaluation:
    """Evaluate ``run`` on ``bench`` (its evaluation envs, made with ``seed``)."""
    from conal_rl.method import num_parameters
    from conal_rl.training.runs import Policy

    policy = Policy(run.agent, bench.action_space, device)
    # Episodes end on success, so the bar's total (every episode running to its time
    # limit) is an upper bound; each policy call is one step of every task.
    limit = bench.max_episode_steps
    with tqdm(total=limit and episodes * limit, unit="step", dynamic_ncols=True,
              desc=f"evaluating {run.run_dir.name}", disable=not progress, leave=False) as bar:
        def counting_policy(obs: np.ndarray) -> np.ndarray:
            bar.update(1)
            return policy(obs)

        result = evaluate(counting_policy, bench, episodes)
    parameters = {role: num_parameters(getattr(run.agent, role)) for role in ("actor", "critic")}
    return RunEvaluation(run.run_dir, run.config, run.env_steps, seed, parameters, result)


def write_evaluation(ev: RunEvaluation) -> None:
    """The evaluation's summary (everything, for tools) and its table (per task) in the run
    directory."""
    rows = [{k: finite_or_none(v) for k, v in row.items()} for row in ev.result.rows()]
    summary = {
        "evaluated_by": PROG, "env_steps": ev.env_steps, "benchmark": ev.config.benchmark,
        "architecture": arch_label(ev.config), "seed": ev.seed,
        "episodes": ev.result.episodes, "parameters": ev.parameters,
        "mean_success": finite_or_none(ev.result.mean_success),
        "mean_return": ev.result.mean_return, "tasks": rows,
    }
    files = RunDir(ev.run_dir)
    files.write_json(files.evaluation_summary, summary)
    with open(files.evaluation_table, "w", newline="") as f:
        writer = csv.DictWriter(f, ["task", "success", "return", "episodes"])
        writer.writeheader()
        writer.writerows(rows)


def earlier_evaluation(run: LoadedRun, episodes: int, seed: int) -> RunEvaluation | None:
    """The run's evaluation summary as a RunEvaluation, if this CLI wrote it for the same
    checkpoint, episodes and seed."""
    saved = read_json(RunDir(run.run_dir).evaluation_summary)
    if not isinstance(saved, dict):
        return None
    same = (saved.get("evaluated_by") == PROG and saved.get("env_steps") == run.env_steps
            and saved.get("episodes") == episodes and saved.get("seed") == seed)
    if not same:
        return None
    tasks = saved["tasks"]
    result = EvalResult(
        [t["task"] for t in tasks],
        {t["task"]: as_float(t["success"]) for t in tasks},
        {t["task"]: t["return"] for t in tasks}, episodes)
    return RunEvaluation(run.run_dir, run.config, run.env_steps, seed, saved["parameters"],
                         result)


# ---- tables --------------------------------------------------------------------------------
def has_success(evals: list[RunEvaluation]) -> bool:
    """Meta-World runs report success; gymnasium sanity runs only returns."""
    return not math.isnan(evals[0].result.mean_success)


def summary_of(evals: list[RunEvaluation], metric: str) -> Summary:
    """``metric`` ("success" or "return") of runs ``[runs, tasks]``, summarized."""
    tasks = evals[0].result.task_names
    field = "success" if metric == "success" else "returns"
    scores = np.array([[getattr(ev.result, field)[t] for t in tasks] for ev in evals])
    return summarize(scores, tasks)


def _cell(mean: float, se: float, digits: int) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {se:.{digits}f}" if not math.isnan(se) else "")


def _iqm_cell(s: Summary, digits: int) -> str:
    low, high = s.iqm_ci
    ci = "" if math.isnan(low) else f" [{low:.{digits}f}, {high:.{digits}f}]"
    return f"{s.iqm:.{digits}f}{ci}"


def _steps(evals: list[RunEvaluation]) -> str:
    steps = sorted({ev.env_steps for ev in evals})
    return f"{steps[0]:,}" if len(steps) == 1 else f"{steps[0]:,}-{steps[-1]:,}"


def _render(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def format_runs_table(label: str, evals: list[RunEvaluation]) -> str:
    """Per task: success rate, mean return, episodes; mean ± s.e. over runs when several."""
    n, success, returns = len(evals), has_success(evals), summary_of(evals, "return")
    s = summary_of(evals, "success") if success else None
    seeds = ", ".join(str(ev.config.seed) for ev in evals)
    head = (f"{evals[0].config.benchmark}, {label}: {n} run{'s' * (n > 1)} (seed {seeds}) at "
            f"{_steps(evals)} env steps, {evals[0].result.episodes} episodes per task"
            + ("; mean ± s.e. over runs" if n > 1 else ""))
    rows = [["task", "success", "return", "episodes"]]
    for i, task in enumerate(returns.task_names):
        rows.append([task, _cell(s.task_mean[i], s.task_se[i], 2) if s else "-",
                     _cell(returns.task_mean[i], returns.task_se[i], 1),
                     str(evals[0].result.episodes * n)])
    rows.append(["mean", _cell(s.mean, s.se, 2) if s else "-",
                 _cell(returns.mean, returns.se, 1), ""])
    if n > 1:
        rows.append(["IQM [95% CI]", _iqm_cell(s, 2) if s else "-", _iqm_cell(returns, 1), ""])
    return head + "\n" + _render(rows)


def format_compare_table(groups: dict[str, list[RunEvaluation]]) -> str:
    """One column per configuration, as the paper's tables read: the success rate (the
    return for gymnasium benchmarks) per task, mean, IQM, runs and parameter counts."""
    first = next(iter(groups.values()))
    metric = "success" if has_success(first) else "return"
    digits = 2 if metric == "success" else 1
    stats = {label: summary_of(evals, metric) for label, evals in groups.items()}
    head = (f"{first[0].config.benchmark}: {metric} per task, "
            f"{first[0].result.episodes} episodes per task"
            + ("; mean ± s.e. over runs" if max(map(len, groups.values())) > 1 else ""))
    rows = [["task", *groups]]
    for i, task in enumerate(next(iter(stats.values())).task_names):
        rows.append([task, *(_cell(s.task_mean[i], s.task_se[i], digits)
                             for s in stats.values())])
    rows.append(["mean", *(_cell(s.mean, s.se, digits) for s in stats.values())])
    rows.append(["IQM [95% CI]", *(_iqm_cell(s, digits) for s in stats.values())])
    rows.append(["runs", *(str(len(evals)) for evals in groups.values())])
    rows.append(["env steps", *(_steps(evals) for evals in groups.values())])
    for role in ("actor", "critic"):
        rows.append([f"{role} parameters",
                     *(f"{evals[0].parameters[role]:,}" for evals in groups.values())])
    return head + "\n" + _render(rows)


# ---- command line --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog=PROG, description=__doc__.split("\n\n")[1])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run directories (or their checkpoints/latest.pt); several runs "
                        "of one configuration aggregate into one table")
    parser.add_argument("--episodes", type=int, default=DEFAULT_EPISODES,
                        help="evaluation episodes per task (default: %(default)s, as in the "
                        "Meta-World multi-task literature)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the evaluation envs (default: each run's own seed, i.e. "
                        "the task set and evaluation stream of its training)")
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="torch device (default: %(default)s, cuda when available)")
    parser.add_argument("--compare", action="store_true",
                        help="runs of different configurations (architectures, presets, "
                        "settings) side by side: one column per configuration (seeds of "
                        "each aggregated), with parameter counts")
    parser.add_argument("--benchmark", default=None,
                        help="refuse runs not trained on this benchmark (e.g. MT10)")
    parser.add_argument("--reuse", action="store_true",
                        help="take a run's eval.json instead of evaluating again when it was "
                        "written by this command for the same checkpoint, --episodes and "
                        "--seed")
    return parser


def main(argv: list[str] | None = None) -> dict[str, list[RunEvaluation]]:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: _main(args), USER_ERRORS)


def _main(args: argparse.Namespace) -> dict[str, list[RunEvaluation]]:
    if args.episodes < 1:
        raise UserError(f"--episodes must be positive, got {args.episodes}")
    if args.seed is not None and args.seed < 0:
        raise UserError(f"--seed must not be negative, got {args.seed}")
    run_dirs = [run_dir_of(p) for p in args.runs]
    configs = [load_config(d) for d in run_dirs]
    for run_dir, config in zip(run_dirs, configs):
        if args.benchmark is not None and config.benchmark != args.benchmark:
            raise CheckpointError(f"{run_dir} was trained on {config.benchmark}, "
                                  f"not {args.benchmark}")
    # Group and check every run before evaluating: a run that does not belong or whose
    # files are broken fails in seconds, not after the others' evaluations.
    groups = group_runs(configs, compare=args.compare)
    import torch

    from conal_rl.training.runs import check_run, eval_envs, load_checked

    torch.set_num_threads(1)  # small nets, serial env loop; see the README's performance notes
    device = resolve_device(args.device)
    for run_dir in run_dirs:
        check_run(run_dir)
    evals: list[RunEvaluation] = []
    for run_dir, config in zip(tqdm(run_dirs, desc="runs", unit="run",
                                    disable=len(run_dirs) == 1), configs):
        seed = config.seed if args.seed is None else args.seed
        run = load_checked(run_dir, device)
        ev = earlier_evaluation(run, args.episodes, seed) if args.reuse else None
        if ev is None:
            bench = eval_envs(run, seed, device)
            ev = evaluate_run(run, bench, seed, args.episodes, device)
            bench.envs.close()
            write_evaluation(ev)
        tqdm.write(f"{run_dir}: mean success {ev.result.mean_success:.2f}, mean return "
                   f"{ev.result.mean_return:.1f} -> eval.json, eval.csv")
        evals.append(ev)
    by_label = {label: [evals[i] for i in indices] for label, indices in groups.items()}
    if args.compare:
        print(format_compare_table(by_label))
    else:
        (label, group), = by_label.items()
        print(format_runs_table(label, group))
    return by_label


if __name__ == "__main__":
    main()
