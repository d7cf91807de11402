"""benchmarks/speed.py on a tiny one-task run: its rows, and that rows already written are
skipped."""

import json

import pytest

from benchmarks import speed

TINY = ["--benchmark", "gym:Pendulum-v1", "--steps", "200", "--hidden", "8,8"]


@pytest.fixture
def out(tmp_path):
    return tmp_path / "speed.json"


def test_rows_and_overhead(out):
    speed.main([*TINY, "--archs", "mtsac", "--out", str(out)])
    payload = json.loads(out.read_text())
    assert payload["machine"]["torch_threads"] == 1
    [row] = payload["rows"]
    assert row["key"] == "gym:Pendulum-v1/quick/mtsac" and row["phase"] == "train"
    assert row["env_steps"] == 200 and 0 < row["updates"] <= 200
    assert row["overhead"] == pytest.approx(row["wall_s"] / (row["env_s"] + row["update_s"]))
    # The loop does more than step and update, so its wall time is the larger.
    assert row["overhead"] >= 1
    assert row["env_steps_per_s"] == pytest.approx(200 / row["wall_s"])
    assert "| mtsac | train |" in out.with_suffix(".md").read_text()


def test_rows_already_written_are_skipped(out):
    speed.main([*TINY, "--archs", "mtsac", "--out", str(out)])
    first = json.loads(out.read_text())["rows"][0]
    speed.main([*TINY, "--archs", "mtsac,env", "--out", str(out)])
    payload = json.loads(out.read_text())
    assert [r["arch"] for r in payload["rows"]] == ["mtsac", "env"]
    assert payload["rows"][0] == first  # not measured again
    assert len(payload["commands"]) == 2
    speed.main([*TINY, "--archs", "env", "--force", "--out", str(out)])
    assert [r["arch"] for r in json.loads(out.read_text())["rows"]] == ["mtsac", "env"]
