import warnings

import pytest
import torch

from envs.video import use_headless_gl

warnings.filterwarnings("ignore", module="gymnasium")
use_headless_gl()  # as every command does, before anything imports mujoco
# One thread, as in training: several test processes (or a training run beside the tests)
# sharing 2 cores collapse when each spins a thread pool.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Again before every test, in case one changed it: tiny tensors are faster on one
    thread, and the search tests rely on bit-for-bit repeatable runs."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mt10_eval():
    from envs import make_eval_benchmark

    return make_eval_benchmark("MT10", seed=0)


TWO_TASKS = {"pendulum-g10": 10.0, "pendulum-g4": 4.0}  # task name -> gravity


@pytest.fixture
def two_tasks(monkeypatch):
    """``gym:Pendulum-v1`` made a two-task benchmark for the train command: Pendulum under
    two gravities, one sub-env each (sync or async, as --vector-strategy asks), for training
    and for its evaluations. A cheap multi-task env on which what acts across tasks (RLW,
    PCGrad, conflict-noticing, a search's branch points) is not the no-op it is on one task;
    building MT10's envs takes ~10 s on 2 cores. Returns the task names."""
    import gymnasium as gym

    import envs
    from conal_rl.training import trainer
    from envs import Benchmark
    from envs.evaluation import EVAL_SEED_OFFSET

    def make(name, seed, vector_strategy="sync"):
        assert name == "gym:Pendulum-v1", name
        vector = {"sync": gym.vector.SyncVectorEnv,
                  "async": gym.vector.AsyncVectorEnv}[vector_strategy]
        envs = vector([lambda g=g: gym.wrappers.RecordEpisodeStatistics(
                           gym.make("Pendulum-v1", g=g)) for g in TWO_TASKS.values()],
                      autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        envs.action_space.seed(seed)
        return Benchmark(name, envs, list(TWO_TASKS), False)

    def make_eval(name, seed, vector_strategy="sync"):
        bench = make(name, seed, vector_strategy)
        bench.envs.reset(seed=seed + EVAL_SEED_OFFSET)
        return bench

    monkeypatch.setattr(envs, "make_benchmark", make)  # what conal_rl.train builds
    monkeypatch.setattr(trainer, "make_eval_benchmark", make_eval)
    return list(TWO_TASKS)
