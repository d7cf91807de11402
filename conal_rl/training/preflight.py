"""What a command checks before it builds anything: its config and run directory, every
flag and file, one line and exit status 2 for anything wrong.

Light on imports on purpose (no torch, no Meta-World until a file that needs them is
there), so that a wrong flag or a missing file answers at once.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from conal_rl.common import (
    CheckpointError,
    UserError,
    cpu_bf16_units,
    one_line,
    resolve_device,
)
from conal_rl.training.architectures import architecture
from conal_rl.training.config import TrainConfig
from conal_rl.training.rundir import RunDir
from envs import UnknownBenchmark, check_benchmark_name, observation_action_sizes, task_names


def config_for_run(given: dict, resume: str | None,
                   saved: Callable[[RunDir], Path] = lambda run: run.config,
                   load: Callable[[Path], TrainConfig] = TrainConfig.load,
                   name: str = "") -> tuple[TrainConfig, Path]:
    """A command's config and run directory: a new run from the flags ``given``, or with
    ``resume`` the run there, its ``saved`` config (the file ``saved(run)``, read by
    ``load``) with the flags a resume may change. ``name``: the run directory's default
    name part (default: the arch). UserError for anything wrong, before any env is built."""
    try:
        check_benchmark_name(given.get("benchmark", TrainConfig.benchmark))
        if resume:
            run_dir = Path(resume)
            saved_file = saved(RunDir(run_dir))
            if not saved_file.is_file():
                raise UserError(f"--resume {run_dir}: no {saved_file.name} there (not a run "
                                "directory of this command)")
            try:
                previous = load(saved_file)
            except (ValueError, TypeError, KeyError, AttributeError, OSError) as e:
                raise UserError(f"--resume {run_dir}: its {saved_file.name} is not a readable "
                                f"config ({type(e).__name__}: {one_line(e)})") from None
            config = previous.resumed_with(given)
        else:
            config = TrainConfig(**given)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = Path(config.run_dir or f"runs/{config.benchmark.replace(':', '-')}-"
                           f"{name or config.arch}-s{config.seed}-{stamp}")
            if saved(RunDir(run_dir)).exists():
                raise UserError(f"{run_dir} already holds a run; use --resume {run_dir} or "
                                "another --run-dir")
    except (UnknownBenchmark, ValueError, TypeError) as e:
        raise UserError(str(e)) from None
    check_run_files(config, run_dir)
    device = resolve_device(config.device)  # last: it loads torch
    if config.precision == "bf16" and device.type == "cpu" and not cpu_bf16_units():
        raise UserError("--precision bf16 needs a CPU with bf16 matrix units (AMX or AVX-512 "
                        "BF16) or a GPU: on this CPU bf16 products are emulated, slower than "
                        "fp32")
    return config, run_dir


def check_run_files(config: TrainConfig, run_dir: Path) -> None:
    """What a run will read and write, checked before any env is built (seconds, not the
    minutes MT50's envs take): the architecture (``--architecture`` for ``--arch tree``, or
    the run's own ``architecture.json``) fits the benchmark's tasks, a checkpoint there is
    a readable, safe one of this benchmark and architecture (its tensors mapped, not read),
    the replay buffer fits in memory, and the run directory can be written. UserError,
    one line, otherwise."""
    if not isinstance(config.benchmark, str):
        raise UserError(f"benchmark must be a name, got {config.benchmark!r}")
    if config.architecture and not Path(config.architecture).is_file():
        raise UserError(f"{config.architecture}: no such architecture file")
    try:
        tasks = task_names(config.benchmark)
    except UnknownBenchmark as e:
        raise UserError(str(e)) from None
    run = RunDir(run_dir)
    arch = architecture(config.arch)
    if run.architecture.exists():  # a run's own trees: what a resume trains
        from conal_rl.training.nets import check_fits, load_specs

        check_fits(load_specs(run.architecture), tasks, run.architecture)
    elif arch.fixed:  # fixed trees: a file that fits, a size that can be had
        from conal_rl.training.nets import fixed_trees

        try:
            fixed_trees(config, tasks, observation_action_sizes(config.benchmark))
        except ValueError as e:  # a file that does not fit, a size that cannot be had
            raise UserError(str(e)) from None
    # its own checkpoint, its search's, CoNAL-Pro's stages'
    for d in [d for d in (run, *run.search_dirs()) if d.checkpoint.exists()]:
        from conal_rl.training import checkpoint

        state = checkpoint.load(d.checkpoint, mmap=True)
        checkpoint.check_trained_on(state, config.benchmark, config.arch, d.path)
    _check_replay_memory(config)
    _check_writable(run_dir)



def _check_replay_memory(config: TrainConfig) -> None:
    """The replay buffer is allocated whole when a run starts (zeros: pages are only taken
    as it fills, so one too large would be killed hours later): refuse one larger than the
    device's memory (Meta-World benchmarks, whose sizes are known without an env)."""
    sizes = observation_action_sizes(config.benchmark)
    if sizes is None:
        return
    from agents import MultiTaskReplay

    need = MultiTaskReplay.storage_bytes(config.replay_size, *sizes)
    device = resolve_device(config.device)
    if device.type == "cuda":
        import torch

        have = torch.cuda.get_device_properties(device).total_memory
    else:
        try:
            have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return
    if need > have:
        raise UserError(f"--replay-size {config.replay_size:,} needs {need / 2**30:,.1f} GiB "
                        f"for the replay buffer, more than the {have / 2**30:,.1f} GiB of "
                        f"memory of this machine's {device.type}")


def _check_writable(run_dir: Path) -> None:
    """Make the run directory (the run is about to) and write a file there: a file in the
    way, a read-only disk or folder (also for root, whom permissions do not stop) is one
    line now, not a traceback after the envs are built."""
    existing = run_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"run directory {run_dir}: {existing} is a file, not a folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as e:
        raise UserError(f"run directory {run_dir} cannot be written "
                        f"({e.strerror or type(e).__name__})") from None


def load_config(run_dir: Path) -> TrainConfig:
    """A run's config; CheckpointError (one line) for a folder that is not a run."""
    path = RunDir(run_dir).config
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a conal-rl run (no {path.name})")
    try:
        return TrainConfig.load(path)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path} is not a conal-rl config ({e})") from None


def run_dir_of(path: str | Path) -> Path:
    """The run directory of a RUN_DIR or of its checkpoint file."""
    path = Path(path)
    if path.is_dir():
        return path
    if not path.exists():
        raise UserError(f"{path}: no such run directory or checkpoint")
    for run in (RunDir(path.parent), RunDir(path.parent.parent)):
        if run.config.is_file():
            if path.resolve() != run.checkpoint.resolve():
                checkpoint_name = run.checkpoint.relative_to(run.path)
                raise UserError(f"{path}: only a run's {checkpoint_name} can be evaluated")
            return run.path
    raise CheckpointError(f"{path} is not in a conal-rl run directory (no "
                          f"{run.config.name} beside it or its folder)")


