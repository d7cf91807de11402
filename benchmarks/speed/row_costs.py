"""What one update of each row's trained networks costs, side by side on this machine: the
other axis of a success table (success against parameters against update time).

    python -m benchmarks.speed.row_costs REPORT.json [--repeats 20] [--rounds 3]
        [--out STEM]

REPORT.json is a success table's report (``benchmarks.experiments.success``, e.g.
``benchmarks/results/mt10-1m-v2/MT10-laptop.json``). Every run it records with its config
and the trees it ended with (grown ones included) is built afresh from them: the time and
the FLOPs of an update follow the trees' shapes, not their weights' values, so the runs'
folders are not needed (they may be on another machine, or gone). Each run's parameters
are checked against those the report counted on its trained checkpoint. The runs are
updated on random batches of their batch size and take turns for ``--rounds`` rounds, each
round the median of ``--repeats`` updates' thread CPU time, one thread. Per run: actor and
critic parameters, the update's matrix-product FLOPs per sample (``torch.utils.flop_counter``,
forward and backward of every net the update runs, divided by the samples of its batch),
and the update's median time. The success report (same ``--out-dir``) shows them beside
success, and draws success against critic parameters and against update time
(``*-pareto.png``). Default output: ``REPORT-costs.json`` and ``.md`` beside the report.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from agents import MultiTaskSAC, random_batch
from benchmarks.report_files import command, costs_path, header, now, save
from benchmarks.speed.update_clock import turns, update_flops
from conal_rl.common import CommandParser, UserError, machine, run_cli
from conal_rl.method import num_parameters
from conal_rl.training.config import TrainConfig
from conal_rl.training.nets import specs_of, tree_factory
from envs import make_benchmark, observation_action_sizes

PROG = "python -m benchmarks.speed.row_costs"


def sizes(benchmark: str) -> tuple[int, int]:
    known = observation_action_sizes(benchmark)
    if known:
        return known
    bench = make_benchmark(benchmark, 0)  # gym: only an env can tell
    try:
        return bench.obs_dim, bench.act_dim
    finally:
        bench.close()


def update_of(record: dict) -> tuple[MultiTaskSAC, object]:
    """The run's networks as it ended (training mode, fresh weights) and a random batch of
    its batch size; ValueError where the record's trees do not give its parameters."""
    config = TrainConfig.from_dict(record["config"], f"{record['run_dir']}'s record")
    specs = specs_of(record["trees"])
    T, (obs_dim, act_dim) = specs["actor"].num_tasks, sizes(config.benchmark)
    agent = MultiTaskSAC(tree_factory(specs, config.net_options()), T, obs_dim, act_dim,
                         config.sac()).train()
    built = {role: num_parameters(getattr(agent, role)) for role in ("actor", "critic")}
    if built != record["parameters"]:
        raise ValueError(f"its trees give {built} parameters, its checkpoint had "
                         f"{record['parameters']}")
    return agent, random_batch(T, config.batch_per_task, obs_dim, act_dim, seed=1)


def flops_per_sample(agent: MultiTaskSAC, batch) -> float:
    return update_flops(agent, batch) / (batch.obs.shape[0] * batch.obs.shape[1])


def measure(report: dict, repeats: int, rounds: int) -> list[dict]:
    built = {}
    for row in report.get("rows", []):
        for run in row.get("runs", []):
            name = f"{row['row']}-s{run['seed']}"
            if "config" not in run or "trees" not in run:  # STL, or a record without them
                print(f"{name}: skipped (no config and trees in its record)")
                continue
            try:
                built[(row["row"], run["seed"])] = update_of(run)
            except (ValueError, KeyError, TypeError) as e:
                print(f"{name}: skipped ({type(e).__name__}: {e})")
    ms = turns(built, repeats, rounds)
    out = []
    for (row, seed), (agent, batch) in built.items():
        out.append({"row": row, "seed": seed,
                    "actor_params": num_parameters(agent.actor),
                    "critic_params": num_parameters(agent.critic),
                    "flops_per_sample": flops_per_sample(agent, batch),
                    "batch_per_task": batch.obs.shape[1],
                    "update_ms": ms[(row, seed)]})
        print(f"{row}-s{seed}: {out[-1]['update_ms']:.2f} ms per update, "
              f"{out[-1]['flops_per_sample'] / 1e6:.2f} MFLOP per sample", flush=True)
    return out


def markdown(payload: dict) -> str:
    lines = [*header("Update cost of each run's trained networks", payload["command"],
                     payload["machine"], payload["date"]), "",
             f"Runs of `{payload['report']}`, built from their records; one thread, the "
             "runs taking turns for "
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
    parser.add_argument("report", type=Path, metavar="REPORT.json",
                        help="a success table's report (benchmarks.experiments.success)")
    parser.add_argument("--repeats", type=int, default=20, help="updates per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of turns")
    parser.add_argument("--out", type=Path, default=None,
                        help="output stem (default: REPORT-costs beside the report)")
    args = parser.parse_args(argv)

    def body() -> dict:
        if args.repeats < 1 or args.rounds < 1:
            parser.error("--repeats and --rounds must be at least 1")
        try:
            report = json.loads(args.report.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{args.report}: not a readable report ({type(e).__name__})"
                            ) from None
        if not isinstance(report, dict) or "rows" not in report:
            raise UserError(f"{args.report}: not a success table's report (no rows)")
        torch.set_num_threads(1)
        runs = measure(report, args.repeats, args.rounds)
        if not runs:
            raise UserError(f"{args.report}: no run recorded with its config and trees")
        payload = {"command": command(PROG, argv), "machine": machine(), "date": now(),
                   "report": str(args.report), "repeats": args.repeats,
                   "rounds": args.rounds, "runs": runs}
        save(args.out or costs_path(args.report).with_suffix(""), payload, markdown(payload))
        return payload
    return run_cli(PROG, body, (UserError,))


if __name__ == "__main__":
    main()
