"""Runs: the evaluations a run writes, and reading a run back (its config, trees and agent) for the
evaluation, rendering and plotting commands. The networks of a run are always trees (its
architecture file): for ``--arch conal`` the derived, pruned trees. Where its files are:
:class:`~conal_rl.training.rundir.RunDir`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from agents import MultiTaskSAC
from conal_rl.method import GroupTreeSpec, TreeSpec, input_width
from conal_rl.training import checkpoint
from conal_rl.training.checkpoint import CheckpointError
from conal_rl.training.config import TrainConfig
from conal_rl.training.nets import check_fits, load_specs, tree_factory, trees_in
from conal_rl.training.preflight import load_config, run_dir_of
from conal_rl.training.rundir import RunDir
from envs import (
    Benchmark,
    EvalResult,
    UnknownBenchmark,
    make_eval_benchmark,
    task_names,
)

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
    # trees that grew (--branch-every)
    specs = trees_in(checkpoint.hook_state(state, "branching")) or specs
    agent_state = state["agent"]
    T = specs["actor"].num_tasks
    sizes = state.get("sizes")  # checkpoints before the sizes were saved: from the weights
    obs_dim, act_dim = ((sizes["obs_dim"], sizes["act_dim"]) if sizes
                        else _dims(agent_state, specs))
    agent = MultiTaskSAC(tree_factory(specs, config.net_options()), T, obs_dim, act_dim,
                         config.sac()).to(device)
    agent.load_state_dict(agent_state)
    agent.eval()
    return LoadedRun(run_dir, config, specs, agent, state["counters"]["env_steps"])


def _run_specs(run: RunDir) -> dict[str, TreeSpec]:
    if not run.architecture.is_file():
        raise CheckpointError(f"{run} is not a conal-rl run (no {run.architecture.name})")
    return load_specs(run.architecture)


def _dims(agent_state: dict, specs: dict[str, TreeSpec]) -> tuple[int, int]:
    """Observation and action sizes from the first layers' weight shapes (for checkpoints
    written before they held the sizes)."""
    def first_in(prefix: str, spec: TreeSpec | GroupTreeSpec) -> int:
        extra = input_width(0, spec.num_tasks, spec.task_id_input)  # the id's columns
        if f"{prefix}.layers.0.weight" in agent_state:  # a grouped tree: [G, in, out]
            return agent_state[f"{prefix}.layers.0.weight"].shape[1] - extra
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
