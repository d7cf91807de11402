"""How CoNAL's and CoNAL-Pro's searches grow with the number of tasks: parameters, memory
saved for the backward pass, and the time of one forward and backward.

    python -m benchmarks.speed.pro_scaling [--tasks 10,50] [--hidden 400,400,400] [--batch 128]
        [--repeats 20] [--out benchmarks/results/pro-scaling]

One critic-sized net ([T, B, 39 + 4] -> [T, B, 1], Meta-World's observation and action):
CoNAL's supernet (every task mixing its P+1 branch points at every depth) against each of
CoNAL-Pro's P stages (two candidates per task at one depth, the decided groups above, the
task's own modules below; the groups here are the worst case for memory: every task its own
group in the decided depths). Saved memory is what autograd keeps for the backward pass
(the tensors a saved-tensors hook sees), so it is exact on any device; the time is the
median over ``--repeats`` on one thread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from benchmarks.report_files import command, header, now, save
from conal_rl.common import UserError, machine, run_cli
from conal_rl.method import SuperNet, num_parameters
from conal_rl.method.progressive import StageNet

IN, OUT = 39 + 4, 1  # Meta-World observation + action -> one Q-value


def measure(net: torch.nn.Module, T: int, batch: int, repeats: int) -> dict:
    x = torch.randn(T, batch, IN)
    saved = []

    def pack(t: torch.Tensor):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x).square().mean().backward()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        net(x).square().mean().backward()
        times.append((time.perf_counter() - start) * 1e3)
    return {"parameters": num_parameters(net), "saved_mb": sum(saved) / 2**20,
            "ms": statistics.median(times)}


def rows(tasks: list[int], hidden: tuple[int, ...], batch: int, repeats: int) -> list[dict]:
    out = []
    for T in tasks:
        torch.manual_seed(0)
        out.append({"tasks": T, "search": "CoNAL", "stage": None,
                    **measure(SuperNet(T, IN, OUT, hidden), T, batch, repeats)})
        own = tuple(range(T))  # every task its own group above the stage
        for stage in range(1, len(hidden) + 1):
            net = StageNet((own,) * (stage - 1), T, IN, OUT, hidden)
            out.append({"tasks": T, "search": "CoNAL-Pro", "stage": stage,
                        **measure(net, T, batch, repeats)})
    return out


def markdown(payload: dict) -> str:
    lines = [*header("Search nets against the number of tasks: CoNAL and CoNAL-Pro",
                     payload["command"], payload["machine"], payload.get("date")),
             f"{payload['machine']['torch_threads']} torch thread(s); 1-minute load average "
             f"{payload['load_average_start']:.1f} at the start, "
             f"{payload['load_average_end']:.1f} at the end (times above 1 are shared)", "",
             "| tasks | search | stage | parameters | saved for backward (MB) | "
             "forward + backward (ms) |", "|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        stage = "-" if r["stage"] is None else r["stage"]
        lines.append(f"| {r['tasks']} | {r['search']} | {stage} | {r['parameters']:,} | "
                     f"{r['saved_mb']:.1f} | {r['ms']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed.pro_scaling",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="10,50", help="task counts (default: %(default)s)")
    parser.add_argument("--hidden", default="400,400,400",
                        help="hidden widths (default: %(default)s, the paper preset's)")
    parser.add_argument("--batch", type=int, default=128, help="samples per task "
                        "(default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats "
                        "(default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pro-scaling"),
                        help="output stem (default: %(default)s)")
    args = parser.parse_args(argv)

    def body() -> dict:
        try:
            tasks = [int(t) for t in args.tasks.split(",")]
            hidden = tuple(int(w) for w in args.hidden.split(","))
        except ValueError:
            raise UserError("--tasks and --hidden take comma-separated integers") from None
        if min(tasks + list(hidden)) < 1 or args.batch < 1 or args.repeats < 1:
            raise UserError("--tasks, --hidden, --batch and --repeats must be positive")
        torch.set_num_threads(1)
        payload = {"command": command("python -m benchmarks.speed.pro_scaling", argv),
                   "machine": machine("cpu"), "date": now(),
                   "load_average_start": os.getloadavg()[0],
                   "rows": rows(tasks, hidden, args.batch, args.repeats),
                   "load_average_end": os.getloadavg()[0]}
        save(args.out, payload, markdown(payload))
        return payload

    return run_cli("python -m benchmarks.speed.pro_scaling", body)


if __name__ == "__main__":
    main()
