"""The success-rate comparison of the paper: every architecture, several seeds, one table.

    python -m benchmarks.success --benchmark MT10 --archs mtsac,mhsac,conal,conal-nocn,stl
        --seeds 3 [--budget laptop|quick|paper] [--jobs N] [--device cpu|cuda|auto]
        [--runs-dir runs/success] [--out-dir benchmarks/results] [--total-steps N]
        [--eval-episodes N] [--minutes M] [--report-only]

Every (row, seed) is one training run in ``RUNS_DIR/<benchmark>-<budget>/<row>-s<seed>``,
trained in a subprocess (``python -m conal_rl.train`` or, for ``stl``, ``python -m
agents.stl``) with ``--preset BUDGET --torch-threads 1 --save-replay``, its output
appended to ``train.log`` there. The report ``OUT_DIR/<benchmark>-<budget>.md`` (+ ``.json``,
``.png``) is rewritten after every run that ends. Stopping the benchmark stops the runs in
flight at a checkpoint (replay included); calling it again skips finished runs and
continues the others where they stopped.

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
import contextlib
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from benchmarks.success_report import build_report, fmt_wall, report_stem
from benchmarks.success_runs import (
    DEFAULT_ROWS,
    ROWS,
    RunSpec,
    UserError,
    is_finished,
    make_specs,
    plan,
    read_json,
    saved_config,
)
from conal_rl.common import (
    CommandParser,
    StopSignal,
    as_float,
    machine,
    resolve_device,
    run_cli,
)
from conal_rl.training.config import PRESETS

PROG = "python -m benchmarks.success"
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


@dataclass
class _Running:
    spec: RunSpec
    proc: subprocess.Popen
    log: object
    start: float
    mode: str


def start(spec: RunSpec, mode: str) -> _Running:
    d = spec.run_dir
    if mode == "fresh" and d.exists():
        shutil.rmtree(d)  # holds no checkpoint: nothing to continue from
    if mode == "resume":
        # A stale timing.json (of a shorter earlier run) must not mark a continuation that
        # gets killed as finished; training keeps its timers in the checkpoint.
        (d / "timing.json").unlink(missing_ok=True)
    d.mkdir(parents=True, exist_ok=True)
    cmd = spec.command(mode, saved_config(spec))
    log = open(d / "train.log", "a")
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {PROG} ({mode}): "
              f"{shlex.join(cmd)}\n")
    log.flush()
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)  # Ctrl-C reaches them through us
    return _Running(spec, proc, log, time.perf_counter(), mode)


def run_all(args: argparse.Namespace, specs: list[RunSpec]) -> list[dict]:
    """Train what is unfinished, ``args.jobs`` at a time; the report is rewritten after
    every run that ends. Returns the failed runs."""
    failed: list[dict] = []
    todo: list[tuple[RunSpec, str]] = []
    for spec in specs:
        action, why = plan(spec)
        if action == "skip":
            tqdm.write(f"{spec.name}: skipped ({why}: {spec.run_dir})")
        elif action == "error":
            tqdm.write(f"{spec.name}: not run: {why}")
            failed.append({"run": spec.name, "run_dir": str(spec.run_dir), "reason": why,
                           "log": str(spec.run_dir / "train.log"), "log_tail": []})
        else:
            todo.append((spec, action))
    build_report(args, specs, failed)
    if not todo:
        return failed
    running: list[_Running] = []
    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), unit="run",
               desc="success runs", dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30)
    shown = ""
    signals = StopSignal()
    try:
        while (todo or running) and not signals.signum:
            while todo and len(running) < args.jobs and not signals.signum:
                spec, mode = todo.pop(0)
                tqdm.write(f"{spec.name}: {mode} -> {spec.run_dir}/train.log")
                running.append(start(spec, mode))
            now = "running: " + ", ".join(r.spec.name for r in running)
            if now != shown:
                bar.set_postfix_str(shown := now)
            time.sleep(0.2)
            for r in [r for r in running if r.proc.poll() is not None]:
                running.remove(r)
                r.log.close()
                _report_end(r, failed)
                bar.update(1)
                build_report(args, specs, failed)
        if signals.signum:
            tqdm.write(f"signal {signals.signum}: stopping {len(running)} run(s); they save "
                       "a checkpoint and continue on the next call")
            _stop(running)
            running = []
            build_report(args, specs, failed)
            raise SystemExit(128 + signals.signum)
    finally:
        if running:  # an error of our own: leave no training behind
            _stop(running, grace_s=30)
        bar.close()
        signals.restore()
    return failed


def _report_end(r: _Running, failed: list[dict]) -> None:
    spec, rc, took = r.spec, r.proc.returncode, time.perf_counter() - r.start
    if rc == 0 and is_finished(spec):
        latest = read_json(spec.run_dir / "eval_latest.json") or {}
        value = as_float(latest.get("mean_success"))
        shown = "" if math.isnan(value) else f", mean success {value:.2f}"
        tqdm.write(f"{spec.name}: done in {fmt_wall(took)}{shown}")
        return
    reason = f"exit status {rc}" if rc else "ended without finishing"
    tail = log_tail(spec.run_dir / "train.log")
    failed.append({"run": spec.name, "run_dir": str(spec.run_dir), "reason": reason,
                   "returncode": rc, "log": str(spec.run_dir / "train.log"), "log_tail": tail})
    tqdm.write(f"{spec.name}: FAILED ({reason}); last lines of {spec.run_dir}/train.log:\n  "
               + "\n  ".join(tail))


def _stop(running: list[_Running], grace_s: float = 120) -> None:
    """SIGTERM every child (training saves a checkpoint and exits), then wait."""
    for r in running:
        with contextlib.suppress(ProcessLookupError):
            r.proc.terminate()
    deadline = time.time() + grace_s
    for r in running:
        try:
            r.proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait()
        r.log.close()


# ---- command line -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog=PROG, description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="rows: " + "; ".join(f"{k}: {v[2]}" for k, v in ROWS.items()))
    parser.add_argument("--benchmark", default="MT10",
                        help="MT10, MT50, MT1:<task> or gym:<env-id> (default: %(default)s)")
    parser.add_argument("--archs", default=",".join(DEFAULT_ROWS),
                        help="comma-separated rows (default: %(default)s); all: "
                        + ",".join(ROWS))
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds 0..N-1 per row (default: %(default)s)")
    parser.add_argument("--budget", default="laptop",
                        help="the training preset of every run, one of conal_rl.training.config."
                        f"PRESETS ({', '.join(PRESETS)}; default: %(default)s, the CPU comparison: "
                        "60 training minutes per run; quick is a smoke run that learns little, "
                        "paper the GPU-box comparison)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at the same time (default: %(default)s)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="torch device of every run (default: %(default)s)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/success"),
                        help="where the runs go, in <benchmark>-<budget>/<row>-s<seed> "
                        "(default: %(default)s)")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"),
                        help="where <benchmark>-<budget>.md/.json/.png go (default: "
                        "%(default)s)")
    parser.add_argument("--total-steps", type=int, default=None,
                        help="env steps of every run, summed over tasks (default: the "
                        "budget's); small values make a smoke run")
    parser.add_argument("--eval-episodes", type=int, default=None,
                        help="evaluation episodes per task of every run (default: the "
                        "budget's)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="wall-clock training budget of every run (default: the "
                        "budget's; 0: none)")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="env steps between evaluations, for smoke runs (default: the "
                        "budget's)")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="random-action env steps before updates, for smoke runs "
                        "(default: the budget's)")
    parser.add_argument("--search-steps", type=int, default=None,
                        help="CoNAL rows: env steps of the search, for smoke runs (default: "
                        "the budget's)")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild the report from the runs there are; train nothing")
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
    if args.budget not in PRESETS:
        raise UserError(f"unknown --budget {args.budget!r}; valid: {', '.join(PRESETS)}")
    for name in ("seeds", "jobs", "total_steps", "eval_episodes", "search_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
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


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)

    def body() -> dict:
        check_args(args)
        specs = make_specs(args)
        # The report keeps every call that built it and the machine that trained.
        previous = read_json(report_stem(args).with_suffix(".json")) or {}
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


if __name__ == "__main__":
    main()
