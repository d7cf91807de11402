"""benchmarks/experiments/success.py on Ray Tune: a tiny experiment (2 rows x 1 seed on a local
2-CPU Ray) stopped by SIGTERM (or SIGINT) after its first trial finished, then the same command
again: the finished run is not trained again, the stopped one resumes from its checkpoint, and the
report holds both rows. Plus the run-folder lock that keeps a run still saving from being
trained twice (no Ray)."""

import json
import signal
import subprocess
import sys
import time

import pytest

from benchmarks.experiments import success

ARGS = ["--benchmark", "gym:Pendulum-v1", "--archs", "mtsac,mhsac", "--seeds", "1", "--budget",
        "quick", "--total-steps", "1000", "--warmup-steps", "100", "--eval-every", "200",
        "--eval-episodes", "1", "--device", "cpu", "--jobs", "1", "--cpus-per-trial", "2"]


def _wait_for(condition, timeout_s, proc):
    deadline = time.time() + timeout_s
    while not condition():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


# SIGTERM in the default run: Ray's driver installs its own handler for it, which killed the
# driver (and the runs without their checkpoints) until ours was installed after ray.init.
# SIGINT takes the same path through our handler; it is marked slow to keep the run short.
@pytest.mark.parametrize("signum", [
    pytest.param(signal.SIGTERM, id="SIGTERM"),
    pytest.param(signal.SIGINT, id="SIGINT", marks=pytest.mark.slow)])
def test_an_interrupted_experiment_resumes_without_training_finished_runs_again(tmp_path,
                                                                                 signum):
    args = [*ARGS, "--runs-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path / "out")]
    runs = tmp_path / "runs" / "gym-Pendulum-v1-quick"
    first, second = runs / "mtsac-s0", runs / "mhsac-s0"
    cmd = [sys.executable, "-m", "benchmarks.experiments.success", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # One trial at a time: stop when the first has finished and the second evaluated.
        _wait_for(lambda: (second / "eval_latest.json").exists(), 150, proc)
        assert (first / "timing.json").exists()
        proc.send_signal(signum)
        out = proc.communicate(timeout=150)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, out[-3000:]
    assert "mtsac-s0: done in" in out and f"signal {int(signum)}: runs stopped" in out
    assert (second / "checkpoints" / "latest.pt").exists()  # saved on its way out
    assert not (second / "timing.json").exists()
    finished_at = (first / "timing.json").stat().st_mtime_ns

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=200)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "mtsac-s0: skipped (finished" in again.stdout
    assert "mhsac-s0: resume" in again.stdout
    assert (first / "timing.json").stat().st_mtime_ns == finished_at
    assert (first / "train.log").read_text().count("=== ") == 1  # trained once
    log = (second / "train.log").read_text()
    assert "(fresh)" in log and "(resume)" in log and "--resume" in log
    assert json.loads((second / "timing.json").read_text())["env_steps"] == 1000
    payload = json.loads((tmp_path / "out" / "gym-Pendulum-v1-quick.json").read_text())
    assert [(r["row"], r["seeds_finished"]) for r in payload["rows"]] == [
        ("mtsac", 1), ("mhsac", 1)]
    assert payload["failed"] == [] and len(payload["commands"]) == 2
    # Tune's trials reported the runs' evaluations.
    results = list((tmp_path / "runs" / "_tune").glob("success-*/*/result.json"))
    steps = [json.loads(line).get("env_steps") for p in results
             for line in p.read_text().splitlines()]
    assert 1000 in steps and 200 in steps


def test_a_run_folder_held_by_a_run_still_saving_is_waited_for(tmp_path):
    """start() locks train.log for as long as the training process lives; wait_unlocked (what
    a trial does before it plans its run) returns only once it has exited."""
    args = success.build_parser().parse_args(
        [*ARGS, "--archs", "mtsac", "--runs-dir", str(tmp_path)])
    success.check_args(args)
    [spec] = success.make_specs(args)
    spec.command = lambda mode, saved=None: [sys.executable, "-c",
                                             "import time; time.sleep(1.5)"]
    assert success.wait_unlocked(spec)  # no folder yet
    proc, log = success.start(spec, "fresh")
    log.close()  # the child keeps the lock
    assert not success.wait_unlocked(spec, timeout_s=0.3)
    began = time.perf_counter()
    assert success.wait_unlocked(spec, timeout_s=30)
    assert proc.poll() == 0 and time.perf_counter() - began < 10
