"""Every figure in benchmarks/results/ has a file behind it.

Each number quoted in a results markdown (``benchmarks/results/*.md``, the sub-folders' .md,
``benchmarks/results/README.md``) must appear, rounded to the digits it is shown with, in
the JSON or CSV files it is drawn from (its sources, below), or follow from them by a
formula in ``DERIVED`` (checked to the digits shown; ``~x`` within 10%), or be on the
allow-list ``ALLOWED`` with the reason it has no file. What is not a figure is skipped by
rule:

* code (between backticks or in fenced blocks): commands, their flag values, file names;
* numbers inside names: MT10, reach-v3, mtsac-s2, x86_64, H100, w128x3-b32, glibc2.36;
* dates and times (2026-11-25, 19:39:46) and version numbers (2.13.0, 3.11.7);
* network shapes written N×W or NxW (3×128, 128x128x128): preset values, not measurements;
* link targets.

A number may carry a unit that scales its file value: ``k`` (thousands), ``M`` (millions),
``%`` (a fraction × 100, or a percentage as it is), `` min`` (seconds / 60, or minutes as
they are), `` h`` (seconds / 3600); the first end of a range takes the second's unit
(731-776k). A number also matches where the same digits stand in a JSON string of its
sources (a budget note, a label, a command).

A number can be in a file and still be misplaced (another row's, another column's), so
tables are held tighter: a report a benchmark wrote has exactly the table lines its
generator renders from the JSON beside it, and the README's tables quote those reports
cell for cell (``QUOTES``), as do the results tables of the project's README.md
(``PROJECT_QUOTES``); loop-breakdown.md's table is recomputed from its rows.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


# ---- the files behind the figures --------------------------------------------------------------
def data_files() -> list[Path]:
    return sorted(p for p in RESULTS.rglob("*") if p.suffix in (".json", ".csv"))


def _walk(x, numbers: list[float], strings: list[str]) -> None:
    if isinstance(x, bool) or x is None:
        return
    if isinstance(x, (int, float)):
        if math.isfinite(x):
            numbers.append(float(x))
    elif isinstance(x, str):
        strings.append(x)
    elif isinstance(x, dict):
        for v in x.values():
            _walk(v, numbers, strings)
    elif isinstance(x, list):
        for v in x:
            _walk(v, numbers, strings)


def read_data(path: Path) -> tuple[list[float], list[str]]:
    """The numbers of a JSON or CSV file, and (JSON) its strings."""
    numbers: list[float] = []
    strings: list[str] = []
    if path.suffix == ".json":
        _walk(json.loads(path.read_text()), numbers, strings)
    else:
        with open(path, newline="") as f:
            for row in csv.reader(f):
                for cell in row:
                    try:
                        value = float(cell)
                    except ValueError:
                        continue
                    if math.isfinite(value):
                        numbers.append(value)
    return numbers, strings


def _json(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


SPEED = ["speed-cpu.json", "speed-cuda.json", "speed-2core-device.json",
         "speed-laptop-threads.json"]
UPDATE_SPEED = ["update-speed-laptop.json", "update-speed-paper.json", "update-speed-bf16.json"]
QUICK_RUN = ["quick-run/config.json", "quick-run/timing.json", "quick-run/evaluations.csv"]
SANITY = [str(p.relative_to(RESULTS)) for p in sorted((RESULTS / "sanity").iterdir())
          if p.suffix in (".json", ".csv")]
# README.md: the files each section quotes; a section not named here fails the test. None:
# the text above the first section (the machines).
EVERY_FILE = "every file"
README_SOURCES: dict[str | None, list[str] | str] = {
    None: EVERY_FILE, "Index": EVERY_FILE,
    "MT10-laptop": ["MT10-laptop.json"],
    "mt10-1m": ["mt10-1m/MT10-laptop.json"],
    "MT10-quick": ["MT10-quick.json"],
    "laptop-sweep": ["laptop-sweep/minutes.json", "laptop-sweep/MT10-laptop.json"],
    "quick-run": QUICK_RUN,
    "sanity": SANITY,
    "mt50-conal-pro-quick": ["mt50-conal-pro-quick/summary.json"],
    "mt50-quick-long": ["mt50-quick-long.json"],
    "task-groups": ["task-groups.json"],
    "conflict-rules": ["conflict-rules.json"],
    "gradient-signal": ["gradient-signal.json"],
    "pro-scaling": ["pro-scaling.json"],
    "bad-inputs": ["bad-inputs.json"],
    "ray-overhead": ["ray-overhead.json"],
    "speed": [*SPEED, "laptop-sweep/MT10-laptop.json"],  # + loop-breakdown's laptop run
    "kernels": ["method_speed-cpu.json", "twin_critics-cuda.json"],
    "update-speed": UPDATE_SPEED,
    "end-to-end": ["end-to-end.json"],
    "learner-options": ["learner-options.json"],
    "probe-cost": ["probe-cost.json"],
    "mt10-1m-v2": ["mt10-1m-v2/MT10-laptop.json"],
    "learner-study": ["learner-study/learner.json", "learner-study/MT10-laptop.json"],
    "learner-1m": ["learner-1m/learner.json", "learner-1m/MT10-laptop.json",
                   "mt10-1m/MT10-laptop.json", "learner-study/learner.json"],
    "jax-reference": ["jax-reference.json", "update-speed-laptop.json"],
    "core-sharing": ["core-sharing.json"],
    "error-latency": ["error-latency.json"],
    "width-gain": ["width-gain.json"],
    "conflict-persistence": ["conflict-persistence.json"],
    "atlas": [f"atlas/MT10-{run}-quick/atlas.json"
              for run in ("mtsac", "mhsac", "conal", "conal-evidence")],
    "Performance notes": [*SPEED, *UPDATE_SPEED, "twin_critics-cuda.json", "end-to-end.json"],
}
OTHER_SOURCES = {
    "loop-breakdown.md": [*SPEED, "laptop-sweep/MT10-laptop.json"],  # + the laptop run's
    "sanity/README.md": SANITY,
    "quick-run/README.md": QUICK_RUN,
}


def sources(md: Path, section: str | None) -> list[Path]:
    rel = str(md.relative_to(RESULTS))
    if rel == "README.md":
        assert section in README_SOURCES, f"README.md: name the sources of section {section!r}"
        names = README_SOURCES[section]
        return data_files() if names == EVERY_FILE else [RESULTS / n for n in names]
    if rel in OTHER_SOURCES:
        return [RESULTS / n for n in OTHER_SOURCES[rel]]
    beside = md.with_suffix(".json")
    assert beside.exists(), f"{rel}: no {beside.name} beside it; name its sources in this test"
    return [beside]


# ---- figures with no file, and figures computed from the files ---------------------------------
# (markdown file, section of README.md or None, the number as written) -> why it has no file.
ALLOWED: dict[tuple[str, str | None, str], str] = {}
# In every file: the number as written -> why.
ALLOWED_EVERYWHERE = {
    "95%": "the confidence level of the IQM's interval",
    "1.15": "the loop-overhead target of benchmarks/speed/training_loop.py",
}


def _allow(md: str, section: str | None, tokens: str, why: str) -> None:
    for token in tokens.split():
        ALLOWED[md, section, token] = why


LAPTOP_TIMING = ("from the 60-minute laptop run's own timing.json "
                 "(runs/laptop-sweep/MT10-laptop/w128x3-b32-s0), not under results/; "
                 "loop-breakdown.md holds it")
README = "README.md"
_allow(README, "speed", "2278.8 1183.5 3600.0", LAPTOP_TIMING)
_allow(README, "MT10-quick", "15", "the runs: 5 rows × 3 seeds, not a measurement")
_allow("conflict-rules.md", None, "1024 100", "settings of the study (EVIDENCE, REFRESH in "
       "benchmarks/studies/conflict_rules.py), not measurements")
_allow(README, "atlas", "1,024", "a setting of the runs (--atlas-samples)")
_allow(README, "learner-1m", "60 0.49", "the laptop preset's budget in minutes; the field's "
       "2048-wide MH-SAC at 1M env steps, read off rainx0r/mtrl's parameter-scaling figures")
_allow("quick-run/README.md", None, "2", "the Intel VM's vCPUs, as the results README of "
       "d697d2c described it (the run's files record no machine)")
_allow("MT10-quick.md", None, "15 16 9", "the note added by hand on the runs' two machines: "
       "run counts and the GPU host's CPUs (speed-cuda.json's machine)")
_allow("loop-breakdown.md", None, "1183.5 2278.8 91.0 40.2 6.5 3600.0 753", LAPTOP_TIMING)
_allow("loop-breakdown.md", None, "0.1", "the rest column, checked cell by cell by "
       "test_the_rest_column_of_the_loop_breakdown_is_what_its_rows_leave")
_allow("loop-breakdown.md", None, "1280", "the paper preset's batch, 128 per task × 10 tasks")
_allow("sanity/README.md", None, "4", "a description of the set-up, not a measurement "
       "(no JSON: the load average as stated)")
_allow("sanity/README.md", None, "−250", "the usual SAC level on Pendulum, for comparison")
_allow("conflict-rules.md", None, "1.5", "the family tree's recovery score by construction, "
       "stated in the text")
_allow("conflict-rules.md", None, "4", "task indices: family A = tasks 0-4")

# (markdown file, section or None, the number as written) -> (its formula from the files, what)
Derivation = tuple[Callable[[], float], str]
DERIVED: dict[tuple[str, str | None, str], Derivation] = {}


def _row(name: str, key: str) -> dict:
    return next(r for r in _json(name)["rows"] if r["key"] == key)


def _success_row(name: str, row: str) -> dict:
    return next(r for r in _json(name)["rows"] if r["row"] == row)


def _mean_success(csv_name: str, first: int, last: int) -> float:
    with open(RESULTS / "sanity" / csv_name, newline="") as f:
        rows = [r for r in csv.DictReader(f) if first <= int(r["env_steps"]) <= last]
    return sum(float(r["success"]) for r in rows) / len(rows)


def _mean_at(path: str, steps: int) -> float:
    with open(RESULTS / path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["env_steps"]) == steps]
    return sum(float(r["success"]) for r in rows) / len(rows)


def _final_mean(csv_name: str) -> float:
    with open(RESULTS / "sanity" / csv_name, newline="") as f:
        last = max(int(r["env_steps"]) for r in csv.DictReader(f))
    return _mean_success(csv_name, last, last)


def _rest(name: str, key: str) -> float:
    r = _row(name, key)
    return r["wall_s"] - r["env_s"] - r["update_s"] - r["act_s"] - r["replay_add_s"]


def _update_ratio(name: str, kind: str) -> float:
    """An update kind's time over MT-SAC's, after (the 'vs MT-SAC' column)."""
    after = {r["kind"]: r["after_ms"] for r in _json(name)["rows"]}
    return after[kind] / after["mtsac"]


# A figure written ~x is an approximation: its formula must come within 10% of it.
DERIVED.update({
    **{("README.md", "update-speed", f"{_ratio}×"): (
        lambda size=size, kind=kind: _update_ratio(f"update-speed-{size}.json", kind),
        f"{kind}'s update time over MT-SAC's") for size, kind, _ratio in (
        ("laptop", "conal-search", "5.51"), ("laptop", "conal-search-k4", "3.43"),
        ("paper", "conal-search", "5.91"))},
    **{("README.md", "quick-run", f"{value:.2f}"): (
        lambda steps=steps: _mean_at("quick-run/evaluations.csv", steps),
        "mean success over tasks at that evaluation") for steps, value in (
        (200_000, 0.32), (100_000, 0.18))},
    ("README.md", "MT10-laptop", "~40%"): (
        lambda: 100 * (1 - _success_row("MT10-laptop.json", "conal")["env_steps_per_s"]
                       / _success_row("MT10-laptop.json", "mtsac")["env_steps_per_s"]),
        "CoNAL's env-steps/s below MT-SAC's, percent"),
    ("README.md", "laptop-sweep", "2.3×"): (
        lambda: _json("laptop-sweep/minutes.json")["candidates"][0]["env_steps"]
        / _json("laptop-sweep/minutes.json")["candidates"][2]["env_steps"],
        "3×128's env steps over 3×256's"),
    ("README.md", "sanity", "0.04"): (lambda: _final_mean("mt10-quick-conal-s0.csv"),
                                      "CoNAL quick: mean success of the last evaluation"),
    ("sanity/README.md", None, "0.04"): (lambda: _final_mean("mt10-quick-conal-s0.csv"),
                                         "CoNAL quick: mean success of the last evaluation"),
    ("sanity/README.md", None, "0.78"): (
        lambda: _mean_success("mt1-reach-v3-mtsac-s0.csv", 55_000, 110_000),
        "reach: mean success of the evaluations at 55k-110k env steps"),
    ("loop-breakdown.md", None, "1.85×"): (
        lambda: _row("speed-cuda.json", "MT10/paper/mtsac/async")["env_steps_per_s"]
        / _row("speed-cuda.json", "MT10/paper/mtsac")["env_steps_per_s"],
        "async over sync env-steps/s on the GPU host"),
})

# ---- reading the numbers of a markdown ---------------------------------------------------------
NUMBER = re.compile(r"(?P<sign>[-−+]?)(?P<digits>\d{1,3}(?:,\d{3})+|\d+)(?P<frac>\.\d+)?"
                    r"(?P<unit>[kM%×])?")
SKIPPED = [
    re.compile(r"```.*?```", re.S),  # code blocks
    re.compile(r"`[^`]*`"),  # code: commands, flags, files (also over a line break)
    re.compile(r"\]\([^)\s]*\)"),  # link targets
    re.compile(r"\d{4}-\d{2}-\d{2}|\d{1,2}:\d{2}(?::\d{2})?"),  # dates, times
    re.compile(r"\d+(?:\.\d+){2,}"),  # versions
    re.compile(r"\d+(?:\s?[×x]\s?\d+)+"),  # shapes: 3×128, 128x128x128, 3 × 400
]


def figures(text: str) -> list[tuple[str | None, str, float, int, str, str, int]]:
    """(README section, token as written, value, decimals, unit, text after it, position) of
    every number in ``text`` that is a figure (see the module's docstring)."""
    heading = re.compile(r"^## (.+)$", re.M)
    starts = [(m.start(), m.group(1).strip()) for m in heading.finditer(text)]
    for pattern in SKIPPED:  # blanked, so positions keep their sections
        text = pattern.sub(lambda m: " " * len(m.group(0)), text)
    out, section = [], None
    for m in NUMBER.finditer(text):
        before = text[m.start() - 1] if m.start() else " "
        after = text[m.end()] if m.end() < len(text) else " "
        sign = m.group("sign")
        if sign and before.isdigit():
            sign = ""  # the second end of a range: 640,300-797,910
        elif before.isalnum() or before in "_.,/":
            continue  # inside a name or a path: MT10, reach-v3, glibc2.36
        if (after.isalnum() or after == "_") and not m.group("unit"):
            continue  # the start of a name: 3rd, 2nd
        token = m.group(0) if sign else m.group(0).lstrip("-−+")
        value = float(m.group("digits").replace(",", "") + (m.group("frac") or ""))
        if sign in ("-", "−"):
            value = -value
        decimals = len(m.group("frac") or ".")-1
        for start, name in starts:
            if start < m.start():
                section = name
        ahead = text[m.end():m.end() + 16]
        prefix = "~" if m.start() and text[m.start() - 1] == "~" else ""
        out.append((section, prefix + token, value, decimals, m.group("unit") or "", ahead,
                    m.start()))
        section = None
    return out


def _matches(value: float, decimals: int, unit: str, ahead: str, numbers: list[float]) -> bool:
    tolerance = 0.5 * 10 ** -decimals + 1e-9 * max(1.0, abs(value))
    if not unit:  # the first end of a range takes the unit of the second: 731-776k
        unit = (re.match(r"[-–]\d[\d,]*(?:\.\d+)?([kM%×])", ahead) or [None, ""])[1]
    scales = {"k": [1e-3], "M": [1e-6], "%": [100.0, 1.0], "×": [1.0], "": [1.0]}[unit]
    if not unit and ahead.startswith(" min"):
        scales = [1 / 60, 1.0]
    elif not unit and ahead.startswith(" h"):
        scales = [1 / 3600, 1.0]
    return any(abs(v * s - value) <= tolerance for v in numbers for s in scales)


def unmatched(md: Path, text: str | None = None) -> list[str]:
    """The figures of ``md`` (or of ``text`` read as that file) with no file behind them."""
    text = md.read_text() if text is None else text
    rel = str(md.relative_to(RESULTS))
    cache: dict[tuple, tuple[list[float], str]] = {}
    problems = []
    for section, token, value, decimals, unit, ahead, _ in figures(text):
        where = section if rel == "README.md" else None
        key = (rel, where, token)
        if key in ALLOWED or token in ALLOWED_EVERYWHERE:
            continue
        if key in DERIVED:
            formula, what = DERIVED[key]
            shown = float(token.lstrip("~").rstrip("kM%×").replace(",", ""))
            # ~: an approximation, within 10%; else to the digits shown
            step = 0.1 * abs(shown) if token.startswith("~") else 0.5 * 10 ** -decimals
            if abs(formula() - shown) > step + 1e-9:
                problems.append(f"{token} ({what}): the files give {formula():.4g}")
            continue
        files = tuple(sources(md, where))
        if files not in cache:
            numbers, strings = [], []
            for f in files:
                n, s = read_data(f)
                numbers += n
                strings += s
            cache[files] = (numbers, " ".join(strings))
        numbers, strings = cache[files]
        if _matches(value, decimals, unit, ahead, numbers):
            continue
        if re.search(rf"(?<![\d,.]){re.escape(token.lstrip('~'))}(?![\d,])", strings):
            continue
        problems.append(f"{token}" + (f" (section {section!r})" if where else "")
                        + f" in none of {', '.join(f.name for f in files) or 'no file'}")
    return problems


MARKDOWNS = sorted(RESULTS.rglob("*.md"))


@pytest.mark.parametrize("md", MARKDOWNS, ids=[str(p.relative_to(RESULTS)) for p in MARKDOWNS])
def test_every_figure_has_a_file_behind_it(md):
    assert unmatched(md) == []


def test_the_rest_column_of_the_loop_breakdown_is_what_its_rows_leave():
    """loop-breakdown.md's "rest s": wall less env, update, acting and replay, per row."""
    text = (RESULTS / "loop-breakdown.md").read_text()
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ")][1:]
    sources_of_rows = [("speed-2core-device.json", "MT10/quick/mtsac"),
                       ("speed-2core-device.json", "MT10/quick/mtsac/async"),
                       ("speed-cpu.json", "MT10/quick/mtsac"),
                       ("speed-cuda.json", "MT10/paper/mtsac"),
                       ("speed-cuda.json", "MT10/paper/mtsac/async")]
    for cells, (name, key) in zip(rows, sources_of_rows):
        r = _row(name, key)
        shown = [c.strip() for c in cells]
        assert shown[2:8] == [f"{r['env_s']:.1f}", f"{r['update_s']:.1f}", f"{r['act_s']:.1f}",
                              f"{r['replay_add_s']:.1f}", f"{_rest(name, key):.1f}",
                              f"{r['wall_s']:.1f}"], key
        assert shown[8] == f"{r['env_steps_per_s']:.0f}" and shown[9] == f"{r['overhead']:.2f}"


def test_every_allowed_or_derived_figure_is_still_quoted():
    """The allow-list and the formulas hold only what the markdown quotes today, so a
    figure removed from the text leaves no blanket exemption behind."""
    quoted = set()
    for md in MARKDOWNS:
        rel = str(md.relative_to(RESULTS))
        for section, token, *_ in figures(md.read_text()):
            quoted.add((rel, section if rel == "README.md" else None, token))
    assert sorted(k for k in [*ALLOWED, *DERIVED] if k not in quoted) == []


# ---- tables: a generated one is what its JSON renders; the README quotes its cells ---------
def table_rows(text: str) -> list[dict[str, str]]:
    """The rows of every markdown table in ``text``, as {header: cell}."""
    rows, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set(line) <= set("|-: "):
            rows.append(dict(zip(header, cells)))
    return rows


def section_text(text: str, name: str, level: int = 2) -> str:
    """The section headed ``name`` at ``level`` (## is 2), up to the next heading of that
    level or above."""
    parts = re.split(rf"^#{{2,{level}}} ", text, flags=re.M)
    [part] = [p for p in parts if p.split("\n", 1)[0].strip() == name]
    return part


def _generated():
    from benchmarks.experiments import (
        curves_table,
        laptop_sweep,
        learner_study,
        success_report,
    )
    from benchmarks.speed import (
        core_sharing,
        end_to_end,
        jax_reference,
        learner_options,
        probe_cost,
        update_speed,
    )
    from benchmarks.speed import training_loop as speed
    from benchmarks.studies import (
        conflict_persistence,
        conflict_rules,
        gradient_signal,
        task_groups,
    )

    return {"conflict-rules.md": conflict_rules.markdown,
            "conflict-persistence.md": conflict_persistence.markdown,
            "update-speed-laptop.md": update_speed.markdown,
            "update-speed-paper.md": update_speed.markdown, "end-to-end.md": end_to_end.markdown,
            "update-speed-bf16.md": update_speed.markdown,
            "learner-options.md": learner_options.markdown,
            "probe-cost.md": probe_cost.markdown,
            "learner-study/learner.md": learner_study.markdown,
            "learner-study/MT10-laptop.md": success_report.markdown,
            "learner-1m/learner.md": learner_study.markdown,
            "learner-1m/MT10-laptop.md": success_report.markdown,
            "mt10-1m-v2/MT10-laptop.md": success_report.markdown,
            "jax-reference.md": jax_reference.markdown,
            "task-groups.md": task_groups.markdown,
            "mt50-quick-long.md": curves_table.markdown,
            "core-sharing.md": core_sharing.markdown,
            "gradient-signal.md": gradient_signal.markdown,
            "MT10-laptop.md": success_report.markdown, "MT10-quick.md": success_report.markdown,
            "laptop-sweep/MT10-laptop.md": success_report.markdown,
            "laptop-sweep/minutes.md": laptop_sweep.markdown,
            **{f"speed-{n}.md": speed.markdown
               for n in ("cpu", "cuda", "2core-device", "laptop-threads")}}


@pytest.mark.parametrize("md", sorted(_generated()))
def test_a_generated_table_is_what_its_json_renders(md):
    """Every table line of a report written by a benchmark is the line its generator
    writes from the JSON beside it today (prose may differ: notes added by hand, wording of
    a newer generator)."""
    path = RESULTS / md
    rendered = _generated()[md](json.loads(path.with_suffix(".json").read_text()))
    tables = [line for line in path.read_text().splitlines() if line.startswith("|")]
    assert tables and tables == [line for line in rendered.splitlines() if line.startswith("|")]


# README.md's tables quote report tables: (section, {README row: source row}, {README column:
# (source md, its key column, its column, other cells the source row must have)}).
QUOTES = [
    ("MT10-laptop", {"MT-SAC": "mtsac", "MH-SAC": "mhsac", "CoNAL": "conal",
                     "CoNAL-Pro": "conal-pro"},
     {c: ("MT10-laptop.md", "row", s, {}) for c, s in (
         ("success", "success"), ("seeds", "seeds"), ("env steps per run", "env steps"),
         ("env-steps/s", "env-steps/s"), ("actor params", "actor params"),
         ("critic params", "critic params"))}),
    ("laptop-sweep", {"w128x3-b32 (the preset)": "w128x3-b32", "w256x3-b64": "w256x3-b64",
                      "w128x3-b64-u2": "w128x3-b64-u2", "w256x2-b128": "w256x2-b128"},
     {c: ("laptop-sweep/minutes.md", "candidate", s, {}) for c, s in (
         ("15 min", "15 min"), ("60 min", "60 min"), ("env steps", "env steps"),
         ("updates", "updates"))}),
    ("speed", {"pure env stepping": "env", "MT-SAC": "mtsac", "MH-SAC": "mhsac",
               "CoNAL search": "conal-search", "pruned CoNAL tree": "conal-tree",
               "SB3 SAC on one task": "sb3"},
     {"VM-782 quick": ("speed-cpu.md", "architecture", "env-steps/s", {}),
      "2 cores, sync": ("speed-2core-device.md", "architecture", "env-steps/s",
                        {"envs": "sync"}),
      "2 cores, async": ("speed-2core-device.md", "architecture", "env-steps/s",
                         {"envs": "async"}),
      "H100 paper, sync": ("speed-cuda.md", "architecture", "env-steps/s", {"envs": "sync"}),
      "H100 paper, async": ("speed-cuda.md", "architecture", "env-steps/s",
                            {"envs": "async"})}),
]


# The project's README.md: its results tables, section by section (### headings).
PROJECT_README = RESULTS.parents[1] / "README.md"
_PRESENT = object()  # in a quote's ``where``: the source row has this column, any value
_REPORT_COLUMNS = ("success", "IQM [95% CI]", "seeds", "actor params", "critic params", "wall",
                   "env-steps/s")
PROJECT_QUOTES = [
    ("MT10 at equal env steps",
     {"MT-SAC": "mtsac", "MH-SAC": "mhsac", "MH-SAC, id in the trunk (`mhsac-id`)": "mhsac-id",
      "private critics, MH-SAC's actor (no search)": "private-critic",
      "batched STL, a net per task (`stl-batched`)": "stl-batched",
      "CoNAL from MH-SAC's trees (`conal-heads`)": "conal-heads",
      "CoNAL, id, a head per task (`conal-id`)": "conal-id", "**CoNAL (default)**": "conal",
      "**CoNAL-Pro (default)**": "conal-pro",
      "CoNAL, the paper's rule (`conal-paper`)": "conal-paper",
      "MT-SAC, its critic widened to 300k (`mtsac-wide-300k`)": "mtsac-wide-300k",
      "MH-SAC, its critic widened to 300k (`mhsac-wide-300k`)": "mhsac-wide-300k"},
     # the success table (the one with a wall column), and the update costs below it
     {c: ("mt10-1m-v2/MT10-laptop.md", "row", c, {"wall": _PRESENT}) for c in _REPORT_COLUMNS}
     | {"vs MT-SAC": ("mt10-1m-v2/MT10-laptop.md", "row", "vs mtsac", {}),
        "update ms": ("mt10-1m-v2/MT10-laptop.md", "row", "update ms", {})}),
    ("MT10 at equal training time",
     {"MT-SAC": "mtsac", "MH-SAC": "mhsac", "CoNAL (paper's rule)": "conal",
      "CoNAL-Pro (paper's rule)": "conal-pro"},
     {c: ("MT10-laptop.md", "row", c, {}) for c in _REPORT_COLUMNS}
     | {"env steps per run": ("MT10-laptop.md", "row", "env steps", {}),
        "vs MT-SAC": ("MT10-laptop.md", "row", "vs mtsac", {})}),
]


def readme_quotes(readme: str, quotes: list = QUOTES, level: int = 2,
                  at_least: int = 40) -> list[str]:
    """Cells of a README's tables that differ from the report cells they quote."""
    problems, checked = [], 0
    for section, row_map, col_map in quotes:
        for row in table_rows(section_text(readme, section, level)):
            label = next(iter(row.values()))
            for column, (md, key, source_column, where) in col_map.items():
                cell = row.get(column, "")
                if not cell or "not recorded" in cell:
                    continue
                assert label in row_map, f"{section}: row {label!r} has no source row"
                source = [r for r in table_rows((RESULTS / md).read_text())
                          if r.get(key) == row_map[label] and source_column in r
                          and all(k in r if v is _PRESENT else r.get(k) == v
                                  for k, v in where.items())]
                assert len(source) == 1, (section, label, md)
                checked += 1
                if source[0][source_column] != cell:
                    problems.append(f"{section}: {label} / {column}: {cell!r}, but {md} "
                                    f"says {source[0][source_column]!r}")
    assert checked >= at_least, checked  # every quoted table was found
    return problems


def test_the_readme_tables_quote_their_reports():
    assert readme_quotes((RESULTS / "README.md").read_text()) == []


def project_quotes(readme: str) -> list[str]:
    return readme_quotes(readme, PROJECT_QUOTES, level=3, at_least=60)


def test_the_project_readme_results_tables_quote_their_reports():
    assert project_quotes(PROJECT_README.read_text()) == []


# ---- the checker itself catches a changed figure ------------------------------------------------
@pytest.mark.parametrize("md, old, new, changed", [
    ("MT10-laptop.md", "| mtsac | 0.31 ± 0.03 |", "| mtsac | 0.32 ± 0.03 |", "0.32"),
    ("speed-cpu.md", "| 1409 |", "| 1490 |", "1490"),
    ("README.md", "| MT-SAC | 387 |", "| MT-SAC | 378 |", "378"),
    ("README.md", "1.73× faster than two", "1.78× faster than two", "1.78×"),
    ("README.md", "CoNAL-Pro 0.13", "CoNAL-Pro 0.31", "0.31"),
    ("README.md", "peak memory 3141 MB", "peak memory 3114 MB", "3114"),
    ("laptop-sweep/minutes.md", "| 952,440 |", "| 925,440 |", "925,440"),
    ("sanity/README.md", "**−158 at 4k**", "**−185 at 4k**", "−185"),
    ("loop-breakdown.md", "1.85×", "1.95×", "1.95×"),
    ("README.md", "CoNAL ~40%", "CoNAL ~85%", "~85%"),
])
def test_a_changed_figure_is_caught(md, old, new, changed):
    path = RESULTS / md
    text = path.read_text()
    assert text.count(old) == 1, old
    assert unmatched(path, text) == []
    problems = unmatched(path, text.replace(old, new))
    assert [p for p in problems if p.split()[0] == changed] == problems != [], problems


@pytest.mark.parametrize("old, new", [
    ("| MT-SAC | 0.31 ± 0.03 | 3/3 |", "| MT-SAC | 0.22 ± 0.03 | 3/3 |"),  # CoNAL's value
    ("| w128x3-b32 (the preset) | 0.16 | 0.20 |", "| w128x3-b32 (the preset) | 0.16 | 0.22 |"),
    ("| 475 | 778 |", "| 778 | 475 |"),  # sync and async swapped
])
def test_a_changed_readme_table_cell_is_caught(old, new):
    """Figures that exist elsewhere in the file (another row's, another column's) are
    caught by the quote check where the number check cannot tell."""
    readme = (RESULTS / "README.md").read_text()
    assert readme.count(old) == 1, old
    assert readme_quotes(readme.replace(old, new)) != []


@pytest.mark.parametrize("old, new", [
    ("| MT-SAC | 0.56 ± 0.04 |", "| MT-SAC | 0.55 ± 0.04 |"),
    ("| 0.62 [0.51, 0.71] | 5/5 | 80,130 | 40,456 |",
     "| 0.62 [0.51, 0.71] | 5/5 | 40,456 | 80,130 |"),  # columns swapped
    ("| MH-SAC | 0.46 ± 0.01 |", "| MH-SAC | 0.57 ± 0.06 |"),  # MT-SAC's
    ("| 40,456 | 14.65 |", "| 40,456 | 13.58 |"),  # CoNAL-Pro's update: CoNAL's
])
def test_a_changed_project_readme_table_cell_is_caught(old, new):
    readme = PROJECT_README.read_text()
    assert readme.count(old) == 1, old
    assert project_quotes(readme.replace(old, new)) != []
