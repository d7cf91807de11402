"""Do searched trees group Meta-World tasks by their nature? Per run and net: how many modules
two *sibling* tasks share (the same object moved the other way, or the same motion with a
variant: drawer-open/drawer-close, reach/reach-wall, ...), on average over the sibling pairs
of the benchmark, against the average over all pairs of its tasks. A tree that put siblings
together would show siblings well above all pairs; the standard error of a mean of that many
pairs drawn at random says what "well above" means.

    python -m benchmarks.studies.task_groups RUN_DIR_OR_ARCHITECTURE_JSON ... [--out STEM]

Reads CoNAL trees (branch points) and CoNAL-Pro grouped trees alike.
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path

from benchmarks.report_files import command, header, save
from conal_rl.common import CommandParser
from conal_rl.method import GroupTreeSpec
from conal_rl.training.nets import ArchitectureError, load_specs
from conal_rl.training.rundir import RunDir

# Meta-World task pairs (names without the version suffix) whose tasks handle the same
# object or make the same motion: the pairs a human would expect to share features.
SIBLINGS = (
    ("drawer-open", "drawer-close"), ("window-open", "window-close"),
    ("door-open", "door-close"), ("door-lock", "door-unlock"),
    ("faucet-open", "faucet-close"), ("coffee-push", "coffee-pull"),
    ("handle-press", "handle-pull"), ("handle-press-side", "handle-pull-side"),
    ("handle-press", "handle-press-side"), ("handle-pull", "handle-pull-side"),
    ("stick-push", "stick-pull"), ("assembly", "disassemble"), ("sweep", "sweep-into"),
    ("push", "push-back"), ("push", "push-wall"), ("reach", "reach-wall"),
    ("pick-place", "pick-place-wall"), ("button-press", "button-press-wall"),
    ("button-press-topdown", "button-press-topdown-wall"),
    ("button-press", "button-press-topdown"), ("plate-slide", "plate-slide-back"),
    ("plate-slide-side", "plate-slide-back-side"), ("plate-slide", "plate-slide-side"),
)


def base_name(task: str) -> str:
    """``drawer-open-v3`` -> ``drawer-open``."""
    stem, _, version = task.rpartition("-v")
    return stem if stem and version.isdigit() else task


def grouped(spec) -> GroupTreeSpec:
    return spec if isinstance(spec, GroupTreeSpec) else GroupTreeSpec.from_branch_points(
        spec.hidden, spec.branch_points, spec.task_names)


def net_row(run: str, net: str, spec) -> dict:
    """Shared modules of the sibling pairs against all pairs, for one net."""
    tree = grouped(spec)
    shared = tree.shared_modules()
    index = {base_name(name): t for t, name in enumerate(tree.task_names)}
    everyone = [shared[s][t] for s, t in itertools.combinations(range(tree.num_tasks), 2)]
    pairs = {f"{a}/{b}": shared[index[a]][index[b]] for a, b in SIBLINGS
             if a in index and b in index}
    row = {"run": run, "net": net, "modules": tree.depth, "tasks": tree.num_tasks,
           "all_pairs": statistics.mean(everyone), "sibling_pairs": len(pairs),
           "siblings": pairs}
    if pairs:
        row["sibling_mean"] = statistics.mean(pairs.values())
        row["difference"] = row["sibling_mean"] - row["all_pairs"]
        row["random_se"] = statistics.pstdev(everyone) / len(pairs) ** 0.5
    return row


def architecture_file(path: Path) -> Path:
    return RunDir(path).architecture if path.is_dir() else path


def markdown(payload: dict) -> str:
    lines = [*header("Do the searched trees group sibling tasks?", payload["command"]), "",
             "Shared: how many hidden modules two tasks share, averaged over the sibling "
             "pairs present (same object the other way, or the same motion with a variant) "
             "and over all pairs of tasks; random s.e.: the standard error of a mean of that "
             "many pairs drawn at random from all pairs.", "",
             "| run | net | modules | sibling pairs | shared, siblings | shared, all pairs | "
             "difference | random s.e. |", "|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        if "sibling_mean" not in r:
            lines.append(f"| {r['run']} | {r['net']} | {r['modules']} | 0 | - | "
                         f"{r['all_pairs']:.2f} | - | - |")
            continue
        lines.append(
            f"| {r['run']} | {r['net']} | {r['modules']} | {r['sibling_pairs']} | "
            f"{r['sibling_mean']:.2f} | {r['all_pairs']:.2f} | "
            f"{r['difference']:+.2f} | {r['random_se']:.2f} |")
    lines += ["", "Per sibling pair: modules shared, per run and net.", ""]
    for r in payload["rows"]:
        if r["siblings"]:
            lines.append(f"- {r['run']} {r['net']}: " + ", ".join(
                f"{pair} {n}" for pair, n in r["siblings"].items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = CommandParser(prog="python -m benchmarks.studies.task_groups", description=__doc__)
    parser.add_argument("runs", nargs="+",
                        help="run directories (their architecture.json) or architecture files")
    parser.add_argument("--out", default="benchmarks/results/task-groups",
                        help="output stem: STEM.json and STEM.md (default: %(default)s)")
    args = parser.parse_args(argv)
    files = [architecture_file(Path(p)) for p in args.runs]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        parser.error(f"no architecture file: {', '.join(missing)}")
    rows = []
    for path in files:
        run = path.parent.name if path == RunDir(path.parent).architecture else path.stem
        try:
            specs = load_specs(path)
        except ArchitectureError as e:
            parser.error(str(e))
        rows += [net_row(run, net, spec) for net, spec in specs.items()]
    payload = {"command": command("python -m benchmarks.studies.task_groups", argv), "rows": rows}
    save(Path(args.out), payload, markdown(payload))
    return payload


if __name__ == "__main__":
    main()
