"""Single-task learning (STL): one stable-baselines3 SAC per task of a benchmark.

    python -m conal_rl.stl --benchmark MT10 --preset quick --seed 0 --run-dir DIR
    python -m conal_rl.stl --resume DIR [--total-steps N]

The baseline of the success comparison (``python -m benchmarks.experiments.success``) and the
cross-check of the batched STL (``conal_rl.train --arch stl``, every task its own networks
in one batched update). The run: :mod:`conal_rl.training.stl_run`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

from conal_rl.common import CommandParser, run_cli
from conal_rl.training.config import (
    RESUMABLE,
    TrainConfig,
    add_config_arguments,
    given_arguments,
)
from conal_rl.training.preflight import config_for_run

PROG = "python -m conal_rl.stl"

# The TrainConfig fields that mean something for single-task SB3 SAC (others, e.g. the
# architecture and the search, do not apply). "minutes" only where training has it.
FLAGS = ("benchmark", "preset", "total_steps", "minutes", "seed", "device", "run_dir",
         "eval_every", "eval_episodes", "checkpoint_every", "save_replay", "hidden",
         "batch_per_task", "replay_size", "warmup_steps", "lr", "gamma", "tau",
         "torch_threads")


def load_stl_config(path: Path) -> TrainConfig:
    """The config an STL run was made with (in its description); ValueError for a file
    that is not an STL run's description."""
    data = json.loads(path.read_text())
    if not (isinstance(data, dict) and isinstance(data.get("config"), dict)
            and isinstance(data.get("given"), dict)):
        raise ValueError(f"{path}: not an STL run's {path.name} (no config and given)")
    return TrainConfig(**data["config"])


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog=PROG, description=__doc__.split("\n\n")[1])
    add_config_arguments(parser, only=FLAGS)
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue the STL run in RUN_DIR (the config it was made with; "
                        "--total-steps etc. may extend it)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)

    def prepare():
        given = given_arguments(args)
        config, run_dir = config_for_run(given, args.resume, lambda run: run.stl_config,
                                         load_stl_config, "stl")
        from conal_rl.training.stl_run import STLRun, check_stl_files, given_of_run

        check_stl_files(run_dir)
        if args.resume:  # the run's description keeps the flags given when it was made
            previous = given_of_run(run_dir)
            given = previous | {k: v for k, v in given.items() if k in RESUMABLE}
        given = {**given, "run_dir": str(run_dir)}
        return STLRun(replace(config, run_dir=str(run_dir)), run_dir, given)

    stl = run_cli(PROG, prepare)
    run_dir = stl.run_dir
    print("config:", json.dumps(asdict(stl.config)))
    print(f"run directory: {run_dir}")
    params = stl.parameters()
    print(f"{stl.T} SB3 SAC models: actor {params['actor']:,}, critic {params['critic']:,} "
          "parameters in all")
    return stl.run()


if __name__ == "__main__":
    main()
