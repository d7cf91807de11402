"""One SB3 SAC per task (agents/single_task.py, conal_rl/training/stl_run.py,
conal_rl/stl.py), logged like a multi-task run."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from agents.single_task import PerTaskPolicy, chunk_targets
from conal_rl import stl
from conal_rl.analysis.curves import read_curves
from conal_rl.training.stl_run import STLRun

TINY = ["--preset", "quick", "--hidden", "16,16", "--batch-per-task", "16",
        "--eval-episodes", "1", "--device", "cpu"]


class FakeModel:
    """SB3's predict interface, answering a constant and remembering what it was asked."""

    def __init__(self, value: float):
        self.value, self.seen = value, []

    def predict(self, obs, deterministic=False):
        assert deterministic
        self.seen.append(np.array(obs))
        return np.full(4, self.value, dtype=np.float32), None


def test_policy_routes_each_task_row_to_its_own_model():
    models = [FakeModel(v) for v in (-0.5, 0.0, 0.5)]
    obs = np.arange(3 * 39, dtype=np.float64).reshape(3, 39)
    actions = PerTaskPolicy(models)(obs)
    assert actions.shape == (3, 4)
    np.testing.assert_array_equal(actions[:, 0], [-0.5, 0.0, 0.5])
    for i, model in enumerate(models):
        [seen] = model.seen
        np.testing.assert_array_equal(seen, obs[i])
    with pytest.raises(ValueError, match="3 tasks, got 2"):
        PerTaskPolicy(models)(obs[:2])


def test_chunks_stop_at_every_evaluation_and_checkpoint_and_at_the_end():
    assert chunk_targets(300, 150, 5000) == [150, 300]
    assert chunk_targets(1000, 300, 500) == [300, 500, 600, 900, 1000]
    assert chunk_targets(10, 0, 0) == [10]


def test_run_writes_what_a_training_run_writes_and_resumes(tmp_path, capsys):
    run = tmp_path / "stl"
    timing = stl.main(["--benchmark", "MT1:reach-v3", "--total-steps", "200", "--eval-every",
                       "100", "--warmup-steps", "50", "--run-dir", str(run), *TINY])
    assert timing["env_steps"] == 200 and timing["stopped_by"] == "steps"
    assert timing["updates"] == 150  # SB3 updates once past learning_starts (50)
    assert 0 < timing["train_wall"] == pytest.approx(
        json.loads((run / "timing.json").read_text())["train_wall"])
    rows = (run / "evaluations.csv").read_text().splitlines()
    assert rows[0] == "env_steps,train_minutes,task,success,return,episodes"
    cells = [r.split(",") for r in rows[1:]]
    assert [(c[0], c[2], c[5]) for c in cells] == [("100", "reach-v3", "1"),
                                                   ("200", "reach-v3", "1")]
    assert 0 < float(cells[0][1]) <= float(cells[1][1])  # training minutes so far
    assert json.loads((run / "eval_latest.json").read_text())["env_steps"] == 200
    steps, values = read_curves(run, "success")["reach-v3"]
    assert list(steps) == [100, 200] and all(0 <= v <= 1 for v in values)
    described = json.loads((run / "stl.json").read_text())
    assert described["sb3"]["policy_kwargs"]["net_arch"] == [16, 16]
    assert described["sb3"]["batch_size"] == 16 and described["sb3"]["learning_starts"] == 50
    assert described["sb3"]["train_freq"] == 1 and described["sb3"]["gradient_steps"] == 1
    # obs 39 -> 16 -> 16 -> mean and log-std of 4 actions; two Q-nets on obs + action.
    assert described["parameters"] == {
        "actor": 39 * 16 + 16 + 16 * 16 + 16 + 2 * (16 * 4 + 4),
        "critic": 2 * (43 * 16 + 16 + 16 * 16 + 16 + 16 + 1)}
    assert not (run / "config.json").exists()  # not a conal_rl.train run
    assert list((run / "checkpoints").glob("task000-reach-v3.zip"))

    capsys.readouterr()
    timing = stl.main(["--resume", str(run), "--total-steps", "300"])
    assert f"resumed {run} at env step 200" in capsys.readouterr().out
    assert timing["env_steps"] == 300
    # Without --save-replay the empty buffer refills 50 steps before updates resume.
    assert timing["updates"] == 150 + 50
    assert (run / "evaluations.csv").read_text().splitlines()[-1].startswith("300,")

    with pytest.raises(SystemExit) as exit_info:
        stl.main(["--resume", str(run), "--hidden", "8"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot change hidden" in err[0]
    with pytest.raises(SystemExit):
        stl.main(["--benchmark", "MT1:reach-v3", "--run-dir", str(run)])
    assert "already holds a run" in capsys.readouterr().err


class FakeLearner:
    """SB3's learn/num_timesteps, logging every call (task, steps before, steps asked)."""

    _n_updates = 0

    def __init__(self, i: int, log: list, steps: int = 0):
        self.i, self.log, self.num_timesteps = i, log, steps

    def learn(self, total_timesteps, reset_num_timesteps, callback, progress_bar):
        assert not reset_num_timesteps  # the run continues, its step counter too
        self.log.append((self.i, self.num_timesteps, total_timesteps))
        self.num_timesteps += total_timesteps


def fake_run(tmp_path, steps_done=(0, 0, 0)):
    """An STLRun over three fake learners: per task 30 steps, evaluation every 10, a
    checkpoint every 15 (no envs, no SB3)."""
    log, evals = [], []
    run = object.__new__(STLRun)
    run.config = SimpleNamespace(benchmark="fake", save_replay=False)
    run.run_dir = tmp_path
    (tmp_path / "checkpoints").mkdir(exist_ok=True)
    run.T, run.tasks = 3, ["a", "b", "c"]
    run.per_task = {"total_steps": 30, "eval_every": 10, "checkpoint_every": 15}
    run.budget_s = None
    run.timers = {"eval": 0.0, "checkpoint": 0.0}
    run.progress = {"train_s": [0.0] * 3, "stopped_by_time": [False] * 3,
                    "last_eval_step": None, "last_eval_target": 0}
    run.models = [FakeLearner(i, log, n) for i, n in enumerate(steps_done)]
    run._save_model = lambda i: None

    def evaluate(bar):
        evals.append(run.env_steps)
        run.progress["last_eval_step"] = run.env_steps

    run._evaluate = evaluate
    return run, log, evals


def test_tasks_train_round_robin_and_are_evaluated_at_the_same_per_task_step(tmp_path):
    run, log, evals = fake_run(tmp_path)
    timing = run.run()
    # Chunks end at 10, 15, 20, 30 steps per task; every task reaches each in turn.
    assert log == [(0, 0, 10), (1, 0, 10), (2, 0, 10), (0, 10, 5), (1, 10, 5), (2, 10, 5),
                   (0, 15, 5), (1, 15, 5), (2, 15, 5), (0, 20, 10), (1, 20, 10), (2, 20, 10)]
    assert evals == [30, 60, 90]  # per-task steps 10, 20, 30 x 3 tasks
    assert timing["env_steps"] == 90 and timing["stopped_by"] == "steps"
    assert json.loads((tmp_path / "timing.json").read_text())["env_steps"] == 90


def test_a_run_killed_mid_chunk_continues_each_task_from_its_own_step(tmp_path):
    # Killed while task 1 trained towards 20: task 0 is there, task 1 and 2 are not.
    run, log, evals = fake_run(tmp_path, steps_done=(20, 17, 15))
    run.progress.update(last_eval_step=30, last_eval_target=10)
    run.run()
    assert log == [(1, 17, 3), (2, 15, 5), (0, 20, 10), (1, 20, 10), (2, 20, 10)]
    assert evals == [60, 90]


@pytest.mark.slow
def test_every_task_trains_to_its_share_in_turn_on_mt10(tmp_path):
    # ~40 s on 2 cores: building MT10's train and eval envs takes ~12 s each.
    run = tmp_path / "mt10"
    timing = stl.main(["--benchmark", "MT10", "--total-steps", "200", "--eval-every", "0",
                       "--checkpoint-every", "100", "--warmup-steps", "50", "--run-dir",
                       str(run), *TINY])
    assert timing["env_steps"] == 200
    assert {t["env_steps"] for t in timing["per_task"].values()} == {20}
    assert len(list((run / "checkpoints").glob("task*.zip"))) == 10
    latest = json.loads((run / "eval_latest.json").read_text())
    assert latest["env_steps"] == 200 and len(latest["tasks"]) == 10
    described = json.loads((run / "stl.json").read_text())
    assert described["per_task"]["total_steps"] == 20 and len(described["tasks"]) == 10


def test_minutes_budget_is_split_over_tasks_and_stops_training(tmp_path):
    run = tmp_path / "timed"
    timing = stl.main(["--benchmark", "MT1:reach-v3", "--total-steps", "1000000",
                       "--minutes", "0.01", "--eval-every", "0", "--warmup-steps", "50",
                       "--run-dir", str(run), *TINY])
    assert timing["stopped_by"] == "minutes"
    assert 0 < timing["env_steps"] < 1_000_000
    assert 0.6 <= timing["train_wall"] < 0.6 + 2.0


def test_bad_input_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        stl.main(["--benchmark", "MT11"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown benchmark 'MT11'" in err[0]
