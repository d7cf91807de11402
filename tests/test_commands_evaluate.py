"""The evaluation CLI. Most runs here are Pendulum runs: Meta-World envs take seconds to
build, and one Meta-World run covers the success-rate path."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conal_rl import evaluate
from conal_rl.evaluate import RunEvaluation, format_compare_table, format_runs_table
from conal_rl.train import main as train
from conal_rl.training.config import TrainConfig
from envs import EvalResult

TINY = ["--total-steps", "200", "--warmup-steps", "100", "--eval-every", "0", "--hidden", "16,16",
        "--batch-per-task", "16", "--eval-episodes", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Meta-World MT-SAC; Pendulum MT-SAC seeds 0 and 1 and MH-SAC seed 0 (the default
    preset, paper), and Pendulum MT-SAC seed 0 of the laptop preset."""
    root = tmp_path_factory.mktemp("runs")
    specs = {"reach": ("MT1:reach-v3", "mtsac", 0), "pend0": ("gym:Pendulum-v1", "mtsac", 0),
             "pend1": ("gym:Pendulum-v1", "mtsac", 1), "pend_mh": ("gym:Pendulum-v1", "mhsac", 0),
             "pend_laptop": ("gym:Pendulum-v1", "mtsac", 0, "--preset", "laptop")}
    for name, (benchmark, arch, seed, *flags) in specs.items():
        train(["--benchmark", benchmark, "--arch", arch, "--seed", str(seed),
               "--run-dir", str(root / name), *flags, *TINY])
    return root


def test_one_run_prints_the_table_and_writes_eval_files(runs, capsys):
    evaluate.main([str(runs / "reach"), "--episodes", "2"])
    out = capsys.readouterr().out
    assert "MT1:reach-v3, MT-SAC: 1 run (seed 0) at 200 env steps, 2 episodes per task" in out
    header, rule, task, mean = out.strip().splitlines()[-4:]
    assert header.split() == ["task", "success", "return", "episodes"]
    assert task.split()[0] == "reach-v3" and task.split()[-1] == "2" and mean.startswith("mean")
    saved = json.loads((runs / "reach" / "eval.json").read_text())
    assert saved["evaluated_by"] == evaluate.PROG and saved["episodes"] == 2
    assert saved["env_steps"] == 200 and saved["seed"] == 0 and saved["benchmark"] == "MT1:reach-v3"
    assert saved["parameters"]["actor"] > 0 and [t["task"] for t in saved["tasks"]] == ["reach-v3"]
    assert 0 <= saved["mean_success"] <= 1
    rows = list(csv.DictReader(open(runs / "reach" / "eval.csv")))
    assert rows == [{"task": "reach-v3", "success": str(saved["tasks"][0]["success"]),
                     "return": str(saved["tasks"][0]["return"]), "episodes": "2"}]


def test_a_checkpoint_path_works_like_its_run_dir(runs, capsys):
    evaluate.main([str(runs / "pend0" / "checkpoints" / "latest.pt"), "--episodes", "1"])
    assert "gym:Pendulum-v1, MT-SAC: 1 run (seed 0)" in capsys.readouterr().out
    assert json.loads((runs / "pend0" / "eval.json").read_text())["mean_success"] is None


def test_seeds_aggregate_into_one_table(runs, capsys):
    groups = evaluate.main([str(runs / "pend0"), str(runs / "pend1"), "--episodes", "1"])
    out = capsys.readouterr().out.strip().splitlines()
    assert list(groups) == ["MT-SAC"] and len(groups["MT-SAC"]) == 2
    assert "2 runs (seed 0, 1)" in out[-6] and "mean ± s.e. over runs" in out[-6]
    assert out[-2].startswith("mean") and "±" in out[-2]
    assert out[-1].startswith("IQM [95% CI]")


def test_compare_puts_architectures_side_by_side(runs, capsys):
    argv = [str(runs / d) for d in ("pend0", "pend_mh", "pend1")]
    evaluate.main([*argv, "--episodes", "1", "--compare"])
    lines = capsys.readouterr().out.strip().splitlines()
    table = lines[lines.index(next(x for x in lines if x.startswith("task"))):]
    assert table[0].split() == ["task", "MT-SAC", "MH-SAC"]
    rows = {line.split("  ")[0]: line.split()[-2:] for line in table[2:]}
    assert set(rows) == {"Pendulum-v1", "mean", "IQM [95% CI]", "runs", "env steps",
                         "actor parameters", "critic parameters"}
    assert rows["runs"] == ["2", "1"] and rows["env steps"] == ["200", "200"]


def test_compare_puts_two_presets_of_one_architecture_side_by_side(runs, capsys):
    argv = [str(runs / d) for d in ("pend_laptop", "pend0", "pend1", "pend_mh")]
    groups = evaluate.main([*argv, "--episodes", "1", "--compare"])
    assert {label: len(evals) for label, evals in groups.items()} == {
        "MT-SAC (preset=laptop)": 1, "MT-SAC (preset=paper)": 2, "MH-SAC": 1}
    lines = capsys.readouterr().out.strip().splitlines()
    header = next(x for x in lines if x.startswith("task"))
    assert header.split("  ")[0] == "task" and [c.strip() for c in header.split("  ")[1:]
                                                if c.strip()] == list(groups)
    runs_row = next(x for x in lines if x.startswith("runs"))
    assert runs_row.split()[1:] == ["1", "2", "1"]


def test_reuse_takes_the_earlier_evaluation(runs, capsys, monkeypatch):
    evaluate.main([str(runs / "pend_mh"), "--episodes", "1"])
    first = json.loads((runs / "pend_mh" / "eval.json").read_text())

    def not_again(*args, **kwargs):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(evaluate, "evaluate_run", not_again)
    groups = evaluate.main([str(runs / "pend_mh"), "--episodes", "1", "--reuse"])
    reused = groups["MH-SAC"][0].result.rows()
    assert [r["return"] for r in reused] == [t["return"] for t in first["tasks"]]
    with pytest.raises(AssertionError, match="evaluated again"):  # other episodes: not reused
        evaluate.main([str(runs / "pend_mh"), "--episodes", "2", "--reuse"])


def _evaluation(arch: str, seed: int, success: list[float]) -> RunEvaluation:
    tasks = ["a", "b"]
    config = TrainConfig(benchmark="MT10", arch=arch, seed=seed)
    result = EvalResult(tasks, dict(zip(tasks, success)), {"a": 10.0, "b": 20.0}, 50)
    return RunEvaluation(Path("run"), config, 1000, seed, {"actor": 1234, "critic": 5678}, result)


def test_tables_of_known_scores():
    seeds = [_evaluation("mtsac", 0, [0.2, 0.4]), _evaluation("mtsac", 1, [0.6, 0.8])]
    table = format_runs_table("MT-SAC", seeds).splitlines()
    assert table[0] == ("MT10, MT-SAC: 2 runs (seed 0, 1) at 1,000 env steps, 50 episodes per "
                        "task; mean ± s.e. over runs")
    assert table[3].split() == ["a", "0.40", "±", "0.20", "10.0", "±", "0.0", "100"]
    assert table[5].split() == ["mean", "0.50", "±", "0.20", "15.0", "±", "0.0"]
    assert table[6].split()[:4] == ["IQM", "[95%", "CI]", "0.50"]
    compare = format_compare_table({"MT-SAC": seeds, "MH-SAC": [_evaluation("mhsac", 0,
                                                                            [1.0, 0.0])]})
    rows = {line.split("  ")[0]: line.split() for line in compare.splitlines()[2:]}
    assert rows["b"][1:] == ["0.60", "±", "0.20", "0.00"]
    assert rows["IQM [95% CI]"][-1] == "0.50"  # one run: no interval
    assert rows["actor parameters"][2:] == ["1,234", "1,234"]


def _foreign_file(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    return path


@pytest.mark.parametrize("case, message", [
    ("missing path", "no such run directory or checkpoint"),
    ("not a run", "is not a conal-rl run (no config.json)"),
    ("no checkpoint", "no checkpoint at"),
    ("foreign checkpoint", "is not a conal-rl checkpoint"),
    ("truncated checkpoint", "is not a readable checkpoint"),
    ("foreign file", "is not in a conal-rl run directory"),
    ("other benchmark flag", "was trained on MT1:reach-v3, not MT10"),
    ("checkpoint of another benchmark",
     "the checkpoint was trained on gym:Pendulum-v1 with mtsac, but the run is MT1:reach-v3"),
    ("mixed benchmarks", "runs of different benchmarks (MT1:reach-v3, gym:Pendulum-v1)"),
    ("mixed architectures", "runs differ in arch (mtsac vs mhsac)"),
    ("mixed presets", "runs differ in preset (paper vs laptop), so they are not seeds of one "
     "configuration; use --compare"),
    ("bad episodes", "--episodes must be positive"),
])
def test_errors_are_one_clear_line(runs, tmp_path, capsys, case, message):
    run = tmp_path / "reach"
    if case in ("no checkpoint", "foreign checkpoint", "truncated checkpoint",
                "checkpoint of another benchmark"):
        shutil.copytree(runs / "reach", run)
        checkpoint = run / "checkpoints" / "latest.pt"
        if case == "no checkpoint":
            checkpoint.unlink()
        elif case == "foreign checkpoint":
            torch.save({"weights": torch.zeros(3)}, checkpoint)
        elif case == "truncated checkpoint":
            checkpoint.write_bytes(checkpoint.read_bytes()[:100])
        else:
            shutil.copy(runs / "pend0" / "checkpoints" / "latest.pt", checkpoint)
    argv = {
        "missing path": [str(tmp_path / "nope")],
        "not a run": [str(tmp_path)],
        "foreign file": [str(_foreign_file(tmp_path))],
        "other benchmark flag": [str(runs / "reach"), "--benchmark", "MT10"],
        "mixed benchmarks": [str(runs / "reach"), str(runs / "pend0")],
        "mixed architectures": [str(runs / "pend0"), str(runs / "pend_mh")],
        "mixed presets": [str(runs / "pend0"), str(runs / "pend_laptop")],
        "bad episodes": [str(runs / "pend0"), "--episodes", "0"],
    }.get(case, [str(run)])
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_the_command_line_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "conal_rl.evaluate", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"{evaluate.PROG}: error: {tmp_path} is not a conal-rl run "
                                   "(no config.json)")
