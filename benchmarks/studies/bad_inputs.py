"""Bad inputs, tried: every command line given wrong flags and broken files.

    python -m benchmarks.studies.bad_inputs [--out-dir benchmarks/results] [--only TEXT]
        [--timeout 120] [--keep DIR]

Every case is one command (``python -m conal_rl.train``, ``conal_rl.evaluate``,
``conal_rl.render``, ``conal_rl.plot``, ``conal_rl.stl``, ``benchmarks.experiments.success``,
``benchmarks.speed.training_loop``, ``benchmarks.experiments.laptop_sweep``,
``benchmarks.speed.method_speed``, ``benchmarks.speed.twin_critics``,
``benchmarks.speed.row_costs``) with one bad input: a wrong type, a number out of range (zero,
negative, NaN), an unknown name, or a missing, empty, truncated, foreign or booby-trapped
file (checkpoint, ``architecture.json``, ``config.json``, ``stl.json``,
``evaluations.csv``). The files are made first in a scratch folder: a tiny Pendulum run
trained for 100 env steps and broken copies of it. Each case runs as a subprocess and is
recorded: the first line on stderr, the exit status, the seconds until it exited, whether
a traceback was printed and, for the checkpoint made to run code on load, whether that
code ran. A case is clean when it exits with status 2 and one line on stderr, no
traceback. Writes ``OUT_DIR/bad-inputs.md`` and ``.json`` with the machine
(``conal_rl.common.machine()``); ``--only`` runs the cases whose command or input
contains TEXT (and then writes nothing unless ``--out-dir`` is given).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.report_files import command, header, now, save
from conal_rl.common import CommandParser, machine
from conal_rl.training.rundir import RunDir

PROG = "python -m benchmarks.studies.bad_inputs"
ROOT = Path(__file__).resolve().parents[2]
TINY = ["--hidden", "8,8", "--batch-per-task", "8", "--warmup-steps", "50",
        "--eval-episodes", "1"]


@dataclass(frozen=True)
class Case:
    command: str  # the module run with python -m
    input: str  # what is wrong, in words
    args: tuple[str, ...]  # its arguments; {name} is a path of the workspace
    cuda_less: bool = False  # only meaningful on a machine without CUDA

    @property
    def name(self) -> str:
        return f"{self.command}: {self.input}"


def _cases() -> list[Case]:
    T, E, R, P = "conal_rl.train", "conal_rl.evaluate", "conal_rl.render", "conal_rl.plot"
    S = "conal_rl.stl"
    B = "benchmarks."
    tree = ("--benchmark", "MT10", "--arch", "tree", "--architecture")
    new = ("--run-dir", "{scratch}/new-run")  # where a run would go, were it started
    c = [
        # ---- train: flags ----
        Case(T, "--total-steps -5", ("--total-steps", "-5", *new)),
        Case(T, "--total-steps 0", ("--total-steps", "0", *new)),
        Case(T, "--total-steps abc (not a number)", ("--total-steps", "abc")),
        Case(T, "--total-steps 1e6 (a float for an integer)", ("--total-steps", "1e6")),
        Case(T, "--minutes -1", ("--minutes", "-1", *new)),
        Case(T, "--minutes nan", ("--minutes", "nan", *new)),
        Case(T, "--batch-per-task 0", ("--batch-per-task", "0", *new)),
        Case(T, "--hidden 0,8", ("--hidden", "0,8", *new)),
        Case(T, "--hidden 8,,8", ("--hidden", "8,,8")),
        Case(T, "--hidden 1000000 (too wide)", ("--hidden", "1000000", *new)),
        Case(T, "--lr nan", ("--lr", "nan", *new)),
        Case(T, "--lr 0", ("--lr", "0", *new)),
        Case(T, "--lr -1", ("--lr", "-1", *new)),
        Case(T, "--arch-lr nan", ("--arch", "conal", "--arch-lr", "nan", *new)),
        Case(T, "--gamma 2", ("--gamma", "2", *new)),
        Case(T, "--eval-episodes 0", ("--eval-episodes", "0", *new)),
        Case(T, "--updates-per-step 0", ("--updates-per-step", "0", *new)),
        Case(T, "--replay-size 0", ("--replay-size", "0", *new)),
        Case(T, "--replay-size 100000000000 (more than memory)",
             ("--replay-size", "100000000000", *new)),
        Case(T, "--seed -1", ("--seed", "-1", *new)),
        # ---- train: the learner's levers, the critic's size ----
        Case(T, "--weight-init xavier", ("--weight-init", "xavier", *new)),
        Case(T, "--max-grad-norm -1", ("--max-grad-norm", "-1", *new)),
        Case(T, "--max-grad-norm nan", ("--max-grad-norm", "nan", *new)),
        Case(T, "--precision fp8", ("--precision", "fp8", *new)),
        Case(T, "--weight-decay -1", ("--weight-decay", "-1", *new)),
        Case(T, "--reset-every -1", ("--reset-every", "-1", *new)),
        Case(T, "--precision bf16 with --grad-surgery pcgrad",
             ("--precision", "bf16", "--grad-surgery", "pcgrad", *new)),
        Case(T, "--critic-hidden 0,8", ("--critic-hidden", "0,8", *new)),
        Case(T, "--critic-params -5", ("--arch", "mtsac-wide", "--critic-params", "-5", *new)),
        Case(T, "--critic-params for an arch that does not widen",
             ("--arch", "mhsac", "--critic-params", "100000", *new)),
        Case(T, "--critic-params too small to reach",
             ("--arch", "mtsac-wide", "--critic-params", "10", *new)),
        Case(T, "--shared-head with --inherit-weights",
             ("--arch", "conal", "--shared-head", "--inherit-weights", *new)),
        Case(T, "--branch-rule nope", ("--branch-rule", "nope", *new)),
        Case(T, "--gain-price -0.1", ("--gain-price", "-0.1", *new)),
        Case(T, "--gain-price inf", ("--gain-price", "inf", *new)),
        Case(T, "--gain-holdout 1", ("--gain-holdout", "1", *new)),
        Case(T, "--gain-budget -1", ("--gain-budget", "-1", *new)),
        Case(T, "--branch-every on trees with no shared module",
             ("--arch", "independent", "--branch-every", "1000", *new)),
        Case(T, "--arch mtsac-wide on a gym: env (sizes unknown)",
             ("--benchmark", "gym:Pendulum-v1", "--arch", "mtsac-wide", *new)),
        Case(T, "--critic-hidden of another depth for --arch conal",
             ("--arch", "conal", "--critic-hidden", "8", *new)),
        Case(T, "--benchmark MT11", ("--benchmark", "MT11")),
        Case(T, "--benchmark MT1:nope-v3", ("--benchmark", "MT1:nope-v3")),
        Case(T, "--benchmark gym:Nope-v0", ("--benchmark", "gym:Nope-v0")),
        Case(T, "--arch nope", ("--arch", "nope")),
        Case(T, "--vector-strategy nope", ("--vector-strategy", "nope")),
        Case(T, "--device cuda without CUDA", ("--device", "cuda", *new), cuda_less=True),
        Case(T, "--run-dir is a file", ("--run-dir", "{a_file}")),
        Case(T, "--run-dir of an existing run, no --resume",
             ("--benchmark", "gym:Pendulum-v1", "--run-dir", "{run}")),
        # ---- train: architecture files ----
        Case(T, "--arch tree without --architecture", ("--arch", "tree", *new)),
        Case(T, "--architecture missing.json", (*tree, "{scratch}/missing.json", *new)),
        Case(T, "--architecture: an empty file", (*tree, "{arch_empty}", *new)),
        Case(T, "--architecture: truncated JSON", (*tree, "{arch_truncated}", *new)),
        Case(T, "--architecture: a PNG (foreign file)", (*tree, "{run_picture}", *new)),
        Case(T, "--architecture: a JSON list", (*tree, "{arch_list}", *new)),
        Case(T, "--architecture: no critic tree", (*tree, "{arch_no_critic}", *new)),
        Case(T, "--architecture: tasks of another benchmark (Pendulum's for MT10)",
             (*tree, "{run_architecture}", *new)),
        Case(T, "--architecture: 3 tasks for MT10's 10", (*tree, "{arch_three_tasks}", *new)),
        Case(T, "--architecture: branch point 5 of 2 modules", (*tree, "{arch_branch}", *new)),
        Case(T, "--architecture: negative width", (*tree, "{arch_negative}", *new)),
        Case(T, "--architecture: width as text", (*tree, "{arch_text_width}", *new)),
        # ---- train: resume ----
        Case(T, "--resume a missing folder", ("--resume", "{scratch}/no-such-run")),
        Case(T, "--resume: config.json holds {}", ("--resume", "{run_config_empty_object}")),
        Case(T, "--resume: config.json truncated", ("--resume", "{run_config_truncated}")),
        Case(T, "--resume: config.json empty", ("--resume", "{run_config_empty}")),
        Case(T, "--resume: config.json with an unknown arch",
             ("--resume", "{run_config_bad_arch}")),
        Case(T, "--resume: checkpoint empty", ("--resume", "{run_ckpt_empty}")),
        Case(T, "--resume: checkpoint truncated", ("--resume", "{run_ckpt_truncated}")),
        Case(T, "--resume: checkpoint is text", ("--resume", "{run_ckpt_text}")),
        Case(T, "--resume: checkpoint made to run code on load", ("--resume", "{run_ckpt_evil}")),
        Case(T, "--resume: checkpoint of a plain tensor", ("--resume", "{run_ckpt_tensor}")),
        Case(T, "--resume: checkpoint of another run (MT10 conal)",
             ("--resume", "{run_ckpt_other}")),
        Case(T, "--resume: architecture.json empty", ("--resume", "{run_arch_empty}")),
        Case(T, "--resume --hidden 4 (may not change)", ("--resume", "{run}", "--hidden", "4")),
        # ---- evaluate ----
        Case(E, "a missing path", ("{scratch}/no-such-run",)),
        Case(E, "a folder that is not a run", ("{scratch}",)),
        Case(E, "--episodes 0", ("{run}", "--episodes", "0")),
        Case(E, "--episodes abc", ("{run}", "--episodes", "abc")),
        Case(E, "--seed -1", ("{run}", "--seed", "-1")),
        Case(E, "--device cuda without CUDA", ("{run}", "--device", "cuda"), cuda_less=True),
        Case(E, "--benchmark MT10 for a Pendulum run", ("{run}", "--benchmark", "MT10")),
        Case(E, "config.json holds {}", ("{run_config_empty_object}",)),
        Case(E, "config.json truncated", ("{run_config_truncated}",)),
        Case(E, "checkpoint missing", ("{run_ckpt_missing}",)),
        Case(E, "checkpoint empty", ("{run_ckpt_empty}",)),
        Case(E, "checkpoint truncated", ("{run_ckpt_truncated}",)),
        Case(E, "checkpoint is text", ("{run_ckpt_text}",)),
        Case(E, "checkpoint made to run code on load", ("{run_ckpt_evil}",)),
        Case(E, "checkpoint of a plain tensor", ("{run_ckpt_tensor}",)),
        Case(E, "checkpoint of another run", ("{run_ckpt_other}",)),
        Case(E, "architecture.json without critic", ("{run_arch_no_critic}",)),
        Case(E, "architecture.json truncated", ("{run_arch_truncated}",)),
        Case(E, "a run's config.json given as its checkpoint", ("{run_config}",)),
        # ---- render ----
        Case(R, "a missing run", ("{scratch}/no-such-run",)),
        Case(R, "--size 7 (odd)", ("{run}", "--size", "7")),
        Case(R, "--size 0", ("{run}", "--size", "0")),
        Case(R, "--fps nan", ("{run}", "--fps", "nan")),
        Case(R, "--episodes 0", ("{run}", "--episodes", "0")),
        Case(R, "--tasks nope", ("{run}", "--tasks", "nope")),
        Case(R, "checkpoint made to run code on load", ("{run_ckpt_evil}",)),
        Case(R, "checkpoint truncated", ("{run_ckpt_truncated}",)),
        # ---- plot ----
        Case(P, "a missing run", ("{scratch}/no-such-run", "--out", "{scratch}/plots")),
        Case(P, "no evaluations.csv", ("{run_evals_missing}", "--out", "{scratch}/plots")),
        Case(P, "evaluations.csv empty", ("{run_evals_empty}", "--out", "{scratch}/plots")),
        Case(P, "evaluations.csv truncated mid-row",
             ("{run_evals_truncated}", "--out", "{scratch}/plots")),
        Case(P, "evaluations.csv binary (foreign)",
             ("{run_evals_binary}", "--out", "{scratch}/plots")),
        Case(P, "evaluations.csv another CSV", ("{run_evals_other}", "--out", "{scratch}/plots")),
        Case(P, "config.json holds {}", ("{run_config_empty_object}", "--out",
                                         "{scratch}/plots")),
        Case(P, "--out is a file", ("{run}", "--out", "{a_file}")),
        # ---- stl ----
        Case(S, "--total-steps 0", ("--total-steps", "0", *new)),
        Case(S, "--hidden 0", ("--hidden", "0", *new)),
        Case(S, "--lr nan", ("--lr", "nan", *new)),
        Case(S, "--benchmark nope", ("--benchmark", "nope")),
        Case(S, "--resume: stl.json holds {}", ("--resume", "{stl_json_empty_object}")),
        Case(S, "--resume: stl.json truncated", ("--resume", "{stl_json_truncated}")),
        Case(S, "--resume a train run (no stl.json)", ("--resume", "{run}")),
        Case(S, "--resume: SB3 model file truncated", ("--resume", "{stl_model_truncated}")),
        # ---- benchmarks ----
        *(Case(B + "experiments.success", text, (*args, "--runs-dir", "{scratch}/success",
                                     "--out-dir", "{scratch}/success-out"))
          for text, args in [("--seeds 0", ("--seeds", "0")), ("--jobs 0", ("--jobs", "0")),
                             ("--archs nope", ("--archs", "nope")),
                             ("--budget nope", ("--budget", "nope")),
                             ("--benchmark nope", ("--benchmark", "nope")),
                             ("--minutes nan", ("--minutes", "nan")),
                             ("--total-steps abc", ("--total-steps", "abc"))]),
        *(Case(B + "speed.training_loop", text, (*args, "--out", "{scratch}/speed.json"))
          for text, args in [("--steps 0", ("--steps", "0")),
                             ("--hidden abc", ("--hidden", "abc")),
                             ("--benchmark nope", ("--benchmark", "nope")),
                             ("--archs nope", ("--archs", "nope")),
                             ("--torch-threads 0", ("--torch-threads", "0"))]),
        Case(B + "speed.training_loop", "--out a truncated results file",
             ("--out", "{arch_truncated}")),
        *(Case(B + "experiments.laptop_sweep", text, (*args, "--runs-dir", "{scratch}/sweep",
                                          "--out-dir", "{scratch}/sweep-out"))
          for text, args in [("--minutes 0", ("--minutes", "0")),
                             ("--minutes nan", ("--minutes", "nan")),
                             ("--seeds 0", ("--seeds", "0")),
                             ("--candidates nope", ("--candidates", "nope"))]),
        *(Case(B + "speed.method_speed", text, (*args, "--out", "{scratch}/method.json"))
          for text, args in [("--repeats 0", ("--repeats", "0")),
                             ("--threads 0", ("--threads", "0")),
                             ("--repeats abc", ("--repeats", "abc"))]),
        *(Case(B + "speed.twin_critics", text, (*args, "--out", "{scratch}/twins.json"))
          for text, args in [("--repeats 0", ("--repeats", "0")),
                             ("--repeats -1", ("--repeats", "-1"))]),
        *(Case(B + "speed.row_costs", text, args)
          for text, args in [("a report that does not exist", ("{scratch}/no-such.json",)),
                             ("a truncated report", ("{arch_truncated}",)),
                             ("a run's config.json, not a report", ("{run}/config.json",)),
                             ("--repeats 0", ("{run}/config.json", "--repeats", "0"))]),
        Case(B + "speed.twin_critics", "--device cuda without CUDA",
             ("--device", "cuda", "--out", "{scratch}/twins.json"), cuda_less=True),
    ]
    return c


CASES = _cases()


# ---- the files the cases break ---------------------------------------------------------------
class _RunsCode:
    """Pickles to a call of exec(): what a booby-trapped checkpoint holds."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def booby_trapped_checkpoint(path: Path, marker: Path, tag: str) -> Path:
    """A file that looks like a checkpoint (its format ``tag``, a real checkpoint's) and,
    opened with ``torch.load(weights_only=False)``, writes ``marker``: code run on load."""
    code = f"open({str(marker)!r}, 'w').write('code ran on load')"
    torch.save({"format": tag, "config": {"benchmark": "gym:Pendulum-v1", "arch": "mhsac"},
                "agent": _RunsCode(code)}, path)
    return path


def _copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


def make_workspace(root: Path, base_run: Path | None = None) -> dict[str, str]:
    """The scratch files: a tiny trained run (or a copy of ``base_run``) and broken
    copies of it; returns the names the cases' ``{placeholders}`` use."""
    root.mkdir(parents=True, exist_ok=True)
    run = root / "run"
    if base_run is not None:
        _copy(base_run, run)
    else:
        proc = subprocess.run(
            [sys.executable, "-m", "conal_rl.train", "--benchmark", "gym:Pendulum-v1",
             "--total-steps", "100", "--eval-every", "100", "--run-dir", str(run), *TINY],
            cwd=ROOT, capture_output=True, text=True, timeout=600)
        if proc.returncode:
            raise RuntimeError(f"the base run did not train:\n{proc.stderr[-2000:]}")
    files = RunDir(run)
    w = {"scratch": str(root), "run": str(run), "marker": str(root / "CODE-RAN"),
         "run_config": str(files.config), "run_architecture": str(files.architecture),
         "run_picture": str(files.architecture_picture)}
    (root / "a-file.txt").write_text("a file, not a folder\n")
    w["a_file"] = str(root / "a-file.txt")
    arch_text = files.architecture.read_text()
    arch = json.loads(arch_text)

    def file(name: str, content: str | bytes) -> None:
        path = root / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        w[name.rsplit(".", 1)[0].replace("-", "_")] = str(path)

    mt10 = {"hidden": [8, 8], "branch_points": [2] * 10}
    file("arch-empty.json", "")
    file("arch-truncated.json", arch_text[: len(arch_text) // 2])
    file("arch-list.json", "[1, 2, 3]\n")
    file("arch-no-critic.json", json.dumps({"actor": mt10}))
    file("arch-three-tasks.json", json.dumps({"actor": {"hidden": [8], "branch_points": [1] * 3},
                                              "critic": {"hidden": [8],
                                                         "branch_points": [1] * 3}}))
    file("arch-branch.json", json.dumps({"actor": {**mt10, "branch_points": [5] + [2] * 9},
                                         "critic": mt10}))
    file("arch-negative.json", json.dumps({"actor": {**mt10, "hidden": [8, -8]},
                                           "critic": mt10}))
    file("arch-text-width.json", json.dumps({"actor": {**mt10, "hidden": ["wide", 8]},
                                             "critic": mt10}))

    def broken(name: str, path: Path, content: str | bytes | None) -> Path:
        """A copy of the run with its file ``path`` replaced by ``content`` (None: removed);
        returns that file of the copy."""
        d = _copy(run, root / name)
        target = d / path.relative_to(run)
        if content is None:
            target.unlink()
        else:
            target.write_bytes(content if isinstance(content, bytes) else content.encode())
        w[name.replace("-", "_")] = str(d)
        return target

    ckpt = files.checkpoint.read_bytes()
    tag = torch.load(files.checkpoint, weights_only=True)["format"]  # the real one's
    config_text = files.config.read_text()
    broken("run-config-empty-object", files.config, "{}")
    broken("run-config-truncated", files.config, config_text[: len(config_text) // 2])
    broken("run-config-empty", files.config, "")
    broken("run-config-bad-arch", files.config,
           json.dumps(json.loads(config_text) | {"arch": "nope"}))
    broken("run-ckpt-missing", files.checkpoint, None)
    broken("run-ckpt-empty", files.checkpoint, b"")
    broken("run-ckpt-truncated", files.checkpoint, ckpt[: len(ckpt) // 2])
    broken("run-ckpt-text", files.checkpoint, "not a checkpoint\n")
    booby_trapped_checkpoint(broken("run-ckpt-evil", files.checkpoint, b""),
                             Path(w["marker"]), tag)
    torch.save(torch.zeros(3), broken("run-ckpt-tensor", files.checkpoint, b""))
    torch.save({"format": tag, "config": {"benchmark": "MT10", "arch": "conal"},
                "agent": {}, "optimizers": {}, "counters": {}, "rng": {}},
               broken("run-ckpt-other", files.checkpoint, b""))
    broken("run-arch-empty", files.architecture, "")
    broken("run-arch-no-critic", files.architecture, json.dumps({"actor": arch["actor"]}))
    broken("run-arch-truncated", files.architecture, arch_text[: len(arch_text) // 3])
    evals = files.evaluations.read_text()
    broken("run-evals-missing", files.evaluations, None)
    broken("run-evals-empty", files.evaluations, "")
    broken("run-evals-truncated", files.evaluations, evals.rstrip("\n")[: evals.index(",",
                                                                   len(evals) // 2 + 1)])
    broken("run-evals-binary", files.evaluations, bytes(range(256)) * 4)
    broken("run-evals-other", files.evaluations, "name,age\nada,36\n")

    def stl(name: str, stl_json: str) -> RunDir:
        d = RunDir(root / name)
        d.checkpoints.mkdir(parents=True)
        d.stl_config.write_text(stl_json)
        w[name.replace("-", "_")] = str(d)
        return d

    stl_config = json.loads(config_text) | {"arch": "stl", "run_dir": None}
    good_stl = json.dumps({"config": stl_config, "given": {"benchmark": "gym:Pendulum-v1"}})
    stl("stl-json-empty-object", "{}")
    stl("stl-json-truncated", good_stl[: len(good_stl) // 2])
    stl("stl-model-truncated", good_stl).stl_model(0, "Pendulum-v1").write_bytes(
        b"PK\x03\x04" + b"\0" * 40)
    return w


# ---- running the cases ---------------------------------------------------------------------
def run_case(case: Case, workspace: dict[str, str], timeout: float = 120) -> dict:
    """Run one case as a subprocess; its record (a dict, as in bad-inputs.json)."""
    marker = Path(workspace["marker"])
    marker.unlink(missing_ok=True)
    args = [a.format(**workspace) for a in case.args]
    cmd = [sys.executable, "-m", case.command, *args]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env=os.environ | {"PYTHONUNBUFFERED": "1"})
        code, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as e:
        code = None
        stderr = (e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes)
                  else e.stderr or "")
    seconds = time.perf_counter() - start
    lines = [line for line in stderr.splitlines() if line.strip()]
    shown = " ".join(a.replace(workspace["scratch"], "$SCRATCH") for a in args)
    record = {
        "command": f"python -m {case.command}", "input": case.input, "args": shown,
        "first_stderr_line": (lines[0] if lines else "").replace(workspace["scratch"],
                                                                 "$SCRATCH"),
        "stderr_lines": len(lines), "exit_status": code, "seconds": round(seconds, 2),
        "traceback": "Traceback (most recent call last)" in stderr,
        "timed_out": code is None, "code_ran_on_load": marker.exists(),
    }
    record["clean"] = (code == 2 and len(lines) == 1 and not record["traceback"]
                       and not record["code_ran_on_load"])
    return record


def applicable(cases: list[Case]) -> list[Case]:
    return [c for c in cases if not (c.cuda_less and torch.cuda.is_available())]


def summary(records: list[dict]) -> dict:
    slowest = max(records, key=lambda r: r["seconds"])
    return {"inputs": len(records), "clean": sum(r["clean"] for r in records),
            "tracebacks": sum(r["traceback"] for r in records),
            "not_exit_2": sum(r["exit_status"] != 2 for r in records),
            "more_than_one_line": sum(r["stderr_lines"] != 1 for r in records),
            "code_ran_on_load": sum(r["code_ran_on_load"] for r in records),
            "timed_out": sum(r["timed_out"] for r in records),
            "commands": len({r["command"] for r in records}),
            "slowest_s": slowest["seconds"],
            "slowest": f"{slowest['command']}: {slowest['input']}",
            "median_s": sorted(r["seconds"] for r in records)[len(records) // 2]}


def markdown(payload: dict) -> str:
    s = payload["summary"]
    lines = [
        *header("Bad inputs: one clean line, exit status 2, before any env is built",
                payload["command"], payload["machine"], payload["date"]), "",
        f"**{s['inputs']} inputs tried over {s['commands']} commands: {s['clean']} clean "
        f"exits (status 2, one stderr line, no traceback), {s['tracebacks']} tracebacks, "
        f"{s['code_ran_on_load']} booby-trapped checkpoints ran code.** Slowest to fail: "
        f"{s['slowest_s']:.1f} s ({s['slowest']}); median {s['median_s']:.1f} s (mostly "
        "Python, torch and gymnasium imports; the machine was shared).", "",
        "Seconds: wall time of the whole subprocess. `$SCRATCH`: the scratch folder of broken "
        "files (`python -m benchmarks.studies.bad_inputs --keep DIR` keeps it).", "",
        "| command | input | exit | s | traceback | first stderr line |",
        "|---|---|---|---|---|---|",
    ]
    for r in payload["cases"]:
        line = r["first_stderr_line"].replace("|", "\\|")
        if len(line) > 220:
            line = line[:217] + "..."
        mark = "" if r["clean"] else " **(not clean)**"
        lines.append(f"| `{r['command'].removeprefix('python -m ')}` | {r['input']}{mark} | "
                     f"{r['exit_status']} | {r['seconds']:.1f} | "
                     f"{'yes' if r['traceback'] else 'no'} | {line} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = CommandParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where bad-inputs.md/.json go (default: benchmarks/results, or "
                        "nowhere with --only)")
    parser.add_argument("--only", default=None,
                        help="run only the cases whose command or input contains this text")
    parser.add_argument("--timeout", type=float, default=120,
                        help="seconds a case may take (default: %(default)s)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="make the scratch files in this folder and keep them")
    args = parser.parse_args(argv)
    if not args.timeout > 0:
        parser.error(f"--timeout must be positive, got {args.timeout}")
    cases = applicable(CASES)
    if args.only:
        cases = [c for c in cases if args.only in c.name]
        if not cases:
            parser.error(f"--only {args.only!r}: no case matches")
    out_dir = args.out_dir or (None if args.only else ROOT / "benchmarks" / "results")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bad-inputs-") as tmp:
        root = args.keep or Path(tmp)
        if args.keep and args.keep.exists():
            shutil.rmtree(args.keep)
        print(f"making the scratch files in {root} (a 100-step Pendulum run) ...", flush=True)
        workspace = make_workspace(root)
        records = []
        for i, case in enumerate(cases, 1):
            record = run_case(case, workspace, args.timeout)
            records.append(record)
            flag = "clean" if record["clean"] else "NOT CLEAN"
            print(f"[{i}/{len(cases)}] {flag:9} {record['seconds']:5.1f} s  {case.name}\n"
                  f"    exit {record['exit_status']}: {record['first_stderr_line']}", flush=True)
    payload = {"command": command(PROG, list(map(shlex.quote, argv))),
               "machine": machine("cpu"), "date": now(), "summary": summary(records),
               "cases": records, "case_definitions": [asdict(c) for c in cases]}
    s = payload["summary"]
    print(f"\n{s['inputs']} inputs tried, {s['clean']} clean exits, {s['tracebacks']} "
          f"tracebacks; slowest {s['slowest_s']:.1f} s ({s['slowest']})")
    if out_dir is not None:
        save(out_dir / "bad-inputs", payload, markdown(payload))
        print(f"wrote {out_dir / 'bad-inputs.md'}, {out_dir / 'bad-inputs.json'}")
    if s["clean"] != s["inputs"]:
        raise SystemExit(1)
    return payload


if __name__ == "__main__":
    main()
