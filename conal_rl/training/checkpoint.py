"""Checkpoints that resume: written atomically, holding everything a run needs to go on."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from conal_rl.common import UserError, write_atomic

FORMAT = "conal-rl-checkpoint/1"


class CheckpointError(UserError):
    """A file or folder that is not (or does not fit) a conal-rl checkpoint or run."""


def save_atomic(state: dict, path: Path) -> None:
    """Write atomically (:func:`~conal_rl.common.write_atomic`): a crash mid-write leaves
    the previous checkpoint intact."""
    write_atomic(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load(path: Path, map_location="cpu") -> dict:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated or foreign file
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a conal-rl checkpoint")
    return state


def check_trained_on(state: dict, benchmark: str, arch: str, where: Path) -> None:
    """Refuse a checkpoint of another benchmark or architecture than its run's."""
    saved = state["config"]
    if (saved["benchmark"], saved["arch"]) != (benchmark, arch):
        raise CheckpointError(f"{where}: the checkpoint was trained on {saved['benchmark']} "
                              f"with {saved['arch']}, but the run is {benchmark} with {arch}")


def rng_state(np_rng: np.random.Generator) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np_rng.bit_generator.state,
        "python": random.getstate(),
    }


def restore_rng(state: dict, np_rng: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_rng.bit_generator.state = state["numpy"]
    random.setstate(state["python"])
