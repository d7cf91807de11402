"""What Ray Tune costs the success benchmark: the same tiny experiment scheduled by the old
subprocess pool (``benchmarks/`` as committed at ``--old-rev``, run from a ``git archive``
copy) and by the Ray Tune trials of the working tree.

    python -m benchmarks.speed.ray_overhead [--old-rev 45e6335] [--out
        benchmarks/results/ray-overhead]

Each command runs as a subprocess with fresh run folders; every 0.2 s this samples the
whole process tree under it (Ray's daemons and workers, the training runs) and records the
wall time, the start-up time (launch until the first run's ``train.log`` names its training
command) and the peak memory summed over the tree (PSS, from ``/proc/*/smaps_rollup``:
shared pages counted once). Linux only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from benchmarks.report_files import command, header, now, save
from conal_rl.common import machine
from conal_rl.training.rundir import RunDir

PROG = "python -m benchmarks.speed.ray_overhead"
TINY = ["--benchmark", "gym:Pendulum-v1", "--archs", "mtsac,mhsac", "--seeds", "1",
        "--budget", "quick", "--total-steps", "300", "--warmup-steps", "100",
        "--eval-every", "150", "--eval-episodes", "1", "--device", "cpu", "--jobs", "2"]


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_pss_mb(root: int) -> tuple[float, int]:
    """PSS summed over ``root`` and its descendants (MiB), and how many processes."""
    tree, todo, total, count = _children(), [root], 0, 0
    while todo:
        pid = todo.pop()
        todo += tree.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    count += 1
                    break
        except OSError:
            continue
    return total / 1024, count


def measure(cmd: list[str], cwd: Path, first_log: Path) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    startup = peak = None
    peak, procs = 0.0, 0
    while proc.poll() is None:
        mb, n = tree_pss_mb(proc.pid)
        peak, procs = max(peak, mb), max(procs, n)
        if startup is None and first_log.exists() and "===" in first_log.read_text():
            startup = time.perf_counter() - start
        time.sleep(0.2)
    wall = time.perf_counter() - start
    err = proc.stderr.read()
    if proc.returncode:
        raise SystemExit(f"{PROG}: {' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
    return {"command": " ".join(cmd[2:]), "wall_s": round(wall, 2),
            "startup_s": None if startup is None else round(startup, 2),
            "peak_pss_mib": round(peak, 1), "max_processes": procs}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--old-rev", default="45e6335",
                        help="a commit whose benchmarks/ holds the subprocess pool (default: "
                        "%(default)s, the last before Ray)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ray-overhead"))
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parents[2]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old = tmp / "old"
        old.mkdir()
        archive = subprocess.run(["git", "archive", args.old_rev, "benchmarks"], cwd=repo,
                                 check=True, capture_output=True).stdout
        (tmp / "old.tar").write_bytes(archive)
        with tarfile.open(tmp / "old.tar") as tar:
            tar.extractall(old, filter="data")
        # the old revision's runner was benchmarks/success.py, before the benchmarks' rooms
        for name, cwd, module in (("subprocess_pool", old, "benchmarks.success"),
                                  ("ray_tune", repo, "benchmarks.experiments.success")):
            runs = tmp / f"runs-{name}"
            cmd = [sys.executable, "-m", module, *TINY,
                   "--runs-dir", str(runs), "--out-dir", str(tmp / f"out-{name}")]
            first = RunDir(runs / "gym-Pendulum-v1-quick" / "mtsac-s0").train_log
            results[name] = measure(cmd, cwd, first)
            print(name, results[name], flush=True)
    pool, tune = results["subprocess_pool"], results["ray_tune"]
    payload = {"command": command(PROG, argv), "date": now(),
               "experiment": "python -m benchmarks.experiments.success " + " ".join(TINY),
               "old_rev": subprocess.run(["git", "rev-parse", "--short", args.old_rev],
                                         cwd=repo, capture_output=True, text=True).stdout.strip(),
               "machine": machine("cpu"), "results": results,
               "ray_overhead": {k: round(tune[k] - pool[k], 2)
                                for k in ("wall_s", "startup_s", "peak_pss_mib")
                                if tune[k] is not None and pool[k] is not None}}
    lines = [*header("Ray Tune against the subprocess pool: the same tiny experiment",
                     payload["command"], payload["machine"], payload["date"]),
             f"Experiment: `{payload['experiment']}` (old pool: `benchmarks/` at "
             f"{payload['old_rev']}).", "",
             "| scheduler | wall s | start-up s (to the first run's command) | peak PSS MiB "
             "(whole process tree) | processes |", "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['wall_s']} | {r['startup_s']} | {r['peak_pss_mib']} | "
                     f"{r['max_processes']} |")
    o = payload["ray_overhead"]
    lines += ["", f"Ray's overhead: {o.get('wall_s')} s wall, {o.get('startup_s')} s start-up, "
              f"{o.get('peak_pss_mib')} MiB."]
    save(args.out, payload, "\n".join(lines) + "\n")
    return payload


if __name__ == "__main__":
    main()
