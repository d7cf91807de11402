"""python -m conal_rl.atlas: a run's conflict atlas from its replay or fresh rollouts, the
live measurements of train --atlas-every, and one clean line for bad input."""

import json
import subprocess
import sys

import pytest

from conal_rl import atlas, train
from conal_rl.training.rundir import RunDir

TINY = ["--benchmark", "gym:Pendulum-v1", "--preset", "quick", "--hidden", "16,16",
        "--batch-per-task", "16", "--warmup-steps", "100", "--eval-every", "0",
        "--eval-episodes", "1", "--device", "cpu", "--vector-strategy", "sync"]


@pytest.fixture
def trained(tmp_path, two_tasks):
    """A two-task run with live atlas measurements every 200 env steps and its replay."""
    run = tmp_path / "run"
    train.main([*TINY, "--total-steps", "400", "--atlas-every", "200", "--atlas-samples",
                "64", "--save-replay", "--run-dir", str(run)])
    return run


def test_training_measures_live_and_the_command_draws_the_atlas(trained, tmp_path):
    files = RunDir(trained)
    live = [json.loads(p.read_text())["env_steps"] for p in files.atlas_measurements()]
    assert live == [200, 400]
    payload = atlas.main([str(trained), "--samples", "64"])
    assert payload["source"] == "replay" and payload["env_steps"] == 400
    layers = payload["nets"]["critic"]
    assert "q1/shared.1" in layers and layers["q1/shared.1"]["task_names"] == [
        "pendulum-g10", "pendulum-g4"]
    for name in ("atlas.json", "critic.png", "actor.png", "critic-over-training.png"):
        assert (files.atlas / name).is_file(), name
    rollouts = atlas.main([str(trained), "--samples", "64", "--source", "rollouts",
                           "--out", str(tmp_path / "fresh"), "--no-tensorboard"])
    assert rollouts["source"] == "rollouts" and (tmp_path / "fresh" / "atlas.json").is_file()


def bad(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conal_rl.atlas", *args],
                          capture_output=True, text=True, timeout=120)


def test_bad_input_is_one_line_and_exit_status_2(tmp_path):
    for args, says in [((str(tmp_path),), "not a conal-rl run"),
                       ((str(tmp_path / "nope"),), "no such run directory"),
                       ((str(tmp_path), "--samples", "10"), "--samples must be at least"),
                       ((str(tmp_path), "--source", "nope"), "invalid choice")]:
        proc = bad(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and says in proc.stderr, proc.stderr


def test_a_run_of_one_task_or_without_shared_layers_is_refused(tmp_path, two_tasks, capsys,
                                                              monkeypatch):
    private = tmp_path / "private"
    train.main([*TINY, "--total-steps", "200", "--arch", "independent", "--run-dir",
                str(private)])
    with pytest.raises(SystemExit) as stop:
        atlas.main([str(private), "--samples", "64"])
    assert stop.value.code == 2 and "no shared layers" in capsys.readouterr().err
    monkeypatch.undo()  # Pendulum as the one task it is
    one = tmp_path / "one"
    train.main([*TINY, "--total-steps", "200", "--run-dir", str(one)])
    with pytest.raises(SystemExit) as stop:
        atlas.main([str(one), "--samples", "64"])
    assert stop.value.code == 2 and "one task" in capsys.readouterr().err


def test_the_summary_says_how_many_episodes_the_figures_rest_on():
    from conal_rl.atlas import episodes_note

    assert "at least 8 episodes per task" in episodes_note([8, 12])
    assert episodes_note([2, 12]).startswith("warning: some task's samples come from 2")
    assert episodes_note([None]).startswith("warning: the samples' episodes are not known")


def test_the_summary_reads_the_signs_where_a_head_is_shared_a_groups_included():
    from conal_rl.atlas import summary_text

    layer = {"reliability": 0.5, "episodes": 8, "mean_cosine": 0.1, "negative_share": 0.2,
             "conflicting": [], "outside_main_cluster": []}
    def summary(names):
        return summary_text({"env_steps": 1, "samples": 64, "source": "replay",
                             "over_training": [{"nets": {"critic": dict.fromkeys(names, layer)}}]})
    heads_note = "a head per task, so the signs follow the heads"
    assert heads_note in summary(["q1/shared.1"])
    assert heads_note not in summary(["q1/shared.1", "q1/head"])
    assert heads_note not in summary(["q1/group.1.0", "q1/head.0"])  # CoNAL-Pro's shared head
    assert heads_note in summary(["q1/group.1.0", "q1/group.2.0"])
