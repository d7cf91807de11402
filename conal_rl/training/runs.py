"""Runs: a command's config and run directory checked before envs are built, the
evaluations a run writes, and reading a run back (its config, trees and agent) for the
evaluation, rendering and plotting commands. The networks of a run are always trees (its
architecture file): for ``--arch conal`` the derived, pruned trees. Where its files are:
:class:`~conal_rl.training.rundir.RunDir`.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from agents import MultiTaskSAC
from conal_rl.common import UserError, one_line, resolve_device
from conal_rl.method import TreeSpec
from conal_rl.training import checkpoint
from conal_rl.training.checkpoint import CheckpointError
from conal_rl.training.config import TrainConfig
from conal_rl.training.nets import check_fits, load_specs, tree_factory, tree_specs
from conal_rl.training.rundir import RunDir
from envs import (
    Benchmark,
    EvalResult,
    UnknownBenchmark,
    check_benchmark_name,
    make_eval_benchmark,
    task_names,
)


def config_for_run(given: dict, resume: str | None,
                   saved: Callable[[RunDir], Path] = lambda run: run.config,
                   load: Callable[[Path], TrainConfig] = TrainConfig.load,
                   name: str = "") -> tuple[TrainConfig, Path]:
    """A command's config and run directory: a new run from the flags ``given``, or with
    ``resume`` the run there, its ``saved`` config (the file ``saved(run)``, read by
    ``load``) with the flags a resume may change. ``name``: the run directory's default
    name part (default: the arch). UserError for anything wrong, before any env is built."""
    try:
        check_benchmark_name(given.get("benchmark", TrainConfig.benchmark))
        if resume:
            run_dir = Path(resume)
            saved_file = saved(RunDir(run_dir))
            if not saved_file.is_file():
                raise UserError(f"--resume {run_dir}: no {saved_file.name} there (not a run "
                                "directory of this command)")
            try:
                previous = load(saved_file)
            except (ValueError, TypeError, KeyError, AttributeError, OSError) as e:
                raise UserError(f"--resume {run_dir}: its {saved_file.name} is not a readable "
                                f"config ({type(e).__name__}: {one_line(e)})") from None
            config = previous.resumed_with(given)
        else:
            config = TrainConfig(**given)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = Path(config.run_dir or f"runs/{config.benchmark.replace(':', '-')}-"
                           f"{name or config.arch}-s{config.seed}-{stamp}")
            if saved(RunDir(run_dir)).exists():
                raise UserError(f"{run_dir} already holds a run; use --resume {run_dir} or "
                                "another --run-dir")
    except (UnknownBenchmark, ValueError, TypeError) as e:
        raise UserError(str(e)) from None
    resolve_device(config.device)
    check_run_files(config, run_dir)
    return config, run_dir


def check_run_files(config: TrainConfig, run_dir: Path) -> None:
    """What a run will read and write, checked before any env is built (seconds, not the
    minutes MT50's envs take): the architecture (``--architecture`` for ``--arch tree``, or
    the run's own ``architecture.json``) fits the benchmark's tasks, a checkpoint there is
    a readable, safe one of this benchmark and architecture (its tensors mapped, not read),
    the replay buffer fits in memory, and the run directory can be written. UserError,
    one line, otherwise."""
    if not isinstance(config.benchmark, str):
        raise UserError(f"benchmark must be a name, got {config.benchmark!r}")
    try:
        tasks = task_names(config.benchmark)
    except UnknownBenchmark as e:
        raise UserError(str(e)) from None
    run = RunDir(run_dir)
    if run.architecture.exists():  # a run's own trees: what a resume trains
        check_fits(load_specs(run.architecture), tasks, run.architecture)
    elif config.arch == "tree":
        tree_specs(config.arch, config.hidden, tasks, config.architecture)
    searches = [(d, config.arch) for d in run.search_dirs()]  # CoNAL's, CoNAL-Pro's stages
    for d, arch in [(run, config.arch), *searches]:
        if d.checkpoint.exists():
            state = checkpoint.load(d.checkpoint, mmap=True)
            checkpoint.check_trained_on(state, config.benchmark, arch, d.path)
    _check_replay_memory(config)
    _check_writable(run_dir)


METAWORLD_DIMS = (39, 4)  # observation and action sizes of every Meta-World v3 task


def _check_replay_memory(config: TrainConfig) -> None:
    """The replay buffer is allocated whole when a run starts (zeros: pages are only taken
    as it fills, so one too large would be killed hours later): refuse one larger than the
    device's memory (Meta-World benchmarks, whose sizes are known without an env)."""
    if config.benchmark.startswith("gym:"):
        return
    obs, act = METAWORLD_DIMS
    need = config.replay_size * (2 * obs + act + 2) * 4  # float32 obs, next_obs, act, r, d
    device = resolve_device(config.device)
    if device.type == "cuda":
        have = torch.cuda.get_device_properties(device).total_memory
    else:
        try:
            have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return
    if need > have:
        raise UserError(f"--replay-size {config.replay_size:,} needs {need / 2**30:,.1f} GiB "
                        f"for the replay buffer, more than the {have / 2**30:,.1f} GiB of "
                        f"memory of this machine's {device.type}")


def _check_writable(run_dir: Path) -> None:
    """Make the run directory (the run is about to) and write a file there: a file in the
    way, a read-only disk or folder (also for root, whom permissions do not stop) is one
    line now, not a traceback after the envs are built."""
    existing = run_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"run directory {run_dir}: {existing} is a file, not a folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as e:
        raise UserError(f"run directory {run_dir} cannot be written "
                        f"({e.strerror or type(e).__name__})") from None


EVALUATION_COLUMNS = ["env_steps", "train_minutes", "task", "success", "return", "episodes"]


class Policy:
    """Numpy in, numpy out: observations ``[T, obs]`` (sub-env i = task i) to env actions."""

    def __init__(self, agent: MultiTaskSAC, action_space: gym.spaces.Box,
                 device: torch.device | str, deterministic: bool = True):
        self.agent, self.device, self.deterministic = agent, torch.device(device), deterministic
        self.scale = (action_space.high - action_space.low) / 2
        self.bias = (action_space.high + action_space.low) / 2

    def normalized(self, obs: np.ndarray, deterministic: bool | None = None) -> np.ndarray:
        """Actions in [-1, 1] (what the replay stores)."""
        x = torch.as_tensor(obs, dtype=torch.float32, device=self.device)[:, None, :]
        mode = self.deterministic if deterministic is None else deterministic
        return self.agent.act(x, mode)[:, 0].cpu().numpy()

    def to_env(self, action: np.ndarray) -> np.ndarray:
        return self.bias + self.scale * action

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.to_env(self.normalized(obs))


@dataclass
class LoadedRun:
    run_dir: Path
    config: TrainConfig
    specs: dict[str, TreeSpec]
    agent: MultiTaskSAC
    env_steps: int


def load_config(run_dir: Path) -> TrainConfig:
    """A run's config; CheckpointError (one line) for a folder that is not a run."""
    path = RunDir(run_dir).config
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a conal-rl run (no {path.name})")
    try:
        return TrainConfig.load(path)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path} is not a conal-rl config ({e})") from None


def check_run(run_dir: Path) -> TrainConfig:
    """A run's files, checked without building envs or networks (seconds): its config, its
    trees fit its benchmark's tasks, its checkpoint is a readable, safe one of that
    benchmark and architecture (tensors mapped, not read). CheckpointError or UserError,
    one line, otherwise; the config if all is well."""
    config, run = load_config(run_dir), RunDir(run_dir)
    specs = _run_specs(run)
    try:
        tasks = task_names(config.benchmark)
    except (UnknownBenchmark, AttributeError) as e:
        raise CheckpointError(f"{run.config}: {e}") from None
    trained_on = list(specs["actor"].task_names)
    if trained_on and trained_on != tasks:
        raise CheckpointError(f"{run_dir} was trained on tasks {trained_on}, not on the "
                              f"{config.benchmark} tasks {tasks}")
    check_fits(specs, tasks, run.architecture)
    state = checkpoint.load(run.checkpoint, mmap=True)
    checkpoint.check_trained_on(state, config.benchmark, config.arch, run_dir)
    return config


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild a run's agent from its last checkpoint. Raises CheckpointError with a
    one-line reason for a folder that is not a conal-rl run."""
    run_dir = Path(run_dir)
    config, run = load_config(run_dir), RunDir(run_dir)
    specs = _run_specs(run)
    # mmap: a replay saved with the run is mapped, never read
    state = checkpoint.load(run.checkpoint, map_location=device, mmap=True)
    checkpoint.check_trained_on(state, config.benchmark, config.arch, run_dir)
    agent_state = state["agent"]
    T = specs["actor"].num_tasks
    obs_dim, act_dim = _dims(agent_state, specs)
    agent = MultiTaskSAC(tree_factory(specs), T, obs_dim, act_dim).to(device)
    agent.load_state_dict(agent_state)
    agent.eval()
    return LoadedRun(run_dir, config, specs, agent, state["counters"]["env_steps"])


def _run_specs(run: RunDir) -> dict[str, TreeSpec]:
    if not run.architecture.is_file():
        raise CheckpointError(f"{run} is not a conal-rl run (no {run.architecture.name})")
    return load_specs(run.architecture)


def _dims(agent_state: dict, specs: dict[str, TreeSpec]) -> tuple[int, int]:
    """Observation and action sizes from the first layers' weight shapes."""
    def first_in(prefix: str, spec: TreeSpec) -> int:
        if f"{prefix}.layers.0.weight" in agent_state:  # a grouped tree: [G, in, out]
            return agent_state[f"{prefix}.layers.0.weight"].shape[1]
        extra = spec.num_tasks if spec.task_id_input else 0
        key = f"{prefix}.shared.1.weight"
        if key in agent_state:
            return agent_state[key].shape[1] - extra
        return agent_state[f"{prefix}.private.1.weight"].shape[1] - extra

    obs_dim = first_in("actor.net", specs["actor"])
    act_dim = first_in("critic.q1", specs["critic"]) - obs_dim
    return obs_dim, act_dim


def record_evaluation(run_dir: Path, result: EvalResult, env_steps: int,
                      train_minutes: float, writer=None) -> None:
    """Append an evaluation to the run's evaluations table (one row per task, with the env
    steps and training minutes it was taken at: success against steps or wall clock),
    replace its latest evaluation and, given a TensorBoard ``writer``, log it there
    (success only where there is one: not for gym: sanity benchmarks)."""
    if writer is not None:
        has_success = not math.isnan(result.mean_success)
        for task in result.task_names:
            if has_success:
                writer.add_scalar(f"eval_success/{task}", result.success[task], env_steps)
            writer.add_scalar(f"eval_return/{task}", result.returns[task], env_steps)
        if has_success:
            writer.add_scalar("eval/mean_success", result.mean_success, env_steps)
        writer.add_scalar("eval/mean_return", result.mean_return, env_steps)
    run = RunDir(run_dir)
    path = run.evaluations
    columns = EVALUATION_COLUMNS
    if path.exists():  # keep the columns of a run started by an older version
        with open(path, newline="") as f:
            columns = next(csv.reader(f), EVALUATION_COLUMNS)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        if f.tell() == 0:
            writer.writeheader()
        for row in result.rows():
            writer.writerow({"env_steps": env_steps, "train_minutes": round(train_minutes, 3),
                             **row})
    latest = {"env_steps": env_steps, "train_minutes": round(train_minutes, 3),
              "mean_success": result.mean_success, "mean_return": result.mean_return,
              "tasks": result.rows()}
    run.write_json(run.eval_latest, latest)


# ---- finding runs ------------------------------------------------------------------------
def run_dir_of(path: str | Path) -> Path:
    """The run directory of a RUN_DIR or of its checkpoint file."""
    path = Path(path)
    if path.is_dir():
        return path
    if not path.exists():
        raise UserError(f"{path}: no such run directory or checkpoint")
    for run in (RunDir(path.parent), RunDir(path.parent.parent)):
        if run.config.is_file():
            if path.resolve() != run.checkpoint.resolve():
                checkpoint_name = run.checkpoint.relative_to(run.path)
                raise UserError(f"{path}: only a run's {checkpoint_name} can be evaluated")
            return run.path
    raise CheckpointError(f"{path} is not in a conal-rl run directory (no "
                          f"{run.config.name} beside it or its folder)")


def load_checked(path: str | Path, device: torch.device) -> LoadedRun:
    """``load_run`` of a RUN_DIR or its checkpoint, any mismatch a one-line error."""
    run_dir = run_dir_of(path)
    try:
        return load_run(run_dir, device)
    except (RuntimeError, KeyError) as e:  # weights of another shape or network
        raise CheckpointError(f"{run_dir}: its checkpoint does not fit its "
                              f"{RunDir(run_dir).architecture.name} ({type(e).__name__})"
                              ) from None


def eval_envs(run: LoadedRun, seed: int | None = None, device: torch.device | str = "cpu"
              ) -> Benchmark:
    """Fresh evaluation envs of the run's benchmark (seeded with ``seed``, default the
    run's own), checked to fit the run's networks."""
    config, run_dir = run.config, run.run_dir
    check_run(run_dir)
    bench = make_eval_benchmark(config.benchmark, config.seed if seed is None else seed)
    # A checkpoint of another benchmark (copied in) may load but not fit the envs.
    probe = np.zeros((bench.num_tasks, bench.obs_dim), dtype=np.float32)
    try:
        fits = Policy(run.agent, bench.action_space, device)(probe).shape == (
            bench.num_tasks, *bench.action_space.shape)
    except RuntimeError:
        fits = False
    if not fits:
        raise CheckpointError(f"{run_dir}: its checkpoint does not fit {config.benchmark}'s "
                              "observations and actions (trained on another benchmark?)")
    return bench


def format_eval(result: EvalResult, step: int) -> str:
    lines = [f"evaluation at env step {step} ({result.episodes} episodes per task):"]
    for row in result.rows():
        lines.append(f"  {row['task']:<28} success {row['success']:.2f}   "
                     f"return {row['return']:9.1f}")
    lines.append(f"  {'mean':<28} success {result.mean_success:.2f}   "
                 f"return {result.mean_return:9.1f}")
    return "\n".join(lines)
