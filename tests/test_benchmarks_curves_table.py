"""benchmarks/experiments/curves_table.py: runs side by side at equal env steps, from their
evaluations.csv; bad input is one line and exit status 2."""

import json

import pytest

from benchmarks.experiments import curves_table


def _run(path, arch, evaluations, benchmark="MT10"):
    """A run directory with ``evaluations``: (env steps, minutes, {task: success})."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"benchmark": benchmark, "arch": arch,
                                                  "preset": "quick", "seed": 0}))
    rows = ["env_steps,train_minutes,task,success,return,episodes"]
    rows += [f"{steps},{minutes},{task},{value},1.0,5" for steps, minutes, tasks in evaluations
             for task, value in tasks.items()]
    (path / "evaluations.csv").write_text("\n".join(rows) + "\n")
    return str(path)


def test_runs_are_read_at_their_evaluations_side_by_side(tmp_path):
    a = _run(tmp_path / "a", "mtsac", [(100, 1.5, {"t0": 0.0, "t1": 0.5}),
                                       (200, 3.0, {"t0": 1.0, "t1": 0.5})])
    b = _run(tmp_path / "b", "conal-pro", [(200, 9.25, {"t0": 0.25, "t1": 0.25})])
    out = tmp_path / "table"
    payload = curves_table.main([a, b, "--out", str(out)])
    assert payload["runs"][0]["points"] == [
        {"env_steps": 100, "train_minutes": 1.5, "success": 0.25},
        {"env_steps": 200, "train_minutes": 3.0, "success": 0.75}]
    text = out.with_suffix(".md").read_text()
    assert "| 100 | 0.25 (1.5 min) | - |" in text
    assert "| 200 | 0.75 (3.0 min) | 0.25 (9.2 min) |" in text


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    a = _run(tmp_path / "a", "mtsac", [(100, 1.0, {"t0": 0.0})])
    other = _run(tmp_path / "b", "mtsac", [(100, 1.0, {"t0": 0.0})], benchmark="MT50")
    empty = _run(tmp_path / "c", "mtsac", [])
    for args in ([str(tmp_path)], [a, other], [empty]):
        with pytest.raises(SystemExit) as stop:
            curves_table.main([*args, "--out", str(tmp_path / "x")])
        assert stop.value.code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
