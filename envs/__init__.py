"""Benchmarks (gymnasium vector envs, one sub-env per task) and the evaluation protocol."""

from envs.benchmarks import (
    VECTOR_STRATEGIES,
    Benchmark,
    UnknownBenchmark,
    check_benchmark_name,
    make_benchmark,
    num_tasks,
    observation_action_sizes,
    task_names,
)
from envs.evaluation import EvalResult, evaluate, make_eval_benchmark

__all__ = [
    "Benchmark", "UnknownBenchmark", "check_benchmark_name", "make_benchmark", "num_tasks",
    "observation_action_sizes", "task_names", "VECTOR_STRATEGIES",
    "EvalResult", "evaluate", "make_eval_benchmark",
]
