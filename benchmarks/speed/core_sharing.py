"""Do this machine's CPUs share a core? A single-thread matrix product's rate on one CPU,
the other CPU idle or busy.

    python -m benchmarks.speed.core_sharing [--cpu 1] [--other 0] [--seconds 4]
        [--repeats 3] [--out benchmarks/results/core-sharing]

Cloud VMs often hand out hyperthreads as "CPUs": two of them can be the two hardware
threads of one physical core, which share its execution units and L1/L2 caches. Then a
second busy process (an env worker, a second training run) slows the first, and "both
cores for one run" cannot reach 2x. The benchmark pins itself to ``--cpu`` and measures
the rate of a SAC-size fp32 product ([320, 128] x [128, 128], the laptop preset's hidden
layer over a 10-task batch) in the thread's CPU time, while ``--other`` runs nothing, the
same product (compute-bound), a spin loop of the interpreter (integer work, no memory) or a
stream over 64 MB (memory-bound). A rate that falls by a third or more with a compute-bound
neighbour says the two CPUs share a core; one that holds says they do not. Run it with
nothing else on the machine.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.report_files import command, header, now, save
from conal_rl.common import CommandParser, machine

PROG = "python -m benchmarks.speed.core_sharing"
SHAPE = (320, 128, 128)  # M, K, N
NEIGHBOURS = {  # what runs on the other CPU, as a python -c program
    "idle": None,
    "same product": "import torch\ntorch.set_num_threads(1)\na, b = torch.randn({m}, {k}), "
                    "torch.randn({k}, {n})\nwhile True:\n    a @ b",
    "spin loop": "x = 0\nwhile True:\n    x += 1",
    "64 MB stream": "import numpy as np\na = np.ones(8 << 20)\nwhile True:\n    a *= 1.0000001",
}


def gemm_rate(seconds: float) -> float:
    """GFLOP/s of the product on this thread, in its CPU time."""
    m, k, n = SHAPE
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(200):
        a @ b
    calls, start = 0, time.thread_time()
    while time.thread_time() - start < seconds:
        for _ in range(50):
            a @ b
        calls += 50
    return calls * 2 * m * k * n / (time.thread_time() - start) / 1e9


def measure(cpu: int, other: int, seconds: float, repeats: int) -> list[dict]:
    """A row per neighbour: the median rate over ``repeats`` rounds (every round measures
    every neighbour, so slow drifts of the host reach all rows alike), this process pinned
    to ``cpu`` meanwhile."""
    before, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, {cpu})
    torch.set_num_threads(1)
    try:
        rounds = [_rows(other, seconds) for _ in range(repeats)]
    finally:
        os.sched_setaffinity(0, before)
        torch.set_num_threads(threads)
    rows = []
    for i, name in enumerate(NEIGHBOURS):
        rates = [r[i]["gflops"] for r in rounds]
        rows.append({"other_cpu": name, "gflops": statistics.median(rates), "rounds": rates})
    for row in rows:
        row["of_idle"] = row["gflops"] / rows[0]["gflops"]
    return rows


def _rows(other: int, seconds: float) -> list[dict]:
    m, k, n = SHAPE
    rows = []
    for name, program in NEIGHBOURS.items():
        neighbour = None
        if program is not None:
            neighbour = subprocess.Popen(
                ["taskset", "-c", str(other), sys.executable, "-c",
                 program.format(m=m, k=k, n=n)])
            time.sleep(1.0)  # past its start-up
        try:
            rows.append({"other_cpu": name, "gflops": gemm_rate(seconds)})
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
        print(f"{name}: {rows[-1]['gflops']:.1f} GFLOP/s", file=sys.stderr, flush=True)
    return rows


def markdown(payload: dict) -> str:
    lines = [*header("Do the CPUs share a core?", payload["command"], payload["machine"],
                     payload.get("date")),
             f"A single-thread fp32 product {'x'.join(map(str, payload['shape']))} on CPU "
             f"{payload['cpu']}, {payload['seconds']:g} s of its CPU time per measurement, "
             f"while CPU {payload['other']} runs what the row says; {payload['repeats']} "
             "rounds over all rows, the median and every round's rate.", "",
             "| other CPU runs | GFLOP/s (median) | of idle | rounds |", "|---|---|---|---|"]
    lines += [f"| {r['other_cpu']} | {r['gflops']:.1f} | {r['of_idle']:.2f} | "
              + ", ".join(f"{x:.1f}" for x in r["rounds"]) + " |" for r in payload["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = CommandParser(prog=PROG, description=__doc__)
    parser.add_argument("--cpu", type=int, default=1, help="CPU to measure on")
    parser.add_argument("--other", type=int, default=0, help="CPU the neighbours run on")
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="CPU seconds per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all rows")
    parser.add_argument("--out", default="benchmarks/results/core-sharing",
                        help="output stem: STEM.json and STEM.md")
    args = parser.parse_args(argv)
    usable = os.sched_getaffinity(0)
    if args.cpu == args.other or not {args.cpu, args.other} <= usable:
        parser.error(f"--cpu and --other must be two different CPUs of {sorted(usable)}")
    if args.seconds <= 0 or args.repeats < 1:
        parser.error("--seconds must be positive and --repeats at least 1")
    payload = {"command": command(PROG, argv), "machine": machine("cpu"), "date": now(),
               "shape": list(SHAPE),
               "cpu": args.cpu, "other": args.other, "seconds": args.seconds,
               "repeats": args.repeats,
               "rows": measure(args.cpu, args.other, args.seconds, args.repeats)}
    save(Path(args.out), payload, markdown(payload))
    return payload


if __name__ == "__main__":
    main()
