"""What a success report says of trees that grew while training (``--branch-every``): the
branches each run opened and why, whether the capacity went where success came from, and what
the probes measured per task. Read from each run's ``grown.json`` into the report's JSON, then
rendered from it."""

from __future__ import annotations

import numpy as np


def grown_summary(grown: dict) -> dict:
    """What a report keeps of a run's ``grown.json``: per net the branches that opened (with
    the gain that opened them, where a probe measured one), the probes' verdicts (their count,
    and per task every gain with its error) and their share of the training time."""
    out = {}
    for role, tree in grown.items():
        if not isinstance(tree, dict) or "branches" not in tree:
            continue
        out[role] = {"branches": [{k: b[k] for k in ("env_steps", "task", "module", "gain", "se",
                                                     "left_alone") if k in b}
                                  for b in tree["branches"]],
                     "verdicts": len(tree.get("probes", [])),
                     "probes": _probes_by_task(tree.get("probes", []))}
        if tree.get("train_seconds"):
            out[role]["probe_share"] = tree["probe_seconds"] / tree["train_seconds"]
    return out


def grown_lines(rows: list[dict]) -> list[str]:
    """Markdown lines: per run whose trees grew, the branches that opened and, for
    ``--branch-rule gain``, how many verdicts the probes gave and their share of the
    training time; nothing when no run grew."""
    runs = [(r["row"], run) for r in rows for run in r.get("runs", []) if run.get("grown")]
    if not runs:
        return []
    lines = ["", "Trees that grew while training, per run: each branch that opened (env "
             "steps, net, task, the module it left; with a probe, the drop of that task's "
             "held-out TD error ± its error), the probes' verdicts and their share of the "
             "training time.", ""]
    for row, run in runs:
        for role, grown in run["grown"].items():
            opened = "; ".join(
                f"{b['env_steps']:,} {b['task']} module {b['module']}"
                + (f" ({b['gain']:.0%} ± {b['se']:.0%})" if "gain" in b else
                   " (its group's other tasks left)" if b.get("left_alone") else "")
                for b in grown["branches"]) or "none"
            share = (f"; {grown['verdicts']} verdicts, probes {grown['probe_share']:.1%} of "
                     "the training time" if "probe_share" in grown else "")
            lines.append(f"- `{row}-s{run['seed']}` {role}: opened {opened}{share}")
    return lines


def branch_success(rows: list[dict]) -> list[dict]:
    """Per row, net and task that got its own module in some of the row's runs: its final
    scores in those runs and in the row's runs where it stayed shared. It asks whether the
    capacity went where success came from: a probe measures a lower TD error, not a higher
    success rate."""
    def branched(run: dict, role: str) -> set[str]:
        return {b["task"] for b in run["grown"].get(role, {}).get("branches", [])}

    out = []
    for row in rows:
        runs = [run for run in row.get("runs", []) if run.get("grown") and "tasks" in run]
        for role in dict.fromkeys(role for run in runs for role in run["grown"]):
            for task in sorted({t for run in runs for t in branched(run, role)}):
                inside = [run["tasks"][task] for run in runs if task in branched(run, role)]
                outside = [run["tasks"][task] for run in runs
                           if role in run["grown"] and task not in branched(run, role)]
                out.append({"row": row["row"], "net": role, "task": task,
                            "branched": inside, "branched_mean": sum(inside) / len(inside),
                            "shared": outside,
                            "shared_mean": sum(outside) / len(outside) if outside else None})
    return out


def branch_success_lines(entries: list[dict], rows: list[dict], baseline: str) -> list[str]:
    """Markdown table of :func:`branch_success`, the ``baseline`` row's score beside each
    task."""
    if not entries:
        return []
    base = next((r.get("task_mean", {}) for r in rows if r["row"] == baseline), {})
    lines = ["", "Where the branches went: per row, net and task that got its own module in "
             "some of the row's runs above, its final score in those runs (mean, runs) and in "
             f"the row's runs where it stayed shared; {baseline}'s score beside them.", "",
             f"| row | net | task | branched: score (runs) | stayed shared: score (runs) "
             f"| {baseline} |", "|---|---|---|---|---|---|"]
    for e in entries:
        shared = (f"{e['shared_mean']:.2f} ({len(e['shared'])})" if e["shared"] else "- (0)")
        score = f"{base[e['task']]:.2f}" if e["task"] in base else "-"
        lines.append(f"| {e['row']} | {e['net']} | {e['task']} | {e['branched_mean']:.2f} "
                     f"({len(e['branched'])}) | {shared} | {score} |")
    return lines


def _probes_by_task(probes: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for v in probes:
        mine = out.setdefault(v["task"], {"gains": [], "ses": [], "opened": 0})
        mine["gains"].append(v["gain"])
        mine["ses"].append(v["se"])
        mine["opened"] += bool(v["opened"])
    return out


def probe_verdicts(rows: list[dict], task_names: list[str]) -> list[dict]:
    """Per row, net and task, over the row's runs that kept their probes' verdicts: how many
    verdicts, how many opened a branch, how many found the private copy worse than the shared
    module on held-out episodes (a negative gain), and the median gain and error. A negative
    gain means sharing held the task's TD error lower than a copy of its own did."""
    out = []
    for row in rows:
        runs = [run for run in row.get("runs", [])
                if any("probes" in g for g in run.get("grown", {}).values())]
        for role in dict.fromkeys(role for run in runs for role in run["grown"]):
            per_run = [run["grown"][role].get("probes", {}) for run in runs if role in run["grown"]]
            for task in task_names:
                found = [p[task] for p in per_run if task in p]
                gains = [g for f in found for g in f["gains"]]
                if not gains:
                    continue
                ses = [e for f in found for e in f["ses"]]
                out.append({"row": row["row"], "net": role, "task": task, "runs": len(per_run),
                            "verdicts": len(gains), "opened": sum(f["opened"] for f in found),
                            "negative": sum(g < 0 for g in gains),
                            "median_gain": float(np.median(gains)),
                            "median_se": float(np.median(ses))})
    return out


def probe_verdict_lines(entries: list[dict]) -> list[str]:
    """Markdown table of :func:`probe_verdicts`."""
    if not entries:
        return []
    lines = ["", "What the probes measured: per row, net and task, over the row's runs that "
             "kept their verdicts (runs), the verdicts, how many opened a branch, how many "
             "found the task's own copy worse than the shared module on held-out episodes "
             "(gain < 0), and the median drop of held-out TD error and its median error.", "",
             "| row | net | task | runs | verdicts | opened | gain < 0 | median gain "
             "| median error |", "|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        lines.append(f"| {e['row']} | {e['net']} | {e['task']} | {e['runs']} | {e['verdicts']} "
                     f"| {e['opened']} | {e['negative']} | {e['median_gain']:+.0%} "
                     f"| {e['median_se']:.0%} |")
    return lines
