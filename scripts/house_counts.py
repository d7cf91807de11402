"""Structure counts of a checkout (issue 27): modules that spell a run's file names, places a
flag's choice list is written, benchmark imports of non-public names, line counts and the
longest functions.

    python scripts/house_counts.py [ROOT]   # ROOT: e.g. a git worktree of an older revision
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

RUN_FILES = {"config.json", "architecture.json", "architecture.png", "timing.json",
             "evaluations.csv", "eval_latest.json", "stl.json", "decided.json", "inherited.pt",
             "latest.pt", "progress.json", "checkpoints", "search", "train.log", "videos",
             "eval.json", "eval.csv"}
RUN_PATTERNS = r"^(stage|task|step_)"  # f-string path parts: stage<s>, task<i>-..., step_<n>
GLOBS = r"timing|stage|tfevents|\.zip|step_"
CHOICE_LISTS = {
    "--conflict-rule list / 'any-pair'": r'"any-pair"',
    "--device choices": r'\("auto", "cpu", "cuda"\)|\["cpu", "cuda"\]|\("cpu", "cuda"\)',
    "--loss-weighting list": r'\("mean", "rlw"\)|Literal\["mean", "rlw"\]',
    "--grad-surgery list": r'\("none", "pcgrad"\)|Literal\["none", "pcgrad"\]',
    "--arch list": r'Literal\["mtsac"|\bARCHS = \(',
    "'--arch tree needs --architecture'": r"tree needs --architecture",
}
INTERNAL = {"PRESETS", "RESUMABLE", "FORMAT", "search_conflict_logs", "search_timing",
            "MAX_WIDTH"}  # the non-public names issue 27 found benchmarks importing
PARTS = {"product": ["conal_rl/**/*.py", "agents/*.py", "envs/*.py"],
         "benchmarks": ["benchmarks/**/*.py"], "tests": ["tests/*.py"]}


def files(root: Path, part: str) -> list[Path]:
    return sorted(f for pattern in PARTS[part] for f in root.glob(pattern))


def path_uses(tree: ast.AST) -> int:
    """String constants used as a path: an operand of ``/``, or a glob pattern."""
    hits = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and side.value in RUN_FILES:
                    hits += 1
                if isinstance(side, ast.JoinedStr) and any(
                        isinstance(v, ast.Constant) and re.match(RUN_PATTERNS, str(v.value))
                        for v in side.values):
                    hits += 1
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("glob", "rglob"):
            hits += sum(isinstance(a, ast.Constant) and bool(re.search(GLOBS, str(a.value)))
                        for a in node.args)
    return hits


def main(root: Path) -> None:
    code = files(root, "product") + files(root, "benchmarks")
    spelling = {str(f.relative_to(root)): n for f in code
                if (n := path_uses(ast.parse(f.read_text())))}
    print(f"modules spelling a run's file names: {len(spelling)} {spelling}")
    source = "\n".join(f.read_text() for f in code)
    for what, pattern in CHOICE_LISTS.items():
        print(f"{what}: {len(re.findall(pattern, source))}")
    internal = [f"{f.name}: {node.module}.{alias.name}" for f in files(root, "benchmarks")
                for node in ast.walk(ast.parse(f.read_text()))
                if isinstance(node, ast.ImportFrom) and node.module
                and node.module.split(".")[0] in ("conal_rl", "agents", "envs")
                for alias in node.names
                if alias.name.startswith("_") or alias.name in INTERNAL]
    print(f"benchmark imports of non-public names: {len(internal)} {internal}")
    for part in PARTS:
        found, lines = [], 0
        for f in files(root, part):
            text = f.read_text()
            lines += len(text.splitlines())
            found += [(n.end_lineno - n.lineno + 1, f"{f.relative_to(root)}:{n.name}")
                      for n in ast.walk(ast.parse(text))
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        found.sort(reverse=True)
        longest = ", ".join(f"{name} {n}" for n, name in found[:4])
        print(f"{part}: {len(files(root, part))} files, {lines} lines; longest: {longest}; "
              f"over 60 lines: {sum(n > 60 for n, _ in found)}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
