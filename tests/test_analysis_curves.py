"""Evaluation curves: the one reader (conal_rl/analysis/curves.py, from a run's
evaluations.csv) against env steps and training minutes, and
benchmarks/experiments/minute_curves.py's
curves on a grid of minutes."""

import math

import numpy as np
import pytest

from benchmarks.experiments import minute_curves as curves
from conal_rl.analysis.curves import MEAN, read_curves
from conal_rl.common import UserError
from conal_rl.training.runs import EVALUATION_COLUMNS, record_evaluation
from envs import EvalResult


def write_evaluations(run_dir, rows):
    """``rows`` of (env step, training minutes, task, success), recorded as training does:
    one evaluation per run of rows with the same step and minutes."""
    run_dir.mkdir(parents=True, exist_ok=True)
    evaluations: dict[tuple[int, float], dict[str, float]] = {}
    for step, minutes, task, success in rows:
        evaluations.setdefault((step, minutes), {})[task] = success
    for (step, minutes), success in evaluations.items():
        tasks = list(success)
        returns = {t: 10.0 * step + v for t, v in success.items()}
        record_evaluation(run_dir, EvalResult(tasks, success, returns, 5), step, minutes)


RESUMED = [(100, 1.0, "a", 0.0), (100, 1.0, "b", 0.4),
           (200, 2.5, "a", 0.2), (200, 2.5, "b", 0.2),
           (200, 2.6, "a", 1.0), (200, 2.6, "b", 0.6)]  # resumed: step 200 evaluated again


def test_read_curve_averages_tasks_on_either_axis_and_keeps_a_repeated_steps_last_value(
        tmp_path):
    write_evaluations(tmp_path, RESUMED)
    steps, values = read_curves(tmp_path, "success", "env_steps")[MEAN]
    np.testing.assert_array_equal(steps, [100, 200])
    np.testing.assert_allclose(values, [0.2, 0.8])
    minutes, _ = read_curves(tmp_path, "success", "train_minutes")[MEAN]
    np.testing.assert_allclose(minutes, [1.0, 2.6])
    assert read_curves(tmp_path / "none") == {}  # no evaluation yet


def test_per_task_curves_against_minutes_and_returns(tmp_path):
    write_evaluations(tmp_path, [(300, 4.0, "a", 0.5), (300, 4.0, "b", 0.5), *RESUMED])
    success = read_curves(tmp_path, "success", "train_minutes")
    assert list(success) == [MEAN, "a", "b"]
    minutes, a = success["a"]
    np.testing.assert_allclose(minutes, [1.0, 2.6, 4.0])  # in step order, resumed step last
    np.testing.assert_allclose(a, [0.0, 1.0, 0.5])
    np.testing.assert_allclose(success["b"][1], [0.4, 0.6, 0.5])
    steps, returns = read_curves(tmp_path, "return")["b"]
    np.testing.assert_array_equal(steps, [100, 200, 300])
    np.testing.assert_allclose(returns, [1000.4, 2000.6, 3000.5])


def test_a_gymnasium_run_has_returns_and_no_success(tmp_path):
    (tmp_path / "evaluations.csv").write_text(
        ",".join(EVALUATION_COLUMNS) + "\n"
        "1000,0.5,Pendulum-v1,,-1200.0,5\n2000,1.0,Pendulum-v1,,-800.0,5\n")
    steps, returns = read_curves(tmp_path, "return")[MEAN]
    np.testing.assert_array_equal(steps, [1000, 2000])
    np.testing.assert_allclose(returns, [-1200.0, -800.0])
    assert all(math.isnan(v) for v in read_curves(tmp_path, "success")["Pendulum-v1"][1])
    record_evaluation(tmp_path, EvalResult(["Pendulum-v1"], {"Pendulum-v1": math.nan},
                                           {"Pendulum-v1": -400.0}, 5), 3000, 1.5)
    assert list(read_curves(tmp_path, "return")[MEAN][1]) == [-1200.0, -800.0, -400.0]
    assert math.isnan(read_curves(tmp_path, "success")[MEAN][1][-1])


@pytest.mark.parametrize("text, message", [
    ("env_steps,task,success,return,episodes\n100,a,0.5,1.0,5\n",
     "has no train_minutes column"),
    (",".join(EVALUATION_COLUMNS) + "\n100,1.0,a,0.5,1.0,5\n1x0,2.0,a,0.5,1.0,5\n",
     "line 3: not an evaluation row"),
])
def test_an_unreadable_file_is_one_clear_error(tmp_path, text, message):
    (tmp_path / "evaluations.csv").write_text(text)
    with pytest.raises(UserError, match=message):
        read_curves(tmp_path, "success", "train_minutes")


def test_value_at_reads_the_latest_evaluation_and_nothing_past_the_last():
    minutes, values = np.array([1.0, 2.5, 4.0]), np.array([0.1, 0.3, 0.6])
    got = curves.value_at(minutes, values, np.array([0.5, 0.95, 3.0, 4.05, 10.0]))
    np.testing.assert_array_equal(got, [np.nan, 0.1, 0.3, 0.6, np.nan])


def test_minutes_band_stops_where_the_shortest_run_stops():
    runs = [(np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.2, 0.4])),
            (np.array([1.1, 2.2]), np.array([0.2, 0.4]))]
    band = curves.minutes_band("x", runs, minutes=3.0, points=31)
    assert band.runs == 2 and band.steps[0] >= 1.0 and band.steps[-1] <= 2.2 + curves.MARK_GRACE
    at_2 = np.argmin(abs(band.steps - 2.0))
    assert band.mean[at_2] == 0.2 / 2 + 0.2 / 2  # run 1 reads 0.2, run 2 its 1.1 value 0.2

    def latest(xs, values, point):  # each run read as a user stopping it at ``point`` would
        if point > xs[-1] + curves.MARK_GRACE:
            return None  # not trained that far
        seen = [v for x, v in zip(xs, values) if x - curves.MARK_GRACE <= point]
        return seen[-1] if seen else None

    read = [(g, latest(*runs[0], g), latest(*runs[1], g)) for g in np.linspace(0, 3.0, 31)]
    kept = [(g, a, b) for g, a, b in read if a is not None and b is not None]
    np.testing.assert_allclose(band.steps, [g for g, _, _ in kept])
    a, b = (np.array([k[i] for k in kept]) for i in (1, 2))
    np.testing.assert_allclose(band.mean, (a + b) / 2)
    np.testing.assert_allclose(band.se, abs(a - b) / 2)  # the s.e. of two values
    assert band.se.max() == pytest.approx(0.1)  # |0 - 0.2| / 2: run 1 reads 0, run 2 0.2
