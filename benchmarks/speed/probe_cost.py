"""What the gain rule's probes cost per update: the update of trees that grow by measured
gain (``--branch-rule gain``), with its probe training beside it, against the same update
alone, side by side in one process, on MT10's sizes.

    python -m benchmarks.speed.probe_cost [--sizes laptop,paper] [--repeats 20]
        [--rounds 3] [--out STEM]

Two trees per size: MH-SAC's (a probe of the last module, as the first rounds are) and a
tree whose tasks share only the first module (a probe from the input on: the dearest round).
Every agent is built as ``conal_rl.train`` builds a growing run (the ``Branching`` hook's
nets, ``TrainConfig.sac()``), updated on one random batch; with the probe, each update is
followed by the hook's step (the probe trains on that update's batch and targets), as in the
training loop. Rows take turns for ``--rounds`` rounds, each the median of ``--repeats``
updates' thread CPU time; the extra time is the probes' share of the update (the verdict at
a round's end, one pass over the held-out episodes, is not in it: it comes once a round).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from agents import MultiTaskReplay, MultiTaskSAC, random_batch
from benchmarks.report_files import command, header, now, save
from benchmarks.speed.turn_flags import add_turn_flags, chosen_sizes
from benchmarks.speed.update_clock import turns
from conal_rl.common import CommandParser, machine
from conal_rl.method import TreeSpec
from conal_rl.method.evidence import MIN_EPISODES
from conal_rl.training.branching import Branching
from conal_rl.training.config import TrainConfig

PROG = "python -m benchmarks.speed.probe_cost"
T, OBS, ACT = 10, 39, 4
SIZES = {"laptop": ((128, 128, 128), 32), "paper": ((400, 400, 400), 128)}
TREES = {"mhsac": "MH-SAC (probe: module 3)", "shared-1": "first module shared (probe: from the "
         "input)"}
TASKS = [f"task{t}" for t in range(T)]


class _Probed:
    """An agent whose every update is followed by the growing hook's step, as the loop
    does it (``update`` is what the clock times)."""

    def __init__(self, agent: MultiTaskSAC, hook: Branching, replay: MultiTaskReplay):
        self.agent, self.hook, self.replay = agent, hook, replay

    def update(self, batch):
        out = self.agent.update(batch)
        self.hook.before_update(self.agent, self.replay, 0)
        return out


def build(size: str, tree: str, probed: bool):
    hidden, batch = SIZES[size]
    config = TrainConfig(benchmark="MT10", arch="mhsac", preset="laptop", hidden=hidden,
                         batch_per_task=batch,
                         branch_every=10**9)  # never due: the probe only trains
    points = (len(hidden),) * T if tree == "mhsac" else (1,) * T
    specs = {role: TreeSpec(hidden, points, TASKS) for role in ("actor", "critic")}
    hook = Branching(specs, config.growth(), TASKS, None, config.net_options())
    torch.manual_seed(0)
    agent = MultiTaskSAC(hook.make_net, T, OBS, ACT, config.sac())
    data = random_batch(T, batch, OBS, ACT, seed=1)
    if not probed:
        return agent, data
    probed = _Probed(agent, hook, held_out_replay())
    probed.update(data)
    if hook.rule.probe is None:
        raise RuntimeError("the probe did not start: nothing of it would be timed")
    return probed, data


def held_out_replay(episodes: int = 2 * MIN_EPISODES) -> MultiTaskReplay:
    """A replay whose held-out buffer holds enough whole episodes for a round to start (what
    the rule waits for in a run); two-step episodes of zeros, every other one held out."""
    replay = MultiTaskReplay(4 * episodes, T, OBS, ACT, holdout_every=2, holdout_by="episodes")
    for step in range(4 * episodes):
        replay.add(np.zeros((T, OBS)), np.zeros((T, ACT)), np.zeros(T), np.zeros((T, OBS)),
                   np.zeros(T), np.full(T, step % 2 == 1))
    return replay


def markdown(payload: dict) -> str:
    lines = [*header("What the gain rule's probes cost per update (CPU, one thread)",
                     payload["command"], payload["machine"], payload["date"]),
             "", f"MT10's sizes ({payload['tasks']} tasks), LayerNorm nets as the presets "
             f"train them; a probe covers {payload['probed_tasks']} of the tasks (a quarter, "
             f"rounded up). Medians of the thread's CPU time over {payload['repeats']} "
             f"updates, the median over {payload['rounds']} rounds of turns.", "",
             "| size | nets | batch per task | tree | ms per update | with its probe | extra |",
             "|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        lines.append(f"| {r['size']} | {'x'.join(map(str, r['hidden']))} | {r['batch']} | "
                     f"{TREES[r['tree']]} | {r['ms']:.2f} | {r['ms_probed']:.2f} | "
                     f"{r['extra']:+.1%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = CommandParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_turn_flags(parser, SIZES, "laptop,paper")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/probe-cost"))
    args = parser.parse_args(argv)
    sizes = chosen_sizes(parser, args, SIZES)
    torch.set_num_threads(1)
    rows, probed_tasks = [], None
    for size in sizes:
        built = {(tree, probed): build(size, tree, probed)
                 for tree in TREES for probed in (False, True)}
        ms = turns(built, args.repeats, args.rounds)
        for tree in TREES:
            probed = built[tree, True][0]
            probed_tasks = len(probed.hook.rule.tasks)
            hidden, batch = SIZES[size]
            rows.append({"size": size, "hidden": list(hidden), "batch": batch, "tree": tree,
                         "ms": ms[tree, False], "ms_probed": ms[tree, True],
                         "extra": ms[tree, True] / ms[tree, False] - 1})
            print(f"{size} {tree}: {ms[tree, False]:.2f} ms, with its probe "
                  f"{ms[tree, True]:.2f} ms", flush=True)
    payload = {"command": command(PROG, argv), "machine": machine(), "date": now(),
               "repeats": args.repeats, "rounds": args.rounds, "tasks": T,
               "probed_tasks": probed_tasks, "rows": rows}
    save(args.out, payload, markdown(payload))
    return payload


if __name__ == "__main__":
    main()
