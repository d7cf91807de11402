"""What every benchmark writes beside its figures: the command that made them, the header
of its markdown report (command, machine, date), and the JSON and markdown files of a
report (atomically, so a stopped benchmark leaves the old)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from conal_rl.common import write_atomic, write_json_atomic


def command(prog: str, argv: list[str] | None) -> str:
    """The command line as a user would re-run it."""
    return " ".join([prog, *(argv if argv is not None else sys.argv[1:])])


def now() -> str:
    """The date and time a report is written, as its header gives it."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")


def machine_text(m: dict | str) -> str:
    """``conal_rl.common.machine()`` in one line: platform, CPUs, torch, the device (and its
    GPU), the CPU model (VMs of one kernel build run on different CPUs) and Python. A
    machine an older report kept as text stays as it is; keys an older report did not
    record are left out (the CPU model: said so)."""
    if isinstance(m, str):
        return m
    parts = [m.get("platform", "?"), f"{m.get('cpu_count', '?')} CPUs",
             f"torch {m.get('torch', '?')}"]
    if m.get("device"):
        parts.append(f"device {m['device']}" + (f" ({m['gpu']})" if m.get("gpu") else ""))
    parts.append(f"CPU {m.get('cpu_model') or 'model not recorded'}")
    if m.get("python"):
        parts.append(f"Python {m['python']}")
    return ", ".join(parts)


def header(title: str, commands: str | list[str] | None, machine: dict | str | None = None,
           date: str | None = None) -> list[str]:
    """The first lines of a report: its title, the command that made it (or every call, for
    a report several calls built), the machine (``conal_rl.common.machine()``, or a text
    such as several rows' machines) and the date, each where given."""
    lines = [f"# {title}", ""]
    if isinstance(commands, str):
        lines.append(f"Command: `{commands}`  ")
    elif commands:
        lines.append("Commands: " + "; ".join(f"`{c}`" for c in commands) + "  ")
    if machine is not None:
        lines.append(f"Machine: {machine_text(machine)}  ")
    if date:
        lines.append(f"Date: {date}  ")
    return lines


def costs_path(report: Path) -> Path:
    """Where the update costs of a success report's runs lie (``benchmarks.speed.row_costs``
    writes them, the report reads them): beside the report."""
    return report.with_name(report.stem + "-costs.json")


def save(stem: Path, payload: dict, markdown: str) -> None:
    """``stem.json`` (everything) and ``stem.md`` (the table a reader opens), which is also
    printed."""
    write_json_atomic(stem.with_suffix(".json"), payload)
    write_atomic(stem.with_suffix(".md"), lambda f: f.write(markdown.encode()))
    print(markdown)
