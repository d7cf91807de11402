"""Videos of a policy: render MuJoCo envs headless, draw the task, step and success flag on
the frames, write one mp4 per task and a grid of all tasks.

MuJoCo picks its OpenGL backend when it is first imported, from ``MUJOCO_GL``: a command
calls :func:`use_headless_gl` before anything imports mujoco (metaworld does), which sets it
to ``egl`` where an NVIDIA GPU is present and to ``osmesa`` (software; Debian package
``libosmesa6``) otherwise, unless it is already set.

The episodes follow the evaluation protocol: the deterministic policy given, and an
episode ends on success (Meta-World) or at the env's time limit (or ``max_steps``).
"""

from __future__ import annotations

import ctypes.util
import functools
import glob
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from envs.benchmarks import Benchmark


def _default_gl_backend() -> str | None:
    """EGL on an NVIDIA GPU, else OSMesa; None when that backend's library is missing,
    because MUJOCO_GL naming an absent library breaks every later ``import mujoco``
    (metaworld included), not just rendering."""
    backend, library = (("egl", "EGL") if glob.glob("/dev/nvidia[0-9]*")
                        else ("osmesa", "OSMesa"))
    return backend if ctypes.util.find_library(library) else None


def use_headless_gl() -> None:
    """Choose MuJoCo's headless OpenGL backend (unless ``MUJOCO_GL`` is set): call it before
    anything imports mujoco, which reads ``MUJOCO_GL`` once, on its first import."""
    global _mujoco_imported_first
    if "MUJOCO_GL" in os.environ:
        return
    _mujoco_imported_first = "mujoco" in sys.modules  # too late: remembered for the hint
    if backend := _default_gl_backend():
        os.environ["MUJOCO_GL"] = backend


_mujoco_imported_first = False

Policy = Callable[[np.ndarray], np.ndarray]

DEFAULT_CAMERA = "corner3"
"""Meta-World's camera that shows the whole table top with the objects large enough at
small sizes; envs without it use MuJoCo's free camera."""

DEFAULT_SIZE = 160
"""Frame side in pixels. Software rendering costs ~0.1 s a frame, mostly independent of
size, so small frames keep the CPU time down without saving much."""

HOLD_SECONDS = 0.5
"""The last frame of an episode is held this long, so the final success flag is seen."""

# Shadow map and multisampling dominate software rendering time (MuJoCo's defaults,
# 4096 px shadows and 4x MSAA: ~0.25 s a frame; these: ~0.09 s) with little visible
# difference at video sizes.
SHADOW_SIZE = 1024
MULTISAMPLES = 0


class VideoError(Exception):
    """Rendering is not possible here (no headless OpenGL, not a MuJoCo env, ...)."""


def _gl_hint() -> str:
    if _mujoco_imported_first:
        return ("mujoco was imported before a headless backend was chosen: call "
                "envs.video.use_headless_gl() first or set MUJOCO_GL=osmesa (or egl)")
    return ("install the Debian package libosmesa6 for CPU rendering (or run on an NVIDIA "
            "GPU with EGL); MUJOCO_GL selects the backend")


def check_gl() -> None:
    """Raise VideoError unless an offscreen OpenGL context can be made."""
    backend = os.environ.get("MUJOCO_GL", "")
    if not backend:  # MuJoCo would fall back to GLFW, which needs a display
        raise VideoError(f"no headless OpenGL backend found; {_gl_hint()}")
    try:
        import mujoco

        context = mujoco.GLContext(8, 8)
        context.make_current()
        context.free()
    except Exception as e:  # ImportError, OSError, EGL/OSMesa errors: all mean "cannot"
        reason = (str(e).strip().splitlines() or [""])[-1]
        raise VideoError(f"no headless OpenGL with MUJOCO_GL={backend} "
                         f"({type(e).__name__}: {reason}); {_gl_hint()}") from None


# ---- rendering one env ---------------------------------------------------------------------
class EnvCamera:
    """Renders a MuJoCo env's current state from one camera as an upright RGB frame."""

    def __init__(self, env, size: int, camera: str | None = None):
        import mujoco

        unwrapped = env.unwrapped
        if not hasattr(unwrapped, "model") or not hasattr(unwrapped, "data"):
            raise VideoError(f"{env.spec.id if env.spec else env} is not a MuJoCo env; "
                             "only MuJoCo envs can be rendered")
        self.model, self.data = unwrapped.model, unwrapped.data
        names = [mujoco.mj_id2name(self.model, mujoco.mjtObj.mjOBJ_CAMERA, i)
                 for i in range(self.model.ncam)]
        if camera is None:
            camera = DEFAULT_CAMERA if DEFAULT_CAMERA in names else None
        elif camera not in names:
            raise VideoError(f"no camera {camera!r} in this env; cameras: "
                             f"{', '.join(names) or 'none (use the default)'}")
        self.camera = -1 if camera is None else names.index(camera)
        size += size % 2  # yuv420p video needs even sides
        vis = self.model.vis
        vis.global_.offwidth = max(vis.global_.offwidth, size)
        vis.global_.offheight = max(vis.global_.offheight, size)
        vis.quality.shadowsize, vis.quality.offsamples = SHADOW_SIZE, MULTISAMPLES
        try:
            self.renderer = mujoco.Renderer(self.model, size, size)
        except Exception as e:
            raise VideoError(f"cannot render with MUJOCO_GL={os.environ.get('MUJOCO_GL')} "
                             f"({type(e).__name__}); {_gl_hint()}") from None

    def upside_down(self) -> bool:
        """Meta-World's corner cameras are defined with their up axis pointing down, so
        their images come out rotated by 180 degrees (not mirrored)."""
        if self.camera < 0:
            return False
        up = self.data.cam_xmat[self.camera].reshape(3, 3)[:, 1]
        return bool(up[2] < 0)

    def frame(self) -> np.ndarray:
        self.renderer.update_scene(self.data, camera=self.camera)
        image = self.renderer.render()
        return np.ascontiguousarray(image[::-1, ::-1]) if self.upside_down() else image

    def close(self) -> None:
        self.renderer.close()


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: no system fonts needed


def draw_overlay(frame: np.ndarray, title: str, status: str, success: bool | None) -> np.ndarray:
    """The task name on top, the episode and step (``status``) and the success flag at the
    bottom; a green border once the episode has succeeded."""
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    h, w = frame.shape[:2]
    font = _font(max(9, h // 14))
    outline = {"stroke_width": 1, "stroke_fill": (0, 0, 0)}  # legible on any background
    draw.text((3, 2), title, fill=(255, 255, 255), font=font, **outline)
    draw.text((3, h - 3), status, fill=(255, 255, 255), font=font, anchor="ld", **outline)
    if success is not None:
        flag, color = ("success", (60, 220, 60)) if success else ("no success", (230, 230, 230))
        draw.text((w - 3, h - 3), flag, fill=color, font=font, anchor="rd", **outline)
        if success:
            draw.rectangle((0, 0, w - 1, h - 1), outline=color, width=max(2, h // 60))
    return np.asarray(image)


# ---- recording -----------------------------------------------------------------------------
def video_fps(bench: Benchmark, frame_skip: int = 1) -> float:
    """Real time: the env's own frame rate (80 for Meta-World) over the frames skipped."""
    return bench.envs.metadata.get("render_fps", 30) / frame_skip


def record_task(policy: Policy, bench: Benchmark, task: str, episodes: int = 1,
                size: int = DEFAULT_SIZE, camera: str | None = None, frame_skip: int = 1,
                max_steps: int | None = None, hold_frames: int = 0,
                on_step: Callable[[], object] | None = None) -> Iterator[np.ndarray]:
    """Frames (with the overlay) of ``episodes`` episodes of ``task`` from ``bench``.

    Only that task's env is stepped; the policy sees a task-major batch whose other rows
    are zeros (the networks compute each task's row on its own). Every ``frame_skip``-th
    step is drawn, and the last one of each episode, repeated ``hold_frames`` more times."""
    envs = getattr(bench.envs, "envs", None)
    if envs is None:
        raise VideoError("videos need a benchmark built with the sync vector strategy")
    index = bench.task_names.index(task)
    env = envs[index]
    if bench.is_metaworld:
        env.get_wrapper_attr("toggle_terminate_on_success")(True)  # the evaluation protocol
    camera_view = EnvCamera(env, size, camera)
    batch = np.zeros((bench.num_tasks, bench.obs_dim), dtype=np.float64)
    try:
        for episode in range(1, episodes + 1):
            obs, _ = env.reset()
            step, done = 0, False
            success = False if bench.is_metaworld else None  # None: no success signal
            while True:
                if done or step % frame_skip == 0:
                    status = f"ep {episode}  step {step}" if episodes > 1 else f"step {step}"
                    frame = draw_overlay(camera_view.frame(), task, status, success)
                    yield frame
                if done:
                    yield from [frame] * hold_frames
                    break
                batch[index] = obs
                obs, _, terminated, truncated, info = env.step(policy(batch)[index])
                step += 1
                if success is not None:
                    success = success or bool(info["success"])
                done = terminated or truncated or step == max_steps
                if on_step is not None:
                    on_step()
    finally:
        camera_view.close()


def write_mp4(path: Path, frames: Iterable[np.ndarray], fps: float) -> int:
    """Stream frames into an H.264 mp4; returns how many were written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=1,
                            ffmpeg_log_level="error") as writer:
        for frame in frames:
            writer.append_data(frame)
            count += 1
    if count == 0:
        path.unlink(missing_ok=True)
        raise VideoError(f"no frames for {path}")
    return count


def last_frame(video: Path) -> np.ndarray:
    """The final frame of an mp4 ``[H, W, 3]`` (read through, one frame in memory)."""
    with imageio.get_reader(video, "ffmpeg") as reader:
        frame = functools.reduce(lambda _, f: f, reader, None)
    if frame is None:
        raise VideoError(f"{video} has no frames")
    return frame


def write_grid(path: Path, videos: Sequence[Path], fps: float, progress: bool = False,
               frames: int | None = None) -> int:
    """All ``videos`` (same frame size) side by side in a near-square grid; one that ends
    early holds its last frame. Read back from the files, so memory stays one frame per
    video whatever the number of tasks and episode lengths. ``frames`` (the longest
    video's length) is only the progress bar's total."""
    readers = [imageio.get_reader(v, "ffmpeg") for v in videos]
    try:
        cols = math.ceil(math.sqrt(len(videos)))
        rows = math.ceil(len(videos) / cols)

        def grids() -> Iterator[np.ndarray]:
            streams = [iter(r) for r in readers]
            last: list[np.ndarray | None] = [next(s, None) for s in streams]
            h, w, c = next(f for f in last if f is not None).shape
            while True:
                canvas = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
                for i, frame in enumerate(last):
                    if frame is not None:
                        r, q = divmod(i, cols)
                        canvas[r * h:(r + 1) * h, q * w:(q + 1) * w] = frame
                yield canvas
                fresh = [next(s, None) for s in streams]
                if all(f is None for f in fresh):
                    return
                last = [f if f is not None else old for f, old in zip(fresh, last)]

        bar = tqdm(grids(), total=frames, unit="frame", desc="grid", disable=not progress,
                   dynamic_ncols=True)
        return write_mp4(path, bar, fps)
    finally:
        for r in readers:
            r.close()


def record_videos(policy: Policy, bench: Benchmark, out_dir: Path,
                  tasks: Sequence[str] | None = None, episodes: int = 1,
                  size: int = DEFAULT_SIZE, camera: str | None = None, frame_skip: int = 1,
                  max_steps: int | None = None, fps: float | None = None,
                  progress: bool = True) -> list[Path]:
    """Record ``episodes`` episodes of each task (default: all) into ``out_dir/<task>.mp4``
    and all of them side by side into ``out_dir/grid.mp4``; returns the paths, grid last.

    ``bench`` should be a fresh evaluation benchmark (``make_eval_benchmark``): its envs are
    stepped here. This is the recorder for periodic videos during training."""
    tasks = list(tasks or bench.task_names)
    fps = fps or video_fps(bench, frame_skip)
    limit = min(filter(None, (max_steps, bench.max_episode_steps)), default=None)
    bar = tqdm(total=limit and len(tasks) * episodes * limit, unit="step", disable=not progress,
               desc="recording", dynamic_ncols=True)
    paths, lengths = [], []
    with bar:
        for task in tasks:
            bar.set_description(f"recording {task}")
            path = Path(out_dir) / f"{task}.mp4"
            frames = record_task(policy, bench, task, episodes, size, camera, frame_skip,
                                 max_steps, round(fps * HOLD_SECONDS), on_step=bar.update)
            lengths.append(write_mp4(path, frames, fps))
            paths.append(path)
    grid = Path(out_dir) / "grid.mp4"
    write_grid(grid, paths, fps, progress, max(lengths))
    return [*paths, grid]
