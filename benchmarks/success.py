"""The success-rate comparison of the paper: every architecture, several seeds, one table.

    python -m benchmarks.success --benchmark MT10 --archs mtsac,mhsac,conal,conal-nocn,stl
        --seeds 3 [--budget laptop|quick|paper] [--jobs N] [--device cpu|cuda|auto]
        [--runs-dir runs/success] [--out-dir benchmarks/results] [--total-steps N]
        [--eval-episodes N] [--minutes M] [--report-only]

Every (row, seed) is one training run in ``RUNS_DIR/<benchmark>-<budget>/<row>-s<seed>``,
trained in a subprocess (``python -m conal_rl.train`` or, for ``stl``, ``python -m
agents.stl``) with ``--preset BUDGET --torch-threads 1``, its output appended to
``train.log`` there. The report ``OUT_DIR/<benchmark>-<budget>.md`` (+ ``.json``, ``.png``)
is rewritten after every run that ends, so stopping the benchmark loses at most the runs
in flight; calling it again skips finished runs and continues the others.

A run is finished when its ``timing.json`` (written only when training ends normally)
says it reached the requested total steps, or that the ``--minutes`` budget stopped it
and the run's budget is the requested one. An unfinished run with a checkpoint is
continued (``--resume DIR``; a CoNAL run stopped during its search is started again with
the same ``--run-dir``, which continues the search); a run folder with no checkpoint is
removed and the run started afresh.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.curves import AXES, minutes_band, read_curve
from conal_rl.config import PRESETS, TrainConfig

PROG = "python -m benchmarks.success"

# row name -> (module that trains it, its flags, what the table calls it). Rows whose flags
# training does not know (yet) are refused before anything runs.
ROWS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "mtsac": ("conal_rl.train", ("--arch", "mtsac"), "MT-SAC (shared MLP, one-hot task id)"),
    "mhsac": ("conal_rl.train", ("--arch", "mhsac"), "MH-SAC (shared trunk, a head per task)"),
    "conal": ("conal_rl.train", ("--arch", "conal"), "CoNAL"),
    "conal-nocn": ("conal_rl.train", ("--arch", "conal", "--no-conflict-noticing"),
                   "CoNAL w/o conflict-noticing"),
    "conal-noprivate": ("conal_rl.train", ("--arch", "conal", "--no-private"),
                        "CoNAL w/o private modules (LTB-style search space)"),
    "conal-rlw": ("conal_rl.train", ("--arch", "conal", "--loss-weighting", "rlw"),
                  "CoNAL + RLW loss weighting"),
    "conal-pcgrad": ("conal_rl.train", ("--arch", "conal", "--grad-surgery", "pcgrad"),
                     "CoNAL + PCGrad"),
    "mtsac-pcgrad": ("conal_rl.train", ("--arch", "mtsac", "--grad-surgery", "pcgrad"),
                     "MT-SAC + PCGrad"),
    "stl": ("agents.stl", (), "STL: one SB3 SAC per task"),
}
DEFAULT_ROWS = ("mtsac", "mhsac", "conal", "conal-nocn", "stl")


def register_rows(rows: dict[str, tuple[str, tuple[str, ...], str]]) -> None:
    """Add rows (same form as ROWS) for another benchmark built on this one, e.g. the
    candidates of benchmarks.laptop_sweep."""
    clash = set(rows) & set(ROWS)
    if any(ROWS[name] != rows[name] for name in clash):
        raise ValueError(f"rows {sorted(clash)} exist already with other flags")
    ROWS.update(rows)
BASELINE = "mtsac"  # the row every other is compared with
MIN_IQM_RUNS = 3  # the IQM and its bootstrap interval are shown from this many runs on
NOISE_RULE = ("a row's mean differs from MT-SAC's within noise when |Δmean| < "
              "2·sqrt(SE_row² + SE_mtsac²), standard errors over seeds; equal means count "
              "as within")
LOG_TAIL = 15  # lines of a failed run's train.log shown in the report


class UserError(Exception):
    """A mistake on the command line: one line on stderr, exit status 2."""


# ---- the runs ---------------------------------------------------------------------------------
@dataclass
class RunSpec:
    """One (row, seed): where it lives and the command that trains it."""

    row: str
    seed: int
    run_dir: Path
    flags: list[str]  # every flag but --run-dir / --resume
    given: dict  # the config fields those flags set
    target_steps: int
    target_minutes: float  # 0: no wall-clock budget
    resumable: dict  # the resolved values of the flags a resume may change

    @property
    def name(self) -> str:
        return f"{self.row}-s{self.seed}"

    @property
    def module(self) -> str:
        return ROWS[self.row][0]

    @property
    def is_stl(self) -> bool:
        return self.module == "agents.stl"

    def command(self, mode: str, saved: dict | None = None) -> list[str]:
        """``mode``: fresh (a new run), continue (the same command again: CoNAL continues
        its search) or resume (``--resume``, with this benchmark's budget and evaluation
        settings where they differ from the run's ``saved`` config: a run made by an
        earlier, shorter call is extended to them)."""
        base = [sys.executable, "-m", self.module]
        if mode == "resume":
            extra = []
            for key, value in self.resumable.items():
                if key not in self.given and (saved or {}).get(key) != value:
                    if key == "minutes" and not (saved or {}).get(key) and not value:
                        continue  # no budget either way (None or 0)
                    extra += ["--" + key.replace("_", "-"), _number(value)]
            return [*base, "--resume", str(self.run_dir), *self.flags, *extra]
        return [*base, *self.flags, "--run-dir", str(self.run_dir)]


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def parse_given(module: str, flags: list[str]) -> dict:
    """The config fields ``flags`` set, parsed by the training CLI itself; UserError with
    argparse's reason where it refuses them (e.g. a flag training does not have yet)."""
    from conal_rl.config import given_arguments

    if module == "agents.stl":
        from agents.stl import STLFlags, build_parser
        cls = STLFlags
    else:
        from conal_rl.train import build_parser
        cls = TrainConfig
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args(flags)
    except SystemExit:
        reason = err.getvalue().strip().splitlines()[-1:] or ["refused"]
        raise UserError(f"{module} refuses {shlex.join(flags)}: {reason[0]}") from None
    return given_arguments(args, cls)


def num_tasks(benchmark: str) -> int:
    return {"MT10": 10, "MT50": 50}.get(benchmark, 1)


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def make_specs(args: argparse.Namespace) -> list[RunSpec]:
    root = args.runs_dir / f"{safe_name(args.benchmark)}-{args.budget}"
    common = ["--benchmark", args.benchmark, "--preset", args.budget, "--device", args.device,
              "--torch-threads", "1"]
    for flag in PASS_THROUGH[:-1]:  # --search-steps: CoNAL rows only
        value = getattr(args, flag)
        if value is not None:
            common += ["--" + flag.replace("_", "-"), _number(value)]
    specs = []
    for row in args.archs:
        module, row_flags, _ = ROWS[row]
        extra = list(row_flags)
        if args.search_steps is not None and "conal" in row_flags:
            extra += ["--search-steps", str(args.search_steps)]
        for seed in range(args.seeds):
            flags = [*common, "--seed", str(seed), *extra]
            given = parse_given(module, flags)
            resolved = TrainConfig(**given).resolved(num_tasks(args.benchmark))
            minutes = float(getattr(resolved, "minutes", None) or 0)
            resumable = {"total_steps": resolved.total_steps,
                         "eval_every": resolved.eval_every,
                         "eval_episodes": resolved.eval_episodes}
            if hasattr(resolved, "minutes"):
                resumable["minutes"] = minutes
            specs.append(RunSpec(row, seed, root / f"{row}-s{seed}", flags, given,
                                 resolved.total_steps, minutes, resumable))
    return specs


# ---- a run's state ------------------------------------------------------------------------------
def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def saved_config(spec: RunSpec) -> dict | None:
    """The run's own configuration (config.json; stl.json's for STL; the search's while a
    CoNAL run is still searching)."""
    d = spec.run_dir
    if spec.is_stl:
        saved = _read_json(d / "stl.json")
        return saved and saved.get("config")
    return _read_json(d / "config.json") or _read_json(d / "search" / "config.json")


def config_clash(spec: RunSpec, saved: dict) -> list[str]:
    """Fields the run was made with that differ from what this benchmark asks for (the
    ones a resume may change are not compared)."""
    if spec.is_stl:
        from agents.stl import RESUMABLE
    else:
        from conal_rl.train import RESUMABLE_OVERRIDES as RESUMABLE
    wanted = json.loads(json.dumps(spec.given))
    return [f"{k} {saved.get(k)!r} (asked: {v!r})" for k, v in wanted.items()
            if k not in RESUMABLE | {"run_dir"} and saved.get(k) != v]


def has_checkpoint(run_dir: Path) -> bool:
    return any(p.exists() for p in (run_dir / "checkpoints" / "latest.pt",
                                    run_dir / "search" / "checkpoints" / "latest.pt",
                                    run_dir / "checkpoints" / "progress.json"))


def is_finished(spec: RunSpec) -> bool:
    """timing.json is written when training ends normally: finished when it reached the
    requested steps, or the --minutes budget stopped it and that budget is the one asked."""
    timing = _read_json(spec.run_dir / "timing.json")
    if timing is None:
        return False
    if timing.get("env_steps", 0) >= spec.target_steps:
        return True
    saved = saved_config(spec) or {}
    return (timing.get("stopped_by") == "minutes" and spec.target_minutes > 0
            and float(saved.get("minutes") or 0) == spec.target_minutes)


def plan(spec: RunSpec) -> tuple[str, str]:
    """What to do with a run: ("skip" | "resume" | "continue" | "fresh" | "error", why)."""
    d = spec.run_dir
    if not has_checkpoint(d):
        return "fresh", "no checkpoint" if d.exists() else "new"
    saved = saved_config(spec)
    if saved is not None:
        clash = config_clash(spec, saved)
        if clash:
            return "error", (f"{d} holds a run of another configuration ({'; '.join(clash)}); "
                             "remove it or use another --runs-dir")
    if is_finished(spec):
        return "skip", "finished"
    own_config = d / ("stl.json" if spec.is_stl else "config.json")
    if own_config.exists():
        return "resume", "unfinished, from its checkpoint"
    return "continue", "CoNAL search unfinished, from its checkpoint"


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


_PARAMS_CACHE: dict[tuple[str, float], dict[str, int]] = {}


def count_parameters(spec: RunSpec) -> dict[str, int]:
    """Actor and critic parameters of the trained networks (both Q-nets of the critic, not
    the targets), counted from the final checkpoint; STL: its stl.json (all tasks' nets)."""
    if spec.is_stl:
        return dict(_read_json(spec.run_dir / "stl.json")["parameters"])
    from conal_rl import checkpoint

    path = spec.run_dir / "checkpoints" / "latest.pt"
    key = (str(path), path.stat().st_mtime)
    if key not in _PARAMS_CACHE:
        agent = checkpoint.load(path)["agent"]
        _PARAMS_CACHE[key] = {role: int(sum(v.numel() for k, v in agent.items()
                                            if k.startswith(role + ".")))
                              for role in ("actor", "critic")}
    return _PARAMS_CACHE[key]


def read_result(spec: RunSpec, metric: str) -> RunResult:
    d = spec.run_dir
    latest = json.loads((d / "eval_latest.json").read_text())
    timing = json.loads((d / "timing.json").read_text())
    search = _read_json(d / "search" / "timing.json") or {}
    tasks = [t["task"] for t in latest["tasks"]]
    values = {t["task"]: _float(t[metric]) for t in latest["tasks"]}
    extra = {}
    arch = _read_json(d / "architecture.json")
    if arch and "parameters" in arch.get("actor", {}):  # CoNAL: the search's own counts
        extra["architecture"] = {role: {"branch_point_by_task": arch[role].get(
            "branch_point_by_task"), "parameters_one_net": arch[role]["parameters"]}
            for role in ("actor", "critic")}
    return RunResult(spec, tasks, values, int(timing["env_steps"]),
                     int(search.get("env_steps", 0)), float(timing["train_wall"]),
                     float(search.get("train_wall", 0.0)), timing.get("stopped_by", "steps"),
                     count_parameters(spec), extra | {"eval_env_steps": latest["env_steps"]})


def _float(x) -> float:
    return float("nan") if x is None else float(x)


# ---- the report ---------------------------------------------------------------------------------
def machine(device: str) -> dict:
    resolved = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    info = {"platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
            "torch": torch.__version__, "device": resolved}
    if resolved == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _fmt_wall(seconds: float) -> str:
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
    from conal_rl.aggregate import summarize

    entry = {"row": row, "label": ROWS[row][2],
             "command": " ".join(["python -m", ROWS[row][0], *ROWS[row][1]]),
             "seeds_requested": seeds, "seeds_finished": len(results),
             "runs": [_run_json(r) for r in results]}
    if not results:
        return entry
    scores = np.array([[r.values[t] for t in tasks] for r in results])
    s = summarize(scores, tasks)
    wall = np.array([r.wall for r in results])
    entry.update({
        "mean": s.mean, "se": _nan_none(s.se),
        "iqm": s.iqm if len(results) >= MIN_IQM_RUNS else None,
        "iqm_ci": [_nan_none(x) for x in s.iqm_ci] if len(results) >= MIN_IQM_RUNS else None,
        "task_mean": dict(zip(tasks, map(float, s.task_mean))),
        "task_se": dict(zip(tasks, map(_nan_none, s.task_se))),
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


def _nan_none(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def _run_json(r: RunResult) -> dict:
    return {"seed": r.spec.seed, "run_dir": str(r.spec.run_dir), "mean": r.mean,
            "tasks": {t: _nan_none(v) for t, v in r.values.items()},
            "env_steps": r.env_steps, "search_env_steps": r.search_env_steps,
            "train_wall_s": r.train_wall, "search_wall_s": r.search_wall,
            "env_steps_per_s": r.steps_per_s, "stopped_by": r.stopped_by,
            "parameters": r.parameters, **r.extra}


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
        out[r["row"]] = {"delta": delta, "threshold": threshold,
                         "within_noise": abs(delta) < threshold or delta == 0}
    return out


def _verdict_text(v: dict | None) -> str:
    if v is None:
        return "-"
    if v["within_noise"] is None:
        return f"{v['delta']:+.2f} (needs ≥ 2 seeds each)"
    word = "within noise" if v["within_noise"] else "beyond noise"
    return f"{v['delta']:+.2f} ({word}, 2·SE {v['threshold']:.2f})"


def markdown(payload: dict) -> str:
    m, rows, tasks = payload["machine"], payload["rows"], payload["tasks"]
    metric, digits = payload["metric"], 2 if payload["metric"] == "success" else 1
    lines = [f"# {payload['benchmark']}: {metric} rate comparison, budget `{payload['budget']}`"
             if metric == "success" else
             f"# {payload['benchmark']}: return comparison, budget `{payload['budget']}`", "",
             f"Command: `{payload['command']}`  ",
             f"Machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']}, device "
             f"{m['device']}{' (' + m['gpu'] + ')' if m.get('gpu') else ''}  ",
             f"Date: {payload['date']}  ",
             f"Runs: `{payload['runs_dir']}`; budget `{payload['budget']}` "
             f"({payload['budget_note']}); every run one subprocess with one torch thread"
             f"{', ' + str(payload['jobs']) + ' at a time' if payload['jobs'] > 1 else ''}."
             + (" Overrides of the budget: " + ", ".join(
                 f"--{k.replace('_', '-')} {_number(v)}" for k, v in payload["overrides"].items())
                + "." if payload["overrides"] else ""),
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
    header = ["row", metric, "IQM [95% CI]", "seeds", "env steps", "actor params",
              "critic params", "wall", "env-steps/s", f"vs {BASELINE}"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
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
                     _fmt_count(r["parameters"]["critic"]), _fmt_wall(r["train_wall_s"]),
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
    else:
        lines.append(f"Differences within noise ({NOISE_RULE}): no finished {BASELINE} runs "
                     "to compare with.")
    lines += ["", f"Per task: final {metric}, mean over finished seeds.", "",
              "| row | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
    for r in rows:
        cells = [f"{r['task_mean'][t]:.{digits}f}" if "task_mean" in r else "-" for t in tasks]
        lines.append(f"| {r['row']} | " + " | ".join(cells) + " |")
    if payload.get("plot"):
        lines += ["", f"![learning curves]({payload['plot']})", "",
                  f"Learning curves: mean {metric} over tasks at every evaluation, mean over "
                  "seeds ± one standard error (shaded), against the env steps of the training "
                  "phase (CoNAL's search steps are not on this axis; STL: per-task steps × "
                  "tasks)."]
    if payload["unfinished"]:
        lines += ["", "Unfinished runs (not in the table): "
                  + ", ".join(f"`{u}`" for u in payload["unfinished"]) + "."]
    if payload["failed"]:
        lines += ["", "## Failed runs", ""]
        for f in payload["failed"]:
            lines += [f"`{f['run']}` ({f['reason']}), last lines of `{f['log']}`:", "", "```",
                      *f["log_tail"], "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _nn(x) -> float:
    return float("nan") if x is None else x


def budget_note(budget: str, benchmark: str) -> str:
    p, T = PRESETS[budget], num_tasks(benchmark)
    note = (f"{p['steps_per_task']:,} steps per task, nets {'x'.join(map(str, p['hidden']))}, "
            f"batch {p['batch_per_task']} per task, evaluation every "
            f"{p['eval_every_per_task']:,} steps per task, {T} task{'s' * (T > 1)}")
    if p.get("minutes"):
        note += f", at most {p['minutes']} min of training"
    return note


def plot_rows(rows: list[dict], results: dict[str, list[RunResult]], metric: str,
              benchmark: str, minutes: float, path: Path) -> bool:
    """Mean over tasks vs env steps, one line per row (± s.e. over seeds); with a
    wall-clock budget (``minutes`` > 0) also against training minutes."""
    from matplotlib.figure import Figure

    from conal_rl.plot import band, draw

    panels = {"env_steps": []} | ({"train_minutes": []} if minutes else {})
    for r in rows:
        for x, bands in panels.items():
            runs = [read_curve(res.spec.run_dir, metric, x) for res in results.get(r["row"], [])]
            runs = [c for c in runs if len(c[0])]
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


def build_report(args: argparse.Namespace, specs: list[RunSpec], failed: list[dict]) -> dict:
    metric = "return" if args.benchmark.startswith("gym:") else "success"
    results: dict[str, list[RunResult]] = {}
    unfinished = []
    for spec in specs:
        if is_finished(spec):
            try:
                results.setdefault(spec.row, []).append(read_result(spec, metric))
                continue
            except (OSError, KeyError, ValueError, TypeError) as e:
                unfinished.append(f"{spec.name} (unreadable: {type(e).__name__})")
                continue
        if spec.run_dir.exists() and not any(f["run"] == spec.name for f in failed):
            unfinished.append(spec.name)
    first = next((rs[0] for rs in results.values() if rs), None)
    tasks = first.tasks if first else []
    rows = [summarize_row(row, results.get(row, []), tasks, args.seeds, metric)
            for row in args.archs]
    stem = report_stem(args)
    payload = {
        "command": args.history[-1], "commands": args.history, "machine": args.machine,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "benchmark": args.benchmark,
        "budget": args.budget, "budget_note": budget_note(args.budget, args.benchmark),
        "overrides": overrides(args),
        "runs_dir": str(specs[0].run_dir.parent) if specs else str(args.runs_dir),
        "jobs": args.jobs, "metric": metric, "tasks": tasks,
        "total_steps": sorted({s.target_steps for s in specs}),
        "minutes": sorted({s.target_minutes for s in specs}),
        "eval_episodes": _eval_episodes(results, args),
        "noise_rule": NOISE_RULE, "rows": rows, "failed": failed, "unfinished": unfinished,
    }
    payload["vs_baseline"] = noise_verdicts(rows)
    png = stem.with_suffix(".png")
    budget_minutes = max(s.target_minutes for s in specs) if specs else 0
    payload["plot"] = (png.name if plot_rows(rows, results, metric, args.benchmark,
                                             budget_minutes, png) else None)
    stem.parent.mkdir(parents=True, exist_ok=True)
    _write_text(stem.with_suffix(".json"), json.dumps(payload, indent=2) + "\n")
    _write_text(stem.with_suffix(".md"), markdown(payload))
    return payload


def report_stem(args: argparse.Namespace) -> Path:
    return args.out_dir / f"{safe_name(args.benchmark)}-{args.budget}"


PASS_THROUGH = ("total_steps", "eval_episodes", "eval_every", "warmup_steps", "minutes",
                "search_steps")


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
        return args.eval_episodes or PRESETS[args.budget]["eval_episodes"]
    return seen.pop() if len(seen) == 1 else "/".join(map(str, sorted(seen)))


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---- running ------------------------------------------------------------------------------------
class _Signals:
    """SIGTERM/SIGINT set a flag the scheduling loop reads (nothing is raised mid-way)."""

    def __init__(self):
        self.signum = 0
        self.old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        self.signum = signum

    def restore(self) -> None:
        for s, handler in self.old.items():
            signal.signal(s, handler)


def log_tail(path: Path, lines: int = LOG_TAIL) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ["(no log)"]
    # tqdm redraws with carriage returns: keep the last state of every line.
    out = [seg.split("\r")[-1].rstrip() for seg in text.splitlines()]
    return [line for line in out if line.strip()][-lines:]


@dataclass
class _Running:
    spec: RunSpec
    proc: subprocess.Popen
    log: object
    start: float
    mode: str


def start(spec: RunSpec, mode: str) -> _Running:
    d = spec.run_dir
    if mode == "fresh" and d.exists():
        shutil.rmtree(d)  # holds no checkpoint: nothing to continue from
    if mode == "resume":
        # A stale timing.json (of a shorter earlier run) must not mark a continuation that
        # gets killed as finished; training keeps its timers in the checkpoint.
        (d / "timing.json").unlink(missing_ok=True)
    d.mkdir(parents=True, exist_ok=True)
    cmd = spec.command(mode, saved_config(spec))
    log = open(d / "train.log", "a")
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {PROG} ({mode}): "
              f"{shlex.join(cmd)}\n")
    log.flush()
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)  # Ctrl-C reaches them through us
    return _Running(spec, proc, log, time.perf_counter(), mode)


def run_all(args: argparse.Namespace, specs: list[RunSpec]) -> list[dict]:
    """Train what is unfinished, ``args.jobs`` at a time; the report is rewritten after
    every run that ends. Returns the failed runs."""
    failed: list[dict] = []
    todo: list[tuple[RunSpec, str]] = []
    for spec in specs:
        action, why = plan(spec)
        if action == "skip":
            tqdm.write(f"{spec.name}: skipped ({why}: {spec.run_dir})")
        elif action == "error":
            tqdm.write(f"{spec.name}: not run: {why}")
            failed.append({"run": spec.name, "run_dir": str(spec.run_dir), "reason": why,
                           "log": str(spec.run_dir / "train.log"), "log_tail": []})
        else:
            todo.append((spec, action))
    build_report(args, specs, failed)
    if not todo:
        return failed
    running: list[_Running] = []
    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), unit="run",
               desc="success runs", dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30)
    shown = ""
    signals = _Signals()
    try:
        while (todo or running) and not signals.signum:
            while todo and len(running) < args.jobs and not signals.signum:
                spec, mode = todo.pop(0)
                tqdm.write(f"{spec.name}: {mode} -> {spec.run_dir}/train.log")
                running.append(start(spec, mode))
            now = "running: " + ", ".join(r.spec.name for r in running)
            if now != shown:
                bar.set_postfix_str(shown := now)
            time.sleep(0.2)
            for r in [r for r in running if r.proc.poll() is not None]:
                running.remove(r)
                r.log.close()
                _report_end(r, failed)
                bar.update(1)
                build_report(args, specs, failed)
        if signals.signum:
            tqdm.write(f"signal {signals.signum}: stopping {len(running)} run(s); they save "
                       "a checkpoint and continue on the next call")
            _stop(running)
            running = []
            build_report(args, specs, failed)
            raise SystemExit(128 + signals.signum)
    finally:
        if running:  # an error of our own: leave no training behind
            _stop(running, grace_s=30)
        bar.close()
        signals.restore()
    return failed


def _report_end(r: _Running, failed: list[dict]) -> None:
    spec, rc, took = r.spec, r.proc.returncode, time.perf_counter() - r.start
    if rc == 0 and is_finished(spec):
        latest = _read_json(spec.run_dir / "eval_latest.json") or {}
        value = latest.get("mean_success")
        shown = f", mean success {value:.2f}" if isinstance(value, float) and not \
            math.isnan(value) else ""
        tqdm.write(f"{spec.name}: done in {_fmt_wall(took)}{shown}")
        return
    reason = f"exit status {rc}" if rc else "ended without finishing"
    tail = log_tail(spec.run_dir / "train.log")
    failed.append({"run": spec.name, "run_dir": str(spec.run_dir), "reason": reason,
                   "returncode": rc, "log": str(spec.run_dir / "train.log"), "log_tail": tail})
    tqdm.write(f"{spec.name}: FAILED ({reason}); last lines of {spec.run_dir}/train.log:\n  "
               + "\n  ".join(tail))


def _stop(running: list[_Running], grace_s: float = 120) -> None:
    """SIGTERM every child (training saves a checkpoint and exits), then wait."""
    for r in running:
        with contextlib.suppress(ProcessLookupError):
            r.proc.terminate()
    deadline = time.time() + grace_s
    for r in running:
        try:
            r.proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait()
        r.log.close()


# ---- command line -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="rows: " + "; ".join(f"{k}: {v[2]}" for k, v in ROWS.items()))
    parser.add_argument("--benchmark", default="MT10",
                        help="MT10, MT50, MT1:<task> or gym:<env-id> (default: %(default)s)")
    parser.add_argument("--archs", default=",".join(DEFAULT_ROWS),
                        help="comma-separated rows (default: %(default)s); all: "
                        + ",".join(ROWS))
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds 0..N-1 per row (default: %(default)s)")
    parser.add_argument("--budget", default="laptop",
                        help="the training preset of every run, one of conal_rl.config.PRESETS "
                        f"({', '.join(PRESETS)}; default: %(default)s, the CPU comparison: "
                        "60 training minutes per run; quick is a smoke run that learns little, "
                        "paper the GPU-box comparison)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at the same time (default: %(default)s)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="torch device of every run (default: %(default)s)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/success"),
                        help="where the runs go, in <benchmark>-<budget>/<row>-s<seed> "
                        "(default: %(default)s)")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"),
                        help="where <benchmark>-<budget>.md/.json/.png go (default: "
                        "%(default)s)")
    parser.add_argument("--total-steps", type=int, default=None,
                        help="env steps of every run, summed over tasks (default: the "
                        "budget's); small values make a smoke run")
    parser.add_argument("--eval-episodes", type=int, default=None,
                        help="evaluation episodes per task of every run (default: the "
                        "budget's)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="wall-clock training budget of every run (default: the "
                        "budget's; 0: none)")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="env steps between evaluations, for smoke runs (default: the "
                        "budget's)")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="random-action env steps before updates, for smoke runs "
                        "(default: the budget's)")
    parser.add_argument("--search-steps", type=int, default=None,
                        help="CoNAL rows: env steps of the search, for smoke runs (default: "
                        "the budget's)")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild the report from the runs there are; train nothing")
    return parser


def check_args(args: argparse.Namespace) -> None:
    from envs import UnknownBenchmark, check_benchmark_name

    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = [a for a in args.archs if a not in ROWS]
    if unknown or not args.archs:
        raise UserError(f"unknown row {', '.join(map(repr, unknown)) or '(none given)'} in "
                        f"--archs; valid: {', '.join(ROWS)}")
    if len(set(args.archs)) != len(args.archs):
        raise UserError("--archs names a row twice")
    if args.budget not in PRESETS:
        raise UserError(f"unknown --budget {args.budget!r}; valid: {', '.join(PRESETS)}")
    for name in ("seeds", "jobs", "total_steps", "eval_episodes", "search_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name in ("minutes", "eval_every", "warmup_steps"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise UserError(f"--{name.replace('_', '-')} must not be negative, got {value}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available on this machine")
    try:
        check_benchmark_name(args.benchmark)
    except UnknownBenchmark as e:
        raise UserError(str(e)) from None
    if args.minutes is not None and "minutes" not in TrainConfig.__dataclass_fields__:
        raise UserError("--minutes: training has no wall-clock budget in this version")


def main(argv: list[str] | None = None) -> dict:
    from conal_rl.evaluate import run_cli

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)

    def body() -> dict:
        check_args(args)
        specs = make_specs(args)
        # The report keeps every call that built it and the machine that trained.
        previous = _read_json(report_stem(args).with_suffix(".json")) or {}
        args.history = [*previous.get("commands", []),
                        " ".join([PROG, *map(shlex.quote, argv)])]
        args.machine = (previous["machine"] if args.report_only and "machine" in previous
                        else machine(args.device))
        failed = [] if args.report_only else run_all(args, specs)
        payload = build_report(args, specs, failed)
        stem = report_stem(args)
        print(f"wrote {stem}.md, {stem}.json" + (f", {stem}.png" if payload["plot"] else ""))
        if failed:
            print(f"{len(failed)} run(s) failed: {', '.join(f['run'] for f in failed)}",
                  file=sys.stderr)
            raise SystemExit(1)
        return payload

    return run_cli(PROG, body, (UserError,))


if __name__ == "__main__":
    main()
