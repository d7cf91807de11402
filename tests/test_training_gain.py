"""--branch-rule gain: probes trained beside the critic, compared on held-out whole
episodes; a branch opens where the measured gain clears the price, with its numbers in
grown.json; nothing opens where it does not; a run stopped mid-round resumes its probe."""

import json

import pytest

from conal_rl import train
from conal_rl.method import probe as probe_module
from conal_rl.training import branching, checkpoint
from conal_rl.training.rundir import RunDir

TINY = ["--benchmark", "gym:Pendulum-v1", "--preset", "quick", "--hidden", "16,16",
        "--batch-per-task", "16", "--warmup-steps", "100", "--eval-every", "0",
        "--eval-episodes", "1", "--device", "cpu", "--vector-strategy", "sync",
        "--checkpoint-every", "400", "--arch", "mhsac",
        "--branch-rule", "gain", "--gain-holdout", "2"]


@pytest.fixture
def two_held_out(monkeypatch):
    """Verdicts from 2 held-out episodes of each task (the rule waits for 4): shorter runs
    for the tests of what a verdict does; the first round starts at env step 1,200. And no
    round waits for the probes' share of the wall time, which the machine's load would
    decide."""
    monkeypatch.setattr(branching, "MIN_EPISODES", 2)
    monkeypatch.setattr(branching, "MAX_SHARE", 1.0)


def _gains(value, se=0.01):
    def fake(net_loss, probe_loss, episodes):
        real = probe_module.paired_gain(net_loss, probe_loss, episodes)
        return [probe_module.Gain(value, se, g.episodes) for g in real]
    return fake


def test_probes_measure_on_held_out_episodes(tmp_path, two_tasks):
    run = tmp_path / "run"
    # Pendulum's episodes are 200 steps: every other one held out, the 4th of each task from
    # env step 2,800 (both tasks' steps counted): the first round starts then.
    train.main([*TINY, "--total-steps", "3600", "--branch-every", "400", "--gain-price", "0.5",
                "--run-dir", str(run)])
    state = checkpoint.load(RunDir(run).checkpoint)["hooks"]["branching"]
    measured = state["gain"]["measured"]
    assert measured and {v["module"] for v in measured} == {2}  # both tasks share all
    assert all(v["episodes"] >= 4 and v["se"] > 0 for v in measured)
    assert state["gain"]["seconds"] > 0
    # one task a round (a quarter of two, rounded up)
    assert len({v["env_steps"] for v in measured}) == len(measured)
    grown = json.loads(RunDir(run).grown.read_text())
    assert grown["critic"]["probes"][0]["task"] == two_tasks[0]
    assert 0 < grown["critic"]["probe_seconds"] < grown["critic"]["train_seconds"]
    assert RunDir(run).gains_picture.stat().st_size > 0


@pytest.mark.parametrize("arch", ["mhsac", "mtsac"])  # MT-SAC's tree: its head shared
def test_a_gain_that_pays_opens_a_branch_with_its_numbers(tmp_path, two_tasks, monkeypatch,
                                                            capsys, two_held_out, arch):
    monkeypatch.setattr(branching, "paired_gain", _gains(0.3))
    run = tmp_path / "run"
    train.main([*TINY, "--total-steps", "2000", "--branch-every", "400", "--gain-price", "0.1",
                "--run-dir", str(run), "--arch", arch])
    state = checkpoint.load(RunDir(run).checkpoint)["hooks"]["branching"]
    # Task 0, probed first, leaves module 2; the next round probes it at module 1.
    assert tuple(state["trees"]["critic"]["branch_points"]) == (1, 2)
    assert state["trees"]["critic"]["shared_head"] == (arch == "mtsac")
    (branch,) = state["branches"]
    assert (branch["net"], branch["task"], branch["module"]) == ("critic", two_tasks[0], 2)
    assert branch["gain"] == 0.3 and branch["price"] == 0.1 and branch["episodes"] >= 2
    assert (state["gain"]["module"], state["gain"]["tasks"]) == (1, [0])
    assert tuple(state["trees"]["actor"]["branch_points"]) == (2, 2)  # the actor is not probed
    out, err = capsys.readouterr()
    assert "its held-out TD error 30.0% lower" in out
    assert "branches=1" in err and "verdicts=" in err  # the progress bar shows the growth


def test_no_gain_no_branch(tmp_path, two_tasks, monkeypatch, two_held_out):
    # above the price, not by 1.96 errors
    monkeypatch.setattr(branching, "paired_gain", _gains(0.06, se=0.01))
    run = tmp_path / "run"
    train.main([*TINY, "--total-steps", "2000", "--branch-every", "400", "--run-dir", str(run)])
    state = checkpoint.load(RunDir(run).checkpoint)["hooks"]["branching"]
    assert tuple(state["trees"]["critic"]["branch_points"]) == (2, 2)
    assert state["branches"] == [] and state["gain"]["measured"]
    assert not any(v["opened"] for v in state["gain"]["measured"])


@pytest.mark.parametrize("flags, message", [
    (["--gain-price", "-0.1"], "--gain-price must be"),
    (["--gain-holdout", "1"], "--gain-holdout must be at least 2"),
    (["--gain-budget", "-1"], "--gain-budget must not be negative"),
])
def test_bad_gain_flags_are_refused(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_:
        train.main([*TINY, "--branch-every", "400", *flags, "--run-dir", str(tmp_path / "r")])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_round_stopped_midway_resumes_with_its_probe(tmp_path, two_tasks, monkeypatch):
    from conal_rl.training import preflight

    monkeypatch.setattr(preflight, "task_names", lambda name: list(two_tasks))
    run = tmp_path / "run"
    train.main([*TINY, "--branch-every", "1200", "--gain-price", "0.5", "--save-replay",
                "--total-steps", "3000", "--run-dir", str(run)])
    saved = checkpoint.load(RunDir(run).checkpoint)["hooks"]["branching"]["gain"]
    assert saved["probe"] is not None and saved["measured"] == []
    train.main(["--resume", str(run), "--total-steps", "3200"])  # the same round goes on
    assert checkpoint.load(RunDir(run).checkpoint)["hooks"]["branching"]["gain"]["started"] \
        == saved["started"]
    train.main(["--resume", str(run), "--total-steps", "4400"])
    after = checkpoint.load(RunDir(run).checkpoint)["hooks"]["branching"]["gain"]
    assert after["measured"] and after["measured"][0]["env_steps"] >= saved["started"] + 1200
    assert after["seconds"] > saved["seconds"]


def test_the_held_out_buffer_keeps_the_newest_eight_episodes_of_a_task():
    from types import SimpleNamespace

    from conal_rl.training.config import TrainConfig

    metaworld = SimpleNamespace(max_episode_steps=500)
    conal = TrainConfig(benchmark="MT10", arch="conal", preset="laptop")
    assert train.held_out_episodes(conal, metaworld) == {
        "holdout_every": 10, "holdout_by": "episodes", "holdout_window": 4000}
    assert train.held_out_episodes(TrainConfig(benchmark="MT10", arch="mhsac"), metaworld) == {}


@pytest.mark.parametrize("budget, opens", [(772 + 544, True), (772 + 543, False)])
def test_a_budget_refuses_what_would_pass_it(tmp_path, two_tasks, monkeypatch, budget, opens,
                                             two_held_out):
    """The twin critics of TINY's MH-SAC hold 772 parameters; task 0's copy of module 2
    adds 2 x (16 + 1) x 16 = 544."""
    monkeypatch.setattr(branching, "paired_gain", _gains(0.3))
    run = tmp_path / "run"
    train.main([*TINY, "--total-steps", "2000", "--branch-every", "400",
                "--gain-budget", str(budget), "--run-dir", str(run)])
    state = checkpoint.load(RunDir(run).checkpoint)["hooks"]["branching"]
    first = state["gain"]["measured"][0]
    assert bool(state["branches"]) == opens == first["opened"]
    assert first.get("over_budget", False) == (not opens)


def test_a_round_waits_while_the_probes_have_spent_their_share_or_episodes_are_few():
    import time

    import numpy as np

    from agents import MultiTaskReplay
    from conal_rl.training.config import GrowthSettings

    replay = MultiTaskReplay(100, 2, 1, 1, holdout_every=2, holdout_by="episodes")
    rule = branching.MeasuredGain(GrowthSettings(every=100))
    now = time.perf_counter()
    rule._since, rule.wall = now, 100.0
    for step in range(24):  # episodes of 4 steps: 3 held out
        replay.add(np.zeros((2, 1)), np.zeros((2, 1)), np.zeros(2), np.zeros((2, 1)),
                   np.zeros(2), np.full(2, step % 4 == 3))
    assert not rule._may_start(replay, 0, now)  # 3 held-out episodes: too few
    for step in range(24, 32):
        replay.add(np.zeros((2, 1)), np.zeros((2, 1)), np.zeros(2), np.zeros((2, 1)),
                   np.zeros(2), np.full(2, step % 4 == 3))
    assert not rule._may_start(replay, 5, now)  # looked at 10 env steps ago: not yet
    assert rule._may_start(replay, 10, now)
    rule.seconds, rule._look_at = branching.MAX_SHARE * 100 + 1, 0  # over its share
    assert not rule._may_start(replay, 20, now)


def test_a_grouped_tree_grows_by_gain_and_resumes_grown(tmp_path, two_tasks, monkeypatch,
                                                         capsys, two_held_out):
    """CoNAL-Pro's trees: a task that gains leaves its group; left alone, the other task
    runs its own module too; the grown groups are what a resume builds."""
    from conal_rl.training import preflight

    monkeypatch.setattr(preflight, "task_names", lambda name: list(two_tasks))
    monkeypatch.setattr(branching, "paired_gain", _gains(0.3))
    tree = {"hidden": [16, 16], "groups": [[0, 0], [0, 0]]}
    path = tmp_path / "groups.json"
    path.write_text(json.dumps({"actor": tree, "critic": tree}))
    run = tmp_path / "run"
    grouped = [*TINY, "--arch", "tree", "--architecture", str(path)]
    train.main([*grouped, "--total-steps", "2000", "--branch-every", "400",
                "--run-dir", str(run)])
    state = checkpoint.load(RunDir(run).checkpoint)["hooks"]["branching"]
    assert state["trees"]["critic"]["groups"] == [[0, 0], [0, 1]]
    first, alone = state["branches"][:2]
    assert (first["task"], first["module"], first["gain"]) == (two_tasks[0], 2, 0.3)
    assert (alone["task"], alone["module"], alone["left_alone"]) == (two_tasks[1], 2, True)
    assert "the other tasks of its group left it" in capsys.readouterr().out
    grown = json.loads(RunDir(run).grown.read_text())
    assert grown["critic"]["groups"] == [[0, 0], [0, 1]]
    # Resumed without its replay (no --save-replay): the round under way waits for held-out
    # episodes before its verdict, instead of judging on none.
    train.main(["--resume", str(run), "--total-steps", "2400"])
    assert "resumed" in capsys.readouterr().out
    after = checkpoint.load(RunDir(run).checkpoint)["hooks"]["branching"]
    assert after["gain"]["measured"] == state["gain"]["measured"]
    assert after["gain"]["probe"] is not None and after["trees"] == state["trees"]
    from conal_rl.training.runs import load_run

    assert load_run(run).agent.critic.q1.spec.groups == ((0, 0), (0, 1))  # evaluate, render


def test_conal_and_conal_pro_grow_by_gain_by_default():
    from conal_rl.training.config import TrainConfig

    for arch in ("conal", "conal-pro"):
        laptop = TrainConfig(benchmark="MT10", arch=arch, preset="laptop")
        assert (laptop.branch_every, laptop.branch_rule) == (50_000, "gain")
        assert TrainConfig(benchmark="MT10", arch=arch, preset="quick").branch_every == 0
    assert TrainConfig(benchmark="MT10", arch="mhsac", preset="laptop").branch_every == 0
