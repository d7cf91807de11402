"""The runs of the success benchmark: the rows it compares, one ``RunSpec`` per (row, seed)
with the command that trains it, and what state a run's folder is in (finished, to resume,
to continue, to start afresh). See ``benchmarks/experiments/success.py`` for the command line."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import sys
import typing
from dataclasses import asdict, dataclass
from pathlib import Path

from conal_rl.common import UserError
from conal_rl.training.config import ADDED_FIELDS, OFF_FLAGS, TrainConfig, given_arguments
from conal_rl.training.rundir import RunDir

# The training presets a table's --budget names: TrainConfig's own choices.
BUDGETS: tuple[str, ...] = typing.get_args(typing.get_type_hints(TrainConfig)["preset"])

# Fixed trees a row trains (--arch tree), by absolute path: Ray runs trials in their own folders.
ARCHITECTURES = Path(__file__).resolve().parent / "architectures"
# row name -> (module that trains it, its flags, what the table calls it). Rows whose flags
# training does not know (yet) are refused before anything runs.
ROWS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "mtsac": ("conal_rl.train", ("--arch", "mtsac"), "MT-SAC (shared MLP, one-hot task id)"),
    "mhsac": ("conal_rl.train", ("--arch", "mhsac"), "MH-SAC (shared trunk, a head per task)"),
    # As Meta-World+'s reference and mtrl build MH-SAC: the trunk reads the task id too.
    "mhsac-id": ("conal_rl.train", ("--arch", "mhsac", "--task-id"),
                 "MH-SAC, the one-hot task id read by its trunk too (the field's MH-SAC)"),
    "conal": ("conal_rl.train", ("--arch", "conal"),
              "CoNAL (MT-SAC's trees where nothing pays, grown where a probe measures gain)"),
    # CoNAL's default before its trees started as MT-SAC's: a head per task, no id.
    "conal-heads": ("conal_rl.train", ("--arch", "conal", "--no-task-id", "--no-shared-head"),
                    "CoNAL from MH-SAC's tree (a head per task, no id)"),
    "conal-id": ("conal_rl.train", ("--arch", "conal", "--no-shared-head"),
                 "CoNAL, the id read, a head per task (the field's MH-SAC's tree)"),
    # The paper's method: its rule, its trees (a head per task, no id), no growth.
    "conal-paper": ("conal_rl.train", ("--arch", "conal", "--conflict-rule", "any-pair",
                                       "--branch-every", "0", "--no-task-id",
                                       "--no-shared-head"),
                    "CoNAL, the paper's rule (any-pair, alpha decides; no growth)"),
    "conal-nocn": ("conal_rl.train", ("--arch", "conal", "--no-conflict-noticing"),
                   "CoNAL w/o conflict-noticing"),
    "conal-consensus": ("conal_rl.train", ("--arch", "conal", "--conflict-rule", "consensus"),
                        "CoNAL, consensus conflict rule"),
    "conal-pro": ("conal_rl.train", ("--arch", "conal-pro"),
                  "CoNAL-Pro (grouped trees, MT-SAC's where nothing pays, grown where a probe "
                  "measures gain)"),
    "conal-pro-heads": ("conal_rl.train", ("--arch", "conal-pro", "--no-task-id",
                                           "--no-shared-head"),
                        "CoNAL-Pro, a head per task, no id"),
    "conal-pro-nocn": ("conal_rl.train", ("--arch", "conal-pro", "--no-conflict-noticing"),
                       "CoNAL-Pro w/o conflict-noticing"),
    "conal-noprivate": ("conal_rl.train", ("--arch", "conal", "--no-private"),
                        "CoNAL w/o private modules (LTB-style search space)"),
    "conal-rlw": ("conal_rl.train", ("--arch", "conal", "--loss-weighting", "rlw"),
                  "CoNAL + RLW loss weighting"),
    "conal-pcgrad": ("conal_rl.train", ("--arch", "conal", "--grad-surgery", "pcgrad"),
                     "CoNAL + PCGrad"),
    "mtsac-pcgrad": ("conal_rl.train", ("--arch", "mtsac", "--grad-surgery", "pcgrad"),
                     "MT-SAC + PCGrad"),
    "stl-batched": ("conal_rl.train", ("--arch", "independent"),
                    "STL, batched: every task its own networks, one batched update"),
    "stl": ("conal_rl.stl", (), "STL: one SB3 SAC per task"),
    # Capacity without a search: the critics of STL, the actor of MH-SAC (MT10's tasks).
    "private-critic": ("conal_rl.train", ("--arch", "tree", "--architecture",
                                          str(ARCHITECTURES / "MT10-private-critic.json")),
                       "MH-SAC's actor, a private critic per task (a fixed MT10 tree, no search)"),
    # The equal-parameter controls: MT-SAC's and MH-SAC's critic widened to the private
    # critics' parameters (--critic-params to set another count).
    "mtsac-wide": ("conal_rl.train", ("--arch", "mtsac-wide"),
                   "MT-SAC, its critic widened to the private critics' parameters"),
    "mhsac-wide": ("conal_rl.train", ("--arch", "mhsac-wide"),
                   "MH-SAC, its critic widened to the private critics' parameters"),
    # The equal-parameter controls of CoNAL's default, whose critics grow to about this size
    # on MT10 at laptop size (the mt10-1m-v2 table); runs a session can finish.
    "mtsac-wide-300k": ("conal_rl.train", ("--arch", "mtsac-wide", "--critic-params", "300000"),
                        "MT-SAC, its critic widened to 300k parameters (CoNAL's default's)"),
    "mhsac-wide-300k": ("conal_rl.train", ("--arch", "mhsac-wide", "--critic-params", "300000"),
                        "MH-SAC, its critic widened to 300k parameters (CoNAL's default's)"),
}
DEFAULT_ROWS = ("mtsac", "mhsac", "conal", "conal-nocn", "stl")


def register_rows(rows: dict[str, tuple[str, tuple[str, ...], str]]) -> None:
    """Add rows (same form as ROWS) for another benchmark built on this one, e.g. the
    candidates of benchmarks.laptop_sweep."""
    clash = set(rows) & set(ROWS)
    if any(ROWS[name] != rows[name] for name in clash):
        raise ValueError(f"rows {sorted(clash)} exist already with other flags")
    ROWS.update(rows)


# The trained nets' learner: conal_rl.train rows only (SB3's STL has its own, refuses them).
LEARNER_FLAGS = ("layer_norm", "updates_per_step")
PASS_THROUGH = ("total_steps", "eval_episodes", "eval_every", "warmup_steps", "minutes",
                *LEARNER_FLAGS, "search_steps", "atlas_every")
ROW_FLAGS = ("search_steps", "atlas_every", *LEARNER_FLAGS)  # to the rows they apply to only


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
    module: str = ""  # the module that trains it (ROWS[row][0]; kept here for Ray workers)

    def __post_init__(self):
        self.module = self.module or ROWS[self.row][0]

    @property
    def name(self) -> str:
        return f"{self.row}-s{self.seed}"

    @property
    def is_stl(self) -> bool:
        return self.module == "conal_rl.stl"

    @property
    def run(self) -> RunDir:
        """Its run directory's files."""
        return RunDir(self.run_dir)

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
                    extra += ["--" + key.replace("_", "-"), flag_value(value)]
            return [*base, "--resume", str(self.run_dir), *self.flags, *extra]
        return [*base, *self.flags, "--run-dir", str(self.run_dir)]


def flag_value(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def flag_args(field: str, value) -> list[str]:
    """The training flags that set config ``field`` to ``value`` (a switch: itself or its
    named opposite, e.g. ``--no-layer-norm``)."""
    flag = "--" + field.replace("_", "-")
    if isinstance(value, bool):
        return [flag] if value else [OFF_FLAGS[field]]
    return [flag, flag_value(value)]


def parse_given(module: str, flags: list[str]) -> dict:
    """The config fields ``flags`` set, parsed by the training CLI itself; UserError with
    argparse's reason where it refuses them (e.g. a flag training does not have yet)."""
    if module == "conal_rl.stl":
        from conal_rl.stl import build_parser
    else:
        from conal_rl.train import build_parser
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args(flags)
    except SystemExit:
        reason = err.getvalue().strip().splitlines()[-1:] or ["refused"]
        raise UserError(f"{module} refuses {shlex.join(flags)}: {reason[0]}") from None
    return given_arguments(args)


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def make_specs(args: argparse.Namespace) -> list[RunSpec]:
    root = args.runs_dir / f"{safe_name(args.benchmark)}-{args.budget}"
    # --save-replay: a run stopped and resumed (a session's end, Ctrl-C) goes on with its
    # replay buffer, as if never stopped, instead of refilling an empty one.
    common = ["--benchmark", args.benchmark, "--preset", args.budget, "--device", args.device,
              "--torch-threads", "1", "--save-replay"]
    for flag in (f for f in PASS_THROUGH if f not in ROW_FLAGS):
        value = getattr(args, flag)
        if value is not None:
            common += flag_args(flag, value)
    specs = []
    # Seed-major order: a table stopped part-way (a session's end) has every row's first seeds
    # rather than all seeds of the first rows and nothing of the last.
    for seed in range(args.seeds):
        for row in args.archs:
            module, row_flags, _ = ROWS[row]
            extra = list(row_flags)
            if args.search_steps is not None and {"conal", "conal-pro"} & set(row_flags):
                extra += ["--search-steps", str(args.search_steps)]
            if args.atlas_every is not None and module == "conal_rl.train":
                extra += ["--atlas-every", str(args.atlas_every)]  # nets with shared layers
            for flag in LEARNER_FLAGS:
                if getattr(args, flag) is not None and module == "conal_rl.train":
                    extra += flag_args(flag, getattr(args, flag))
            if module == "conal_rl.train":
                # A run given two CPUs steps its envs in a worker process beside the update;
                # with one, in its own process (two processes per CPU would only contend).
                both = getattr(args, "cpus_per_trial", 1) >= 2
                extra += ["--vector-strategy", "worker" if both else "sync"]
            flags = [*common, "--seed", str(seed), *extra]
            given = parse_given(module, flags)
            resolved = TrainConfig(**given)
            minutes = float(getattr(resolved, "minutes", None) or 0)
            resumable = {"total_steps": resolved.total_steps,
                         "eval_every": resolved.eval_every,
                         "eval_episodes": resolved.eval_episodes}
            if hasattr(resolved, "minutes"):
                resumable["minutes"] = minutes
            specs.append(RunSpec(row, seed, root / f"{row}-s{seed}", flags, given,
                                 resolved.total_steps, minutes, resumable, module))
    return specs


# ---- a run's state ------------------------------------------------------------------------------
def saved_config(spec: RunSpec) -> dict | None:
    """The run's own configuration (config.json; stl.json's for STL; the search's while a
    CoNAL run is still searching)."""
    run = spec.run
    if spec.is_stl:
        saved = run.read_stl_config()
        return saved and saved.get("config")
    return run.read_config() or run.search.read_config()


def config_clash(spec: RunSpec, saved: dict, whole: bool = True) -> list[str]:
    """Fields the run was made with that differ from what this benchmark asks for, but for
    those a resume may change. ``whole``: every field of the resolved config (a changed
    default is another run, not this one); else the fields the row's flags set (a search's
    own config, an STL run's)."""
    asked = TrainConfig(**spec.given)
    if whole and not spec.is_stl:
        wanted, saved = _plain(asdict(asked)), _plain(ADDED_FIELDS | saved)
    else:
        wanted, saved = _plain(spec.given), _plain(saved)
    return [f"{k} {saved.get(k)!r} (asked: {v!r})" for k, v in wanted.items()
            if k != "run_dir" and saved.get(k) != v
            and not resume_may_change(asked, k, saved.get(k))]


def _plain(values: dict) -> dict:
    """As a config.json holds them (tuples as lists), a row's fixed trees by their file's
    place in the repository (checkouts lie in other folders on other machines)."""
    plain = json.loads(json.dumps(values))
    if plain.get("architecture"):
        plain["architecture"] = repository_path(plain["architecture"])
    return plain


def repository_path(path: str) -> str:
    """A file of this repository's architectures by its path from the repository's root
    (from any checkout's); any other path as it is."""
    _, mark, tail = str(path).rpartition(
        str(ARCHITECTURES.relative_to(ARCHITECTURES.parents[2])) + "/")
    return mark + tail if mark else str(path)


def folder_clash(spec: RunSpec) -> list[str]:
    """``config_clash`` of the run in the spec's folder: the whole config once training has
    written its own, the row's flags against a search's (none: no config yet)."""
    saved = saved_config(spec)
    return config_clash(spec, saved, whole=spec.run.config.exists()) if saved else []


def resume_may_change(config: TrainConfig, field: str, value: object) -> bool:
    """Whether a resume of a run made with ``config`` takes ``value`` for ``field``: what
    ``TrainConfig.resumed_with`` accepts (training's own --resume check)."""
    try:
        config.resumed_with({field: value})
    except (ValueError, TypeError):
        return False
    return True


def is_finished(spec: RunSpec) -> bool:
    """timing.json is written when training ends normally: finished when it reached the
    requested steps, or the --minutes budget stopped it and that budget is the one asked."""
    run = spec.run
    timing = run.timing() if run.state() == "finished" else None
    if timing is None:
        return False
    if timing.get("env_steps", 0) >= spec.target_steps:
        return True
    saved = saved_config(spec) or {}
    return (timing.get("stopped_by") == "minutes" and spec.target_minutes > 0
            and float(saved.get("minutes") or 0) == spec.target_minutes)


def plan(spec: RunSpec) -> tuple[str, str]:
    """What to do with a run: ("skip" | "resume" | "continue" | "fresh" | "error", why)."""
    run = spec.run
    if not run.checkpoints_written():
        return "fresh", "no checkpoint" if run.path.exists() else "new"
    clash = folder_clash(spec)
    if clash:
        return "error", (f"{run} holds a run of another configuration "
                         f"({'; '.join(clash)}); remove it or use another --runs-dir")
    if is_finished(spec):
        return "skip", "finished"
    if (run.stl_config if spec.is_stl else run.config).exists():
        return "resume", "unfinished, from its checkpoint"
    return "continue", "CoNAL search unfinished, from its checkpoint"
