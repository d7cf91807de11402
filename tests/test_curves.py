"""benchmarks/curves.py: evaluation curves against env steps and training minutes."""

import csv

import numpy as np

from benchmarks import curves
from conal_rl.training.runs import EVALUATION_COLUMNS


def write_evaluations(run_dir, rows):
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "evaluations.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, EVALUATION_COLUMNS)
        writer.writeheader()
        for step, minutes, task, success in rows:
            writer.writerow({"env_steps": step, "train_minutes": minutes, "task": task,
                             "success": success, "return": 0.0, "episodes": 5})


def test_read_curve_averages_tasks_on_either_axis_and_keeps_a_repeated_steps_last_value(
        tmp_path):
    write_evaluations(tmp_path, [(100, 1.0, "a", 0.0), (100, 1.0, "b", 0.4),
                                 (200, 2.5, "a", 0.2), (200, 2.5, "b", 0.2),
                                 (200, 2.6, "a", 1.0), (200, 2.6, "b", 0.6)])  # resumed
    steps, values = curves.read_curve(tmp_path, "success", "env_steps")
    np.testing.assert_array_equal(steps, [100, 200])
    np.testing.assert_allclose(values, [0.2, 0.8])
    minutes, _ = curves.read_curve(tmp_path, "success", "train_minutes")
    np.testing.assert_allclose(minutes, [1.0, 2.6])
    assert len(curves.read_curve(tmp_path / "none")[0]) == 0


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
    assert np.all(band.se >= 0)
