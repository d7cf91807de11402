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
