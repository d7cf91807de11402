"""benchmarks/experiments/laptop_sweep.py: a candidate trains for a wall-clock budget, the minutes
report reads its evaluations at fixed training minutes, a larger budget extends the same
run, and every call is recorded with the candidates it ran."""

import json

import pytest
import torch

from benchmarks.experiments import laptop_sweep
from benchmarks.experiments.success_runs import ROWS
from conal_rl.train import build_parser
from conal_rl.training import checkpoint
from conal_rl.training.config import TrainConfig, given_arguments
from conal_rl.training.nets import fixed_trees, save_specs
from conal_rl.training.runs import record_evaluation
from envs import EvalResult


@pytest.fixture(autouse=True)
def success_rows_as_they_were():
    """laptop_sweep registers its candidates as rows of benchmarks.experiments.success (one shared
    dict): take them out again, for the tests of the success benchmark's own rows."""
    before = dict(ROWS)
    yield
    ROWS.clear()
    ROWS.update(before)


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


# ---- the minutes report on fabricated runs (fast: no env, no training) ---------------------------
MT10_TASKS = ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3",
              "drawer-close-v3", "button-press-topdown-v3", "peg-insert-side-v3",
              "window-open-v3", "window-close-v3"]


def _fake_run(run_dir, candidate, minutes_budget, evaluations, timing):
    """A finished laptop-sweep run: its config and trees, evaluations (minutes, success of
    every task), timing.json and a checkpoint to count parameters from."""
    flags, _ = laptop_sweep.CANDIDATES[candidate]
    given = given_arguments(build_parser().parse_args(list(flags)))  # the candidate's learner
    config = TrainConfig(**given | dict(
        benchmark="MT10", preset="laptop", arch="mtsac", minutes=minutes_budget, eval_episodes=5,
        eval_every=50_000, torch_threads=1, save_replay=True, device="cpu"))
    run_dir.mkdir(parents=True)
    config.save(run_dir / "config.json")
    save_specs(run_dir / "architecture.json", fixed_trees(config, MT10_TASKS, (39, 4)))
    for i, (minutes, success) in enumerate(evaluations, 1):
        result = EvalResult(MT10_TASKS, dict.fromkeys(MT10_TASKS, success),
                            dict.fromkeys(MT10_TASKS, 1.0), 5)
        record_evaluation(run_dir, result, 50_000 * i, minutes)
    (run_dir / "timing.json").write_text(json.dumps(timing))
    checkpoint.save_atomic({"agent": {"actor.net.w": torch.zeros(3),
                                      "critic.q1.w": torch.zeros(5)}},
                           run_dir / "checkpoints" / "latest.pt")


def test_the_minutes_report_reads_each_run_at_the_marks(tmp_path):
    runs = tmp_path / "runs" / "MT10-laptop"
    # An hour-long run, and a 15-minute screen of another candidate.
    _fake_run(runs / "w128x3-b32-s0", "w128x3-b32", 60.0,
              [(4.0, 0.1), (12.0, 0.2), (31.0, 0.3), (60.0, 0.4)],
              {"env_steps": 950_000, "updates": 93_000, "train_wall": 3600.0,
               "stopped_by": "minutes"})
    _fake_run(runs / "w256x3-b64-s0", "w256x3-b64", 15.0, [(8.0, 0.05), (14.95, 0.15)],
              {"env_steps": 120_000, "updates": 11_000, "train_wall": 897.0,
               "stopped_by": "minutes"})
    argv = ["--report-only", "--candidates", "w128x3-b32,w256x3-b64", "--runs-dir",
            str(tmp_path / "runs"), "--out-dir", str(tmp_path / "out")]
    payload = laptop_sweep.main(argv)
    long, screen = payload["candidates"]
    assert payload["marks"] == [5, 10, 15, 20, 30, 45, 60]
    # Each mark reads the latest evaluation at or before it; blank past a run's last one.
    assert long["at_marks"] == pytest.approx([0.1, 0.1, 0.2, 0.2, 0.2, 0.3, 0.4])
    assert long["final_mean"] == pytest.approx(0.4) and long["runs"] == 1
    assert (long["env_steps"], long["updates"], long["train_minutes"]) == (950_000, 93_000, 60)
    assert screen["at_marks"][:3] == [None, pytest.approx(0.05), pytest.approx(0.15)]
    assert screen["at_marks"][3:] == [None] * 4 and screen["final_mean"] == pytest.approx(0.15)
    # The call is recorded with what it ran: its candidates, and the minutes left to default.
    assert payload["commands"] == [f"{laptop_sweep.PROG} {' '.join(argv)} --minutes 60"]
    saved = json.loads((tmp_path / "out" / "minutes.json").read_text())
    assert saved["commands"] == payload["commands"] and saved["candidates"][0]["runs"] == 1
    md = (tmp_path / "out" / "minutes.md").read_text()
    assert ("| w128x3-b32 | `--hidden 128,128,128 --batch-per-task 32 --no-layer-norm "
            "--updates-per-step 1` | 1 | 950,000 | 93,000 "
            "| 0.10 | 0.10 | 0.20 | 0.20 | 0.20 | 0.30 | 0.40 | 0.40 |") in md
    assert "| w256x3-b64 | `--hidden 256,256,256 --batch-per-task 64 --no-layer-norm " \
           "--updates-per-step 1` | 1 | 120,000 | 11,000 " \
           "|  | 0.05 | 0.15 |  |  |  |  | 0.15 |" in md
    # success.py's report of the same runs: the finished hour, the screen unfinished at 60.
    report = json.loads((tmp_path / "out" / "MT10-laptop.json").read_text())
    assert [r["seeds_finished"] for r in report["rows"]] == [1, 0]
    assert report["rows"][0]["mean"] == pytest.approx(0.4)


def test_a_bare_command_is_recorded_with_its_candidates():
    args = laptop_sweep.build_parser().parse_args([])
    names = list(laptop_sweep.CANDIDATES)
    assert laptop_sweep.recorded_command([], names, args) == (
        f"{laptop_sweep.PROG} --candidates {','.join(names)} --minutes 60")
    args = laptop_sweep.build_parser().parse_args(["--minutes", "15", "--candidates", "w128x3-b32"])
    assert laptop_sweep.recorded_command(["--minutes", "15", "--candidates", "w128x3-b32"],
                                         ["w128x3-b32"], args) == (
        f"{laptop_sweep.PROG} --minutes 15 --candidates w128x3-b32")
