"""benchmarks.studies.width_gain: a run's critic, the critic made wider and the gain rule's
private copies trained alike on the run's saved replay, measured on held-out episodes."""

import json

import pytest
from test_commands_atlas import TINY  # the same tiny Pendulum run

from benchmarks.studies import width_gain
from conal_rl import train


@pytest.fixture
def trained(tmp_path, two_tasks):
    """A two-task MH-SAC run over five 200-step episodes per task, its replay saved."""
    run = tmp_path / "run"
    train.main([*TINY, "--arch", "mhsac", "--total-steps", "2000", "--save-replay",
                "--run-dir", str(run)])
    return run


def test_the_wide_critic_starts_as_the_critic_and_every_candidate_is_measured(trained,
                                                                              tmp_path):
    out = tmp_path / "wg"
    payload = width_gain.main([str(trained), "--updates", "20", "--looks", "2", "--holdout",
                               "2", "--seeds", "0,1", "--out", str(out)])
    row, again = payload["rows"]
    assert (row["seed"], again["seed"]) == (0, 1)
    assert row["looks"][-1]["null"] != again["looks"][-1]["null"]  # other draws
    between = payload["replication"][str(trained)]
    assert set(between) == {"wide", "wide-slow", "private", "null"}
    assert all(r["spread_over_se"] > 0 for r in between.values())
    assert row["critic"] == [16, 16] and row["probed_module"] == 2
    assert row["held_out"]["episodes_per_task"] == 2  # episodes 1 and 3 of 0-4
    start, *later = row["looks"]
    assert [look["updates"] for look in later] == [10, 20]
    for name in ("wide", "wide-slow", "private", "null"):  # the same function at the start
        assert start[name]["all"]["gain"] == pytest.approx(0, abs=1e-6)
        assert set(later[-1][name]["tasks"]) == {"pendulum-g10", "pendulum-g4"}
        assert later[-1][name]["all"]["gain"] != 0  # trained apart
    assert json.loads(out.with_suffix(".json").read_text())["rows"][0]["run"] == str(trained)
    report = out.with_suffix(".md").read_text()
    assert "| wide | 20 |" in report and "## Between seeds" in report
    assert payload["overall"]["null"]["looks"] == 4  # two looks, two seeds
    assert out.with_suffix(".png").stat().st_size > 0


def test_between_seeds_a_gain_moves_in_units_of_its_error_and_verdicts_are_counted():
    def row(seed, gains, passed):
        tasks = {t: {"gain": g, "se": 0.1, "episodes": 3} for t, g in gains.items()}
        look = {"null": {"all": {}, "tasks": tasks, "pass": passed}}
        return {"run": "r", "seed": seed, "looks": [look, look]}  # the first look is skipped

    one = width_gain.replication([row(0, {"a": 0.1, "b": 0.5}, ["a"]), row(1, {"a": 0.3, "b": 0.5},
                                                                         ["a", "b"])])
    assert one["r"]["null"] == {"spread_over_se": pytest.approx(0.707, abs=1e-3),  # a 1.41, b 0
                                "passed_on_some": 2, "passed_on_all": 1}
    assert width_gain.replication([row(0, {"a": 0.1}, [])]) == {}  # one seed: nothing to say
    rows = [row(0, {"a": 0.1, "b": 0.5}, ["a"]), row(1, {"a": 0.3, "b": 0.5}, ["a", "b"])]
    for r, pooled in zip(rows, (0.2, -0.1)):
        r["looks"][1]["null"]["all"] = {"gain": pooled}
    assert width_gain.overall(rows, one)["null"] == {
        "looks": 2, "gain_positive": 1, "gain_median": pytest.approx(0.05), "verdicts": 4,
        "passed": 3, "passed_on_some": 2, "passed_on_all": 1}


@pytest.mark.parametrize("args, message", [
    (["--factor", "1"], "--factor must be at least 2"),
    (["--noise", "-1"], "--noise must not be negative"),
    (["--noise", "nan"], "--noise must not be negative"),
    (["--price", "nan"], "--price must not be negative"),
    (["--holdout", "1"], "--holdout must be at least 2"),
    (["--seeds", "0,x"], "--seeds takes comma-separated whole numbers"),
    (["--seeds", "1,1"], "--seeds: a seed named twice"),
])
def test_bad_settings_are_one_line_before_any_run_is_read(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        width_gain.main([str(tmp_path), *args])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_a_run_without_its_replay_is_one_line_and_the_runs_before_it_are_kept(trained,
                                                                               tmp_path,
                                                                               capsys):
    run, out = tmp_path / "no-replay", tmp_path / "wg"
    train.main([*TINY, "--total-steps", "400", "--run-dir", str(run)])
    with pytest.raises(SystemExit) as stop:
        width_gain.main([str(trained), str(run), "--updates", "4", "--looks", "1",
                         "--holdout", "2", "--out", str(out)])
    assert stop.value.code == 2 and "--save-replay" in capsys.readouterr().err
    kept = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [row["run"] for row in kept] == [str(trained)]
