"""Which conflict rule lets CoNAL's search find known task families? A synthetic study.

    python -m benchmarks.studies.conflict_rules [--seeds 3] [--out
        benchmarks/results/conflict-rules]

The problem: T = 10 regression tasks in two families of five. Family k's tasks read the same
features of the input, phi_k(x) = tanh(W_k x) (three features, the two families' W_k in
orthogonal subspaces), each task its own linear read-out of them plus noise; every task has a
small training set (scarce data) and a held-out test set. The networks are trees of three
hidden modules of width 8: a trunk that narrow serves one family better than both.

First the right tree is established by training the candidate fixed trees from scratch and
comparing their held-out losses: all tasks on the shared trunk (MT-SAC-like), all private
(independent nets), and the family tree (one family on the trunk, the other branching off at
the input: the best CoNAL's space can express for two families). Then the search runs (the
official recipe: a weights-only warm-up at the uniform mix, then alternating an architecture
step on a held-out 20% of the training data and a weight step with conflict-noticing on the
rest), once per rule and for the ablations without conflict-noticing and without
purely-specific modules, and the derived trees are scored by how well they recover the
families: the mean number of modules two tasks of one family share minus that of two tasks
of different families. A second problem, where all ten tasks read the same features, checks
that the rules keep the trunk shared there (the frozen fraction stays low).

The ``evidence`` kinds decide from large-sample statistics instead of minibatch signs: every
``REFRESH`` weight steps (warm-up included) one backward over a large sample from the same
distribution (``EVIDENCE`` per task, never trained on, as a replay's held-out buffer) gives
per shared module the statistics of ``conal_rl.method.evidence``; conflict-noticing takes
the tasks in significant conflict off a module and the gate (``SuperNet.gate``,
``StageNet.gate`` for ``pro-evidence``) makes them leave it; without evidence every task
stays on the trunk.

Writes ``<out>.json`` and ``<out>.md`` (per rule and seed: branch points, recovery score,
frozen fraction) with the command and the machine.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.report_files import command, save
from conal_rl.common import UserError, machine, run_cli
from conal_rl.method import (
    ConflictNoticing,
    SuperNet,
    TreeNet,
    TreeSpec,
    search_optimizers,
    search_step,
)
from conal_rl.method.evidence import capture_evidence
from conal_rl.method.progressive import progressive_search
from conal_rl.method.rules import rule_named
from conal_rl.method.task_gradients import TaskGradientCapture

T, FAMILY_SIZE, IN, FEATURES = 10, 5, 20, 3
HIDDEN = (8, 8, 8)
TRAIN, TEST, NOISE = 128, 512, 0.1
EVIDENCE = 1024  # samples per task of the evidence rule's held-out sample (never trained on)
REFRESH = 100  # weight steps between two measurements of the evidence
FAMILIES = (tuple(range(FAMILY_SIZE)), tuple(range(FAMILY_SIZE, T)))
WITHIN = [pair for family in FAMILIES for pair in itertools.combinations(family, 2)]
ACROSS = list(itertools.product(*FAMILIES))  # the pairs of tasks within a family, across
PRO_KINDS = {  # CoNAL-Pro: name -> conflict-noticing settings
    "pro-any-pair": {"rule": "any-pair"},
    "pro-consensus": {"rule": "consensus"},
    "pro-no-noticing": {"enabled": False},
    "pro-evidence": {"rule": "evidence"},
}
SEARCH_KINDS = {  # name -> (rule, conflict-noticing on, purely-specific modules)
    "any-pair": ("any-pair", True, True),
    "ema-pair": ("ema-pair", True, True),
    "consensus": ("consensus", True, True),
    "affinity": ("affinity", True, True),
    "evidence": ("evidence", True, True),
    "no-noticing": ("any-pair", False, True),
    "no-private": ("any-pair", False, False),
}


@dataclass
class Problem:
    x_train: torch.Tensor  # [T, TRAIN, IN]
    y_train: torch.Tensor  # [T, TRAIN, 1]
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_evidence: torch.Tensor  # [T, EVIDENCE, IN]: the evidence rule's large sample
    y_evidence: torch.Tensor


def make_problem(seed: int, agreeing: bool = False) -> Problem:
    """Two families reading orthogonal features (or, ``agreeing``, all tasks one family)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(IN, 2 * FEATURES, generator=g))[0].T  # orthonormal
    w = [basis[:FEATURES] * 2.0, basis[FEATURES:] * 2.0]
    family = [0 if agreeing or t < FAMILY_SIZE else 1 for t in range(T)]
    readout = torch.randn(T, FEATURES, generator=g)

    def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(T, n, IN, generator=g)
        y = torch.stack([torch.tanh(x[t] @ w[family[t]].T) @ readout[t] for t in range(T)])
        return x, (y + NOISE * torch.randn(T, n, generator=g))[..., None]

    return Problem(*data(TRAIN), *data(TEST), *data(EVIDENCE))  # in this order: the same
    # training and test sets as before the evidence set was added


def mse(net, x, y) -> torch.Tensor:
    return (net(x) - y).square().mean()


def train_tree(problem: Problem, branch_points, seed: int, steps: int = 800,
               lr: float = 3e-3) -> float:
    """Held-out loss of a fixed tree trained from scratch on the training sets."""
    torch.manual_seed(seed)
    net = TreeNet(TreeSpec(HIDDEN, branch_points), IN, 1)
    optim = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        optim.zero_grad(set_to_none=True)
        mse(net, problem.x_train, problem.y_train).backward()
        optim.step()
    with torch.no_grad():
        return float(mse(net, problem.x_test, problem.y_test))


CANDIDATES = {"all shared": (3,) * T, "all private": (0,) * T,
              "family tree": (3,) * FAMILY_SIZE + (0,) * FAMILY_SIZE}


def pro_search(problem: Problem, kind: str, seed: int, warmup: int = 200,
               steps: int = 300) -> dict:
    """One CoNAL-Pro search (every stage ``warmup`` + ``steps``); the grown tree's groups and
    the mean frozen fraction of the stages' candidate modules."""
    torch.manual_seed(seed)
    (x_w, y_w), (x_a, y_a) = split(problem)
    stats = []  # every stage's candidate modules
    spec = progressive_search(
        T, IN, 1, HIDDEN, lambda net: mse(net, x_w, y_w), lambda net: mse(net, x_a, y_a),
        warmup, steps, arch_lr=3e-2, weight_lr=3e-3, noticing=PRO_KINDS[kind],
        on_stage=lambda s, net, notice: stats.extend(notice.stats().values()),
        refresh=(lambda net, notice: refresh_evidence(net, notice, problem))
        if "rule" in PRO_KINDS[kind] and rule_named(PRO_KINDS[kind]["rule"]).from_evidence
        else None, refresh_every=REFRESH)
    return {"groups": [list(g) for g in spec.groups],
            "frozen_fraction": statistics.mean(v["frozen_fraction"] for v in stats),
            "left_out_fraction": statistics.mean(v.get("left_out_fraction", 0.0)
                                                 for v in stats),
            "shared": spec.shared_modules()}


def refresh_evidence(net, noticing: ConflictNoticing, problem: Problem) -> None:
    """The evidence rule's measurement: one backward over the large held-out sample (its
    weight gradients thrown away), its statistics given to conflict-noticing and its
    leaving sets to the architecture's gate."""
    capture = TaskGradientCapture(noticing.layers)
    with capture.record():
        loss = (net(problem.x_evidence) - problem.y_evidence).square().mean(dim=(1, 2)).sum()
    torch.autograd.grad(loss, net.weight_parameters(), allow_unused=True)
    noticing.set_evidence(capture_evidence(capture))
    net.gate(noticing.leaving())


def split(problem: Problem):
    """The official 80/20 split of the training sets: (weights' data, alpha's data)."""
    n = TRAIN * 4 // 5
    return ((problem.x_train[:, :n], problem.y_train[:, :n]),
            (problem.x_train[:, n:], problem.y_train[:, n:]))


def search(problem: Problem, kind: str, seed: int, warmup: int = 300, steps: int = 600,
           rule_ema: float = 0.9) -> dict:
    """One search; returns the derived branch points and the frozen fractions."""
    if kind in PRO_KINDS:
        return pro_search(problem, kind, seed)
    rule, noticing_on, private = SEARCH_KINDS[kind]
    torch.manual_seed(seed)
    net = SuperNet(T, IN, 1, HIDDEN, no_private=not private)
    arch_opt, weight_opt = search_optimizers(net, arch_lr=3e-2, weight_lr=3e-3)
    noticing = ConflictNoticing(net, enabled=noticing_on, rule=rule, ema=rule_ema)
    (x_w, y_w), (x_a, y_a) = split(problem)  # alpha learns on the held-out 20%
    evidence = rule_named(rule).from_evidence
    if evidence:
        net.gate({})  # no evidence yet: every task on the trunk
    for step in range(warmup + steps):
        if evidence and step % REFRESH == 0:
            refresh_evidence(net, noticing, problem)
        if step < warmup:
            search_step(net, None, lambda: mse(net, x_w, y_w), None, weight_opt)
        else:
            search_step(net, lambda: mse(net, x_a, y_a), lambda: mse(net, x_w, y_w), arch_opt,
                        weight_opt, noticing)
    stats = noticing.stats()
    points = list(net.branch_points())
    return {"branch_points": points,
            "frozen_fraction": statistics.mean(s["frozen_fraction"] for s in stats.values()),
            "left_out_fraction": statistics.mean(s.get("left_out_fraction", 0.0)
                                                 for s in stats.values()),
            "shared": [[shared_modules(b, c, not private) for c in points] for b in points]}


def shared_modules(b_s: int, b_t: int, no_private: bool) -> int:
    """Modules two tasks at branch points b_s, b_t share; without purely-specific modules,
    tasks that leave at the same point also share that branch."""
    return len(HIDDEN) if no_private and b_s == b_t else min(b_s, b_t)


def recovery(shared: list[list[int]]) -> float:
    """Mean modules shared within a family minus across families; ``shared[s][t]``: the
    modules tasks s and t share."""
    def mean_shared(pairs):
        return statistics.mean(shared[s][t] for s, t in pairs)
    return mean_shared(WITHIN) - mean_shared(ACROSS)


def tree_recovery(branch_points, no_private: bool = False) -> float:
    """:func:`recovery` of a CoNAL tree given by its branch points."""
    return recovery([[shared_modules(b, c, no_private) for c in branch_points]
                     for b in branch_points])


def study(seeds: int, kinds=(*SEARCH_KINDS, *PRO_KINDS), trees: bool = True,
          progress=print) -> dict:
    rows = []
    for seed in range(seeds):
        problem, agreeing = make_problem(seed), make_problem(seed, agreeing=True)
        row = {"seed": seed}
        if trees:
            row["trees"] = {name: train_tree(problem, b, seed) for name, b in CANDIDATES.items()}
        row["search"] = {}
        for kind in kinds:
            result = search(problem, kind, seed)
            result["recovery"] = recovery(result.pop("shared"))
            agree = search(agreeing, kind, seed)
            pairs = list(itertools.combinations(range(T), 2))
            result["agreeing"] = {"tree": agree.get("branch_points", agree.get("groups")),
                                  "frozen_fraction": agree["frozen_fraction"],
                                  "left_out_fraction": agree["left_out_fraction"],
                                  "mean_shared": statistics.mean(agree["shared"][s][t]
                                                                 for s, t in pairs)}
            row["search"][kind] = result
        progress(f"seed {seed}: " + ", ".join(
            f"{k} {r['recovery']:.2f}" for k, r in row["search"].items()))
        rows.append(row)
    return {"rows": rows, "summary": summarize(rows)}


def summarize(rows: list[dict]) -> dict:
    def mean(values):
        return statistics.mean(values) if values else float("nan")
    summary = {"trees": {}, "search": {}}
    if "trees" in rows[0]:
        for name in CANDIDATES:
            summary["trees"][name] = mean([r["trees"][name] for r in rows])
    for kind in rows[0]["search"]:
        runs = [r["search"][kind] for r in rows]
        summary["search"][kind] = {
            "recovery": mean([r["recovery"] for r in runs]),
            "frozen_fraction": mean([r["frozen_fraction"] for r in runs]),
            "left_out_fraction": mean([r["left_out_fraction"] for r in runs]),
            "agreeing_frozen_fraction": mean([r["agreeing"]["frozen_fraction"] for r in runs]),
            "agreeing_left_out_fraction": mean([r["agreeing"]["left_out_fraction"]
                                                for r in runs]),
            "agreeing_mean_shared": mean([r["agreeing"]["mean_shared"] for r in runs])}
    return summary


def markdown(payload: dict) -> str:
    s, m = payload["summary"], payload["machine"]
    lines = [f"# Conflict rules on known task families ({len(payload['rows'])} seeds)", "",
             f"Command: `{payload['command']}`  ", f"Machine: {m['platform']}, "
             f"{m['cpu_count']} CPUs, torch {m['torch']}; {payload['seconds']:.0f} s", ""]
    if s["trees"]:
        lines += ["Held-out loss of the fixed trees (mean over seeds; lower is better):", "",
                  "| tree | held-out MSE |", "|---|---|"]
        lines += [f"| {name} | {v:.4f} |" for name, v in s["trees"].items()]
        lines.append("")
    lines += ["Search (mean over seeds): family recovery (modules shared within a family minus "
              "across; all shared or all private score 0, the family tree 1.5 in CoNAL's "
              "space and 3 as CoNAL-Pro's grouped tree); the fraction "
              "of updates a shared module was frozen and (per-task rules) of task-updates "
              "left out of it; the same on the agreeing problem, and the modules two of its "
              "tasks share in the derived tree (3 = all shared). `pro-*`: CoNAL-Pro. "
              "`evidence`: decisions from large-sample statistics with their errors "
              f"({EVIDENCE} held-out samples per task, refreshed every {REFRESH} steps), "
              "the others from each minibatch.", "",
              "| search | recovery | frozen | left out | agreeing: frozen | agreeing: left out "
              "| agreeing: shared modules |", "|---|---|---|---|---|---|---|"]
    for kind, v in s["search"].items():
        lines.append(f"| {kind} | {v['recovery']:.2f} | {v['frozen_fraction']:.2f} | "
                     f"{v['left_out_fraction']:.2f} | {v['agreeing_frozen_fraction']:.2f} | "
                     f"{v['agreeing_left_out_fraction']:.2f} | "
                     f"{v['agreeing_mean_shared']:.2f} |")
    lines += ["", "Per seed (derived branch points of the ten tasks, or CoNAL-Pro's groups per "
              "depth; family A = tasks 0-4):", ""]
    for row in payload["rows"]:
        for kind, r in row["search"].items():
            tree = r.get("branch_points", r.get("groups"))
            lines.append(f"- seed {row['seed']}, {kind}: {tree} "
                         f"(recovery {r['recovery']:.2f}, frozen {r['frozen_fraction']:.2f})")
    return "\n".join(lines) + "\n"


def seeded_main(prog: str, doc: str, default_out: str, run_study, render,
                argv: list[str] | None) -> dict:
    """The command line of a synthetic study over ``--seeds`` (this one and
    ``benchmarks.studies.gradient_signal``): ``run_study(seeds)``'s payload, with the command, the
    machine and the seconds, saved at ``--out`` as JSON and as ``render(payload)``."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path(default_out),
                        help="output stem (default: %(default)s)")
    args = parser.parse_args(argv)

    def body() -> dict:
        if args.seeds < 1:
            raise UserError(f"--seeds must be at least 1, got {args.seeds}")
        torch.set_num_threads(1)
        start = time.perf_counter()
        payload = run_study(args.seeds)
        payload |= {"command": command(prog, argv), "machine": machine("cpu"),
                    "seconds": time.perf_counter() - start}
        save(args.out, payload, render(payload))
        return payload

    return run_cli(prog, body)


def main(argv: list[str] | None = None) -> dict:
    return seeded_main("python -m benchmarks.studies.conflict_rules", __doc__,
                       "benchmarks/results/conflict-rules", study, markdown, argv)


if __name__ == "__main__":
    main()
