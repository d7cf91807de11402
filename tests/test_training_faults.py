"""Faults a run survives: a booby-trapped checkpoint, non-finite values, SIGKILL while a
checkpoint is written, a full or read-only disk at checkpoint time, an env worker process
that dies; and a resumed run (--save-replay) is the uninterrupted one. All on
gym:Pendulum-v1 with tiny nets (a few seconds each)."""

import errno
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conal_rl.train import main as train
from conal_rl.training import checkpoint
from conal_rl.training.checkpoint import CheckpointError
from conal_rl.training.guard import nonfinite_metrics, nonfinite_parameters
from conal_rl.training.trainer import Trainer

FIXTURES = Path(__file__).parent / "fixtures" / "v1"
TINY = ["--benchmark", "gym:Pendulum-v1", "--arch", "mhsac", "--hidden", "8,8",
        "--batch-per-task", "8", "--warmup-steps", "50", "--eval-episodes", "1",
        "--eval-every", "0", "--log-every", "100", "--device", "cpu"]


def _saved_step(run: Path) -> int:
    return checkpoint.load(run / "checkpoints" / "latest.pt")["counters"]["env_steps"]


def _one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines()
             if line.startswith("python -m conal_rl.train: error:")]
    assert len(lines) == 1, lines
    return lines[0]


# ---- safe loading ------------------------------------------------------------------------
class _RunsCode:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):  # unpickling calls exec(code)
        return (exec, (self.code,))


def test_a_checkpoint_made_to_run_code_on_load_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "latest.pt"
    torch.save({"format": checkpoint.FORMAT, "config": {}, "agent": _RunsCode(
        f"open({str(marker)!r}, 'w').write('pwned')")}, path)
    with pytest.raises(CheckpointError) as refused:
        checkpoint.load(path)
    message = str(refused.value)
    assert "refused" in message and "exec" in message and "\n" not in message
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        checkpoint.load(path, mmap=True)  # the cheap pre-check refuses it too
    assert not marker.exists()
    # The trap is real: the unsafe loader the code used before runs it.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


def test_checkpoints_of_the_previous_version_still_load_safely():
    for name in ("pendulum-mhsac", "mt10-conal"):
        state = checkpoint.load(FIXTURES / name / "checkpoints" / "latest.pt")
        assert state["format"] == checkpoint.FORMAT and state["agent"]
        assert isinstance(state["rng"]["python"], tuple)  # RNG states as plain values


# ---- non-finite guard --------------------------------------------------------------------
def test_the_guard_names_the_quantity_and_the_task():
    means = {"critic_loss": torch.tensor([0.5, float("nan"), 1.0]),
             "temperature": torch.tensor([float("inf")] * 3), "actor_loss": torch.ones(3)}
    assert nonfinite_metrics(means, ["a", "b", "c"]) == [
        "critic_loss of task b", "temperature of tasks a, b, c"]
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    assert nonfinite_parameters(net) == []
    with torch.no_grad():
        net[1].weight[0, 0] = float("nan")
    assert nonfinite_parameters(net) == ["parameter 1.weight"]


def test_a_nan_loss_stops_the_run_at_its_next_log_and_keeps_the_last_good_checkpoint(
        tmp_path, monkeypatch, capsys):
    from agents import MultiTaskSAC

    update = MultiTaskSAC.update
    calls = []

    def nan_after_120_updates(self, batch):
        metrics = update(self, batch)
        calls.append(1)
        if len(calls) >= 120:  # env step 170: after the checkpoint at 100, before 200
            metrics["critic_loss"] = metrics["critic_loss"] * float("nan")
        return metrics

    monkeypatch.setattr(MultiTaskSAC, "update", nan_after_120_updates)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        train([*TINY, "--total-steps", "400", "--checkpoint-every", "100",
               "--run-dir", str(run)])
    assert stopped.value.code == 3
    line = _one_error_line(capsys)
    assert "non-finite values at env step 200" in line
    assert "critic_loss of task Pendulum-v1" in line
    assert "the last good checkpoint" in line and "env step 100) is kept" in line
    assert _saved_step(run) == 100  # not overwritten by the diverged state
    assert not (run / "timing.json").exists()


def test_a_nan_parameter_is_caught_before_the_checkpoint_that_would_hold_it(
        tmp_path, monkeypatch, capsys):
    save = Trainer.save_checkpoint

    def poison_second_checkpoint(self):
        if self.env_steps == 200:
            with torch.no_grad():
                self.agent.actor.net.shared["1"].weight[0, 0] = float("inf")
        save(self)

    monkeypatch.setattr(Trainer, "save_checkpoint", poison_second_checkpoint)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        train([*TINY, "--total-steps", "300", "--checkpoint-every", "100",
               "--log-every", "1000", "--run-dir", str(run)])
    assert stopped.value.code == 3
    line = _one_error_line(capsys)
    assert "at env step 200" in line and "parameter actor.net.shared.1.weight" in line
    assert _saved_step(run) == 100


# ---- checkpoint writes that fail ---------------------------------------------------------
@pytest.mark.parametrize("fault", ["disk full", "read-only"])
def test_a_checkpoint_that_cannot_be_written_stops_the_run_and_keeps_the_previous_one(
        tmp_path, monkeypatch, capsys, fault):
    real_save = torch.save
    saves = []
    root = os.geteuid() == 0  # root writes into read-only folders: inject the error then
    run = tmp_path / "run"

    def failing_save(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) < 2:
            return real_save(obj, f, *args, **kwargs)
        if fault == "disk full":  # half the bytes make it, then the disk is full
            buffer = io.BytesIO()
            real_save(obj, buffer)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    if fault == "read-only" and not root:
        def read_only_then_save(self):
            if self.env_steps == 200:
                (run / "checkpoints").chmod(0o555)
            save(self)

        save = Trainer.save_checkpoint
        monkeypatch.setattr(Trainer, "save_checkpoint", read_only_then_save)
    else:
        monkeypatch.setattr(torch, "save", failing_save)
    try:
        with pytest.raises(SystemExit) as stopped:
            train([*TINY, "--total-steps", "300", "--checkpoint-every", "100",
                   "--run-dir", str(run)])
    finally:
        (run / "checkpoints").chmod(0o755)
    assert stopped.value.code == 5
    line = _one_error_line(capsys)
    assert f"could not write the checkpoint {run / 'checkpoints' / 'latest.pt'}" in line
    assert "the previous checkpoint is kept" in line
    assert _saved_step(run) == 100
    assert not (run / "checkpoints" / "latest.pt.tmp").exists()


# ---- SIGKILL while writing ---------------------------------------------------------------
SLOW_WRITER = textwrap.dedent("""
    import io, sys, time
    from pathlib import Path

    import torch

    real_save, calls = torch.save, []

    def slow_save(obj, f, *args, **kwargs):  # the second checkpoint: half written, then stuck
        calls.append(1)
        if len(calls) < 2:
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        Path(sys.argv[1]).touch()
        time.sleep(600)

    torch.save = slow_save
    from conal_rl.train import main
    main(sys.argv[2:])
""")


def test_sigkill_while_a_checkpoint_is_written_leaves_the_previous_one_and_resume_works(
        tmp_path):
    run, writing = tmp_path / "run", tmp_path / "writing"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(writing), *TINY, "--total-steps", "100000",
         "--checkpoint-every", "100", "--save-replay", "--run-dir", str(run)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not writing.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert writing.exists(), "the second checkpoint was never written"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    partial = run / "checkpoints" / "latest.pt.tmp"
    assert partial.exists() and partial.stat().st_size > 0  # killed in the middle of it
    assert _saved_step(run) == 100  # the previous checkpoint, intact
    train(["--resume", str(run), "--total-steps", "200"])
    state = checkpoint.load(run / "checkpoints" / "latest.pt")
    assert state["counters"] == {"env_steps": 200, "updates": 150}
    assert state["replay"]["size"] == 200  # the replay saved at step 100 went on


# ---- an env worker process dies --------------------------------------------------------------
def test_an_env_worker_that_dies_stops_the_run_with_a_checkpoint_and_resume_goes_on(
        tmp_path, monkeypatch, capsys):
    step = Trainer._vector_step

    def kill_worker_at_150(self, window, bar):
        if self.env_steps == 150 and self.bench.envs.processes[0].is_alive():
            worker = self.bench.envs.processes[0]
            os.kill(worker.pid, signal.SIGKILL)
            worker.join(10)
        step(self, window, bar)

    monkeypatch.setattr(Trainer, "_vector_step", kill_worker_at_150)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        train([*TINY, "--vector-strategy", "async", "--total-steps", "300",
               "--checkpoint-every", "1000", "--save-replay", "--run-dir", str(run)])
    assert stopped.value.code == 4
    line = _one_error_line(capsys)
    assert "an env worker process died at env step 150" in line
    assert f"checkpoint saved, continue with --resume {run}" in line
    assert _saved_step(run) == 150
    monkeypatch.setattr(Trainer, "_vector_step", step)
    train(["--resume", str(run), "--total-steps", "300"])  # fresh worker processes
    state = checkpoint.load(run / "checkpoints" / "latest.pt")
    assert state["counters"]["env_steps"] == 300 and state["replay"]["size"] == 300


# ---- resumed = uninterrupted ---------------------------------------------------------------
RESUME_TOLERANCE = 1e-6  # largest |weight difference| allowed (CPU, same data and RNG)


def resumed_and_whole(tmp_path, flags, stop_at: int, total: int):
    """One run trained to ``total`` env steps, another stopped at ``stop_at`` and resumed to
    ``total``: their last checkpoints, and the largest weight difference between them."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    train([*flags, "--total-steps", str(total), "--run-dir", str(whole)])
    train([*flags, "--total-steps", str(stop_at), "--run-dir", str(split)])
    train(["--resume", str(split), "--total-steps", str(total)])
    a = checkpoint.load(whole / "checkpoints" / "latest.pt")
    b = checkpoint.load(split / "checkpoints" / "latest.pt")
    largest = max((a["agent"][k] - b["agent"][k]).abs().max().item() for k in a["agent"])
    return a, b, largest


def test_a_resumed_run_with_its_replay_is_the_uninterrupted_run(tmp_path):
    flags = [*TINY, "--checkpoint-every", "100", "--save-replay"]
    a, b, largest = resumed_and_whole(tmp_path, flags, 100, 250)
    assert a["counters"] == b["counters"] == {"env_steps": 250, "updates": 200}
    print(f"largest weight difference, resumed vs uninterrupted: {largest:.3g}")
    assert largest <= RESUME_TOLERANCE
    torch.testing.assert_close(a["replay"]["storage"]["obs"], b["replay"]["storage"]["obs"])


@pytest.mark.slow
def test_a_resumed_metaworld_run_is_the_uninterrupted_run(tmp_path):
    """The same on MT1:reach-v3, whose 500-step episodes end at the checkpoints."""
    flags = ["--benchmark", "MT1:reach-v3", "--hidden", "8,8", "--batch-per-task", "8",
             "--warmup-steps", "100", "--eval-every", "0", "--eval-episodes", "1",
             "--checkpoint-every", "500", "--save-replay", "--device", "cpu"]
    a, b, largest = resumed_and_whole(tmp_path, flags, 500, 1000)
    assert a["counters"] == b["counters"]
    print(f"MT1:reach-v3: largest weight difference, resumed vs uninterrupted: {largest:.3g}")
    assert largest <= RESUME_TOLERANCE


def test_a_second_sigterm_while_the_stop_checkpoint_is_written_does_not_cut_it(
        tmp_path, monkeypatch):
    """A scheduler may repeat its SIGTERM (benchmarks.experiments.success's trials did, every
    second): the run's own handler stays in place until the stop checkpoint is written."""
    outside = []  # signals that reached the handler the run found (the test's)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: outside.append(signum))
    save = Trainer.save_checkpoint
    saves = []

    def save_under_a_second_signal(self):
        if self.env_steps >= 150:  # the stop's checkpoint
            os.kill(os.getpid(), signal.SIGTERM)
        saves.append(self.env_steps)
        return save(self)

    def first_signal_at_150(self, window, bar):
        if self.env_steps == 150:
            os.kill(os.getpid(), signal.SIGTERM)
        return vector_step(self, window, bar)

    vector_step = Trainer._vector_step
    monkeypatch.setattr(Trainer, "save_checkpoint", save_under_a_second_signal)
    monkeypatch.setattr(Trainer, "_vector_step", first_signal_at_150)
    run = tmp_path / "run"
    try:
        with pytest.raises(SystemExit) as stopped:
            train([*TINY, "--total-steps", "400", "--checkpoint-every", "1000",
                   "--run-dir", str(run)])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert outside == []  # both signals went to the run's handler
    assert saves[-1] >= 150 and _saved_step(run) == saves[-1]
