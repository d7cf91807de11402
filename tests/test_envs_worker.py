"""--vector-strategy worker: the sync vector env run in one worker process (envs/worker.py)
gives what the sync env gives, bit for bit, and fails loudly."""

import csv
import gc
import json
import os
import signal
from functools import partial

import gymnasium as gym
import numpy as np
import pytest
from test_commands_train import TINY, _same

from conal_rl.train import main
from conal_rl.training import checkpoint, guard
from envs import make_benchmark
from envs.worker import WorkerVectorEnv

SAME_STEP = gym.vector.AutoresetMode.SAME_STEP


def _equal(a, b, path="") -> None:
    """Assert nested results equal: dicts, tuples, arrays (object arrays element by element,
    dtypes too). ``t``, RecordEpisodeStatistics' wall-clock episode time, is skipped."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            if k != "t":
                _equal(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray) and a.dtype == object:
        assert b.dtype == object and a.shape == b.shape, path
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype, path
        assert np.array_equal(a, b), path
    else:
        assert a == b, path


def _pendulums(num_envs: int = 3):
    """Several Pendulum-v1 sub-envs (more than gym:Pendulum-v1's one), as a factory a worker
    can unpickle."""
    return partial(gym.make_vec, "Pendulum-v1", num_envs=num_envs, vectorization_mode="sync",
                   vector_kwargs={"autoreset_mode": SAME_STEP})


@pytest.fixture
def worker():
    envs = WorkerVectorEnv(_pendulums())
    yield envs
    envs.close()


def test_worker_pendulum_is_the_sync_env_bit_for_bit():
    """Same seed, same actions: observations, rewards, terminations, truncations and infos
    (the episode end at step 200 with final_obs, final_info and their masks) as the sync
    env's, over 450 steps; step_async + step_wait gives what step gives."""
    worker = make_benchmark("gym:Pendulum-v1", 0, "worker")
    sync = make_benchmark("gym:Pendulum-v1", 0, "sync")
    try:
        for attr in ("num_envs", "single_observation_space", "single_action_space",
                     "observation_space", "action_space", "metadata", "render_mode"):
            assert getattr(worker.envs, attr) == getattr(sync.envs, attr), attr
        assert worker.task_names == sync.task_names and worker.max_episode_steps == 200
        _equal(worker.reset(7), sync.reset(7))
        actions = gym.spaces.Box(-2, 2, (450, 1, 1), np.float32)
        actions.seed(1)
        ends = 0
        for i, a in enumerate(actions.sample()):
            if i % 2:
                worker.envs.step_async(a)
                got = worker.envs.step_wait()
            else:
                got = worker.envs.step(a)
            expected = sync.envs.step(a)
            _equal(got, expected, f"step {i}")
            ends += int(expected[3][0])
        assert ends == 2  # two episode ends crossed: steps 200 and 400
        _equal(worker.envs.reset(seed=3), sync.envs.reset(seed=3))
    finally:
        worker.envs.close()
        sync.envs.close()


def test_call_get_attr_and_set_attr_reach_the_sub_envs(worker):
    assert worker.num_envs == 3
    assert worker.get_attr("_max_episode_steps") == (200, 200, 200)
    worker.set_attr("_max_episode_steps", [5, 6, 7])
    assert worker.call("get_wrapper_attr", "_max_episode_steps") == (5, 6, 7)
    worker.reset(seed=0)
    for _ in range(5):
        _, _, _, truncated, _ = worker.step(np.zeros((3, 1), np.float32))
    assert truncated.tolist() == [True, False, False]


def test_an_exception_in_the_worker_comes_back_with_its_traceback(worker):
    """Same type (callers catch AttributeError from get_attr), the child's message and
    traceback; the worker keeps serving after it."""
    with pytest.raises(AttributeError) as e:
        worker.call("seed", 3)  # gymnasium 1.x envs have no seed(): Meta-World's do
    assert "seed" in str(e.value) and "raised in the env worker process" in str(e.value)
    assert "Traceback (most recent call last)" in str(e.value)
    with pytest.raises(TypeError, match="env worker process"):
        worker.call("step")  # no action
    worker.reset(seed=0)
    assert worker.step(np.zeros((3, 1), np.float32))[0].shape == (3, 3)


def test_a_failed_build_raises_the_childs_error_and_leaves_no_process():
    with pytest.raises(gym.error.NameNotFound, match="env worker process"):
        WorkerVectorEnv(partial(gym.make_vec, "NoSuchEnv-v0", vectorization_mode="sync"))
    gc.collect()
    assert not [p for p in _children() if p.name == "env-worker"]


def test_step_async_and_step_wait_out_of_order_are_clear_errors(worker):
    worker.reset(seed=0)
    with pytest.raises(gym.error.NoAsyncCallError):
        worker.step_wait()
    worker.step_async(np.zeros((3, 1), np.float32))
    with pytest.raises(gym.error.AlreadyPendingCallError):
        worker.step_async(np.zeros((3, 1), np.float32))
    with pytest.raises(gym.error.AlreadyPendingCallError):
        worker.reset(seed=0)
    assert worker.step_wait()[0].shape == (3, 3)  # the pending step is still there


@pytest.mark.parametrize("call", [
    lambda envs: envs.step(np.zeros((3, 1), np.float32)),
    lambda envs: envs.step_async(np.zeros((3, 1), np.float32)) or envs.step_wait(),
    lambda envs: envs.reset(seed=1),
    lambda envs: envs.get_attr("_max_episode_steps"),
], ids=["step", "step_async", "reset", "get_attr"])
def test_a_killed_worker_raises_what_the_trainer_catches(worker, call):
    """The trainer checkpoints and stops (EnvFailure) on guard.ENV_FAILURES."""
    worker.reset(seed=0)
    os.kill(worker._process.pid, signal.SIGKILL)
    worker._process.join(5)
    with pytest.raises(guard.ENV_FAILURES, match=r"env worker process \(pid \d+\) died"):
        call(worker)
    worker.close(terminate=True)  # as the trainer does; the fixture's close is then a no-op
    assert not worker._process.is_alive()


def test_close_is_idempotent_and_leaves_no_process():
    envs = WorkerVectorEnv(_pendulums())
    process = envs._process
    envs.reset(seed=0)
    envs.step_async(np.zeros((3, 1), np.float32))  # closing with a step in flight
    envs.close()
    envs.close()
    assert envs.closed and not process.is_alive() and process.exitcode == 0
    with pytest.raises(gym.error.ClosedEnvironmentError):
        envs.reset(seed=0)
    # Dropped without close(): __del__ closes it.
    envs = WorkerVectorEnv(_pendulums())
    process = envs._process
    del envs
    gc.collect()
    process.join(5)
    assert not process.is_alive() and process not in _children()


def _children():
    import multiprocessing

    return multiprocessing.active_children()


def _evaluations(run) -> list[dict]:
    """evaluations.csv without its wall-clock column."""
    with open(run / "evaluations.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "train_minutes"}
                for row in csv.DictReader(f)]


def test_worker_envs_step_during_the_update_and_train_the_same_run(tmp_path, monkeypatch):
    """--vector-strategy worker: the envs step while the update runs (step_async, update,
    step_wait), and the run is the sync run bit for bit: same evaluations, same weights."""
    calls = {"step": 0, "step_async": 0}
    for name in calls:  # step() calls step_async() too: the difference is the loop's own
        original = getattr(WorkerVectorEnv, name)
        monkeypatch.setattr(WorkerVectorEnv, name,
                            lambda self, actions, name=name, original=original:
                            calls.__setitem__(name, calls[name] + 1) or original(self, actions))
    states = {}
    for strategy in ("sync", "worker"):
        run = tmp_path / strategy
        main(["--benchmark", "gym:Pendulum-v1", "--total-steps", "300", "--eval-every", "150",
              "--vector-strategy", strategy, "--run-dir", str(run), *TINY])
        states[strategy] = checkpoint.load(run / "checkpoints" / "latest.pt")
    assert json.loads((tmp_path / "worker" / "config.json").read_text())["vector_strategy"] == \
        "worker"
    assert calls["step_async"] - calls["step"] == 300 - 100  # every step after the warm-up
    sync, worker = states["sync"], states["worker"]
    assert worker["counters"] == sync["counters"] == {"env_steps": 300, "updates": 200}
    assert _same(worker["agent"], sync["agent"])
    evaluations = _evaluations(tmp_path / "worker")
    assert [int(row["env_steps"]) for row in evaluations] == [150, 300]
    assert evaluations == _evaluations(tmp_path / "sync")


def test_a_worker_that_dies_in_a_run_stops_it_with_a_checkpoint_and_resume_goes_on(
        tmp_path, monkeypatch, capsys):
    """The trainer's env-failure path (exit status 4, --resume) with the worker's death."""
    from test_training_faults import TINY as FAULT_FLAGS
    from test_training_faults import _one_error_line

    from conal_rl.training.trainer import Trainer

    step = Trainer._vector_step

    def kill_worker_at_150(self, window, bar):
        if self.env_steps == 150 and self.bench.envs._process.is_alive():
            os.kill(self.bench.envs._process.pid, signal.SIGKILL)
            self.bench.envs._process.join(10)
        step(self, window, bar)

    monkeypatch.setattr(Trainer, "_vector_step", kill_worker_at_150)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        main([*FAULT_FLAGS, "--vector-strategy", "worker", "--total-steps", "300",
              "--checkpoint-every", "1000", "--run-dir", str(run)])
    assert stopped.value.code == 4
    line = _one_error_line(capsys)
    assert "an env worker process died at env step 150 (EnvWorkerDied: " in line, line
    assert checkpoint.load(run / "checkpoints" / "latest.pt")["counters"]["env_steps"] == 150
    monkeypatch.setattr(Trainer, "_vector_step", step)
    main(["--resume", str(run), "--total-steps", "300"])  # a fresh worker
    assert checkpoint.load(run / "checkpoints" / "latest.pt")["counters"]["env_steps"] == 300


@pytest.mark.slow  # two MT10 env sets: ~30 s on 2 cores
def test_worker_mt10_is_the_sync_env():
    """Task names through get_attr, Benchmark.reset (call("seed") + reset(seed=)), steps with
    their Meta-World infos, and a whole evaluation, as the sync env gives them."""
    from envs.evaluation import evaluate

    worker = make_benchmark("MT10", 0, "worker")
    sync = make_benchmark("MT10", 0, "sync")
    try:
        assert worker.task_names == sync.task_names and len(worker.task_names) == 10
        assert worker.max_episode_steps == 500
        sync.reset(9)  # a different past: Benchmark.reset(seed) wins over it
        sync.envs.step(sync.envs.action_space.sample())
        _equal(worker.reset(5), sync.reset(5))
        rng = np.random.default_rng(0)
        for i in range(100):
            a = rng.uniform(-1, 1, (10, 4))
            _equal(worker.envs.step(a), sync.envs.step(a), f"step {i}")
        policy = lambda obs: np.tanh(obs[:, :4])  # noqa: E731  (deterministic, obs-dependent)
        worker.reset(1)
        sync.reset(1)
        got, expected = evaluate(policy, worker, 1), evaluate(policy, sync, 1)
        assert got.success == expected.success and got.returns == expected.returns
    finally:
        worker.envs.close()
        sync.envs.close()


CRASHING_RUN = """
from functools import partial
import gymnasium as gym
from envs.worker import WorkerVectorEnv

if __name__ == "__main__":
    envs = WorkerVectorEnv(partial(gym.make_vec, "Pendulum-v1", num_envs=2,
                                   vectorization_mode="sync"))
    envs.reset(seed=0)
    envs.step_async(envs.action_space.sample())  # a step in flight, as in the loop
    raise ValueError("a bug in the loop")  # the envs never closed
"""


def test_a_process_that_dies_of_an_exception_exits_instead_of_waiting_for_its_worker(
        tmp_path):
    """The worker ignores SIGTERM (the parent decides when a run stops), which is what
    multiprocessing sends it at interpreter exit before joining it: without our own exit
    hook the process hung there for good."""
    import subprocess
    import sys

    script = tmp_path / "crash.py"
    script.write_text(CRASHING_RUN)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, cwd=os.getcwd())
    assert proc.returncode == 1 and "a bug in the loop" in proc.stderr, proc.stderr
