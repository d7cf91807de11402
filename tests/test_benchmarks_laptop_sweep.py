"""benchmarks/laptop_sweep.py: a candidate trains for a wall-clock budget, the minutes
report reads its evaluations, and a larger budget extends the same run."""

import json

import pytest

from benchmarks import laptop_sweep


@pytest.mark.slow  # ~1 min: MT10 envs and evaluations
def test_a_candidate_runs_for_its_minutes_and_is_extended(tmp_path):
    args = ["--candidates", "w128x3-b32", "--eval-episodes", "1", "--runs-dir",
            str(tmp_path / "runs"), "--out-dir", str(tmp_path / "out")]
    payload = laptop_sweep.main([*args, "--minutes", "0.1"])
    [entry] = payload["candidates"]
    assert entry["runs"] == 1 and entry["env_steps"] > 0
    assert 0.1 <= entry["train_minutes"] < 0.2
    run = tmp_path / "runs" / "MT10-laptop" / "w128x3-b32-s0"
    timing = json.loads((run / "timing.json").read_text())
    assert timing["stopped_by"] == "minutes"
    assert (tmp_path / "out" / "minutes.png").stat().st_size > 1000
    assert "| w128x3-b32 |" in (tmp_path / "out" / "minutes.md").read_text()
    # A larger budget resumes the same run rather than starting again.
    laptop_sweep.main([*args, "--minutes", "0.2"])
    extended = json.loads((run / "timing.json").read_text())
    assert extended["env_steps"] > timing["env_steps"] and extended["train_wall"] >= 12
