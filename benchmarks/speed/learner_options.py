"""What each learner option costs per update: the MT-SAC update on MT10's sizes with the
options of ``conal_rl.train`` (LayerNorm, residual connections, the field's batch, bf16
products), side by side in one process, at the presets' widths and wider.

    python -m benchmarks.speed.learner_options [--sizes laptop,paper,wide]
        [--variants plain,ln,...] [--repeats 20] [--rounds 3] [--out STEM]

Every (size, variant) is an agent built as ``conal_rl.train`` builds it (``TrainConfig`` ->
``fixed_trees``, ``net_options()``, ``sac()``) and updated on one random batch; the
variants take turns for ``--rounds`` rounds (a background load slows all alike), each round
the median of ``--repeats`` updates' thread CPU time; a row gives the median over rounds,
its matrix-product GFLOP (``torch.utils.flop_counter``) and its time relative to ``plain``
at that size. bf16 rows only where the CPU has bf16 matrix units (or on a GPU): elsewhere
``conal_rl.train`` refuses them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from agents import MultiTaskSAC, random_batch
from benchmarks.report_files import command, header, now, save
from benchmarks.speed.turn_flags import add_turn_flags
from benchmarks.speed.update_clock import turns, update_flops
from conal_rl.common import CommandParser, cpu_bf16_units, machine
from conal_rl.training.config import TrainConfig
from conal_rl.training.nets import fixed_trees, tree_factory

PROG = "python -m benchmarks.speed.learner_options"
T, OBS, ACT = 10, 39, 4
SIZES = {"laptop": ((128, 128, 128), 32), "paper": ((400, 400, 400), 128),
         "wide": ((1024, 1024, 1024), 128)}
VARIANTS = {"plain": {}, "ln": {"layer_norm": True},
            "ln-res": {"layer_norm": True, "residual": True},
            "b128": {"batch_per_task": 128}, "bf16": {"precision": "bf16"},
            "ln-bf16": {"layer_norm": True, "precision": "bf16"}}
TASKS = [f"task{t}" for t in range(T)]


def build(size: str, variant: str) -> tuple[MultiTaskSAC, object]:
    hidden, batch = SIZES[size]
    config = replace(TrainConfig(benchmark="MT10", arch="mtsac", hidden=hidden,
                                 batch_per_task=batch), **VARIANTS[variant])
    torch.manual_seed(0)
    agent = MultiTaskSAC(tree_factory(fixed_trees(config, TASKS, (OBS, ACT)),
                                      config.net_options()), T, OBS, ACT, config.sac())
    return agent, random_batch(T, config.batch_per_task, OBS, ACT, seed=1)


def markdown(payload: dict) -> str:
    lines = [*header("What each learner option costs per update (CPU, one thread)",
                     payload["command"], payload["machine"], payload["date"]),
             "", f"MT-SAC on MT10's sizes ({payload['tasks']} tasks, {payload['obs_dim']} "
             f"observations, {payload['act_dim']} actions); medians of "
             f"the thread's CPU time over {payload['repeats']} updates, the median over "
             f"{payload['rounds']} rounds in which the variants took turns. bf16 units of "
             f"this CPU: {', '.join(payload['bf16_units']) or 'none'}.", "",
             "| size | nets | batch per task | variant | ms per update | GFLOP | GFLOP/s | "
             "× plain |", "|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        lines.append(f"| {r['size']} | {'x'.join(map(str, r['hidden']))} | {r['batch']} | "
                     f"{r['variant']} | {r['ms']:.2f} | {r['gflop']:.3f} | "
                     f"{r['gflop_per_s']:.0f} | {r['vs_plain']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = CommandParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_turn_flags(parser, SIZES, "laptop,paper")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated of {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/learner-options"))
    args = parser.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    variants = [v for v in args.variants.split(",") if v]
    bad = sorted(set(sizes) - set(SIZES)) + sorted(set(variants) - set(VARIANTS))
    if bad or not sizes or not variants:
        parser.error(f"unknown sizes or variants {bad}; sizes: {', '.join(SIZES)}; "
                     f"variants: {', '.join(VARIANTS)}")
    if args.repeats < 1 or args.rounds < 1:
        parser.error("--repeats and --rounds must be at least 1")
    units = cpu_bf16_units()
    if not units:
        variants = [v for v in variants if "bf16" not in v]
    torch.set_num_threads(1)
    rows = []
    for size in sizes:
        built = {v: build(size, v) for v in variants}
        ms = turns(built, args.repeats, args.rounds)
        for v, (agent, batch) in built.items():
            hidden, _ = SIZES[size]
            rows.append({"size": size, "hidden": list(hidden), "variant": v,
                         "batch": batch.obs.shape[1], "ms": ms[v],
                         "gflop": update_flops(agent, batch) / 1e9})
            rows[-1]["gflop_per_s"] = rows[-1]["gflop"] / rows[-1]["ms"] * 1e3
        plain = next((r["ms"] for r in rows if r["size"] == size and r["variant"] == "plain"),
                     None)
        for r in rows:
            if r["size"] == size:
                r["vs_plain"] = r["ms"] / plain if plain else float("nan")
        print(f"{size}: " + ", ".join(f"{r['variant']} {r['ms']:.2f} ms" for r in rows
                                      if r["size"] == size), flush=True)
    payload = {"command": command(PROG, argv), "machine": machine(), "date": now(),
               "repeats": args.repeats, "rounds": args.rounds, "bf16_units": list(units),
               "tasks": T, "obs_dim": OBS, "act_dim": ACT,
               "rows": rows}
    save(args.out, payload, markdown(payload))
    return payload


if __name__ == "__main__":
    main()
