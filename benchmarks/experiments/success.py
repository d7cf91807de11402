"""The success-rate comparison of the paper: every architecture, several seeds, one table.

    python -m benchmarks.experiments.success --benchmark MT10 --archs
        mtsac,mhsac,conal,conal-nocn,stl
        --seeds 3 [--budget laptop|quick|paper] [--jobs N] [--device cpu|cuda|auto]
        [--cpus-per-trial C] [--gpus-per-trial G] [--address ray://HOST:10001]
        [--runs-dir runs/success] [--out-dir benchmarks/results] [--total-steps N]
        [--eval-episodes N] [--minutes M] [--report-only]

Every (row, seed) is one training run in ``RUNS_DIR/<benchmark>-<budget>/<row>-s<seed>``
and one Ray Tune trial (``--cpus-per-trial``, ``--gpus-per-trial``; on a Ray started for the
call, or an existing cluster with ``--address``/``$RAY_ADDRESS``). The trial trains it in a
subprocess (``python -m conal_rl.train`` or, for ``stl``, ``python -m conal_rl.stl``) with
``--preset BUDGET --torch-threads 1 --save-replay``, its output appended to ``train.log``
there, and reports every new evaluation (its ``evaluations.csv``: success, env steps) to Tune.
The report ``OUT_DIR/<benchmark>-<budget>.md`` (+ ``.json``, ``.png``) is rewritten after
every run that ends. SIGINT/SIGTERM stops the runs in flight at a checkpoint (replay
included) and waits for them; calling it again skips finished runs and continues the others
where they stopped: the run folders are the state (Tune's own experiment folder,
``RUNS_DIR/_tune``, is not needed to resume).

A run is finished when its ``timing.json`` (written only when training ends normally)
says it reached the requested total steps, or that the ``--minutes`` budget stopped it
and the run's budget is the requested one. An unfinished run with a checkpoint is
continued (``--resume DIR``; a CoNAL run stopped during its search is started again with
the same ``--run-dir``, which continues the search); a run folder with no checkpoint is
removed and the run started afresh.

This module is the command line and the scheduling of the runs; the rows and the state of
a run's folder are in ``success_runs.py``, the report in ``success_report.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.experiments.success_report import (
    build_report,
    fmt_wall,
    recorded,
    report_stem,
    runs_folder,
)
from benchmarks.experiments.success_runs import (
    BUDGETS,
    DEFAULT_ROWS,
    PASS_THROUGH,
    ROWS,
    RunSpec,
    UserError,
    is_finished,
    make_specs,
    plan,
    saved_config,
)
from conal_rl.analysis.curves import MEAN, read_curves
from conal_rl.common import (
    CommandParser,
    StopSignal,
    as_float,
    finite_or_none,
    machine,
    resolve_device,
    run_cli,
)
from conal_rl.training.config import TrainConfig, add_config_arguments
from conal_rl.training.rundir import read_json

PROG = "python -m benchmarks.experiments.success"
LOG_TAIL = 15  # lines of a failed run's train.log shown in the report


# ---- running ------------------------------------------------------------------------------------
def log_tail(path: Path, lines: int = LOG_TAIL) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ["(no log)"]
    # tqdm redraws with carriage returns: keep the last state of every line.
    out = [seg.split("\r")[-1].rstrip() for seg in text.splitlines()]
    return [line for line in out if line.strip()][-lines:]


def start(spec: RunSpec, mode: str) -> tuple[subprocess.Popen, object]:
    """Start training ``spec`` as a subprocess; returns it and its open ``train.log``, which
    the subprocess holds locked (``flock``) until it exits: a later call waits for a run
    still saving its checkpoint instead of training the same folder twice."""
    d = spec.run_dir
    if mode == "fresh" and d.exists():
        shutil.rmtree(d)  # holds no checkpoint: nothing to continue from
    if mode == "resume":
        # A stale timing.json (of a shorter earlier run) must not mark a continuation that
        # gets killed as finished; training keeps its timers in the checkpoint.
        spec.run.forget_finished()
    d.mkdir(parents=True, exist_ok=True)
    cmd = spec.command(mode, saved_config(spec))
    log = open(spec.run.train_log, "a")
    fcntl.flock(log, fcntl.LOCK_EX)
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {PROG} ({mode}): "
              f"{shlex.join(cmd)}\n")
    log.flush()
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    # Own session: a Ctrl-C at the terminal reaches the run only through us. SIGTERM when the
    # trial's worker dies (Tune stopped it, Ray shut down): the run saves a checkpoint.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, preexec_fn=_term_with_parent)
    return proc, log


def _term_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_unlocked(spec: RunSpec, timeout_s: float | None = None) -> bool:
    """Wait until no process holds the run's train.log (a run still saving); False on
    timeout."""
    log = spec.run.train_log
    if not log.exists():
        return True
    deadline = None if timeout_s is None else time.time() + timeout_s
    with open(log, "a") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if deadline is not None and time.time() > deadline:
                    return False
                time.sleep(0.5)


# ---- a Ray Tune trial: one training run ----------------------------------------------------------
def latest_evaluation(spec: RunSpec) -> dict:
    latest = spec.run.latest_evaluation() or {}
    return {"env_steps": latest.get("env_steps"), "train_minutes": latest.get("train_minutes"),
            "mean_success": latest.get("mean_success")}


def evaluations_after(spec: RunSpec, after: int | None) -> list[dict]:
    """The run's evaluations after env step ``after`` (None: all), oldest first, read from
    its evaluations table, so that evaluations closer together than the trial's poll are
    all reported. Only those up to ``eval_latest.json``'s step: that file is written after
    an evaluation's rows, so an evaluation being written waits for the next poll."""
    latest = latest_evaluation(spec)["env_steps"]
    if latest is None or (after is not None and latest <= after):
        return []  # nothing new: the table is not read
    try:
        steps, success = read_curves(spec.run_dir, "success", "env_steps").get(MEAN, ((), ()))
        minutes, _ = read_curves(spec.run_dir, "success", "train_minutes").get(MEAN, ((), ()))
    except UserError:  # a row half-written by an evaluation under way: read again next time
        return []
    return [{"env_steps": int(step), "train_minutes": float(minute),
             "mean_success": finite_or_none(float(rate))}
            for step, minute, rate in zip(steps, minutes, success)
            if (after is None or step > after) and step <= latest]


def trial(config: dict, specs: dict[str, RunSpec], stop_file: Path, poll_s: float = 1.0) -> None:
    """The Tune trial of one (row, seed): wait for any earlier process on its folder, plan
    it again (the folder is the state), train it as a subprocess and report every new
    evaluation (``evaluations_after``) to Tune; the last report has ``run_ended``. When
    ``stop_file`` appears (the command got SIGINT/SIGTERM) it SIGTERMs the run, which saves
    a checkpoint, and ends (Ray kills a worker's leftover processes without a grace)."""
    from ray import tune

    spec = specs[config["run"]]
    wait_unlocked(spec)
    mode, why = plan(spec)
    if stop_file.exists():
        mode, why = "stopped", "not started"
    if mode in ("skip", "error", "stopped"):
        tune.report({"run_ended": True, "mode": mode, "why": why, "returncode": None,
                     "finished": mode == "skip", "wall_s": 0.0, **latest_evaluation(spec)})
        return
    began = time.perf_counter()
    proc, log = start(spec, mode)
    shown = None  # the env step of the last evaluation reported
    try:
        while True:
            rc = proc.poll()
            for evaluation in evaluations_after(spec, shown) if rc is None else ():
                tune.report({"run_ended": False, **evaluation})
                shown = evaluation["env_steps"]
            if rc is not None:
                break
            if stop_file.exists() and mode != "stopped":  # once: the run is saving
                mode = "stopped"
                proc.terminate()
            time.sleep(poll_s)
    finally:
        if proc.poll() is None:  # stopped by Tune: the run saves a checkpoint first
            proc.terminate()
            proc.wait()
        log.close()
    tune.report({"run_ended": True, "mode": mode, "why": why, "returncode": proc.returncode,
                 "finished": proc.returncode == 0 and is_finished(spec),
                 "wall_s": time.perf_counter() - began, **latest_evaluation(spec)})


def _absolute(spec: RunSpec) -> RunSpec:
    return dataclasses.replace(spec, run_dir=spec.run_dir.resolve())


def run_all(args: argparse.Namespace, specs: list[RunSpec]) -> list[dict]:
    """Train what is unfinished as Ray Tune trials (a local Ray, or ``--address``), at most
    ``args.jobs`` at a time; the report is rewritten after every run that ends. Returns the
    failed runs."""
    failed: list[dict] = []
    todo: list[RunSpec] = []
    for spec in specs:
        action, why = plan(spec)
        if recorded(spec, getattr(args, "previous", {})) is not None:
            action, why = "skip", "finished, kept in the report; its folder is gone"
        if action == "skip":
            print(f"{spec.name}: skipped ({why}: {spec.run_dir})", flush=True)
        elif action == "error":
            print(f"{spec.name}: not run: {why}", flush=True)
            failed.append({"run": spec.name, "run_dir": str(spec.run_dir), "reason": why,
                           "log": str(spec.run.train_log), "log_tail": []})
        else:
            print(f"{spec.name}: {action} -> {spec.run.train_log}", flush=True)
            todo.append(spec)
    build_report(args, specs, failed)
    if not todo:
        return failed

    import ray
    from ray import tune

    by_name = {s.name: s for s in todo}
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours: SIGINT and SIGTERM alike
    address = args.address or os.environ.get("RAY_ADDRESS")
    ours = not ray.is_initialized()
    if ours:
        if address:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        else:
            ray.init(num_cpus=math.ceil(args.jobs * args.cpus_per_trial), include_dashboard=False,
                     logging_level="WARNING", log_to_driver=False)
    # After ray.init: it installs a failure handler for SIGTERM that logs and kills the
    # driver, so the runs would die with Ray's workers instead of saving a checkpoint.
    signals = StopSignal()

    class Ended(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("run_ended"):
                _report_end(by_name[trial.config["run"]], result, failed)
                build_report(args, specs, failed)

        def on_trial_error(self, iteration, trials, trial, **info):
            spec = by_name[trial.config["run"]]
            failed.append({"run": spec.name, "run_dir": str(spec.run_dir),
                           "reason": f"trial error: {trial.error_file}",
                           "log": str(spec.run.train_log),
                           "log_tail": log_tail(spec.run.train_log)})
            build_report(args, specs, failed)

    name = f"success-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    storage = (args.runs_dir / "_tune").resolve()
    stop_file = storage / name / "STOP"

    class OnSignal(tune.Stopper):  # tells the trials; they end by themselves
        def __call__(self, trial_id, result):
            return False

        def stop_all(self):
            if signals.signum and not stop_file.exists():
                stop_file.parent.mkdir(parents=True, exist_ok=True)
                stop_file.touch()
            return False

    resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    trainable = tune.with_resources(
        tune.with_parameters(trial, specs={n: _absolute(s) for n, s in by_name.items()},
                             stop_file=stop_file),
        resources)
    tuner = tune.Tuner(
        trainable, param_space={"run": tune.grid_search(list(by_name))},
        tune_config=tune.TuneConfig(max_concurrent_trials=args.jobs),
        run_config=tune.RunConfig(
            name=name, storage_path=str(storage),
            stop=OnSignal(), callbacks=[Ended()], verbose=0,
            failure_config=tune.FailureConfig(max_failures=0)))
    try:
        tuner.fit()
    finally:
        if ours:
            ray.shutdown()  # a trial still running: its worker dies, the run gets SIGTERM
        signals.restore()
        os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
    if signals.signum:
        print(f"signal {signals.signum}: runs stopped; they save a checkpoint and continue on "
              "the next call", flush=True)
        for spec in todo:
            wait_unlocked(spec, timeout_s=120)
        build_report(args, specs, failed)
        raise SystemExit(128 + signals.signum)
    return failed


def _report_end(spec: RunSpec, result: dict, failed: list[dict]) -> None:
    rc = result.get("returncode")
    if result.get("mode") == "stopped":
        print(f"{spec.name}: stopped ({result.get('why')}, exit status {rc}): continues on "
              "the next call", flush=True)
        return
    if result.get("finished"):
        value = as_float(result.get("mean_success"))
        shown = "" if math.isnan(value) else f", mean success {value:.2f}"
        print(f"{spec.name}: done in {fmt_wall(result.get('wall_s', 0.0))}{shown}", flush=True)
        return
    if result.get("mode") == "error":
        reason = result.get("why")
    else:
        reason = f"exit status {rc}" if rc else "ended without finishing"
    tail = log_tail(spec.run.train_log)
    failed.append({"run": spec.name, "run_dir": str(spec.run_dir), "reason": reason,
                   "returncode": rc, "log": str(spec.run.train_log), "log_tail": tail})
    print(f"{spec.name}: FAILED ({reason}); last lines of {spec.run.train_log}:\n  "
          + "\n  ".join(tail), flush=True)


# ---- command line -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog=PROG, description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="rows: " + "; ".join(f"{k}: {v[2]}" for k, v in ROWS.items()))
    parser.add_argument("--archs", default=",".join(DEFAULT_ROWS),
                        help="comma-separated rows (default: %(default)s); all: "
                        + ",".join(ROWS))
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds 0..N-1 per row (default: %(default)s)")
    parser.add_argument("--budget", default="laptop",
                        help=f"the training preset (--preset) of every run: {', '.join(BUDGETS)} "
                        "(default: %(default)s, the CPU comparison: "
                        "60 training minutes per run; quick is a smoke run that learns little, "
                        "paper the GPU-box comparison)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs trained at the same time (default: 1 on a local Ray, "
                        "as many as the cluster's resources allow with --address)")
    parser.add_argument("--cpus-per-trial", type=float, default=1,
                        help="CPUs Ray reserves for each run (default: %(default)s; a run "
                        "uses one torch thread, and with 2 or more its envs step in a worker "
                        "process beside the update: --vector-strategy worker, else sync)")
    parser.add_argument("--gpus-per-trial", type=float, default=0,
                        help="GPUs (or a fraction of one) Ray reserves for each run "
                        "(default: %(default)s)")
    parser.add_argument("--address", default=None,
                        help="an existing Ray cluster (ray://host:10001, or host:6379 on a "
                        "node of it; default: $RAY_ADDRESS, else a local Ray started for "
                        "this call); --runs-dir and --out-dir must then be on a filesystem "
                        "every node shares")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/success"),
                        help="where the runs go, in <benchmark>-<budget>/<row>-s<seed> "
                        "(default: %(default)s)")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"),
                        help="where <benchmark>-<budget>.md/.json/.png go (default: "
                        "%(default)s)")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild the report from the runs there are; train nothing")
    # Training's own flags, given to every run (--search-steps: to the CoNAL rows); left out,
    # a run takes its budget's value (small values make smoke runs), but --benchmark and
    # --device have this command's defaults.
    add_config_arguments(parser.add_argument_group(
        "training flags, given to every run (left out: the budget's value)"),
                         only=("benchmark", "device", *PASS_THROUGH))
    parser.set_defaults(benchmark="MT10", device="auto")
    return parser


def check_args(args: argparse.Namespace) -> None:
    from envs import UnknownBenchmark, check_benchmark_name

    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = [a for a in args.archs if a not in ROWS]
    if unknown or not args.archs:
        raise UserError(f"unknown row {', '.join(map(repr, unknown)) or '(none given)'} in "
                        f"--archs; valid: {', '.join(ROWS)}")
    if len(set(args.archs)) != len(args.archs):
        raise UserError("--archs names a row twice")
    if args.budget not in BUDGETS:
        raise UserError(f"unknown --budget {args.budget!r}; valid: {', '.join(BUDGETS)}")
    for name in ("seeds", "jobs", "total_steps", "eval_episodes", "search_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name in ("cpus_per_trial", "gpus_per_trial"):
        value = getattr(args, name)
        if not (0 <= value < math.inf) or (name == "cpus_per_trial" and value == 0):
            raise UserError(f"--{name.replace('_', '-')} must be a finite number, "
                            f"{'above' if name == 'cpus_per_trial' else 'not below'} 0, "
                            f"got {value}")
    on_cluster = bool(args.address or os.environ.get("RAY_ADDRESS"))
    if args.jobs is None:
        args.jobs = None if on_cluster else 1
    if args.gpus_per_trial > 0 and not on_cluster:
        import torch

        if not torch.cuda.is_available():
            raise UserError("--gpus-per-trial needs a GPU on this machine (or --address of a "
                            "cluster with GPUs)")
    for name in ("minutes", "eval_every", "warmup_steps"):
        value = getattr(args, name)
        if value is not None and not (0 <= value < math.inf):  # NaN too
            raise UserError(f"--{name.replace('_', '-')} must be a finite number, not "
                            f"negative, got {value}")
    resolve_device(args.device)
    try:
        check_benchmark_name(args.benchmark)
    except UnknownBenchmark as e:
        raise UserError(str(e)) from None
    check_fixed_trees(args)


def check_fixed_trees(args: argparse.Namespace) -> None:
    """A row that trains a fixed tree (``--architecture``) must fit the table's tasks and nets:
    refused here, in one line, rather than failing (or training other sizes) in every run."""
    from envs import task_names

    for row in args.archs:
        flags = ROWS[row][1]
        if "--architecture" not in flags:
            continue
        from conal_rl.training.nets import load_specs  # torch: only for such a row

        path = Path(flags[flags.index("--architecture") + 1])
        specs = load_specs(path)
        tasks, hidden = task_names(args.benchmark), TrainConfig(preset=args.budget).hidden
        for role, spec in specs.items():
            if list(spec.task_names) != tasks or spec.hidden != hidden:
                raise UserError(
                    f"row {row!r} trains the fixed {role} tree of {path.name}, made for "
                    f"{len(spec.task_names)} tasks ({', '.join(spec.task_names[:2])}, ...) and "
                    f"nets {'x'.join(map(str, spec.hidden))}; --benchmark {args.benchmark} "
                    f"--budget {args.budget} has {len(tasks)} tasks and nets "
                    f"{'x'.join(map(str, hidden))}")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)

    def body() -> dict:
        check_args(args)
        specs = make_specs(args)
        # The report keeps every call that built it and the machine that trained: those of
        # the report already there if it is of these runs (not of another runs folder's).
        previous = read_json(report_stem(args).with_suffix(".json")) or {}
        if previous.get("runs_dir") != runs_folder(args, specs):
            previous = {}
        args.previous = previous  # its records keep finished runs whose folders are gone
        args.history = [*previous.get("commands", []),
                        " ".join([PROG, *map(shlex.quote, argv)])]
        args.machine = (previous["machine"] if args.report_only and "machine" in previous
                        else machine(args.device))
        failed = [] if args.report_only else run_all(args, specs)
        payload = build_report(args, specs, failed)
        stem = report_stem(args)
        print(f"wrote {stem}.md, {stem}.json" + (f", {stem}.png" if payload["plot"] else ""))
        if failed:
            print(f"{len(failed)} run(s) failed: {', '.join(f['run'] for f in failed)}",
                  file=sys.stderr)
            raise SystemExit(1)
        return payload

    return run_cli(PROG, body, (UserError,))


def table(argv: list[str]) -> tuple[dict, int | str | None]:
    """:func:`main` for a benchmark built on this one (the laptop sweep, the learner study):
    the report and, where some runs failed (the report says which), the exit status, so
    that the caller can report the rest before it exits with it."""
    try:
        return main(argv), None
    except SystemExit as e:
        return {}, e.code


if __name__ == "__main__":
    main()
