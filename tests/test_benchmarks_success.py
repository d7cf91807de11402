"""benchmarks/experiments/success.py on tiny MT1 runs: the report, skipping finished runs, resuming
unfinished ones, failed runs and bad input."""

import dataclasses
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.experiments import success, success_report
from benchmarks.experiments.success_runs import parse_given
from benchmarks.report_files import machine_text
from conal_rl.common import machine
from conal_rl.training.config import TrainConfig
from conal_rl.training.nets import load_specs, specs_of
from conal_rl.training.rundir import RunDir
from envs import task_names

# 200 steps with a 100-step warm-up: updates happen; one final evaluation of one episode.
ARGS = ["--benchmark", "MT1:reach-v3", "--archs", "mtsac,stl", "--seeds", "2", "--budget",
        "quick", "--total-steps", "200", "--eval-episodes", "1", "--warmup-steps", "100"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One benchmark call (4 runs, 2 at a time); the tests below build on its runs."""
    root = tmp_path_factory.mktemp("success")
    args = [*ARGS, "--runs-dir", str(root / "runs"), "--out-dir", str(root / "out")]
    payload = success.main([*args, "--jobs", "2"])
    return root, args, payload


def _runs(root):
    return root / "runs" / "MT1-reach-v3-quick"


def _timing_mtimes(root):
    return {d.name: (d / "timing.json").stat().st_mtime_ns for d in _runs(root).iterdir()}


def test_report_has_a_line_per_row_with_seeds_parameters_and_time(bench):
    root, _, payload = bench
    stem = root / "out" / "MT1-reach-v3-quick"
    assert [r["row"] for r in payload["rows"]] == ["mtsac", "stl"]
    assert payload["tasks"] == ["reach-v3"] and payload["metric"] == "success"
    assert payload["total_steps"] == [200] and payload["eval_episodes"] == 1
    assert payload["overrides"] == {"total_steps": 200, "eval_episodes": 1, "warmup_steps": 100}
    assert payload["failed"] == [] and payload["unfinished"] == []
    for row in payload["rows"]:
        assert row["seeds_finished"] == 2 and [r["seed"] for r in row["runs"]] == [0, 1]
        assert row["env_steps"] == [200, 200]
        # Each run's value is its final evaluation (eval_latest.json), the row's the mean
        # and standard error over seeds of those.
        finals = []
        for run in row["runs"]:
            latest = json.loads((_runs(root) / f"{row['row']}-s{run['seed']}" /
                                 "eval_latest.json").read_text())
            assert latest["env_steps"] == 200
            assert run["tasks"] == {t["task"]: t["success"] for t in latest["tasks"]}
            assert run["mean"] == pytest.approx(latest["mean_success"])
            finals.append(latest["mean_success"])
        assert row["mean"] == pytest.approx(np.mean(finals))
        assert row["se"] == pytest.approx(np.std(finals, ddof=1) / np.sqrt(2))
        assert row["train_wall_s"] > 0 and row["env_steps_per_s"] > 0
        assert set(row["runs"][0]["tasks"]) == {"reach-v3"}
    mtsac, stl = payload["rows"]
    assert mtsac["parameters"]["actor"][0] > 0 and mtsac["parameters"]["critic"][0] > 0
    described = json.loads((_runs(root) / "stl-s0" / "stl.json").read_text())
    assert stl["parameters"]["actor"] == [described["parameters"]["actor"]] * 2
    assert set(payload["vs_baseline"]) == {"stl"}
    assert json.loads(stem.with_suffix(".json").read_text())["rows"] == payload["rows"]

    md = stem.with_suffix(".md").read_text()
    assert md.startswith("# MT1:reach-v3: success rate comparison, budget `quick`")
    assert f"Command: `{success.PROG} {' '.join(ARGS)}" in md
    m = machine("auto")  # the machine that trained, as the report's header gives it
    assert payload["machine"] == m
    assert (f"Machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']}, device "
            f"{m['device']}") in md.splitlines()[3]
    mtsac_line = next(line for line in md.splitlines() if line.startswith("| mtsac | "))
    assert mtsac_line.startswith(f"| mtsac | {mtsac['mean']:.2f} ± {mtsac['se']:.2f} | ")
    assert "| mtsac | " in md and "| stl | " in md and "| 2/2 |" in md
    assert "Differences within noise (" in md and "2·sqrt(SE_row² + SE_mtsac²)" in md
    assert "| row | reach-v3 |" in md
    with Image.open(stem.with_suffix(".png")) as image:
        assert image.format == "PNG" and min(image.size) > 300
    for run in _runs(root).iterdir():
        assert "(fresh)" in (run / "train.log").read_text()


def test_a_second_call_skips_finished_runs(bench, capsys):
    root, args, _ = bench
    before = _timing_mtimes(root)
    capsys.readouterr()
    payload = success.main(args)
    out = capsys.readouterr().out
    assert out.count("skipped (finished") == 4
    assert _timing_mtimes(root) == before
    for run in _runs(root).iterdir():
        assert (run / "train.log").read_text().count("=== ") == 1  # trained once
    assert [r["seeds_finished"] for r in payload["rows"]] == [2, 2]
    assert len(payload["commands"]) == 2


def test_a_report_only_call_keeps_the_history_of_its_own_runs_only(bench, tmp_path):
    """--report-only into a folder keeps the calls and the training machine of the report
    there when that report is of the same runs, and not when it is of another runs folder
    (an older table published under the same name)."""
    root, args, _ = bench
    out = tmp_path / "published"
    out.mkdir()
    stem = success_report.report_stem(success.build_parser().parse_args(
        [*args, "--out-dir", str(out)]))
    args = [*args[:-1], str(out), "--report-only"]  # the last argument is --out-dir's
    own = json.loads((root / "out" / stem.name).with_suffix(".json").read_text())
    for runs_dir, kept in (("runs/another-table", False), (own["runs_dir"], True)):
        stem.with_suffix(".json").write_text(json.dumps(
            {"runs_dir": runs_dir, "machine": machine() | {"platform": "the trainer"},
             "commands": ["python -m benchmarks.experiments.success (the call that trained)"]}))
        payload = success.main(args)
        assert (payload["machine"]["platform"] == "the trainer") == kept
        assert len(payload["commands"]) == (2 if kept else 1)


def test_a_finished_run_whose_folder_is_gone_is_kept_from_the_report(bench, capsys):
    """A new machine without the runs folder: the table keeps the finished runs its report
    recorded, with their curves, instead of training them again."""
    root, args, before = bench
    gone, away = _runs(root) / "mtsac-s1", root / "mtsac-s1.away"
    gone.rename(away)
    try:
        capsys.readouterr()
        payload = success.main(args)
        assert "mtsac-s1: skipped (finished, kept in the report" in capsys.readouterr().out
        assert not gone.exists()  # not trained again
        mtsac = payload["rows"][0]
        was = before["rows"][0]
        assert mtsac["seeds_finished"] == 2 and mtsac["mean"] == pytest.approx(was["mean"])
        kept = mtsac["runs"][1]
        assert kept["recorded"] and kept["tasks"] == was["runs"][1]["tasks"]
        assert kept["curves"] == was["runs"][1]["curves"]  # the plot still has both seeds
        assert kept["parameters"] == was["runs"][1]["parameters"]
        md = (root / "out" / "MT1-reach-v3-quick.md").read_text()
        assert "Kept from an earlier report" in md and "mtsac-s1." in md
        # A record of a shorter run than asked is not a finished run of this table.
        longer = success.build_parser().parse_args([*args, "--total-steps", "400"])
        success.check_args(longer)
        spec = next(s for s in success.make_specs(longer) if s.name == "mtsac-s1")
        assert success_report.recorded(spec, payload) is None
        assert success_report.recorded(dataclasses.replace(spec, target_steps=200),
                                       payload) == kept
        # The record knows its run without the folder: the config it ran with and its trees.
        assert kept["config"]["seed"] == 1 and kept["config"]["arch"] == "mtsac"
        assert kept["trained_on"] == machine()["cpu_model"]  # the CPU its wall time is of
        assert "Trained on (the CPU of the machine that read each run's folder first" in md
        assert load_specs(_runs(root) / "mtsac-s0" / "architecture.json") == specs_of(
            mtsac["runs"][0]["trees"])
        # A record of another configuration is another run, a changed default too (not a
        # flag the row gives), and so is a record that does not say its configuration.
        spec = dataclasses.replace(spec, target_steps=200)
        other = json.loads(json.dumps(payload))
        other["rows"][0]["row"] = "a row since renamed"  # its runs are still this row's
        assert success_report.recorded(spec, other) == kept
        other["rows"][0]["runs"][1]["config"]["gamma"] = 0.9
        assert success_report.recorded(spec, other) is None
        del other["rows"][0]["runs"][1]["config"]
        assert success_report.recorded(spec, other) is None
    finally:
        away.rename(gone)


def test_an_interrupted_run_is_resumed_and_the_others_skipped(bench, capsys):
    root, args, _ = bench
    # A run killed after its last checkpoint but before it wrote timing.json.
    for name in ("mtsac-s1", "stl-s1"):
        (_runs(root) / name / "timing.json").unlink()
    before = _timing_mtimes_where_present(root)
    payload = success.main([*args, "--jobs", "2"])
    for name in ("mtsac-s1", "stl-s1"):
        log = (_runs(root) / name / "train.log").read_text()
        assert "(resume)" in log and "--resume" in log and "resumed " in log
        assert json.loads((_runs(root) / name / "timing.json").read_text())["env_steps"] == 200
    after = _timing_mtimes(root)
    assert {k: after[k] for k in before} == before  # the finished ones untouched
    assert [r["seeds_finished"] for r in payload["rows"]] == [2, 2]


def _timing_mtimes_where_present(root):
    return {d.name: (d / "timing.json").stat().st_mtime_ns for d in _runs(root).iterdir()
            if (d / "timing.json").exists()}


def _specs(tmp_path, *extra):
    args = success.build_parser().parse_args([*ARGS, "--runs-dir", str(tmp_path), *extra])
    success.check_args(args)
    return {s.name: s for s in success.make_specs(args)}


def test_runs_go_seed_by_seed_so_a_stopped_table_has_every_row(tmp_path):
    names = list(_specs(tmp_path, "--archs", "mtsac,conal", "--seeds", "2"))
    assert names == ["mtsac-s0", "conal-s0", "mtsac-s1", "conal-s1"]


def _save_config(path, spec, **changes):
    path.parent.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(**spec.given)
    path.write_text(json.dumps(asdict(config) | changes))


def test_what_happens_to_a_run_folder(tmp_path):
    specs = _specs(tmp_path, "--archs", "mtsac,conal", "--seeds", "1")
    mtsac, conal = specs["mtsac-s0"], specs["conal-s0"]
    assert success.plan(mtsac) == ("fresh", "new")
    mtsac.run_dir.mkdir(parents=True)
    (mtsac.run_dir / "train.log").write_text("crashed before its first checkpoint\n")
    assert success.plan(mtsac) == ("fresh", "no checkpoint")

    _save_config(mtsac.run_dir / "config.json", mtsac)
    (mtsac.run_dir / "checkpoints").mkdir()
    (mtsac.run_dir / "checkpoints" / "latest.pt").write_bytes(b"")
    assert success.plan(mtsac)[0] == "resume"
    command = mtsac.command("resume", {"total_steps": 100,
                                       "eval_every": mtsac.resumable["eval_every"],
                                       "eval_episodes": 1, "minutes": None})
    assert command[command.index("--resume") + 1] == str(mtsac.run_dir)
    assert command[command.index("--total-steps") + 1] == "200"  # given: passed as it is
    assert "--run-dir" not in command and "--eval-every" not in command
    assert "--minutes" not in command  # None and 0 both mean no budget
    command = mtsac.command("resume", {"eval_every": 100, "minutes": 3})
    assert command[-4:] == ["--eval-every", str(mtsac.resumable["eval_every"]),  # this
                            "--minutes", "0"]  # budget's
    (mtsac.run_dir / "timing.json").write_text(json.dumps(
        {"env_steps": 100, "train_wall": 1.0, "stopped_by": "steps"}))
    assert success.plan(mtsac)[0] == "resume"  # shorter than asked: extended
    (mtsac.run_dir / "timing.json").write_text(json.dumps(
        {"env_steps": 200, "train_wall": 1.0, "stopped_by": "steps"}))
    assert success.plan(mtsac) == ("skip", "finished")

    # CoNAL stopped during its search: the same command again continues the search.
    _save_config(conal.run_dir / "search" / "config.json", conal)
    (conal.run_dir / "search" / "checkpoints").mkdir()
    (conal.run_dir / "search" / "checkpoints" / "latest.pt").write_bytes(b"")
    assert success.plan(conal)[0] == "continue"
    assert "--run-dir" in conal.command("continue")


def test_a_run_stopped_by_its_minutes_budget_is_finished(tmp_path):
    spec = _specs(tmp_path, "--archs", "mtsac", "--seeds", "1", "--minutes", "5")["mtsac-s0"]
    _save_config(spec.run_dir / "config.json", spec)
    (spec.run_dir / "checkpoints").mkdir()
    (spec.run_dir / "checkpoints" / "latest.pt").write_bytes(b"")
    (spec.run_dir / "timing.json").write_text(json.dumps(
        {"env_steps": 120, "train_wall": 300.0, "stopped_by": "minutes"}))
    assert success.plan(spec) == ("skip", "finished")
    longer = _specs(tmp_path, "--archs", "mtsac", "--seeds", "1", "--minutes", "10")
    assert success.plan(longer["mtsac-s0"])[0] == "resume"


def test_a_run_of_another_configuration_is_not_taken(tmp_path):
    spec = _specs(tmp_path, "--archs", "mtsac", "--seeds", "1")["mtsac-s0"]
    _save_config(spec.run_dir / "config.json", spec, warmup_steps=999)
    (spec.run_dir / "checkpoints").mkdir()
    (spec.run_dir / "checkpoints" / "latest.pt").write_bytes(b"")
    action, why = success.plan(spec)
    assert action == "error" and "warmup_steps 999" in why
    # A field no flag of the row sets (a default that has changed since) counts too.
    _save_config(spec.run_dir / "config.json", spec, gamma=0.9)
    action, why = success.plan(spec)
    assert action == "error" and "gamma 0.9" in why
    # Nor does the report take it, finished as it is.
    (spec.run_dir / "timing.json").write_text(json.dumps({"env_steps": 200, "train_wall": 1.0}))
    payload = success.main([*ARGS, "--archs", "mtsac", "--seeds", "1", "--runs-dir",
                            str(tmp_path), "--out-dir", str(tmp_path / "out"), "--report-only"])
    assert payload["rows"][0]["seeds_finished"] == 0
    assert "a run of another configuration: gamma 0.9" in payload["unfinished"][0]


def test_a_failed_run_is_reported_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(success.ROWS, "mhsac", ("conal_rl.no_such_module", ("--arch", "mhsac"),
                                                "broken"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        success.main([*ARGS, "--archs", "mhsac", "--seeds", "1", "--runs-dir",
                      str(tmp_path / "runs"), "--out-dir", str(out)])
    assert exit_info.value.code == 1
    assert "mhsac-s0: FAILED (exit status 1)" in capsys.readouterr().out
    payload = json.loads((out / "MT1-reach-v3-quick.json").read_text())
    [failed] = payload["failed"]
    assert failed["run"] == "mhsac-s0" and failed["returncode"] == 1
    assert any("No module named conal_rl.no_such_module" in line for line in failed["log_tail"])
    assert "## Failed runs" in (out / "MT1-reach-v3-quick.md").read_text()


def test_a_row_is_the_mean_and_standard_error_over_its_seeds(tmp_path):
    """summarize_row on runs with distinct values (the smoke runs above all score 0)."""
    specs = _specs(tmp_path, "--archs", "mtsac", "--seeds", "2")
    tasks = ["a", "b"]
    runs = [success_report.RunResult(specs[f"mtsac-s{seed}"], tasks, values, 100, 0, 60.0,
                                     0.0, "steps", {"actor": 7, "critic": 9})
            for seed, values in enumerate([{"a": 0.2, "b": 0.6}, {"a": 1.0, "b": 0.0}])]
    row = success_report.summarize_row("mtsac", runs, tasks, 2, "success")
    assert [r["mean"] for r in row["runs"]] == pytest.approx([0.4, 0.5])
    assert row["mean"] == pytest.approx(0.45) and row["se"] == pytest.approx(0.05)
    assert row["task_mean"] == pytest.approx({"a": 0.6, "b": 0.3})
    assert row["task_se"] == pytest.approx({"a": 0.4, "b": 0.3})
    assert row["seeds_finished"] == 2 and row["env_steps"] == [100, 100]
    assert row["env_steps_per_s"] == pytest.approx(100 / 60)


def test_within_noise_rule():
    two, four = [{}] * 2, [{}] * 4  # the runs: only their number counts here
    rows = [{"row": "mtsac", "mean": 0.5, "se": 0.1, "runs": four},
            {"row": "a", "mean": 0.7, "se": 0.05, "runs": two},
            {"row": "b", "mean": 0.9, "se": 0.05, "runs": two},
            {"row": "c", "mean": 0.9, "se": None, "runs": [{}]}, {"row": "d"}]
    verdicts = success_report.noise_verdicts(rows)
    assert verdicts["a"]["within_noise"] is True  # 0.2 < 2 * sqrt(0.0125) = 0.224
    # SD² over seeds: 0.01 * 4 + 0.0025 * 2 = 0.045; 2 * sqrt(0.045 / n) <= 0.2 from n = 5
    assert verdicts["a"]["seeds_to_resolve"] == 5
    assert verdicts["b"]["within_noise"] is False and verdicts["b"]["seeds_to_resolve"] is None
    assert verdicts["c"]["within_noise"] is None and "d" not in verdicts


@pytest.mark.parametrize("args, message", [
    (["--archs", "mtsac,nope"], "unknown row 'nope'"),
    (["--budget", "huge"], "unknown --budget 'huge'"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--benchmark", "MT11"], "unknown benchmark 'MT11'"),
    (["--benchmark", "MT50", "--archs", "private-critic"],
     "--benchmark MT50 --budget laptop has 50 tasks"),
    (["--benchmark", "MT10", "--archs", "private-critic", "--budget", "paper"],
     "nets 400x400x400"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        success.main([*args, "--runs-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not any(tmp_path.iterdir())


def test_bad_row_from_the_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.experiments.success", "--archs",
                           "mtsac,nope", "--runs-dir", str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"{success.PROG}: error: unknown row 'nope' in --archs; valid: "
        + ", ".join(success.ROWS)]


def test_an_unfinished_run_is_listed_with_where_it_stands(tmp_path):
    spec = _specs(tmp_path, "--archs", "mtsac", "--seeds", "1")["mtsac-s0"]
    assert success_report.progress(spec) == ""  # not evaluated yet
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / "eval_latest.json").write_text(json.dumps(
        {"env_steps": 150000, "train_minutes": 9.53, "mean_success": 0.3, "tasks": []}))
    assert success_report.progress(spec) == \
        " (last evaluated at 150,000 env steps, 9.5 training min, success 0.30)"


def test_every_row_trains_what_its_name_says(tmp_path):
    """The run specs of the ablation rows: each row's command, parsed by the training CLI,
    gives the configuration (and the search and agent settings) the row stands for."""
    # a fixed MT10 tree, and critics sized by Meta-World's observations: on MT10 only
    mt10 = ("private-critic", "mtsac-wide", "mhsac-wide", "mtsac-wide-300k", "mhsac-wide-300k")
    specs = _specs(tmp_path, "--archs", ",".join(r for r in success.ROWS if r not in mt10),
                   "--seeds", "1")
    specs |= _specs(tmp_path, "--archs", ",".join(mt10), "--seeds", "1", "--benchmark", "MT10")
    mt = {"task_id": True, "shared_head": True}  # CoNAL's trees start as MT-SAC's
    heads = {"task_id": False, "shared_head": False}
    expected = {  # row -> fields that differ from MT-SAC's defaults
        "mtsac": {}, "mhsac": {"arch": "mhsac"}, "mhsac-id": {"arch": "mhsac", "task_id": True},
        "conal": {"arch": "conal", **mt}, "conal-heads": {"arch": "conal", **heads},
        "conal-id": {"arch": "conal", "task_id": True},
        "conal-paper": {"arch": "conal", "conflict_rule": "any-pair", "branch_every": 0,
                        **heads},
        "stl-batched": {"arch": "independent"},
        "conal-nocn": {"arch": "conal", "no_conflict_noticing": True, **mt},
        "conal-noprivate": {"arch": "conal", "no_private": True, **mt},
        "conal-rlw": {"arch": "conal", "loss_weighting": "rlw", **mt},
        "conal-pcgrad": {"arch": "conal", "grad_surgery": "pcgrad", **mt},
        "mtsac-pcgrad": {"grad_surgery": "pcgrad"},
        "conal-consensus": {"arch": "conal", "conflict_rule": "consensus", **mt},
        "conal-pro": {"arch": "conal-pro", **mt},
        "conal-pro-heads": {"arch": "conal-pro", **heads},
        "conal-pro-nocn": {"arch": "conal-pro", "no_conflict_noticing": True, **mt},
        "private-critic": {"arch": "tree"},
        "mtsac-wide": {"arch": "mtsac-wide"}, "mhsac-wide": {"arch": "mhsac-wide"},
        "mtsac-wide-300k": {"arch": "mtsac-wide", "critic_params": 300_000},
        "mhsac-wide-300k": {"arch": "mhsac-wide", "critic_params": 300_000},
    }
    # the paper's row trains its derived trees as derived, on every preset
    assert success.ROWS["conal-paper"][1][4:6] == ("--branch-every", "0")
    defaults = {"arch": "mtsac", "task_id": False, "shared_head": False,
                "no_conflict_noticing": False, "no_private": False,
                "loss_weighting": "mean", "grad_surgery": "none", "conflict_rule": "evidence"}
    assert set(expected) == {r for r, (module, _, _) in success.ROWS.items()
                             if module == "conal_rl.train"}
    for row, changes in expected.items():
        spec = specs[f"{row}-s0"]
        command = spec.command("fresh")
        assert command[1:3] == ["-m", "conal_rl.train"] and "--save-replay" in command
        assert command[command.index("--run-dir") + 1] == str(spec.run_dir)
        config = TrainConfig(**parse_given(spec.module, command[3:]))
        want = defaults | changes
        assert {k: getattr(config, k) for k in want} == want, row
        assert (config.benchmark, config.preset, config.seed, config.torch_threads) == (
            "MT10" if row in mt10 else "MT1:reach-v3", "quick", 0, 1)
        search, sac = config.search(), config.sac()
        assert search.conflict_noticing is not want["no_conflict_noticing"], row
        assert search.no_private is want["no_private"], row
        assert sac.loss_weighting == want["loss_weighting"], row
        assert config.sac(searching=True).loss_weighting == "mean"  # the search: the mean
    stl = specs["stl-s0"].command("fresh")
    assert stl[1:3] == ["-m", "conal_rl.stl"]


def test_the_private_critic_row_trains_the_critics_of_stl_and_the_actor_of_mhsac():
    """The capacity control: a fixed MT10 tree, found wherever the trial runs (an absolute
    path), shown from the repository's root in the report."""
    flags = success.ROWS["private-critic"][1]
    path = Path(flags[flags.index("--architecture") + 1])
    assert path.is_absolute()
    specs = load_specs(path)
    actor, critic = specs["actor"], specs["critic"]
    assert actor.task_names == critic.task_names == tuple(task_names("MT10"))
    assert set(actor.branch_points) == {len(actor.hidden)}  # shared trunk, a head per task
    assert set(critic.branch_points) == {0}  # private from the input
    entry = success_report.summarize_row("private-critic", [], [], 3, "success")
    assert entry["command"] == ("python -m conal_rl.train --arch tree --architecture "
                                "benchmarks/experiments/architectures/MT10-private-critic.json")


def test_a_conal_pro_search_counts_all_its_stages(tmp_path):
    """CoNAL-Pro's search lives in search/stage<s>/: the report adds the stages up."""
    for stage, (steps, wall) in enumerate([(100, 1.5), (200, 2.5)], start=1):
        folder = tmp_path / "search" / f"stage{stage}"
        folder.mkdir(parents=True)
        (folder / "timing.json").write_text(json.dumps({"env_steps": steps, "train_wall": wall}))
    assert RunDir(tmp_path).search_timing() == {"env_steps": 300, "train_wall": 4.0}
    assert RunDir(tmp_path / "none").search_timing() == {"env_steps": 0, "train_wall": 0}


def test_the_report_lists_each_searched_architecture_and_its_conflict_logs():
    tasks = ["reach", "push"]
    conal = {"seed": 1, "architecture": {
        "actor": {"branch_point_by_task": {"reach": 3, "push": 0}},
        "critic": {"branch_point_by_task": {"reach": 2, "push": 1}},
        "frozen_fraction": {"actor/shared.1": 1.0, "actor/shared.2": 0.5,
                            "critic/q1/shared.1": 0.25, "critic/q2/shared.1": 0.75},
        "negative_cosines": {"actor/shared.1": 0.5, "actor/shared.2": 0.4}}}
    pro = {"seed": 0, "architecture": {
        "actor": {"groups_by_task_name": [[["reach", "push"]], [["reach"], ["push"]]]},
        "critic": {"groups_by_task_name": [[["reach"], ["push"]], [["reach"], ["push"]]]},
        "frozen_fraction": {"stage1/actor/stay.0": 0.5, "stage2/actor/stay.0": 0.25}}}
    rows = [{"row": "mtsac", "runs": [{"seed": 0}]}, {"row": "conal", "runs": [conal]},
            {"row": "conal-pro", "runs": [pro]}]
    lines = success_report.searched_architectures(rows, tasks)
    assert "| conal-s1 | actor | 3 | 0 | 0.75 [0.50, 1.00] | 0.45 [0.40, 0.50] |" in lines
    assert "| conal-s1 | critic | 2 | 1 | 0.50 [0.25, 0.75] | - |" in lines
    # A group of every task reads as such; the groups' list starts after the table.
    assert ("- `conal-pro-s0` actor: depth 1: {all 2 tasks}; depth 2: {reach} {push}; frozen "
            "stage1 0.50 [0.50, 0.50], stage2 0.25 [0.25, 0.25]; negative -") in lines
    first = lines.index(next(line for line in lines if line.startswith("- `conal-pro")))
    assert lines[first - 1] == "" and lines[first - 2].startswith("| conal-s1 | critic |")
    assert lines[-1].startswith("- `conal-pro-s0` critic:")
    assert lines[-1].endswith("frozen -; negative -")
    assert not any("mtsac" in line for line in lines)
    assert success_report.searched_architectures(rows[:1], tasks) == []


def test_the_report_names_the_tasks_the_atlas_finds_in_conflict(tmp_path):
    """A run measured live (--atlas-every): the report lists, per net, the tasks against the
    others at its last measurement, read back through the run's files."""
    import torch

    from agents import MultiTaskSAC, random_batch
    from conal_rl.method import TreeSpec
    from conal_rl.training import conflict_atlas as atlas
    from conal_rl.training.nets import tree_factory
    from conal_rl.training.rundir import RunDir

    torch.manual_seed(0)
    spec = TreeSpec.mtsac((8, 8), 3)
    agent = MultiTaskSAC(tree_factory({"actor": spec, "critic": spec}), 3, 4, 2)
    measured = atlas.measure(agent, random_batch(3, 64, 4, 2))
    atlas.save_live(RunDir(tmp_path), 500, measured, ["a", "b", "c"])
    brief = success_report.atlas_of(atlas.live_measurements(RunDir(tmp_path))[-1])
    assert brief["env_steps"] == 500 and brief["critic"]["layer"] == "q1/shared.1"
    brief["critic"]["conflicting"] = ["b"]
    lines = success_report.atlas_lines([{"row": "mtsac", "runs": [{"seed": 0, "atlas": brief}]}])
    assert any("| mtsac-s0 | 500 | critic | q1/shared.1 |" in line and "| b |" in line
               for line in lines), lines


def test_the_learner_flags_reach_the_trained_rows_and_not_sb3_s(tmp_path):
    """A table of the learner before (--no-layer-norm --updates-per-step 1) on a preset that
    has the new one: every conal_rl.train row gets both flags; SB3's STL, which has its own
    learner and refuses them, gets neither."""
    from benchmarks.experiments import success
    from benchmarks.experiments.success_runs import make_specs

    args = success.build_parser().parse_args(
        ["--archs", "mtsac,stl", "--seeds", "1", "--budget", "quick", "--no-layer-norm",
         "--updates-per-step", "1", "--runs-dir", str(tmp_path)])
    args.archs = args.archs.split(",")
    specs = {s.row: s for s in make_specs(args)}
    assert specs["mtsac"].given["layer_norm"] is False
    assert specs["mtsac"].given["updates_per_step"] == 1
    assert "layer_norm" not in specs["stl"].given and "--no-layer-norm" not in specs["stl"].flags


def test_the_header_says_when_runs_were_trained_on_another_cpu():
    m = machine("cpu")
    rows = [{"row": "mtsac", "runs": [{"seed": 0, "trained_on": m["cpu_model"]}]}]
    assert success_report.header_machine({"machine": m, "rows": rows}) == m
    rows[0]["runs"].append({"seed": 1, "trained_on": "another CPU"})
    said = success_report.header_machine({"machine": m, "rows": rows})
    assert said.startswith(machine_text(m)) and "the last call that trained" in said
