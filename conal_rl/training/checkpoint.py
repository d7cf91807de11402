"""Checkpoints that resume: written atomically, holding everything a run needs to go on.

A checkpoint holds tensors and plain values only (dicts, lists, tuples, strings, numbers,
None: RNG states included), and is read with ``torch.load(weights_only=True)``: a file
that would import and call anything on load (a pickle's ``__reduce__``) is refused, so
opening someone else's checkpoint cannot run their code.
"""

from __future__ import annotations

import pickle
import random
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from conal_rl.common import CheckpointError, RunFault, write_atomic

FORMAT = "conal-rl-checkpoint/1"


class CheckpointWriteError(RunFault):
    """A checkpoint that could not be written (a full disk, a read-only folder): the run
    stops, the previous checkpoint is kept."""

    exit_status = 5


def save_atomic(state: dict, path: Path) -> None:
    """Write atomically (:func:`~conal_rl.common.write_atomic`): a crash mid-write leaves
    the previous checkpoint intact; a write that fails (OSError: disk full, read-only)
    raises CheckpointWriteError and leaves it intact too."""
    try:
        write_atomic(path, lambda f: torch.save({"format": FORMAT, **state}, f))
    except OSError as e:
        kept = "the previous checkpoint is kept" if path.exists() else "no checkpoint yet"
        raise CheckpointWriteError(
            f"could not write the checkpoint {path} ({e.strerror or type(e).__name__}); "
            f"{kept}") from e


def load(path: Path, map_location="cpu", mmap: bool = False) -> dict:
    """A checkpoint's state, read without running any code the file may hold
    (``weights_only=True``). ``mmap``: map the tensors instead of reading them (cheap; to
    check a file's header and config). CheckpointError, one line, for a missing,
    truncated, foreign or unsafe file."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles: we say it once
            warnings.simplefilter("ignore")
            try:
                state = torch.load(path, map_location=map_location, weights_only=True,
                                   mmap=mmap)
            except RuntimeError as e:
                if not (mmap and "mmap can only be used" in str(e)):
                    raise
                # not a zip-format torch file: read it to say what it is
                state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:  # weights_only stopped an import: the file would run code on load
            raise CheckpointError(
                f"{path}: refused, it is not a safe checkpoint: loading it would call "
                f"{found.group(1)} (a conal-rl checkpoint holds only tensors and plain "
                "values; a file written by the code of another project, or made to run "
                "code when opened, is not loaded)") from None
        raise CheckpointError(f"{path} is not a readable checkpoint (not a torch file "
                              "of tensors and plain values)") from None
    except Exception as e:  # truncated or foreign file
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: "
                              "truncated or another kind of file?)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a conal-rl checkpoint")
    return state


RUN_KEYS = ("config", "agent", "optimizers", "counters", "rng")  # what a run's checkpoint holds


def hook_state(state: dict, name: str) -> dict | None:
    """The saved state of the training loop's hook ``name`` (None: no such hook ran).
    Checkpoints written before the loop took several hooks held their one hook's state as
    ``"search"`` (CoNAL's search, or a growing tree's)."""
    if "hooks" in state:
        return state["hooks"].get(name)
    legacy = state.get("search")
    if legacy is None:
        return None
    is_growth = "trees" in legacy
    return legacy if (name == "branching") == is_growth else None


def check_trained_on(state: dict, benchmark: str, arch: str, where: Path) -> None:
    """Refuse a checkpoint of another benchmark or architecture than its run's, or one
    that lacks what a run's checkpoint holds."""
    missing = [k for k in RUN_KEYS if k not in state]
    saved = state.get("config")
    if missing or not isinstance(saved, dict) or not {"benchmark", "arch"} <= saved.keys():
        raise CheckpointError(f"{where}: its checkpoint is not a run's checkpoint (it lacks "
                              f"{', '.join(missing) or 'the config'})")
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
