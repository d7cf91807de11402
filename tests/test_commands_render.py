"""Videos: a short render of a tiny Meta-World run through the CLI, read back.

Rendering runs in a subprocess: MuJoCo fixes its OpenGL backend when first imported, and
in this process other tests may already have imported it."""

import json
import subprocess
import sys

import imageio.v2 as imageio
import numpy as np
import pytest

from conal_rl import render
from conal_rl.train import main as train
from envs.video import HOLD_SECONDS, draw_overlay


def _run(*args, timeout=240):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def gl():
    probe = _run("-c", "from envs.video import check_gl; check_gl()", timeout=60)
    if probe.returncode != 0:
        reason = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "no GL"
        pytest.skip(f"no headless OpenGL here: {reason}")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("render") / "reach"
    train(["--benchmark", "MT1:reach-v3", "--total-steps", "200", "--warmup-steps", "100",
           "--eval-every", "0", "--hidden", "16,16", "--batch-per-task", "16",
           "--eval-episodes", "1", "--device", "cpu", "--run-dir", str(run)])
    return run


def test_short_render_writes_readable_videos(gl, run_dir):
    proc = _run("-m", "conal_rl.render", str(run_dir), "--max-steps", "10", "--episodes", "2",
                "--size", "64", "--fps", "20")
    assert proc.returncode == 0, proc.stderr
    hold = round(20 * HOLD_SECONDS)
    expected = 2 * (1 + 10 + hold)  # per episode: the reset frame, 10 steps, the held end
    for name, size in (("reach-v3.mp4", (64, 64)), ("grid.mp4", (64, 64))):
        reader = imageio.get_reader(run_dir / "videos" / name)
        frames = [frame for frame in reader]
        assert reader.get_meta_data()["fps"] == 20
        assert len(frames) == expected and frames[0].shape == (*size, 3), name
        assert frames[0].std() > 10  # a scene, not a blank frame
    assert f"wrote {run_dir / 'videos' / 'grid.mp4'}" in proc.stdout


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "push-v3"], "--tasks: unknown task push-v3; this run has: all, reach-v3"),
    (["--size", "63"], "--size must be even"),
    (["--episodes", "0"], "--episodes must be positive"),
])
def test_render_errors_are_one_line(run_dir, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        render.main([str(run_dir), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1
    assert err[0].startswith(f"{render.PROG}: error: {message}")


def test_overlay_draws_on_a_copy():
    frame = np.zeros((64, 64, 3), dtype=np.uint8)
    drawn = draw_overlay(frame, "reach-v3", "step 3", success=True)
    assert drawn.shape == frame.shape and drawn.dtype == np.uint8
    assert frame.max() == 0 and drawn.max() > 0
    assert tuple(drawn[0, 32]) == (60, 220, 60)  # the success border


@pytest.mark.slow  # two full 500-step episodes rendered in software: about a minute
def test_training_records_videos_when_asked(gl, tmp_path):
    # In a subprocess, like the other renders: the GL backend is fixed at mujoco's import.
    run = tmp_path / "run"
    proc = _run("-m", "conal_rl.train", "--benchmark", "MT1:reach-v3", "--total-steps", "40",
                "--warmup-steps", "20", "--hidden", "8", "--batch-per-task", "8",
                "--eval-every", "0", "--eval-episodes", "1", "--video-every", "20",
                "--run-dir", str(run))
    assert proc.returncode == 0, proc.stderr
    for step in (20, 40):
        grid = run / "videos" / f"step_{step}" / "grid.mp4"
        assert imageio.get_reader(grid).get_meta_data()["size"] == (160, 160)


def test_video_every_records_short_videos_during_training(gl, tmp_path, monkeypatch):
    """--video-every: at every multiple of it the run records one episode of each task
    (here cut to 3 steps) into videos/step_<N>/ and logs the grid's last frame."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from conal_rl.training import trainer as trainer_module

    record, recorded = trainer_module.record_videos, []

    def short(policy, bench, out_dir, **kwargs):
        recorded.append(out_dir)
        return record(policy, bench, out_dir, **kwargs | {"max_steps": 3, "size": 64})

    monkeypatch.setattr(trainer_module, "record_videos", short)
    run = tmp_path / "run"
    train(["--benchmark", "MT1:reach-v3", "--total-steps", "200", "--warmup-steps", "100",
           "--video-every", "100", "--eval-every", "0", "--hidden", "8", "--batch-per-task", "8",
           "--eval-episodes", "1", "--device", "cpu", "--run-dir", str(run)])
    assert recorded == [run / "videos" / "step_100", run / "videos" / "step_200"]
    hold = round(80 * HOLD_SECONDS)  # Meta-World's 80 frames/s
    for out in recorded:
        for name in ("reach-v3.mp4", "grid.mp4"):
            frames = [frame for frame in imageio.get_reader(out / name)]  # list() presizes: inf
            assert len(frames) == 1 + 3 + hold and frames[0].shape == (64, 64, 3), out / name
    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("video/last_frames")] == [100, 200]


def test_video_every_without_opengl_keeps_training(tmp_path, monkeypatch, capsys):
    """No headless OpenGL: the first video says why, later ones are not tried, and the run
    trains on to its end (no GL needed for this test)."""
    from conal_rl.training import trainer as trainer_module
    from envs.video import VideoError

    tried = []

    def no_gl(policy, bench, out_dir, **kwargs):
        tried.append(out_dir)
        raise VideoError("no headless OpenGL here")

    monkeypatch.setattr(trainer_module, "record_videos", no_gl)
    run = tmp_path / "run"
    train(["--benchmark", "gym:Pendulum-v1", "--total-steps", "300", "--warmup-steps", "100",
           "--video-every", "100", "--eval-every", "0", "--hidden", "8", "--batch-per-task", "8",
           "--eval-episodes", "1", "--device", "cpu", "--run-dir", str(run)])
    assert tried == [run / "videos" / "step_100"]
    assert "no videos: no headless OpenGL here" in capsys.readouterr().out
    assert json.loads((run / "timing.json").read_text())["env_steps"] == 300
