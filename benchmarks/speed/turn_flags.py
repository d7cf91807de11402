"""The flags of the speed benchmarks whose rows take turns (sizes, updates per round,
rounds) and their check: one place, importable without torch."""

from __future__ import annotations

import argparse


def add_turn_flags(parser: argparse.ArgumentParser, sizes: dict, default: str,
                   repeats: int = 20) -> None:
    """``--sizes`` (of ``sizes``), ``--repeats`` and ``--rounds``: what
    ``update_clock.turns`` takes."""
    parser.add_argument("--sizes", default=default,
                        help=f"comma-separated of {', '.join(sizes)} (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=repeats, help="updates per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of turns")


def chosen_sizes(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 sizes: dict) -> list[str]:
    """The sizes ``--sizes`` names; the parser's error (exit 2) for unknown ones, or for
    ``--repeats`` or ``--rounds`` below 1."""
    chosen = [s for s in args.sizes.split(",") if s]
    if not chosen or set(chosen) - set(sizes):
        parser.error(f"--sizes: comma-separated of {', '.join(sizes)}, got {args.sizes!r}")
    if args.repeats < 1 or args.rounds < 1:
        parser.error("--repeats and --rounds must be at least 1")
    return chosen
