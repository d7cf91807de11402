"""What one update of each row's trained networks costs, side by side on this machine: the
other axis of a success table (success against parameters against update time).

    python -m benchmarks.speed.row_costs RUNS_FOLDER [--repeats 20] [--rounds 3]
        [--out STEM]

RUNS_FOLDER holds a success table's runs (``<row>-s<seed>`` each, e.g.
``runs/success-1m/MT10-laptop``). Every finished run of ``conal_rl.train`` is loaded from
its checkpoint (``conal_rl.training.runs.load_run``: its trees, grown ones included, and
its learner options) and updated on random batches of its own batch size; the runs take
turns for ``--rounds`` rounds, each round the median of ``--repeats`` updates' thread CPU
time, one thread. Per run: actor and critic parameters, the update's matrix-product FLOPs
per sample (``torch.utils.flop_counter``, forward and backward of every net the update
runs, divided by the samples of its batch), and the update's median time. The success
report of that folder (``benchmarks.experiments.success``, ``--out-dir`` where this
writes) shows them beside success, and draws success against critic parameters and
against update time (``*-pareto.png``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from agents import MultiTaskSAC, random_batch
from benchmarks.report_files import command, header, now, save
from benchmarks.speed.update_clock import turns, update_flops
from conal_rl.common import CommandParser, machine, run_cli
from conal_rl.method import num_parameters
from conal_rl.training.rundir import RunDir
from conal_rl.training.runs import load_run

PROG = "python -m benchmarks.speed.row_costs"


def row_of(run_dir: Path) -> tuple[str, int]:
    """(row, seed) of a success table's run folder ``<row>-s<seed>``."""
    row, _, seed = run_dir.name.rpartition("-s")
    return row, int(seed)


def update_of(run_dir: Path) -> tuple[MultiTaskSAC, object]:
    """The run's trained agent (training mode) and a random batch of its batch size."""
    loaded = load_run(run_dir)
    agent = loaded.agent.train()
    T, obs_dim, act_dim = agent.num_tasks, agent.obs_dim, agent.act_dim
    return agent, random_batch(T, loaded.config.batch_per_task, obs_dim, act_dim, seed=1)


def flops_per_sample(agent: MultiTaskSAC, batch) -> float:
    return update_flops(agent, batch) / (batch.obs.shape[0] * batch.obs.shape[1])


def measure(folder: Path, repeats: int, rounds: int) -> list[dict]:
    runs = sorted(d for d in folder.iterdir() if d.is_dir() and "-s" in d.name
                  and RunDir(d).timing() is not None and RunDir(d).checkpoint.exists())
    built = {}
    for d in runs:
        try:
            built[d] = update_of(d)
        except (OSError, ValueError, KeyError) as e:  # an STL run, a foreign folder
            print(f"{d.name}: skipped ({type(e).__name__}: {e})")
    ms = turns(built, repeats, rounds)
    out = []
    for d, (agent, batch) in built.items():
        row, seed = row_of(d)
        out.append({"row": row, "seed": seed, "run_dir": str(d),
                    "actor_params": num_parameters(agent.actor),
                    "critic_params": num_parameters(agent.critic),
                    "flops_per_sample": flops_per_sample(agent, batch),
                    "batch_per_task": batch.obs.shape[1],
                    "update_ms": ms[d]})
        print(f"{d.name}: {out[-1]['update_ms']:.2f} ms per update, "
              f"{out[-1]['flops_per_sample'] / 1e6:.2f} MFLOP per sample", flush=True)
    return out


def markdown(payload: dict) -> str:
    lines = [*header("Update cost of each run's trained networks", payload["command"],
                     payload["machine"], payload["date"]), "",
             f"Runs of `{payload['folder']}`; one thread, the runs taking turns for "
             f"{payload['rounds']} rounds of {payload['repeats']} updates (median of each "
             "round, then of the rounds); FLOPs: the update's matrix products, forward and "
             "backward, per sample of its batch.", "",
             "| run | actor params | critic params | batch per task | FLOP per sample | "
             "update ms |", "|---|---|---|---|---|---|"]
    for r in payload["runs"]:
        lines.append(f"| {r['row']}-s{r['seed']} | {r['actor_params']:,} | "
                     f"{r['critic_params']:,} | {r['batch_per_task']} | "
                     f"{r['flops_per_sample'] / 1e6:.2f}M | {r['update_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = CommandParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, metavar="RUNS_FOLDER",
                        help="a success table's runs folder (<row>-s<seed> runs)")
    parser.add_argument("--repeats", type=int, default=20, help="updates per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of turns")
    parser.add_argument("--out", type=Path, default=None,
                        help="output stem (default: RUNS_FOLDER/row-costs)")
    args = parser.parse_args(argv)

    def body() -> dict:
        if not args.folder.is_dir():
            raise SystemExit(f"{PROG}: {args.folder}: no such folder")
        if args.repeats < 1 or args.rounds < 1:
            parser.error("--repeats and --rounds must be at least 1")
        torch.set_num_threads(1)
        runs = measure(args.folder, args.repeats, args.rounds)
        if not runs:
            raise SystemExit(f"{PROG}: {args.folder}: no finished run of conal_rl.train")
        payload = {"command": command(PROG, argv), "machine": machine(), "date": now(),
                   "folder": str(args.folder), "repeats": args.repeats,
                   "rounds": args.rounds, "runs": runs}
        save(args.out or args.folder / "row-costs", payload, markdown(payload))
        return payload
    return run_cli(PROG, body)


if __name__ == "__main__":
    main()
