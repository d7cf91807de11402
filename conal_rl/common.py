"""What every command line shares: user errors, devices, atomic files, the machine, numbers.

The bottom of the house: it imports nothing of the project, so the method, the runner, the
commands and the benchmarks can all use it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import numbers
import os
import platform
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:  # torch is imported where it is used: a command's flags are checked first
    import torch


class UserError(Exception):
    """A mistake a user can make (a flag, a path, a file): one line, exit status 2."""


class CheckpointError(UserError):
    """A file or folder that is not (or does not fit) a conal-rl checkpoint or run."""


class RunFault(Exception):
    """A fault a run cannot go on through (non-finite values, an env process that died, a
    checkpoint that cannot be written): one line, exit status ``exit_status`` (each kind
    its own, see README.md, "Exit statuses")."""

    exit_status = 3


def one_line(message: object) -> str:
    """A message on one line (an error line must not spill over several)."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def run_cli(prog: str, body: Callable[[], object], errors: tuple = (UserError,)) -> object:
    """Run a command's body; a user's mistake is one line on stderr and exit status 2, a
    :class:`RunFault` one line and its own exit status."""
    try:
        return body()
    except (*errors, RunFault) as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(getattr(e, "exit_status", 2)) from None


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors (a wrong type, an unknown choice, a missing argument)
    are one line on stderr, exit status 2, like every other user error (argparse's own
    print the usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")


class StopSignal:
    """SIGTERM/SIGINT set ``requested`` (and ``signum``) instead of killing the process, so a
    loop can stop at its next step boundary and save first; ``restore()`` puts the previous
    handlers back."""

    def __init__(self):
        self.requested, self.signum = False, 0
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave default handling
                pass

    def _handle(self, signum, frame):
        self.requested, self.signum = True, signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


DEVICES = ("auto", "cpu", "cuda")
"""``--device``: auto picks cuda when there is one."""


def resolve_device(name: str) -> torch.device:
    """``auto`` (cuda when available), ``cpu`` or ``cuda``; UserError for cuda without one."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available on this machine "
                        f"(torch {torch.__version__}); use --device cpu or auto")
    return torch.device(name)


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the
    kernel. A SAC update frees and re-allocates the same activation buffers (hundreds of KB
    each) every time; with glibc's defaults they often come back as fresh pages, which the
    kernel faults in and zeroes again: ~22 page faults per laptop-size update, none with
    this setting (tests/test_common_memory.py; its time, together with fused Adam, in
    benchmarks/results/update-speed-laptop.md). The cost: the process holds on to its peak
    heap. Returns whether it applied (False where the C library is not glibc)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    # Blocks up to 32 MiB (glibc's ceiling) from the heap (larger ones, e.g. replay storage,
    # keep their own mapping); the heap's free top goes back to the kernel only past 1 GiB.
    return bool(mallopt(m_mmap_threshold, 32 << 20) and mallopt(m_trim_threshold, 1 << 30))


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """``write(file)`` into a temporary file beside ``path``, flush it to disk, then rename:
    a crash mid-write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, a read-only folder: no half-written file left
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)  # the rename itself survives a power cut
    return path


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system can sync a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_atomic(path: str | Path, payload: object) -> Path:
    return write_atomic(path, lambda f: f.write(json.dumps(payload, indent=2).encode() + b"\n"))


def machine(device: str | torch.device = "cpu") -> dict:
    """The machine a measurement ran on, for result files."""
    import torch

    name = str(device)
    resolved = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    info = {"platform": platform.platform(), "processor": platform.processor(),
            "cpu_model": _cpu_model(), "cpu_bf16_units": list(cpu_bf16_units()),
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": resolved}
    if resolved.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


BF16_UNITS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_units() -> tuple[str, ...]:
    """This CPU's bf16 matrix instructions (Linux's flags): AMX tiles, AVX-512 BF16. Without
    them a bf16 product is emulated and slower than fp32."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return tuple(f for f in BF16_UNITS if f in flags)
    return ()


def _cpu_model() -> str | None:
    """The CPU's model name (Linux), which the platform string does not tell: VMs of one
    kernel build can run on different CPUs."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def finite_or_none(x):
    """A float NaN -> None (JSON has no NaN); anything else unchanged."""
    return None if isinstance(x, numbers.Real) and math.isnan(x) else x


def as_float(x) -> float:
    """None, '' or a number (JSON null, an empty CSV cell) -> float, missing as NaN."""
    return float("nan") if x is None or x == "" else float(x)
