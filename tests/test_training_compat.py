"""Runs written by the code before the restructuring (tests/fixtures/v1, made by commit
61e10f1) still load, evaluate and resume: their config.json, architecture.json and
checkpoint formats are the ones the code reads today."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from agents import MultiTaskSAC
from conal_rl import evaluate
from conal_rl.method import GroupTreeSpec, TreeSpec, num_parameters
from conal_rl.train import main as train
from conal_rl.training import checkpoint, runs
from conal_rl.training.config import TrainConfig
from conal_rl.training.nets import load_specs, tree_factory
from conal_rl.training.runs import load_run

FIXTURES = Path(__file__).parent / "fixtures" / "v1"


def _copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def test_old_config_files_load_as_they_were_written():
    for name in ("pendulum-mhsac", "mt10-conal"):
        saved = json.loads((FIXTURES / name / "config.json").read_text())
        config = TrainConfig.load(FIXTURES / name / "config.json")
        assert {k: getattr(config, k) for k in saved} == {
            k: tuple(v) if k == "hidden" else v for k, v in saved.items()}
        # fields added since: the values these runs ran with (no held-out replay then)
        assert (config.conflict_rule, config.arch_holdout) == ("any-pair", 0)


def test_an_old_conal_architecture_file_and_checkpoint_load(tmp_path):
    run_dir = _copy("mt10-conal", tmp_path)
    data = json.loads((run_dir / "architecture.json").read_text())
    specs = load_specs(run_dir / "architecture.json")
    for role, spec in specs.items():
        assert dict(zip(spec.task_names, spec.branch_points)) == data[role]["branch_point_by_task"]
    run = load_run(run_dir)
    assert run.env_steps == 100
    assert num_parameters(run.agent.actor.net) == data["actor"]["parameters"]["tree"]
    assert num_parameters(run.agent.critic.q1) == data["critic"]["parameters"]["tree"]
    state = checkpoint.load(run_dir / "checkpoints" / "latest.pt")
    torch.testing.assert_close(run.agent.actor.net.head.weight,
                               state["agent"]["actor.net.head.weight"])


def test_an_old_run_evaluates_and_resumes(tmp_path, monkeypatch):
    run_dir = _copy("pendulum-mhsac", tmp_path)
    before = checkpoint.load(run_dir / "checkpoints" / "latest.pt")
    [ev] = evaluate.main([str(run_dir), "--episodes", "1", "--device", "cpu"])["MH-SAC"]
    assert ev.env_steps == 200
    train(["--resume", str(run_dir), "--total-steps", "260"])
    after = checkpoint.load(run_dir / "checkpoints" / "latest.pt")
    assert after["counters"] == {"env_steps": 260, "updates": before["counters"]["updates"] + 60}
    # It went on from the saved weights, optimizer moments and replay (saved with the run).
    assert after["replay"]["size"] == before["replay"]["size"] + 60
    assert not torch.equal(after["agent"]["actor.net.head.weight"],
                           before["agent"]["actor.net.head.weight"])
    assert (after["optimizers"]["actor"]["state"][0]["step"]
            == before["optimizers"]["actor"]["state"][0]["step"] + 60)
    # The old checkpoint had no sizes (read from the weights); the new one holds them, and
    # loading it needs nothing else.
    assert "sizes" not in before and after["sizes"] == {"obs_dim": 3, "act_dim": 1}
    monkeypatch.setattr(runs, "_dims", lambda *a: (_ for _ in ()).throw(AssertionError))
    assert load_run(run_dir).env_steps == 260


# ---- runs written by main before RunDir (tests/fixtures/v2, made by commit a09bb8b) --------
FIXTURES_V2 = Path(__file__).parent / "fixtures" / "v2"


def _copy_v2(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES_V2 / name, tmp_path / name))


def test_a_conal_run_of_before_evaluates_and_a_search_without_its_trees_goes_on(tmp_path):
    from conal_rl.training.rundir import RunDir

    run_dir = _copy_v2("pendulum-conal", tmp_path)
    [ev] = evaluate.main([str(run_dir), "--episodes", "1", "--device", "cpu"])["CoNAL"]
    assert ev.env_steps == 200
    # Stopped after its search, before the trees were derived: the search's checkpoint is
    # continued (it is at its end), the trees derived and trained.
    files = RunDir(run_dir)
    for path in (files.architecture, files.checkpoint, files.timing_file):
        path.unlink()
    assert files.state() == "stopped" and files.search.checkpoint.exists()
    train(["--resume", str(run_dir), "--total-steps", "200"])
    assert files.architecture.exists() and files.state() == "finished"
    assert checkpoint.load(files.checkpoint)["counters"]["env_steps"] == 200


def test_a_conal_pro_run_of_before_goes_on_from_its_unfinished_stage(tmp_path):
    from conal_rl.training.rundir import RunDir

    run_dir = _copy_v2("pendulum-conal-pro", tmp_path)
    files = RunDir(run_dir)
    decided = json.loads(files.stage(1).decided.read_text())
    for path in (files.stage(2).decided, files.architecture, files.checkpoint,
                 files.timing_file):
        path.unlink()
    assert [d.path.name for d in files.stages()] == ["stage1", "stage2"]
    assert files.stage(2).checkpoint in files.checkpoints_written()
    train(["--resume", str(run_dir), "--total-steps", "200"])
    assert json.loads(files.stage(1).decided.read_text()) == decided  # not searched again
    assert files.stage(2).decided.exists() and files.state() == "finished"
    assert files.search_timing()["env_steps"] == 300  # the two stages of 150


def test_an_stl_run_of_before_resumes(tmp_path):
    from conal_rl import stl
    from conal_rl.training.rundir import RunDir

    run_dir = _copy_v2("pendulum-stl", tmp_path)
    timing = stl.main(["--resume", str(run_dir), "--total-steps", "300"])
    assert timing["env_steps"] == 300
    assert RunDir(run_dir).state() == "finished"


FIXTURES_V3 = Path(__file__).parent / "fixtures" / "v3"


def test_a_growing_run_of_before_the_hook_list_loads_and_resumes(tmp_path):
    """A --branch-every run made by commit dea2cac, when the loop had one hook and its
    checkpoint held that hook's state as "search": its trees load (what evaluate builds)
    and it resumes with the hook's state, saved again under the hook's name."""
    run_dir = Path(shutil.copytree(FIXTURES_V3 / "mt10-mhsac-branching", tmp_path / "run"))
    before = checkpoint.load(run_dir / "checkpoints" / "latest.pt")
    assert "hooks" not in before and "trees" in before["search"]
    loaded = load_run(run_dir)
    assert loaded.specs["critic"].to_dict() == before["search"]["trees"]["critic"]
    train(["--resume", str(run_dir), "--total-steps", "500"])
    after = checkpoint.load(run_dir / "checkpoints" / "latest.pt")
    assert after["counters"]["env_steps"] == 500
    assert set(after["hooks"]) == {"branching"}
    assert after["hooks"]["branching"]["trees"] == before["search"]["trees"]


@pytest.mark.parametrize("spec", [TreeSpec.mhsac((8, 8), 3),
                                  GroupTreeSpec((8, 8), ((0, 0, 1),) * 2)])
def test_the_sizes_of_a_checkpoint_without_them_are_read_past_the_task_id(spec):
    specs = {"actor": replace(spec, task_id_input=True),
             "critic": replace(spec, task_id_input=True)}
    agent = MultiTaskSAC(tree_factory(specs), 3, 5, 2)
    assert runs._dims(agent.state_dict(), specs) == (5, 2)
