"""The success benchmark's report: read the finished runs, summarize every row over seeds
(mean ± s.e., IQM, per task, parameters, wall time), compare each with MT-SAC, and write
``<benchmark>-<budget>.md``/``.json``/``.png``."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.experiments.grown_report import (
    branch_success,
    branch_success_lines,
    grown_lines,
    grown_summary,
    probe_verdict_lines,
    probe_verdicts,
)
from benchmarks.experiments.minute_curves import minutes_band
from benchmarks.experiments.success_runs import (
    PASS_THROUGH,
    ROWS,
    RunSpec,
    config_clash,
    flag_args,
    folder_clash,
    is_finished,
    repository_path,
    safe_name,
    saved_config,
)
from benchmarks.report_files import costs_path, header, machine_text, now
from conal_rl.analysis.curves import AXES, MEAN, read_curves
from conal_rl.common import (
    as_float,
    finite_or_none,
    machine,
    write_atomic,
    write_json_atomic,
)
from conal_rl.training.config import TrainConfig
from conal_rl.training.rundir import read_json
from envs import num_tasks

BASELINE = "mtsac"  # the row every other is compared with
MIN_IQM_RUNS = 3  # the IQM and its bootstrap interval are shown from this many runs on
NOISE_RULE = ("a row's mean differs from MT-SAC's within noise when |Δmean| < "
              "2·sqrt(SE_row² + SE_mtsac²), standard errors over seeds; equal means count "
              "as within")


# ---- reading finished runs ----------------------------------------------------------------------
@dataclass
class RunResult:
    spec: RunSpec
    tasks: list[str]
    values: dict[str, float]  # per task: final success rate (return for gym: benchmarks)
    env_steps: int  # training phase (for CoNAL without the search)
    search_env_steps: int
    train_wall: float  # training phase, seconds
    search_wall: float
    stopped_by: str
    parameters: dict[str, int]  # actor, critic (both Q-nets; no targets)
    extra: dict = field(default_factory=dict)

    @property
    def wall(self) -> float:
        return self.train_wall + self.search_wall

    @property
    def steps_per_s(self) -> float:
        total = self.env_steps + self.search_env_steps
        return total / self.wall if self.wall > 0 else float("nan")

    @property
    def mean(self) -> float:
        return float(np.mean([self.values[t] for t in self.tasks]))

    def curve(self, metric: str, x: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Its mean-over-tasks curve against ``x``: from the run's folder, or kept in its
        record where the folder is gone."""
        if "curves" in self.extra and x in self.extra["curves"]:
            xs, ys = self.extra["curves"][x]
            return np.asarray(xs, dtype=float), np.asarray([_nn(y) for y in ys], dtype=float)
        curves = read_curves(self.spec.run_dir, metric, x)
        return curves[MEAN] if curves else None

    def record(self) -> dict:
        """What the report keeps of this run: enough for ``from_record`` to rebuild it."""
        return self._fields() | self.extra

    def _fields(self) -> dict:
        return {"seed": self.spec.seed, "run_dir": str(self.spec.run_dir), "mean": self.mean,
                "tasks": {t: finite_or_none(v) for t, v in self.values.items()},
                "env_steps": self.env_steps, "search_env_steps": self.search_env_steps,
                "train_wall_s": self.train_wall, "search_wall_s": self.search_wall,
                "env_steps_per_s": self.steps_per_s, "stopped_by": self.stopped_by,
                "parameters": self.parameters}

    @classmethod
    def from_record(cls, spec: RunSpec, record: dict) -> RunResult:
        """A finished run as an earlier report recorded it (its folder is gone: a new
        machine, a cleaned disk): the table keeps it instead of training it again."""
        run = cls(spec, list(record["tasks"]),
                  {t: _nn(v) for t, v in record["tasks"].items()}, int(record["env_steps"]),
                  int(record["search_env_steps"]), float(record["train_wall_s"]),
                  float(record["search_wall_s"]), record["stopped_by"],
                  dict(record["parameters"]))
        fields = run._fields()
        run.extra = {k: v for k, v in record.items() if k not in fields} | {"recorded": True}
        return run


def recorded(spec: RunSpec, previous: dict) -> dict | None:
    """The record of ``spec``'s run in the previous report of the same runs folder, when its
    folder is gone: a record of a run of this seed and configuration (every field, defaults
    included; under whichever row it was: a row renamed keeps its runs; a record without
    its config is not taken) that reached the requested steps."""
    if spec.run_dir.exists():
        return None
    runs = [run for row in sorted(previous.get("rows", []), key=lambda r: r.get("row") != spec.row)
            for run in row.get("runs", [])]
    return next((run for run in runs if run.get("seed") == spec.seed
                 and run.get("env_steps", 0) >= spec.target_steps
                 and "config" in run and not config_clash(spec, run["config"])), None)


_CACHE: dict[tuple, dict] = {}


def _read_once(what: str, files: list[Path], read) -> dict:
    """``read()``, kept while ``files`` are unchanged: the table's driver rebuilds the report
    after every run, and loading a checkpoint or a search's TensorBoard costs seconds."""
    key = (what, *((str(f), f.stat().st_mtime) for f in files))
    if key not in _CACHE:
        _CACHE[key] = read()
    return _CACHE[key]


def count_parameters(spec: RunSpec) -> dict[str, int]:
    """Actor and critic parameters of the trained networks (both Q-nets of the critic, not
    the targets), counted from the final checkpoint; STL: its stl.json (all tasks' nets)."""
    if spec.is_stl:
        return dict(spec.run.read_stl_config()["parameters"])
    return _checkpoint_facts(spec)["parameters"]


def final_trees(spec: RunSpec) -> dict[str, dict]:
    """The trees the run ended with (grown ones included), as its checkpoint holds them."""
    return _checkpoint_facts(spec)["trees"]


def _checkpoint_facts(spec: RunSpec) -> dict:
    """What the report reads of a run's final checkpoint, in one load (mapped: a replay saved
    with it is never read): its parameters and its trees."""
    from conal_rl.training import checkpoint
    from conal_rl.training.nets import load_specs, trees_in

    path = spec.run.checkpoint

    def read() -> dict:
        state = checkpoint.load(path, mmap=True)
        agent = state["agent"]
        specs = (trees_in(checkpoint.hook_state(state, "branching"))
                 or load_specs(spec.run.architecture))
        return {"parameters": {role: int(sum(v.numel() for k, v in agent.items()
                                             if k.startswith(role + ".")))
                               for role in ("actor", "critic")},
                # as JSON holds them (lists, not tuples): a record read back equals the one
                # written
                "trees": json.loads(json.dumps({role: tree.to_dict()
                                                for role, tree in specs.items()}))}
    return _read_once("checkpoint", [path], read)


def read_result(spec: RunSpec, metric: str) -> RunResult:
    run = spec.run
    latest, timing, search = run.latest_evaluation(), run.timing(), run.search_timing()
    if latest is None or timing is None:
        raise ValueError(f"{run}: no readable {run.eval_latest.name} or {run.timing_file.name}")
    tasks = [t["task"] for t in latest["tasks"]]
    values = {t["task"]: as_float(t[metric]) for t in latest["tasks"]}
    extra = {}
    if not spec.is_stl:  # what a later report needs to know the run without its folder
        extra["config"] = run.read_config()
        extra["trees"] = final_trees(spec)
    # a run's folder stays on the machine that trained it: this one
    extra["trained_on"] = machine()["cpu_model"]
    arch = run.read_architecture()
    if arch and "parameters" in arch.get("actor", {}):  # CoNAL: the search's own counts
        extra["architecture"] = {role: {"branch_point_by_task": arch[role].get(
            "branch_point_by_task"), "parameters_one_net": arch[role]["parameters"]}
            for role in ("actor", "critic")}
    elif arch and "groups_by_task_name" in arch.get("actor", {}):  # CoNAL-Pro's groups
        extra["architecture"] = {role: {"groups_by_task_name": arch[role]["groups_by_task_name"]}
                                 for role in ("actor", "critic")}
    if "architecture" in extra:
        extra["architecture"] |= _read_once(
            f"conflict logs of {run}", run.search.event_files(recursive=True),
            run.search_conflict_logs)
        extra["architecture"]["conflict_summary"] = conflict_summary(extra["architecture"])
    from conal_rl.training import (
        conflict_atlas as atlas,  # torch: once the runs are read, not to parse flags
    )

    grown = read_json(run.grown)
    if grown:  # trees that grew while training (--branch-every): what opened, and why
        extra["grown"] = grown_summary(grown)
    live = atlas.live_measurements(run)
    if live:  # --atlas-every: which tasks conflict at the last measurement
        extra["atlas"] = atlas_of(live[-1])
    # The mean curves travel in the record: the table outlives the runs' folders.
    extra["curves"] = {}
    for x in ("env_steps", "train_minutes"):
        curves = read_curves(run.path, metric, x)
        if curves:
            extra["curves"][x] = [curves[MEAN][0].tolist(),
                                  [finite_or_none(y) for y in curves[MEAN][1].tolist()]]
    return RunResult(spec, tasks, values, int(timing["env_steps"]),
                     int(search.get("env_steps", 0)), float(timing["train_wall"]),
                     float(search.get("train_wall", 0.0)), timing.get("stopped_by", "steps"),
                     count_parameters(spec), extra | {"eval_env_steps": latest["env_steps"]})


# ---- the report ---------------------------------------------------------------------------------
def fmt_wall(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _fmt_count(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}"


def _cell(mean: float, se: float, digits: int) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + ("" if math.isnan(se) else f" ± {se:.{digits}f}")


def summarize_row(row: str, results: list[RunResult], tasks: list[str], seeds: int,
                  metric: str) -> dict:
    from conal_rl.analysis.stats import summarize

    entry = {"row": row, "label": ROWS[row][2],
             "command": " ".join(["python -m", ROWS[row][0], *map(repository_path, ROWS[row][1])]),
             "seeds_requested": seeds, "seeds_finished": len(results),
             "runs": [r.record() for r in results]}
    if not results:
        return entry
    scores = np.array([[r.values[t] for t in tasks] for r in results])
    s = summarize(scores, tasks)
    wall = np.array([r.wall for r in results])
    entry.update({
        "mean": s.mean, "se": finite_or_none(s.se),
        "iqm": s.iqm if len(results) >= MIN_IQM_RUNS else None,
        "iqm_ci": [finite_or_none(x) for x in s.iqm_ci] if len(results) >= MIN_IQM_RUNS else None,
        "task_mean": dict(zip(tasks, map(float, s.task_mean))),
        "task_se": dict(zip(tasks, map(finite_or_none, s.task_se))),
        "env_steps": [r.env_steps for r in results],
        "search_env_steps": [r.search_env_steps for r in results],
        "parameters": {role: [r.parameters[role] for r in results]
                       for role in ("actor", "critic")},
        "train_wall_s": float(wall.mean()),
        "search_wall_s": float(np.mean([r.search_wall for r in results])),
        "env_steps_per_s": float(np.mean([r.steps_per_s for r in results])),
        "stopped_by": sorted({r.stopped_by for r in results}),
    })
    return entry


def noise_verdicts(rows: list[dict]) -> dict[str, dict]:
    """Every row against the baseline: Δmean, its 2-SE threshold and the verdict."""
    base = next((r for r in rows if r["row"] == BASELINE and "mean" in r), None)
    out = {}
    for r in rows:
        if base is None or r is base or "mean" not in r:
            continue
        delta = r["mean"] - base["mean"]
        if r["se"] is None or base["se"] is None:
            out[r["row"]] = {"delta": delta, "threshold": None, "within_noise": None}
            continue
        threshold = 2 * math.sqrt(r["se"] ** 2 + base["se"] ** 2)
        within = abs(delta) < threshold or delta == 0
        out[r["row"]] = {"delta": delta, "threshold": threshold, "within_noise": within,
                         "seeds_to_resolve": seeds_to_resolve(r, base) if within else None}
    return out


def seeds_to_resolve(row: dict, base: dict) -> int | None:
    """Seeds per row (the same number for both) at which ``row``'s difference from ``base``
    would clear the noise rule, were the difference and each row's spread over seeds to stay
    as measured: a planning figure for what a within-noise verdict would cost to settle."""
    delta = row["mean"] - base["mean"]
    if delta == 0:
        return None
    variance = sum(r["se"] ** 2 * len(r["runs"]) for r in (row, base))  # SD² over seeds
    return max(2, math.ceil(4 * variance / delta ** 2))


def _verdict_text(v: dict | None) -> str:
    if v is None:
        return "-"
    if v["within_noise"] is None:
        return f"{v['delta']:+.2f} (needs ≥ 2 seeds each)"
    word = "within noise" if v["within_noise"] else "beyond noise"
    return f"{v['delta']:+.2f} ({word}, 2·SE {v['threshold']:.2f})"


def markdown(payload: dict) -> str:
    rows, tasks = payload["rows"], payload["tasks"]
    metric, digits = payload["metric"], 2 if payload["metric"] == "success" else 1
    title = (f"{payload['benchmark']}: {metric} rate comparison" if metric == "success" else
             f"{payload['benchmark']}: return comparison") + f", budget `{payload['budget']}`"
    lines = [*header(title, payload["command"], header_machine(payload), payload["date"]),
             f"Runs: `{payload['runs_dir']}`; budget `{payload['budget']}` "
             f"({payload['budget_note']}); every run one subprocess with one torch thread"
             f"{', ' + str(payload['jobs']) + ' at a time' if payload['jobs'] > 1 else ''}."
             + (" Overrides of the budget: " + ", ".join(
                 " ".join(flag_args(k, v))
                 for k, v in payload["overrides"].items()) + "." if payload["overrides"] else ""),
             "",
             f"Final evaluation of every run (the shared protocol, "
             f"{payload['eval_episodes']} episodes per task, deterministic policy): mean over "
             f"tasks, then mean ± standard error over seeds"
             + (f"; IQM over all run-task scores with its stratified-bootstrap 95% interval "
                f"from {MIN_IQM_RUNS} seeds on" if metric == "success" else "") + ". "
             "Parameters: actor, and critic (both Q-nets), of the trained networks (CoNAL: the "
             "pruned trees; STL: all tasks' nets together). Wall: training time (evaluation "
             "and checkpoints excluded; CoNAL's search included), mean over seeds; "
             "env-steps/s = env steps (search included) / that time.", ""]
    columns = ["row", metric, "IQM [95% CI]", "seeds", "env steps", "actor params",
               "critic params", "wall", "env-steps/s", f"vs {BASELINE}"]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        if "mean" not in r:
            cells = [r["row"], "-", "-", f"0/{r['seeds_requested']}", *["-"] * 6]
        else:
            iqm = "-"
            if r["iqm"] is not None:
                low, high = r["iqm_ci"]
                iqm = f"{r['iqm']:.{digits}f}" + (
                    f" [{low:.{digits}f}, {high:.{digits}f}]" if low is not None else "")
            search = (f" + search {_fmt_count(r['search_env_steps'])}"
                      if any(r["search_env_steps"]) else "")
            cells = [r["row"], _cell(r["mean"], _nn(r["se"]), digits), iqm,
                     f"{r['seeds_finished']}/{r['seeds_requested']}",
                     _fmt_count(r["env_steps"]) + search,
                     _fmt_count(r["parameters"]["actor"]),
                     _fmt_count(r["parameters"]["critic"]), fmt_wall(r["train_wall_s"]),
                     f"{r['env_steps_per_s']:.0f}",
                     _verdict_text(payload["vs_baseline"].get(r["row"]))
                     if r["row"] != BASELINE else "baseline"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Rows: " + "; ".join(f"`{r['row']}` = {r['label']} (`{r['command']}`)"
                                        for r in rows) + ".", ""]
    verdicts = payload["vs_baseline"]
    if verdicts:
        within = [k for k, v in verdicts.items() if v["within_noise"]]
        beyond = [k for k, v in verdicts.items() if v["within_noise"] is False]
        unknown = [k for k, v in verdicts.items() if v["within_noise"] is None]
        lines.append(f"Differences within noise ({NOISE_RULE}): "
                     f"within: {', '.join(within) or 'none'}; beyond: "
                     f"{', '.join(beyond) or 'none'}"
                     + (f"; not decidable (one seed): {', '.join(unknown)}" if unknown else "")
                     + ".")
        settle = [f"{k} {v['seeds_to_resolve']}" for k, v in verdicts.items()
                  if v.get("seeds_to_resolve")]
        if settle:
            lines += ["", "Seeds per row (that row and MT-SAC each) at which a difference "
                      "within noise would clear the rule, were the difference and the spread "
                      "over seeds to stay as measured: " + ", ".join(settle) + "."]
    else:
        has_base = any(r["row"] == BASELINE and "mean" in r for r in rows)
        lines.append(f"Differences within noise ({NOISE_RULE}): "
                     + ("no other row has finished runs yet." if has_base else
                        f"no finished {BASELINE} runs to compare with."))
    lines += costs_lines(payload.get("costs"))
    lines += ["", f"Per task: final {metric}, mean over finished seeds.", "",
              "| row | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
    for r in rows:
        cells = [f"{r['task_mean'][t]:.{digits}f}" if "task_mean" in r else "-" for t in tasks]
        lines.append(f"| {r['row']} | " + " | ".join(cells) + " |")
    lines += searched_architectures(rows, tasks)
    lines += grown_lines(rows)
    lines += branch_success_lines(payload.get("branch_success", []), rows, BASELINE)
    lines += probe_verdict_lines(payload.get("probe_verdicts", []))
    lines += atlas_lines(rows)
    if payload.get("plot"):
        lines += ["", f"![learning curves]({payload['plot']})", "",
                  f"Learning curves: mean {metric} over tasks at every evaluation, mean over "
                  "seeds ± one standard error (shaded), against the env steps of the training "
                  "phase (CoNAL's search steps are not on this axis; STL: per-task steps × "
                  "tasks)"
                  + ("; and against training minutes, each run read at its latest evaluation "
                     "by then (CoNAL's search counts)." if any(payload["minutes"]) else ".")]
    kept = [f"{r['row']}-s{run['seed']}" for r in payload["rows"] for run in r.get("runs", [])
            if run.get("recorded")]
    if kept:
        lines += ["", "Kept from an earlier report of these runs (their folders are gone, so "
                  "they are not trained again; a run recorded before the report kept curves "
                  "is missing from the plot): " + ", ".join(kept) + "."]
    lines += trained_on_lines(payload["rows"])
    if payload["unfinished"]:
        lines += ["", "Unfinished runs (not in the table): "
                  + "; ".join(payload["unfinished"]) + "."]
    if payload["failed"]:
        lines += ["", "## Failed runs", ""]
        for f in payload["failed"]:
            lines += [f"`{f['run']}` ({f['reason']}), last lines of `{f['log']}`:", "", "```",
                      *f["log_tail"], "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def header_machine(payload: dict) -> dict | str:
    """The machine the header names: that of the last call that trained through the runner,
    said so where some of the table's runs were trained on another CPU (runs trained by their
    own commands, or kept from another machine's folders)."""
    m = payload["machine"]
    cpus = {run.get("trained_on") for r in payload["rows"] for run in r.get("runs", [])}
    if isinstance(m, str) or not cpus - {None, m.get("cpu_model")}:
        return m
    return (f"{machine_text(m)} (the last call that trained through the runner; the CPU of "
            "each run under Trained on)")


def trained_on_lines(rows: list[dict]) -> list[str]:
    """Which CPU trained which runs: their wall and env-steps/s columns are that machine's,
    and a table's runs may come from several (the header names the last that trained)."""
    by_cpu: dict[str, list[str]] = {}
    for r in rows:
        for run in r.get("runs", []):
            cpu = run.get("trained_on") or "not recorded (a record older than the field)"
            by_cpu.setdefault(cpu, []).append(f"{r['row']}-s{run['seed']}")
    if not by_cpu:
        return []
    return ["", "Trained on (the CPU of the machine that read each run's folder first; the "
            "wall and env-steps/s columns are that machine's): " + "; ".join(
                f"{cpu}: {', '.join(runs)}" for cpu, runs in by_cpu.items()) + "."]


def atlas_of(measurement: dict) -> dict:
    """A run's live atlas measurement in brief: per net, on its first shared layer, the tasks
    pointing significantly against the others and those outside its main cluster."""
    from conal_rl.training import conflict_atlas as atlas

    names, nets = measurement["task_names"], atlas.from_json(measurement)
    out = {"env_steps": measurement["env_steps"]}
    for role, layers in nets.items():
        name, ev = next(iter(layers.items()))
        out[role] = {"layer": name} | atlas.layer_summary(ev, names)
    return out


def atlas_lines(rows: list[dict]) -> list[str]:
    """Markdown lines: per run measured live (``--atlas-every``), which tasks conflict."""
    runs = [(r["row"], run) for r in rows for run in r.get("runs", []) if "atlas" in run]
    if not runs:
        return []
    lines = ["", "Conflict atlas, per run, at its last live measurement (`--atlas-every`), on "
             "each net's first shared layer: the tasks whose gradient points significantly "
             "against the others' (signed: evidence where the net's head is shared) and those "
             "outside the layer's main cluster by the sign-blind affinity; r: split-half "
             "reliability.", "",
             "| run | env steps | net | layer | r | against the others | outside main cluster |",
             "|---|---|---|---|---|---|---|"]
    for row, run in runs:
        found = run["atlas"]
        for role in ("critic", "actor"):
            if role in found:
                d = found[role]
                r = "-" if d["reliability"] is None else f"{d['reliability']:.2f}"
                lines.append(f"| {row}-s{run['seed']} | {found['env_steps']:,} | {role} | "
                             f"{d['layer']} | {r} | {', '.join(d['conflicting']) or '-'} | "
                             f"{', '.join(d['outside_main_cluster']) or '-'} |")
    return lines


def searched_architectures(rows: list[dict], tasks: list[str]) -> list[str]:
    """Markdown lines: per searched run, what its search derived (CoNAL: the branch point of
    every task; CoNAL-Pro: the groups per depth) and how often conflict-noticing froze the
    shared modules; nothing when no row searched."""
    runs = [(r["row"], run) for r in rows for run in r.get("runs", []) if "architecture" in run]
    if not runs:
        return []
    lines = ["", "Searched architectures, per run. Branch point of each task in the derived "
             "trees (0: private from the input, P: shared throughout); CoNAL-Pro: the groups "
             "of tasks sharing a module, per depth. Frozen: on what fraction of the search's "
             "conflict-checked updates conflict-noticing froze a shared module (of CoNAL-Pro: "
             "a candidate); negative: the share of the logged pairwise cosines of task "
             "gradients on a module that were negative (a half: coin flips); each the mean over "
             "the net's modules [lowest, highest], per stage for CoNAL-Pro; -: not recorded "
             "(reports from before the search's TensorBoard was read).", ""]
    branching = [(row, run) for row, run in runs if "branch_point_by_task" in run["architecture"]
                 ["actor"]]
    if branching:
        lines += ["| run | net | " + " | ".join(tasks) + " | frozen | negative |",
                  "|" + "---|" * (len(tasks) + 4)]
        for row, run in branching:
            for role in ("actor", "critic"):
                points = run["architecture"][role]["branch_point_by_task"] or {}
                lines.append(f"| {row}-s{run['seed']} | {role} | "
                             + " | ".join(str(points.get(t, "-")) for t in tasks)
                             + f" | {_per_stage(run['architecture'], 'frozen_fraction', role)}"
                             f" | {_per_stage(run['architecture'], 'negative_cosines', role)} |")
    grouped = [(row, run) for row, run in runs if "groups_by_task_name" in run["architecture"]
               ["actor"]]
    if branching and grouped:
        lines.append("")  # the list after the table, not in it
    for row, run in grouped:
        for role in ("actor", "critic"):
            depths = run["architecture"][role]["groups_by_task_name"]
            text = "; ".join(f"depth {i}: " + " ".join(_group_text(g, tasks) for g in groups)
                             for i, groups in enumerate(depths, 1))
            lines.append(f"- `{row}-s{run['seed']}` {role}: {text}; frozen "
                         f"{_per_stage(run['architecture'], 'frozen_fraction', role)}; negative "
                         f"{_per_stage(run['architecture'], 'negative_cosines', role)}")
    return lines


def _group_text(group: list[str], tasks: list[str]) -> str:
    """``{a, b}``; a group of every task (nothing split off) as ``{all N tasks}``."""
    return (f"{{all {len(tasks)} tasks}}" if sorted(group) == sorted(tasks)
            else "{" + ", ".join(group) + "}")


def conflict_summary(architecture: dict) -> dict[str, list[float]]:
    """``"<key>/<role>[/<stage>]" -> [mean, min, max]`` over the role's modules of
    ``architecture[key]`` (per module; per stage for CoNAL-Pro), for the frozen fractions
    and negative cosines: what the report shows, kept in its JSON beside the per-module
    values."""
    stages: dict[str, list[float]] = {}
    for key in ("frozen_fraction", "negative_cosines"):
        for module, value in architecture.get(key, {}).items():
            parts = module.split("/")  # [stage<s>/]role/[q1/]module
            stage = parts.pop(0) if parts[0].startswith("stage") else ""
            stages.setdefault("/".join(filter(None, (key, parts[0], stage))), []).append(value)
    return {name: [float(np.mean(v)), min(v), max(v)] for name, v in sorted(stages.items())}


def _per_stage(architecture: dict, key: str, role: str) -> str:
    """Mean [min, max] over a role's modules of ``architecture[key]``, per stage for
    CoNAL-Pro's; ``-`` where not recorded."""
    prefix = f"{key}/{role}"
    parts = [(name[len(prefix) + 1:], v) for name, v in conflict_summary(architecture).items()
             if name == prefix or name.startswith(prefix + "/")]
    if not parts:
        return "-"
    return ", ".join((f"{stage} " if stage else "") + f"{m:.2f} [{lo:.2f}, {hi:.2f}]"
                     for stage, (m, lo, hi) in parts)


def _nn(x) -> float:
    return float("nan") if x is None else x


def budget_note(budget: str, benchmark: str, overrides: dict | None = None) -> str:
    """The runs' budget: the preset's, with the flags of this call that change it."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    p = TrainConfig(benchmark=benchmark, preset=budget, **given)
    T = num_tasks(benchmark)
    note = (f"{p.total_steps // T:,} steps per task, nets {'x'.join(map(str, p.hidden))}, "
            f"batch {p.batch_per_task} per task, evaluation every "
            f"{p.eval_every // T:,} steps per task, {T} task{'s' * (T > 1)}, "
            f"{'LayerNorm' if p.layer_norm else 'no LayerNorm'}, {p.updates_per_step} "
            f"update{'s' * (p.updates_per_step > 1)} per env step")
    if p.minutes:
        note += f", at most {p.minutes} min of training"
    return note


def row_costs(report: Path, row_names: list[str], previous: dict) -> dict | None:
    """The update costs ``benchmarks.speed.row_costs`` measured on the runs of ``report``
    (its ``-costs.json`` beside it), per row: the runs' and their means; else the previous
    report's."""
    measured = read_json(costs_path(report))
    if not measured:
        return previous.get("costs")
    rows = {}
    for name in row_names:
        runs = [r for r in measured["runs"] if r["row"] == name]
        if runs:
            rows[name] = {"runs": runs} | {k: float(np.mean([r[k] for r in runs])) for k in (
                "actor_params", "critic_params", "flops_per_sample", "update_ms")}
    return {"command": measured["command"], "machine": measured["machine"],
            "date": measured["date"], "rows": rows}


def costs_lines(costs: dict | None) -> list[str]:
    """The costs table: what one update of each row's trained nets costs."""
    if not costs or not costs["rows"]:
        return []
    lines = ["", "Cost of one update of each row's trained networks, side by side on one "
             f"machine (`{costs['command']}`; {machine_text(costs['machine'])}; "
             f"{costs['date']}): matrix-product FLOPs per sample (forward and backward) and "
             "the update's time, one thread, mean over the row's runs.", "",
             "| row | actor params | critic params | FLOP per sample | update ms |",
             "|---|---|---|---|---|"]
    for row, c in costs["rows"].items():
        lines.append(f"| {row} | {c['actor_params']:,.0f} | {c['critic_params']:,.0f} | "
                     f"{c['flops_per_sample'] / 1e6:.2f}M | {c['update_ms']:.2f} |")
    if costs.get("plot"):
        lines += ["", f"Success against critic parameters and against update time: "
                      f"`{costs['plot']}` (small: seeds; large: the row's mean)."]
    return lines


def plot_pareto(rows: list[dict], costs: dict[str, dict], metric: str, benchmark: str,
                path: Path) -> None:
    """Success against critic parameters (log) and against update time: every seed of a
    row a small mark, the row's mean a large one with its name."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    for i, r in enumerate(r for r in rows if r["row"] in costs and "mean" in r):
        # colours repeat after ten rows: the marker tells them apart
        c, color, marker = costs[r["row"]], f"C{i % 10}", "osD^v"[i // 10 % 5]
        by_seed = {run["seed"]: run for run in c["runs"]}
        for ax, key in zip(axes, ("critic_params", "update_ms")):
            seeds = [(by_seed[run["seed"]][key], run["mean"]) for run in r["runs"]
                     if run["seed"] in by_seed]
            if seeds:
                ax.scatter(*zip(*seeds), s=14, color=color, marker=marker, alpha=0.5)
            ax.scatter([c[key]], [r["mean"]], s=70, color=color, marker=marker,
                       label=r["row"])
            ax.annotate(r["row"], (c[key], r["mean"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
    axes[0].set(xscale="log", xlabel="critic parameters (both Q-nets)",
                ylabel=f"{metric}, mean over tasks")
    axes[1].set(xlabel="ms per update (one thread)", ylabel=f"{metric}, mean over tasks")
    axes[0].set_title(f"{benchmark}: {metric} against critic parameters")
    axes[1].set_title(f"{benchmark}: {metric} against update time")
    axes[1].legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def plot_rows(rows: list[dict], results: dict[str, list[RunResult]], metric: str,
              benchmark: str, minutes: float, path: Path) -> bool:
    """Mean over tasks vs env steps, one line per row (± s.e. over seeds); with a
    wall-clock budget (``minutes`` > 0) also against training minutes."""
    from matplotlib.figure import Figure

    from conal_rl.analysis.curves import band, draw

    panels = {"env_steps": []} | ({"train_minutes": []} if minutes else {})
    for r in rows:
        for x, bands in panels.items():
            runs = [res.curve(metric, x) for res in results.get(r["row"], [])]
            runs = [c for c in runs if c is not None]
            if runs:
                bands.append(band(r["row"], runs) if x == "env_steps"
                             else minutes_band(r["row"], runs, minutes))
    if not panels["env_steps"]:
        return False
    fig = Figure(figsize=(7.5 * len(panels), 4.5), layout="constrained")
    ylabel = "success rate" if metric == "success" else "return"
    for ax, (x, bands) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels.items()):
        draw(ax, bands, f"{benchmark}: evaluation {ylabel}, mean over tasks "
             "(shaded: ± s.e. over seeds)", metric)
        ax.set_xlabel(AXES[x])
        ax.set_ylabel(ylabel)
        ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return True


def progress(spec: RunSpec) -> str:
    """Where an unfinished run stands, from its latest evaluation ("" before the first)."""
    latest = spec.run.latest_evaluation()
    if not latest:
        return ""
    value = as_float(latest.get("mean_success"))
    shown = "" if math.isnan(value) else f", success {value:.2f}"
    return (f" (last evaluated at {latest['env_steps']:,} env steps, "
            f"{latest.get('train_minutes', math.nan):.1f} training min{shown})")


def build_report(args: argparse.Namespace, specs: list[RunSpec], failed: list[dict]) -> dict:
    metric = "return" if args.benchmark.startswith("gym:") else "success"
    results: dict[str, list[RunResult]] = {}
    unfinished = []
    previous = getattr(args, "previous", {})
    for spec in specs:
        record = recorded(spec, previous)
        if record is not None:
            results.setdefault(spec.row, []).append(RunResult.from_record(spec, record))
            continue
        clash = folder_clash(spec) if spec.run_dir.exists() else []
        if clash:  # not this row's run (another row's, or made before a default changed)
            unfinished.append(f"{spec.name} (a run of another configuration: "
                              f"{'; '.join(clash)})")
            continue
        if is_finished(spec):
            try:
                results.setdefault(spec.row, []).append(read_result(spec, metric))
                continue
            except (OSError, KeyError, ValueError, TypeError) as e:
                unfinished.append(f"{spec.name} (unreadable: {type(e).__name__})")
                continue
        if spec.run_dir.exists() and not any(f["run"] == spec.name for f in failed):
            unfinished.append(spec.name + progress(spec))
    first = next((rs[0] for rs in results.values() if rs), None)
    tasks = first.tasks if first else []
    rows = [summarize_row(row, results.get(row, []), tasks, args.seeds, metric)
            for row in args.archs]
    stem = report_stem(args)
    payload = {
        "command": args.history[-1], "commands": args.history, "machine": args.machine,
        "date": now(), "benchmark": args.benchmark,
        "budget": args.budget,
        "budget_note": budget_note(args.budget, args.benchmark, overrides(args)),
        "overrides": overrides(args),
        "runs_dir": runs_folder(args, specs),
        "jobs": args.jobs, "metric": metric, "tasks": tasks,
        "total_steps": sorted({s.target_steps for s in specs}),
        "minutes": sorted({s.target_minutes for s in specs}),
        "eval_episodes": _eval_episodes(results, args),
        "noise_rule": NOISE_RULE, "rows": rows, "failed": failed, "unfinished": unfinished,
    }
    payload["vs_baseline"] = noise_verdicts(rows)
    payload["branch_success"] = branch_success(rows)
    payload["probe_verdicts"] = probe_verdicts(rows, tasks)
    payload["costs"] = row_costs(stem.with_suffix(".json"), args.archs, previous)
    if payload["costs"]:
        pareto = stem.with_name(stem.name + "-pareto.png")
        plot_pareto(rows, payload["costs"]["rows"], metric, args.benchmark, pareto)
        payload["costs"]["plot"] = pareto.name
    png = stem.with_suffix(".png")
    budget_minutes = max(s.target_minutes for s in specs) if specs else 0
    payload["plot"] = (png.name if plot_rows(rows, results, metric, args.benchmark,
                                             budget_minutes, png) else None)
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stem.with_suffix(".json"), payload)
    write_atomic(stem.with_suffix(".md"), lambda f: f.write(markdown(payload).encode()))
    return payload


def report_stem(args: argparse.Namespace) -> Path:
    return args.out_dir / f"{safe_name(args.benchmark)}-{args.budget}"


def runs_folder(args: argparse.Namespace, specs: list[RunSpec]) -> str:
    """The folder holding the report's runs (its ``runs_dir``)."""
    return str(specs[0].run_dir.parent) if specs else str(args.runs_dir)


def overrides(args: argparse.Namespace) -> dict:
    """The flags of this call that change the budget's runs (smoke runs)."""
    return {k: getattr(args, k) for k in PASS_THROUGH if getattr(args, k) is not None}


def _eval_episodes(results: dict[str, list[RunResult]], args) -> int | str:
    seen = set()
    for rs in results.values():
        for r in rs:
            saved = saved_config(r.spec) or {}
            seen.add(saved.get("eval_episodes"))
    seen.discard(None)
    if not seen:
        return args.eval_episodes or TrainConfig(preset=args.budget).eval_episodes
    return seen.pop() if len(seen) == 1 else "/".join(map(str, sorted(seen)))
