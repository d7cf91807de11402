"""What every benchmark writes beside its figures: the command that made them, and the
JSON and markdown files of a report (atomically, so a stopped benchmark leaves the old)."""

from __future__ import annotations

import sys
from pathlib import Path

from conal_rl.common import write_atomic, write_json_atomic


def command(prog: str, argv: list[str] | None) -> str:
    """The command line as a user would re-run it."""
    return " ".join([prog, *(argv if argv is not None else sys.argv[1:])])


def save(stem: Path, payload: dict, markdown: str) -> None:
    """``stem.json`` (everything) and ``stem.md`` (the table a reader opens), which is also
    printed."""
    write_json_atomic(stem.with_suffix(".json"), payload)
    write_atomic(stem.with_suffix(".md"), lambda f: f.write(markdown.encode()))
    print(markdown)
