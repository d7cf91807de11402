"""Benchmarks as gymnasium vector envs with one sub-env per task.

Names: ``MT10``, ``MT50`` (Meta-World's registered multi-task benchmarks), ``MT1:<task>``
(one Meta-World task with its 50 goal variations), and ``gym:<env-id>`` (any gymnasium
continuous-control env as a one-task benchmark, for sanity checks such as Pendulum-v1).
Sub-env i always holds task i, so a batch of observations from the vector env is already
in the task-major layout ``[T, ...]`` the networks use.

Vector strategies: ``sync`` (all sub-envs in this process), ``async`` (gymnasium's
AsyncVectorEnv: a process per sub-env) and ``worker`` (the sync vector env built and run in
one worker process, ``envs.worker``, so it steps while this process updates the agent).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import gymnasium as gym
import numpy as np

from envs.worker import WorkerVectorEnv

METAWORLD_MT = ("MT10", "MT50")
VECTOR_STRATEGIES = ("sync", "async", "worker")
"""How the sub-envs step: in this process, a process each, or all in one worker process
that steps them while the caller computes."""
VALID_NAMES = "MT10, MT50, MT1:<task> (e.g. MT1:reach-v3) or gym:<env-id> (e.g. gym:Pendulum-v1)"


class UnknownBenchmark(ValueError):
    pass


@dataclass
class Benchmark:
    name: str
    envs: gym.vector.VectorEnv
    task_names: list[str]
    is_metaworld: bool

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def obs_dim(self) -> int:
        return int(np.prod(self.envs.single_observation_space.shape))

    @property
    def action_space(self) -> gym.spaces.Box:
        return self.envs.single_action_space

    def reset(self, seed: int) -> np.ndarray:
        """Reset every env, all its randomness (Meta-World: the episode's task and goal)
        drawn from ``seed`` whatever the env did before: a fresh env and one that has run
        for hours give the same episodes. Meta-World's reset ignores its seed argument, so
        its envs are reseeded through their ``seed()`` first. Returns the observations."""
        if self.is_metaworld:
            self.envs.call("seed", seed)
        return self.envs.reset(seed=seed)[0]

    @property
    def max_episode_steps(self) -> int | None:
        """The time limit of the benchmark's episodes (500 for Meta-World), if it has one."""
        try:
            return int(self.envs.get_attr("_max_episode_steps")[0])
        except (AttributeError, TypeError, ValueError):
            return None


def metaworld_task_names() -> list[str]:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return list(ALL_V3_ENVIRONMENTS)


def num_tasks(name: str) -> int:
    """The number of tasks of a benchmark, from its name alone (no env is built)."""
    return {"MT10": 10, "MT50": 50}.get(name, 1)


METAWORLD_SIZES = (39, 4)  # observation and action sizes of every Meta-World v3 task


def observation_action_sizes(name: str) -> tuple[int, int] | None:
    """A benchmark's observation and action sizes from its name alone (no env is built);
    None where only an env can tell (gym:)."""
    check_benchmark_name(name)
    return None if name.startswith("gym:") else METAWORLD_SIZES


def task_names(name: str) -> list[str]:
    """A benchmark's task names in sub-env order, from its name alone (no env is built:
    Meta-World's MT10/MT50 task lists, the order ``make_benchmark`` gives); raises
    UnknownBenchmark on a bad name."""
    check_benchmark_name(name)
    if name in METAWORLD_MT:
        from metaworld.env_dict import MT10_V3, MT50_V3

        return list({"MT10": MT10_V3, "MT50": MT50_V3}[name])
    return [name.partition(":")[2]]


def check_benchmark_name(name: str) -> None:
    """Raise UnknownBenchmark, listing the valid names, unless ``name`` is one."""
    kind, _, arg = name.partition(":")
    if name in METAWORLD_MT:
        return
    if kind == "MT1" and arg:
        if arg not in metaworld_task_names():
            raise UnknownBenchmark(
                f"unknown Meta-World task {arg!r}; valid: {', '.join(metaworld_task_names())}"
            )
        return
    if kind == "gym" and arg:
        try:
            gym.spec(arg)
        except gym.error.Error as e:
            raise UnknownBenchmark(f"unknown gymnasium env {arg!r}: {e}") from None
        return
    raise UnknownBenchmark(f"unknown benchmark {name!r}; valid: {VALID_NAMES}")


def make_benchmark(name: str, seed: int, vector_strategy: str = "sync") -> Benchmark:
    """Build the vector env of a benchmark, seeded; raises UnknownBenchmark on a bad name."""
    check_benchmark_name(name)
    # SAME_STEP autoreset puts the true last observation into info["final_obs"], so no
    # transition is lost at episode ends (and it is what metaworld's evaluation expects).
    autoreset = gym.vector.AutoresetMode.SAME_STEP
    kind, _, arg = name.partition(":")
    if name in METAWORLD_MT:
        from metaworld.evaluation import _get_task_names

        envs = _vectorized(vector_strategy, partial(_metaworld_vec, name, seed,
                                                    autoreset=autoreset))
        bench = Benchmark(name, envs, _get_task_names(envs), True)  # get_attr: any strategy
    elif kind == "MT1":
        import metaworld  # noqa: F401

        one = partial(_vector_env, make=partial(_make_mt1, arg, seed), autoreset=autoreset)
        envs = _vectorized(vector_strategy, one)
        bench = Benchmark(name, envs, [arg], True)
    else:
        one = partial(_vector_env, make=partial(_make_gym, arg), autoreset=autoreset)
        envs = _vectorized(vector_strategy, one)
        if not isinstance(envs.single_action_space, gym.spaces.Box):
            raise UnknownBenchmark(f"{arg} has no continuous (Box) action space")
        bench = Benchmark(name, envs, [arg], False)
    envs.action_space.seed(seed)
    return bench


# The vector envs are made by module-level functions (and partials of them) that a worker
# process can unpickle.
def _vectorized(strategy: str, make_vec) -> gym.vector.VectorEnv:
    """``make_vec(strategy)``; for ``worker``, ``make_vec("sync")`` run in a worker process."""
    if strategy == "worker":
        return WorkerVectorEnv(partial(make_vec, "sync"))
    return make_vec(strategy)


def _metaworld_vec(name: str, seed: int, strategy: str, autoreset) -> gym.vector.VectorEnv:
    import metaworld  # noqa: F401  (registers the Meta-World/* ids, also in a worker process)

    return gym.make_vec(f"Meta-World/{name}", vector_strategy=strategy, seed=seed,
                        autoreset_mode=autoreset)


# One-task benchmarks: their one env in this process (sync) or in a process of its own
# (async, as MT10/MT50 get one per task).
def _vector_env(strategy: str, make, autoreset) -> gym.vector.VectorEnv:
    if strategy == "async":
        return gym.vector.AsyncVectorEnv([make], autoreset_mode=autoreset)
    return gym.vector.SyncVectorEnv([make], autoreset_mode=autoreset)


def _make_mt1(task: str, seed: int) -> gym.Env:
    import metaworld  # noqa: F401  (registers Meta-World/MT1, also in a worker process)

    return gym.make("Meta-World/MT1", env_name=task, seed=seed, disable_env_checker=True)


def _make_gym(env_id: str) -> gym.Env:
    return gym.wrappers.RecordEpisodeStatistics(gym.make(env_id))
