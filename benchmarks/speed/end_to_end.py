"""End-to-end training speed of one run, an earlier version of the code against this one,
side by side in one benchmark run.

    python -m benchmarks.speed.end_to_end [--before REV] [--minutes M] [--rounds N]
                                    [--arch mtsac] [--preset laptop] [--out STEM]

Trains ``python -m conal_rl.train --benchmark MT10 --arch ARCH --preset PRESET --minutes M``
from a git worktree of REV with that version's defaults (before) and from this checkout with
the flags given by ``--after-flags`` (after: default ``--vector-strategy worker``), taking
turns for ``--rounds`` rounds, and reads every run's ``timing.json``: env-steps/s = env
steps / training wall time (the trainer's clock: evaluation and checkpoints excluded; the
random warm-up included, alike in both). Each run is a fresh process on the whole machine;
nothing else of this benchmark runs meanwhile.
"""

from __future__ import annotations

import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.report_files import command, header, now, save
from conal_rl.common import CommandParser, machine
from conal_rl.training.rundir import RunDir

ROOT = Path(__file__).resolve().parents[2]


def worktree(rev: str, into: Path) -> Path:
    """A checkout of ``rev`` (the repository's own history) in ``into``."""
    path = into / f"before-{rev}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force",
                    str(path), rev], check=True, capture_output=True)
    return path


def train(code: Path, run_dir: Path, args, extra: list[str]) -> dict:
    """One training run of the code in ``code``; its timing.json plus what it ran."""
    cmd = [sys.executable, "-m", "conal_rl.train", "--benchmark", "MT10", "--arch", args.arch,
           "--preset", args.preset, "--minutes", str(args.minutes), "--eval-every", "0",
           "--eval-episodes", "1", "--seed", "0", "--run-dir", str(run_dir), *extra]
    with open("/proc/loadavg") as f:
        load = float(f.read().split()[0])
    subprocess.run(cmd, cwd=code, check=True, stdout=subprocess.DEVNULL)
    timing = RunDir(run_dir).timing()
    if timing is None:
        raise RuntimeError(f"{run_dir}: training ended without its timing")
    return {"command": shlex.join(cmd[1:]), "load_at_start": load,
            "env_steps": timing["env_steps"], "updates": timing["updates"],
            "train_wall_s": timing["train_wall"], "update_s": timing["update"],
            "env_s": timing["env"],
            "env_steps_per_s": timing["env_steps"] / timing["train_wall"]}


def markdown(payload: dict) -> str:
    s = payload["summary"]
    lines = [
        *header(f"End-to-end training speed: MT10 {payload['arch']}, preset "
                f"{payload['preset']}", payload["command"], payload["machine"],
                payload.get("date")),
        f"Before: commit `{payload['before']}` with its defaults. After: this checkout "
        f"(`{payload['after_rev']}`) with `{payload['after_flags']}`. Each run "
        f"{payload['minutes']} training minutes, the two taking turns; env-steps/s = env "
        "steps / training wall (the trainer's clock).", "",
        "| round | version | env-steps/s | env steps | updates | update s | env s (not hidden) "
        "| wall s | load at start |", "|---|---|---|---|---|---|---|---|---|"]
    for r in payload["runs"]:
        lines.append(f"| {r['round']} | {r['version']} | {r['env_steps_per_s']:.0f} | "
                     f"{r['env_steps']:,} | {r['updates']:,} | {r['update_s']:.0f} | "
                     f"{r['env_s']:.0f} | {r['train_wall_s']:.0f} | {r['load_at_start']:.2f} |")
    lines += ["", f"Median env-steps/s: before {s['before']:.0f}, after {s['after']:.0f}: "
              f"**{s['ratio']:.2f}x**."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = CommandParser(prog="python -m benchmarks.speed.end_to_end", description=__doc__)
    parser.add_argument("--before", default="8a3f19d", help="git revision of the before code")
    parser.add_argument("--after-flags", default="--vector-strategy worker",
                        help="extra training flags of the after runs")
    parser.add_argument("--arch", default="mtsac", help="--arch of both")
    parser.add_argument("--preset", default="laptop", help="--preset of both")
    parser.add_argument("--minutes", type=float, default=3.0, help="training minutes per run")
    parser.add_argument("--rounds", type=int, default=2, help="before/after pairs")
    parser.add_argument("--out", default="benchmarks/results/end-to-end",
                        help="output stem: STEM.json and STEM.md")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rounds < 1:
        parser.error("--minutes must be positive and --rounds at least 1")
    after_rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                               capture_output=True, text=True, check=True).stdout.strip()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        before_code = worktree(args.before, tmp)
        try:
            for rnd in range(args.rounds):
                for version, code, extra in (("before", before_code, []),
                                             ("after", ROOT, shlex.split(args.after_flags))):
                    run = train(code, tmp / f"{version}-{rnd}", args, extra)
                    runs.append({"round": rnd, "version": version, **run})
                    print(runs[-1], file=sys.stderr)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(before_code)], capture_output=True)
    speeds = {v: statistics.median(r["env_steps_per_s"] for r in runs if r["version"] == v)
              for v in ("before", "after")}
    payload = {"command": command("python -m benchmarks.speed.end_to_end", argv),
               "machine": machine(), "date": now(), "before": args.before, "after_rev": after_rev,
               "after_flags": args.after_flags, "arch": args.arch, "preset": args.preset,
               "minutes": args.minutes, "runs": runs,
               "summary": {**speeds, "ratio": speeds["after"] / speeds["before"]}}
    save(Path(args.out), payload, markdown(payload))
    return payload


if __name__ == "__main__":
    main()
