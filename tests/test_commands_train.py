import copy
import json
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from agents import MultiTaskSAC
from conal_rl import train
from conal_rl.train import main, prepare
from conal_rl.training import checkpoint
from conal_rl.training.conal_search import search_seconds

TINY = ["--hidden", "16,16", "--batch-per-task", "16", "--warmup-steps", "100",
        "--eval-episodes", "1", "--log-every", "100"]


def _same(a, b) -> bool:
    """Equal, nested: dicts, lists and tuples (a tuple and a list alike, as a checkpoint may
    store one as the other), tensors element for element, anything else by ==."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.dtype == b.dtype and torch.equal(a, b))
    return a == b


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "conal_rl.train", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--benchmark", "MT11"], "unknown benchmark 'MT11'"),
    (["--benchmark", "MT1:nope-v3"], "unknown Meta-World task 'nope-v3'"),
    (["--total-steps", "-5"], "--total-steps must be positive"),
    (["--arch", "tree"], "--arch tree needs --architecture"),
    (["--resume", "/nonexistent/run"], "not a run directory"),
])
def test_user_errors_are_one_clear_line(args, message):
    proc = _cli(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_clear_line():
    proc = _cli("--device", "cuda")
    assert proc.returncode == 2 and "CUDA is not available" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_metaworld_run_writes_its_outputs(tmp_path):
    run = tmp_path / "run"
    result = main(["--benchmark", "MT1:reach-v3", "--total-steps", "600", "--eval-every", "300",
                   "--run-dir", str(run), *TINY])
    assert result.task_names == ["reach-v3"] and 0 <= result.mean_success <= 1
    config = json.loads((run / "config.json").read_text())
    assert config["total_steps"] == 600 and config["hidden"] == [16, 16]
    assert json.loads((run / "architecture.json").read_text())["actor"]["branch_points"] == [2]
    rows = (run / "evaluations.csv").read_text().splitlines()
    assert rows[0].startswith("env_steps,train_minutes,task,success")
    assert len(rows) == 3  # steps 300, 600
    assert json.loads((run / "eval_latest.json").read_text())["env_steps"] == 600
    assert list(run.glob("events.out.tfevents.*"))
    assert checkpoint.load(run / "checkpoints" / "latest.pt")["counters"]["env_steps"] == 600


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "latest.pt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "conal_rl.train", "--benchmark", "gym:Pendulum-v1",
         "--total-steps", "1000000", "--eval-every", "0", "--checkpoint-every", "200",
         "--save-replay", "--run-dir", str(run), *TINY], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if ckpt.exists() and checkpoint.load(ckpt)["counters"]["env_steps"] >= 400:
                break
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint written in time")
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: no chance to save anything more
        proc.wait()
    saved = checkpoint.load(ckpt)
    step = saved["counters"]["env_steps"]
    # The first update comes with step 101, once 100 transitions are stored.
    assert step % 200 == 0 and saved["counters"]["updates"] == step - 100
    assert saved["replay"]["size"] == step

    # The resumed run starts from everything the checkpoint holds: weights (the target
    # critics' too), optimizer moments, per-task temperatures, counters, RNG streams, the
    # replay buffer. Read off the trainer the command built, before it trains.
    restored = {}

    def spy(config, run_dir):
        trainer = prepare(config, run_dir)
        restored.update(
            agent=copy.deepcopy(trainer.agent.state_dict()),
            temperature=trainer.agent.log_temperature.detach().clone(),
            optimizers=copy.deepcopy(trainer.agent.optimizer_state()),
            counters={"env_steps": trainer.env_steps, "updates": trainer.updates},
            torch=torch.get_rng_state(), numpy=trainer.np_rng.bit_generator.state,
            python=random.getstate(), replay=copy.deepcopy(trainer.replay.state_dict()))
        return trainer

    monkeypatch.setattr(train, "prepare", spy)
    resumed = main(["--resume", str(run), "--total-steps", str(step + 300)])
    assert f"resumed {run} at env step {step}" in capsys.readouterr().out
    assert _same(restored["agent"], saved["agent"])
    assert torch.equal(restored["temperature"], saved["agent"]["log_temperature"])
    assert not torch.equal(restored["temperature"], torch.zeros(1))  # it has moved from 1
    moments = restored["optimizers"]["critic"]["state"]
    assert moments and all(int(m["step"]) == step - 100 for m in moments.values())
    assert _same(restored["optimizers"], saved["optimizers"])
    assert restored["counters"] == saved["counters"]
    assert torch.equal(restored["torch"], saved["rng"]["torch"])
    assert _same(restored["numpy"], saved["rng"]["numpy"])
    assert _same(restored["python"], saved["rng"]["python"])
    assert _same(restored["replay"], saved["replay"])
    final = checkpoint.load(ckpt)
    assert final["counters"]["env_steps"] == step + 300
    assert final["counters"]["updates"] == step - 100 + 300  # replay restored: no refill
    assert resumed.episodes == 1


def test_resume_refuses_to_change_the_run(tmp_path):
    run = tmp_path / "run"
    main(["--benchmark", "gym:Pendulum-v1", "--total-steps", "200", "--eval-every", "0",
          "--run-dir", str(run), *TINY])
    # Without --save-replay a resumed run refills a warm-up's worth of data (100 steps, with
    # its policy) before updating again.
    main(["--resume", str(run), "--total-steps", "400"])
    assert checkpoint.load(run / "checkpoints" / "latest.pt")["counters"]["updates"] == 2 * 100
    proc = _cli("--resume", str(run), "--arch", "mhsac")
    assert proc.returncode == 2 and "cannot change arch" in proc.stderr
    (run / "checkpoints" / "latest.pt").write_bytes(b"not a checkpoint")
    proc = _cli("--resume", str(run))
    assert proc.returncode == 2 and "not a readable checkpoint" in proc.stderr
    proc = _cli("--benchmark", "gym:Pendulum-v1", "--run-dir", str(run))
    assert proc.returncode == 2 and "already holds a run" in proc.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_saves_a_checkpoint(tmp_path, signum):
    """kill (SIGTERM) and Ctrl-C (SIGINT): the run stops at its next step, saves a checkpoint
    at the step it reached and exits with 128 + the signal's number."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "conal_rl.train", "--benchmark", "gym:Pendulum-v1",
         "--total-steps", "1000000", "--eval-every", "0", "--checkpoint-every", "100000",
         "--run-dir", str(run), *TINY], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True)
    deadline = time.time() + 120
    while not list(run.glob("events.out.tfevents.*")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum
    stopped_at = re.search(r"stopped by signal at env step (\d+); checkpoint saved", out)
    assert stopped_at, out
    saved = checkpoint.load(run / "checkpoints" / "latest.pt")["counters"]
    assert saved["env_steps"] == int(stopped_at.group(1)) > 0
    assert saved["updates"] == max(0, saved["env_steps"] - 100)  # one per step after warm-up


def test_conal_searches_derives_and_trains_then_the_tree_trains_again(tmp_path):
    run = tmp_path / "conal"
    main(["--benchmark", "MT10", "--arch", "conal", "--search-steps", "300",
          "--total-steps", "200", "--eval-every", "0", "--run-dir", str(run), *TINY])
    arch = json.loads((run / "architecture.json").read_text())
    for role in ("actor", "critic"):
        entry = arch[role]
        assert len(entry["branch_points"]) == 10 and entry["hidden"] == [16, 16]
        assert set(entry["branch_point_by_task"]) == set(entry["task_names"])
        assert len(entry["alpha"]["reach-v3"]) == 3  # P + 1 branch points
        assert entry["parameters"]["tree"] < entry["parameters"]["supernet"]
    assert (run / "architecture.png").stat().st_size > 1000
    saved = checkpoint.load(run / "search" / "checkpoints" / "latest.pt")
    assert saved["hooks"]["search"] is not None
    assert checkpoint.load(run / "checkpoints" / "latest.pt")["counters"]["env_steps"] == 200
    # The tree's evaluations are on the budget's clock, which started with the search.
    tree_minutes = json.loads((run / "timing.json").read_text())["train_wall"] / 60
    evaluated_at = json.loads((run / "eval_latest.json").read_text())["train_minutes"]
    assert evaluated_at == pytest.approx(search_seconds(run) / 60 + tree_minutes, abs=2e-3)
    assert search_seconds(run) > 0

    tree_run = tmp_path / "tree"
    main(["--benchmark", "MT10", "--arch", "tree", "--architecture", str(run / "architecture.json"),
          "--total-steps", "200", "--eval-every", "0", "--run-dir", str(tree_run), *TINY])
    assert json.loads((tree_run / "architecture.json").read_text())["actor"]["branch_points"] == \
        arch["actor"]["branch_points"]


def test_minutes_budget_stops_the_run_and_counts_over_resumes(tmp_path):
    run = tmp_path / "run"
    budget_min = 0.05  # 3 s of training
    main(["--benchmark", "gym:Pendulum-v1", "--total-steps", "10000000", "--minutes",
          str(budget_min), "--eval-every", "0", "--run-dir", str(run), *TINY])
    timing = json.loads((run / "timing.json").read_text())
    assert timing["stopped_by"] == "minutes"
    assert 3.0 <= timing["train_wall"] < 3.0 + 2.0  # stops at the first step past the budget
    steps = timing["env_steps"]
    assert 0 < steps < 10_000_000
    # Resumed with the same budget: it is spent already, so no step more.
    main(["--resume", str(run)])
    assert json.loads((run / "timing.json").read_text())["env_steps"] == steps
    # A larger budget continues where it stopped and sums the time.
    main(["--resume", str(run), "--minutes", str(2 * budget_min)])
    timing = json.loads((run / "timing.json").read_text())
    assert timing["env_steps"] > steps and 6.0 <= timing["train_wall"] < 6.0 + 3.0


def test_the_laptop_preset_brings_its_minutes_budget_and_a_flag_overrides_it():
    from conal_rl.training.config import TrainConfig

    assert TrainConfig(preset="laptop").minutes == 60
    assert TrainConfig(preset="laptop", minutes=0).minutes == 0  # no limit
    assert TrainConfig(preset="laptop", minutes=5).minutes == 5
    assert TrainConfig(preset="quick").minutes is None


def test_updates_per_step_updates_that_often(tmp_path, monkeypatch):
    batches = []
    update = MultiTaskSAC.update
    monkeypatch.setattr(MultiTaskSAC, "update",
                        lambda self, batch: batches.append(batch.obs) or update(self, batch))
    run = tmp_path / "run"
    main(["--benchmark", "gym:Pendulum-v1", "--total-steps", "150", "--eval-every", "0",
          "--updates-per-step", "3", "--run-dir", str(run), *TINY])
    counters = checkpoint.load(run / "checkpoints" / "latest.pt")["counters"]
    assert counters == {"env_steps": 150, "updates": 3 * (150 - 100)}
    assert len(batches) == 150
    # Each update draws a batch of its own.
    assert not torch.equal(batches[-1], batches[-2]) and not torch.equal(batches[-2], batches[-3])


def sync_and_async(tmp_path, benchmark: str, steps: int) -> dict:
    """The last checkpoint of the same run with sync and with async vector envs."""
    states = {}
    for strategy in ("sync", "async"):
        run = tmp_path / strategy
        main(["--benchmark", benchmark, "--total-steps", str(steps), "--eval-every", "0",
              "--vector-strategy", strategy, "--run-dir", str(run), *TINY])
        states[strategy] = checkpoint.load(run / "checkpoints" / "latest.pt")
    return states


def test_async_envs_step_during_the_update_and_train_the_same_run(tmp_path, monkeypatch,
                                                                   two_tasks):
    """--vector-strategy async: the env processes step while the update runs (step_async,
    update, step_wait), and the run is the sync run bit for bit: the update never needs the
    transition in flight."""
    import gymnasium as gym

    calls = {"step": 0, "step_async": 0}
    for name in calls:  # step() calls step_async() too: the difference is the loop's own
        original = getattr(gym.vector.AsyncVectorEnv, name)
        monkeypatch.setattr(gym.vector.AsyncVectorEnv, name,
                            lambda self, actions, name=name, original=original:
                            calls.__setitem__(name, calls[name] + 1) or original(self, actions))
    states = sync_and_async(tmp_path, "gym:Pendulum-v1", 300)
    assert json.loads((tmp_path / "async" / "config.json").read_text())["vector_strategy"] == \
        "async"
    # step_async called by the loop itself on every vector step that updates: 100 of the
    # 150 (the first 50 are the random warm-up).
    assert calls["step_async"] - calls["step"] == (300 - 100) // 2
    sync, async_ = states["sync"], states["async"]
    assert async_["counters"] == sync["counters"] == {"env_steps": 300, "updates": 100}
    assert _same(async_["agent"], sync["agent"])
    assert _same(async_["optimizers"], sync["optimizers"])


@pytest.mark.slow  # two MT10 env sets and their evaluations: ~1.5 min on 2 cores
def test_async_mt10_trains_as_sync(tmp_path):
    states = sync_and_async(tmp_path, "MT10", 200)
    assert states["async"]["counters"] == states["sync"]["counters"] == {
        "env_steps": 200, "updates": 10}
    assert _same(states["async"]["agent"], states["sync"]["agent"])


def test_the_paper_preset_is_the_metaworld_reference():
    """The paper preset per task (README: 3x400 nets, batch 128, 2M steps, replay 100k,
    evaluation every 20k env steps with 50 episodes), scaled by the number of tasks."""
    from conal_rl.training.config import TrainConfig

    for benchmark, T in (("MT10", 10), ("MT50", 50), ("MT1:reach-v3", 1)):
        c = TrainConfig(benchmark=benchmark)  # paper is the default preset
        assert c.preset == "paper" and c.hidden == (400, 400, 400) and c.batch_per_task == 128
        assert c.total_steps == 2_000_000 * T and c.replay_size == 100_000 * T
        assert c.eval_every == c.checkpoint_every == 20_000 * T and c.eval_episodes == 50
        assert c.warmup_steps == 4_000 * T  # Meta-World+'s 4k warm-up vector steps
        assert c.search_steps == 200_000 * T and c.search_warmup_steps == c.search_steps // 4
        assert c.arch_lr == 5e-5 and c.minutes is None  # the official CoNAL alpha lr
        assert (c.lr, c.gamma, c.tau, c.updates_per_step) == (3e-4, 0.99, 0.005, 1)
    mt10 = TrainConfig(benchmark="MT10")  # the MT10 reference: 20M steps, batch 1280, 1M
    assert (mt10.total_steps, mt10.batch_per_task * 10, mt10.replay_size) == (
        20_000_000, 1280, 1_000_000)
    # A flag overrides its preset value, the rest stays the preset's.
    given = TrainConfig(benchmark="MT10", hidden=(64,), eval_episodes=3)
    assert given.hidden == (64,) and given.eval_episodes == 3 and given.batch_per_task == 128
