import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from conal_rl.train import main
from conal_rl.training import checkpoint
from conal_rl.training.conal_search import search_seconds

TINY = ["--hidden", "16,16", "--batch-per-task", "16", "--warmup-steps", "100",
        "--eval-episodes", "1", "--log-every", "100"]


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "conal_rl.train", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--benchmark", "MT11"], "unknown benchmark 'MT11'"),
    (["--benchmark", "MT1:nope-v3"], "unknown Meta-World task 'nope-v3'"),
    (["--total-steps", "-5"], "--total-steps must be positive"),
    (["--arch", "tree"], "--arch tree needs --architecture"),
    (["--resume", "/nonexistent/run"], "not a run directory"),
])
def test_user_errors_are_one_clear_line(args, message):
    proc = _cli(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_clear_line():
    proc = _cli("--device", "cuda")
    assert proc.returncode == 2 and "CUDA is not available" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_metaworld_run_writes_its_outputs(tmp_path):
    run = tmp_path / "run"
    result = main(["--benchmark", "MT1:reach-v3", "--total-steps", "600", "--eval-every", "300",
                   "--run-dir", str(run), *TINY])
    assert result.task_names == ["reach-v3"] and 0 <= result.mean_success <= 1
    config = json.loads((run / "config.json").read_text())
    assert config["total_steps"] == 600 and config["hidden"] == [16, 16]
    assert json.loads((run / "architecture.json").read_text())["actor"]["branch_points"] == [2]
    rows = (run / "evaluations.csv").read_text().splitlines()
    assert rows[0].startswith("env_steps,train_minutes,task,success")
    assert len(rows) == 3  # steps 300, 600
    assert json.loads((run / "eval_latest.json").read_text())["env_steps"] == 600
    assert list(run.glob("events.out.tfevents.*"))
    assert checkpoint.load(run / "checkpoints" / "latest.pt")["counters"]["env_steps"] == 600


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "latest.pt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "conal_rl.train", "--benchmark", "gym:Pendulum-v1",
         "--total-steps", "1000000", "--eval-every", "0", "--checkpoint-every", "200",
         "--save-replay", "--run-dir", str(run), *TINY], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if ckpt.exists() and checkpoint.load(ckpt)["counters"]["env_steps"] >= 400:
                break
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint written in time")
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: no chance to save anything more
        proc.wait()
    saved = checkpoint.load(ckpt)
    step = saved["counters"]["env_steps"]
    # The first update comes with step 101, once 100 transitions are stored.
    assert step % 200 == 0 and saved["counters"]["updates"] == step - 100
    assert saved["replay"]["size"] == step

    # The model the resumed run starts from is the checkpoint's.
    resumed = main(["--resume", str(run), "--total-steps", str(step + 300)])
    assert f"resumed {run} at env step {step}" in capsys.readouterr().out
    final = checkpoint.load(ckpt)
    assert final["counters"]["env_steps"] == step + 300
    assert final["counters"]["updates"] == step - 100 + 300  # replay restored: no refill
    assert resumed.episodes == 1


def test_resume_refuses_to_change_the_run(tmp_path):
    run = tmp_path / "run"
    main(["--benchmark", "gym:Pendulum-v1", "--total-steps", "200", "--eval-every", "0",
          "--run-dir", str(run), *TINY])
    # Without --save-replay a resumed run refills a warm-up's worth of data (100 steps, with
    # its policy) before updating again.
    main(["--resume", str(run), "--total-steps", "400"])
    assert checkpoint.load(run / "checkpoints" / "latest.pt")["counters"]["updates"] == 2 * 100
    proc = _cli("--resume", str(run), "--arch", "mhsac")
    assert proc.returncode == 2 and "cannot change arch" in proc.stderr
    (run / "checkpoints" / "latest.pt").write_bytes(b"not a checkpoint")
    proc = _cli("--resume", str(run))
    assert proc.returncode == 2 and "not a readable checkpoint" in proc.stderr
    proc = _cli("--benchmark", "gym:Pendulum-v1", "--run-dir", str(run))
    assert proc.returncode == 2 and "already holds a run" in proc.stderr


def test_sigterm_saves_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "conal_rl.train", "--benchmark", "gym:Pendulum-v1",
         "--total-steps", "1000000", "--eval-every", "0", "--checkpoint-every", "100000",
         "--run-dir", str(run), *TINY], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True)
    deadline = time.time() + 120
    while not list(run.glob("events.out.tfevents.*")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "checkpoint saved" in out
    assert checkpoint.load(run / "checkpoints" / "latest.pt")["counters"]["env_steps"] > 0


def test_conal_searches_derives_and_trains_then_the_tree_trains_again(tmp_path):
    run = tmp_path / "conal"
    main(["--benchmark", "MT10", "--arch", "conal", "--search-steps", "300",
          "--total-steps", "200", "--eval-every", "0", "--run-dir", str(run), *TINY])
    arch = json.loads((run / "architecture.json").read_text())
    for role in ("actor", "critic"):
        entry = arch[role]
        assert len(entry["branch_points"]) == 10 and entry["hidden"] == [16, 16]
        assert set(entry["branch_point_by_task"]) == set(entry["task_names"])
        assert len(entry["alpha"]["reach-v3"]) == 3  # P + 1 branch points
        assert entry["parameters"]["tree"] < entry["parameters"]["supernet"]
    assert (run / "architecture.png").stat().st_size > 1000
    assert checkpoint.load(run / "search" / "checkpoints" / "latest.pt")["search"] is not None
    assert checkpoint.load(run / "checkpoints" / "latest.pt")["counters"]["env_steps"] == 200
    # The tree's evaluations are on the budget's clock, which started with the search.
    tree_minutes = json.loads((run / "timing.json").read_text())["train_wall"] / 60
    evaluated_at = json.loads((run / "eval_latest.json").read_text())["train_minutes"]
    assert evaluated_at == pytest.approx(search_seconds(run) / 60 + tree_minutes, abs=2e-3)
    assert search_seconds(run) > 0

    tree_run = tmp_path / "tree"
    main(["--benchmark", "MT10", "--arch", "tree", "--architecture", str(run / "architecture.json"),
          "--total-steps", "200", "--eval-every", "0", "--run-dir", str(tree_run), *TINY])
    assert json.loads((tree_run / "architecture.json").read_text())["actor"]["branch_points"] == \
        arch["actor"]["branch_points"]


def test_minutes_budget_stops_the_run_and_counts_over_resumes(tmp_path):
    run = tmp_path / "run"
    budget_min = 0.05  # 3 s of training
    main(["--benchmark", "gym:Pendulum-v1", "--total-steps", "10000000", "--minutes",
          str(budget_min), "--eval-every", "0", "--run-dir", str(run), *TINY])
    timing = json.loads((run / "timing.json").read_text())
    assert timing["stopped_by"] == "minutes"
    assert 3.0 <= timing["train_wall"] < 3.0 + 2.0  # stops at the first step past the budget
    steps = timing["env_steps"]
    assert 0 < steps < 10_000_000
    # Resumed with the same budget: it is spent already, so no step more.
    main(["--resume", str(run)])
    assert json.loads((run / "timing.json").read_text())["env_steps"] == steps
    # A larger budget continues where it stopped and sums the time.
    main(["--resume", str(run), "--minutes", str(2 * budget_min)])
    timing = json.loads((run / "timing.json").read_text())
    assert timing["env_steps"] > steps and 6.0 <= timing["train_wall"] < 6.0 + 3.0


def test_the_laptop_preset_brings_its_minutes_budget_and_a_flag_overrides_it():
    from conal_rl.training.config import TrainConfig

    assert TrainConfig(preset="laptop").minutes == 60
    assert TrainConfig(preset="laptop", minutes=0).minutes == 0  # no limit
    assert TrainConfig(preset="laptop", minutes=5).minutes == 5
    assert TrainConfig(preset="quick").minutes is None
