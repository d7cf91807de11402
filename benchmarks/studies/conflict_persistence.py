"""Do the conflicts the atlas finds late in training last? Per run and net, from the run's
live atlas (``train --atlas-every``): how often a task flagged at one measurement is flagged
again at the next, on the same layer, against what chance gives for sets of those sizes;
how often the twin critics, measured on the same transitions, flag the same task; and how
many tasks ever left a layer's main cluster by the sign-blind affinity.

    python -m benchmarks.studies.conflict_persistence RUN_DIR|ATLAS_JSON ... [--out STEM]

It answers a design question: should a trained tree open a branch for a task the moment
its conflict is significant? A branch is permanent, so the conflict it follows must be a
property of the task that lasts, not of the net's state at one measurement.

Flagged (signed): the task's cosine with the consensus of the others is significantly
negative at that measurement (``LayerEvidence.conflicting``: Bonferroni over the tasks).
That is evidence of conflict only where the tasks share a head (MT-SAC); where every task
has its own head the sign follows the head, and the row says so. Chance: with ``a`` tasks
flagged at one measurement and ``b`` at the next, out of ``k``, ``a·b/k`` recur by chance
(hypergeometric); z is the excess over the summed expectations in units of the summed
hypergeometric standard deviations.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from benchmarks.report_files import command, header, save
from conal_rl.common import CommandParser
from conal_rl.training import conflict_atlas as atlas
from conal_rl.training.rundir import RunDir, read_json


class Overlap:
    """Observed overlaps of pairs of flagged sets, with their hypergeometric expectation."""

    def __init__(self):
        self.flagged = self.observed = 0
        self.expected = self.variance = 0.0

    def add(self, first: set, second: set, k: int) -> None:
        a, b = len(first), len(second)
        self.flagged += a
        self.observed += len(first & second)
        self.expected += a * b / k
        if k > 1:
            self.variance += a * (b / k) * ((k - b) / k) * ((k - a) / (k - 1))

    def to_dict(self) -> dict:
        z = ((self.observed - self.expected) / math.sqrt(self.variance)
             if self.variance > 0 else None)
        return {"flagged": self.flagged, "observed": self.observed,
                "expected": round(self.expected, 2), "z": None if z is None else round(z, 2),
                "share": round(self.observed / self.flagged, 3) if self.flagged else None}


Series = dict[str, list[tuple[set, set, int]]]
"""Per layer, per measurement: (flagged tasks, tasks outside the main cluster, k tasks)."""


def measurements(path: Path) -> tuple[list[int], dict[str, Series]]:
    """The env steps of a run's atlas measurements and, per net, their series: from the
    run's live measurements (``RUN_DIR/atlas/step_<N>.json``), else from what the atlas
    command wrote (``atlas.json``: its history over training; a layer's tasks from its last
    measurement, a tree's layers keeping their tasks)."""
    run = RunDir(path) if path.is_dir() else None
    history = atlas.live_measurements(run) if run else []
    if history:
        def entry(net: str, name: str, layer: dict) -> tuple[set, set, int]:
            tasks = set(layer["task_names"])
            return set(layer["conflicting"]), tasks - set(layer["main_cluster"]), len(tasks)
    else:
        summary = read_json(run.atlas_summary if run else path) or {}
        history = summary.get("over_training") or []

        def entry(net: str, name: str, layer: dict) -> tuple[set, set, int]:
            k = len(summary["nets"][net][name]["task_names"])
            return set(layer["conflicting"]), set(layer["outside_main_cluster"]), k
    nets: dict[str, Series] = defaultdict(lambda: defaultdict(list))
    for m in history:
        for net, layers in m["nets"].items():
            for name, layer in layers.items():
                nets[net][name].append(entry(net, name, layer))
    return [m["env_steps"] for m in history], nets


def run_rows(path: Path) -> list[dict]:
    """One row per net of the run's atlas measurements (none below two)."""
    steps, nets = measurements(path)
    if len(steps) < 2:
        return []
    name_of_run = path.name if path.is_dir() else path.parent.name
    rows = []
    for net, series in nets.items():
        recurrence, twins, persistent = Overlap(), Overlap(), set()
        for name, seq in series.items():
            for (now, _, k), (later, _, _) in zip(seq, seq[1:]):
                recurrence.add(now, later, k)
            twin = "q2/" + name[3:] if name.startswith("q1/") else None
            if twin in series:
                for (mine, _, k), (theirs, _, _) in zip(seq, series[twin]):
                    twins.add(mine, theirs, k)
                for n in range(len(seq) - 1):  # flagged twice running, in both twins
                    both = (seq[n][0] & seq[n + 1][0] & series[twin][n][0]
                            & series[twin][n + 1][0])
                    persistent |= {(name[3:], steps[n + 1], t) for t in both}
        leavers = sorted({(name, t) for name, seq in series.items() for _, out, _ in seq
                          for t in out})
        left_twice = sorted((name, steps[n + 1], t) for name, seq in series.items()
                            for n in range(len(seq) - 1) for t in seq[n][1] & seq[n + 1][1])
        rows.append({
            "run": name_of_run, "net": net, "measurements": len(steps),
            "first": steps[0], "last": steps[-1],
            "shared_head": any(name.endswith("head") for name in series),
            "layers": len(series),
            "flags": sum(len(flagged) for seq in series.values() for flagged, _, _ in seq),
            "recurrence": recurrence.to_dict(),
            "twins": twins.to_dict() if twins.flagged or twins.expected else None,
            "persistent_in_both_twins": [list(p) for p in sorted(persistent)],
            "left_main_cluster": [list(x) for x in leavers],
            "left_twice_running": [list(x) for x in left_twice]})
    return rows


def _overlap(o: dict | None) -> str:
    if not o or not o["flagged"]:
        return "-"
    z = "" if o["z"] is None else f", z {o['z']:+.1f}"
    return f"{o['observed']}/{o['flagged']} (chance {o['expected']:.1f}{z})"


def markdown(payload: dict) -> str:
    lines = [*header("Do late conflicts last?", payload["command"], payload["machine"]), "",
             "Flagged: (task, layer, measurement) where the task's gradient points "
             "significantly against the consensus of the others (evidence only where the head "
             "is shared). Recurs: flagged again on that layer at the next measurement. Twins: "
             "the other critic, same layer, same transitions, flags it too. Chance: what "
             "sets of those sizes give at random (z: the excess in hypergeometric s.d.). "
             "Persistent: flagged at two measurements running in both critics. Left the "
             "cluster: (task, layer) outside the layer's main cluster by the sign-blind "
             "affinity at some measurement; twice running: at two measurements running.", "",
             "| run | net | head | measurements (env steps) | flagged | recurs next time | "
             "twins agree | persistent | left the cluster | twice running |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        rec = r["recurrence"]
        lines.append(
            f"| {r['run']} | {r['net']} | {'shared' if r['shared_head'] else 'per task'} | "
            f"{r['measurements']} ({r['first']:,}-{r['last']:,}) | {r['flags']} | "
            f"{_overlap(rec)} | {_overlap(r['twins'])} | "
            f"{len(r['persistent_in_both_twins'])} | {len(r['left_main_cluster'])} | "
            f"{len(r['left_twice_running'])} |")
    for title, key in (("Persistent", "persistent_in_both_twins"),
                       ("Left the cluster twice running", "left_twice_running")):
        found = [(r["run"], r["net"], *event) for r in payload["rows"] for event in r[key]]
        if found:
            lines += ["", f"{title} (run, net, layer, env steps of the second measurement, "
                      "task): " + "; ".join(f"{run} {net} {layer} {step:,} {task}"
                                            for run, net, layer, step, task in found)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = CommandParser(prog="python -m benchmarks.studies.conflict_persistence",
                           description=__doc__)
    parser.add_argument("runs", nargs="+",
                        help="run directories with a live atlas (train --atlas-every) or "
                             "an atlas.json that conal_rl.atlas wrote")
    parser.add_argument("--out", default="benchmarks/results/conflict-persistence",
                        help="output stem: STEM.json and STEM.md (default: %(default)s)")
    args = parser.parse_args(argv)
    rows, empty = [], []
    for path in map(Path, args.runs):
        if not path.exists():
            parser.error(f"{path}: no such run directory or atlas file")
        try:
            found = run_rows(path)
        except (KeyError, TypeError, AttributeError) as e:
            parser.error(f"{path}: not an atlas of conal_rl ({type(e).__name__}: {e})")
        rows += found
        if not found:
            empty.append(str(path))
    if empty:
        parser.error(f"fewer than two atlas measurements (train --atlas-every) in: "
                     f"{', '.join(empty)}")
    from conal_rl.common import machine  # torch: only once the inputs are known good

    payload = {"command": command("python -m benchmarks.studies.conflict_persistence", argv),
               "machine": machine(), "rows": rows}
    save(Path(args.out), payload, markdown(payload))
    return payload


if __name__ == "__main__":
    main()
