"""The evaluation protocol: Meta-World's own ``metaworld.evaluation.evaluation``.

Success of an episode is read from its final info, episodes end on success, and each
task is evaluated for ``num_episodes`` episodes with the policy given (the agent's
deterministic, mean action). Gymnasium sanity benchmarks have no success signal: for them
the same episode count is run and only returns are reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from envs.benchmarks import Benchmark, make_benchmark

Policy = Callable[[np.ndarray], np.ndarray]
"""Maps a batch of observations ``[T, obs]`` (sub-env i = task i) to actions ``[T, act]``."""

EVAL_SEED_OFFSET = 10_000
"""Evaluation envs use the run's task set but their own RNG stream (seed + this)."""


@dataclass
class EvalResult:
    task_names: list[str]
    success: dict[str, float]  # per task; NaN where the env has no success signal
    returns: dict[str, float]  # mean episode return per task
    episodes: int

    @property
    def mean_success(self) -> float:
        return float(np.mean(list(self.success.values())))

    @property
    def mean_return(self) -> float:
        return float(np.mean(list(self.returns.values())))

    def rows(self) -> list[dict]:
        return [
            {"task": t, "success": self.success[t], "return": self.returns[t],
             "episodes": self.episodes}
            for t in self.task_names
        ]


class _MetaWorldAgent:
    """The agent interface metaworld.evaluation expects (eval_action, reset)."""

    def __init__(self, policy: Policy):
        self.policy = policy

    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        return self.policy(observations)

    def reset(self, env_mask: np.ndarray) -> None:  # stateless policies
        pass


def make_eval_benchmark(name: str, seed: int, vector_strategy: str = "sync") -> Benchmark:
    """Separate eval envs: same task set (Meta-World tasks are drawn from ``seed``), their
    own episode RNG so evaluation never shifts the training envs' random streams."""
    bench = make_benchmark(name, seed, vector_strategy)
    bench.envs.reset(seed=seed + EVAL_SEED_OFFSET)
    return bench


def evaluate(policy: Policy, bench: Benchmark, num_episodes: int) -> EvalResult:
    if num_episodes < 1:
        raise ValueError("num_episodes must be at least 1")
    if bench.is_metaworld:
        from metaworld.evaluation import evaluation

        _, _, success, returns = evaluation(_MetaWorldAgent(policy), bench.envs, num_episodes)
        return EvalResult(
            bench.task_names,
            {t: float(success[t]) for t in bench.task_names},
            {t: float(np.mean(returns[t])) for t in bench.task_names},
            num_episodes,
        )
    return _evaluate_returns(policy, bench, num_episodes)


def _evaluate_returns(policy: Policy, bench: Benchmark, num_episodes: int) -> EvalResult:
    envs = bench.envs
    obs, _ = envs.reset()
    returns: list[list[float]] = [[] for _ in range(envs.num_envs)]
    while min(len(r) for r in returns) < num_episodes:
        obs, _, term, trunc, info = envs.step(policy(obs))
        for i in np.flatnonzero(term | trunc):
            returns[i].append(float(info["final_info"]["episode"]["r"][i]))
    names = bench.task_names
    return EvalResult(
        names,
        {t: float("nan") for t in names},
        {t: float(np.mean(r[:num_episodes])) for t, r in zip(names, returns)},
        num_episodes,
    )
