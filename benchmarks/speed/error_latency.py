"""Seconds from a command line to its one-line error, for bad flags and missing files.

    python -m benchmarks.speed.error_latency [--code DIR ...] [--repeats 3] [--out STEM]

Runs every case with ``python -m ...`` from each ``--code`` checkout (default: this one;
give a git worktree of an older revision to compare, side by side in one run), pinned to
CPU 0, and records the median wall seconds to the exit and the exit status. Writes
``STEM.json`` and ``STEM.md`` with the command and the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.report_files import command, header, save
from conal_rl.common import machine

CASES = [  # (command module, its arguments): each a user error, exit status 2
    ("conal_rl.train", ["--hidden", "abc"]),
    ("conal_rl.train", ["--lr", "nan"]),
    ("conal_rl.train", ["--total-steps", "0"]),
    ("conal_rl.train", ["--benchmark", "MT11"]),
    ("conal_rl.train", ["--resume", "/nonexistent/run"]),
    ("conal_rl.train", ["--arch", "tree", "--architecture", "/nonexistent.json"]),
    ("conal_rl.stl", ["--seed", "-1"]),
    ("conal_rl.evaluate", ["/nonexistent/run"]),
    ("conal_rl.render", ["/nonexistent/run"]),
    ("conal_rl.plot", ["/nonexistent/run"]),
]


def seconds_to_error(code: Path, module: str, args: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    env = os.environ | {"PYTHONPATH": str(code.resolve())}  # that checkout's code, not ours
    proc = subprocess.run(["taskset", "-c", "0", sys.executable, "-m", module, *args],
                          cwd=code, env=env, capture_output=True, text=True, timeout=300)
    return time.perf_counter() - start, proc.returncode


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed.error_latency",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", type=Path, action="append", default=None,
                        help="a checkout to run the commands from (repeatable; default: .)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case (median)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/error-latency"))
    args = parser.parse_args(argv)
    codes = args.code or [Path(".")]
    rows = []
    for module, case in CASES:
        row = {"command": f"python -m {module} {' '.join(case)}"}
        for code in codes:
            runs = [seconds_to_error(code, module, case) for _ in range(args.repeats)]
            row[str(code)] = {"seconds": statistics.median(s for s, _ in runs),
                              "exit_status": runs[0][1]}
        rows.append(row)
        print(row, flush=True)
    payload = {"command": command("python -m benchmarks.speed.error_latency", argv),
               "machine": machine("cpu"), "repeats": args.repeats,
               "codes": [str(c) for c in codes], "rows": rows}
    lines = [*header("Seconds to a bad flag's or file's error", payload["command"],
                     payload["machine"]), "",
             "| command | " + " | ".join(f"`{c}`: s (exit)" for c in codes) + " |",
             "|---|" + "---|" * len(codes)]
    for row in rows:
        cells = [f"{row[str(c)]['seconds']:.2f} ({row[str(c)]['exit_status']})" for c in codes]
        lines.append(f"| `{row['command']}` | " + " | ".join(cells) + " |")
    save(args.out, payload, "\n".join(lines) + "\n")
    return payload


if __name__ == "__main__":
    main()
