"""Videos of a trained policy: ``python -m conal_rl.render RUN_DIR --tasks all``.

Writes RUN_DIR/videos/<task>.mp4 for each task (the deterministic policy, the task, step
and success flag drawn on the frames) and grid.mp4 with all of them side by side.
Headless: MuJoCo renders with EGL where an NVIDIA GPU is present and OSMesa (Debian package
libosmesa6) otherwise; set MUJOCO_GL to choose.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from conal_rl.common import DEVICES, CommandParser, UserError, resolve_device, run_cli
from conal_rl.training.preflight import load_config, run_dir_of
from conal_rl.training.rundir import RunDir
from envs import UnknownBenchmark, task_names
from envs.video import (
    DEFAULT_CAMERA,
    DEFAULT_SIZE,
    VideoError,
    check_gl,
    record_videos,
    use_headless_gl,
)

PROG = "python -m conal_rl.render"


def parse_tasks(text: str, task_names: list[str]) -> list[str]:
    if text == "all":
        return list(task_names)
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in task_names]
    if unknown or not tasks:
        raise UserError(f"--tasks: unknown task {', '.join(unknown) or repr(text)}; this run "
                        f"has: all, {', '.join(task_names)}")
    return tasks


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog=PROG, description=__doc__.split("\n\n")[1])
    parser.add_argument("run", metavar="RUN_DIR",
                        help="run directory (or its checkpoints/latest.pt)")
    parser.add_argument("--tasks", default="all",
                        help="'all' or task names, comma separated (default: %(default)s)")
    parser.add_argument("--episodes", type=int, default=1,
                        help="episodes per task, one after the other (default: %(default)s)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE,
                        help="frame side in pixels, even (default: %(default)s; software "
                        "rendering costs ~0.1 s a frame)")
    parser.add_argument("--camera", default=None,
                        help=f"MuJoCo camera name (default: {DEFAULT_CAMERA} where the env has "
                        "it, e.g. Meta-World's; corner, corner2, topview, ... also work)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="cut episodes after this many steps (default: the env's time "
                        "limit, 500 for Meta-World; episodes also end on success)")
    parser.add_argument("--frame-skip", type=int, default=1,
                        help="draw every k-th step only, to render faster (default: "
                        "%(default)s)")
    parser.add_argument("--fps", type=float, default=None,
                        help="video frame rate (default: real time, 80 / --frame-skip for "
                        "Meta-World)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the envs (default: the run's seed, the task set of its "
                        "training and evaluation)")
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="torch device of the policy (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: RUN_DIR/videos)")
    return parser


def main(argv: list[str] | None = None) -> list[Path]:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: _main(args), (UserError, UnknownBenchmark, VideoError))


def _main(args: argparse.Namespace) -> list[Path]:
    use_headless_gl()  # before metaworld imports mujoco
    for flag in ("episodes", "size", "frame_skip", "max_steps", "fps"):
        value = getattr(args, flag)
        if value is not None and not value > 0:  # NaN too
            raise UserError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if args.fps is not None and args.fps == float("inf"):
        raise UserError("--fps must be finite")
    if args.size % 2:
        raise UserError(f"--size must be even (H.264 video), got {args.size}")
    if args.seed is not None and args.seed < 0:
        raise UserError(f"--seed must not be negative, got {args.seed}")
    load_config(run_dir_of(args.run))  # a path that is not a run: one line, before torch
    import torch  # after the flags and the run's files are checked

    from conal_rl.training.runs import Policy, eval_envs, load_checked

    torch.set_num_threads(1)
    device = resolve_device(args.device)
    run = load_checked(args.run, device)
    # Everything checkable is checked before the envs are built.
    tasks = parse_tasks(args.tasks, task_names(run.config.benchmark))
    check_gl()  # before recording: a clear line instead of an OpenGL traceback
    bench = eval_envs(run, args.seed, device)
    out_dir = args.out or RunDir(run.run_dir).videos_folder
    paths = record_videos(Policy(run.agent, bench.action_space, device), bench, out_dir, tasks,
                          args.episodes, args.size, args.camera, args.frame_skip,
                          args.max_steps, args.fps)
    bench.envs.close()
    for path in paths:
        print(f"wrote {path}")
    return paths


if __name__ == "__main__":
    main()
