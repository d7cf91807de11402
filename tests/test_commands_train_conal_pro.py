"""``--arch conal-pro`` end to end: stages, grouped architecture.json and picture, the
grouped trees trained and evaluated, a stopped stage resumed."""

import json

import pytest

from conal_rl import train
from conal_rl.method import GroupTreeNet, GroupTreeSpec
from conal_rl.training import checkpoint
from conal_rl.training.nets import load_specs
from conal_rl.training.runs import load_run

TINY = ["--benchmark", "gym:Pendulum-v1", "--arch", "conal-pro", "--hidden", "8,8",
        "--batch-per-task", "8", "--warmup-steps", "40", "--stage-steps", "120",
        "--total-steps", "100", "--eval-every", "0", "--eval-episodes", "1",
        "--log-every", "40", "--device", "cpu"]


def test_conal_pro_grows_grouped_trees_and_trains_them(tmp_path, two_tasks):
    run = tmp_path / "run"
    train.main([*TINY, "--run-dir", str(run)])
    for stage in (1, 2):
        decided = json.loads((run / "search" / f"stage{stage}" / "decided.json").read_text())
        assert set(decided) == {"actor", "critic"} and len(decided["actor"]) == 2
    data = json.loads((run / "architecture.json").read_text())
    specs = load_specs(run / "architecture.json")
    for role, spec in specs.items():
        assert isinstance(spec, GroupTreeSpec) and spec.depth == 2
        assert data[role]["groups_by_task_name"] == spec.groups_by_name()
        assert sorted(t for group in spec.groups_by_name()[0] for t in group) == sorted(two_tasks)
    assert (run / "architecture.png").stat().st_size > 0
    assert checkpoint.load(run / "checkpoints" / "latest.pt")["counters"]["env_steps"] == 100
    loaded = load_run(run)  # what evaluate and render rebuild
    assert isinstance(loaded.agent.actor.net, GroupTreeNet) and loaded.env_steps == 100


def test_its_grouped_trees_grow_while_they_train(tmp_path, two_tasks):
    run = tmp_path / "run"
    train.main([*TINY, "--total-steps", "400", "--branch-every", "200", "--gain-holdout", "2",
                "--run-dir", str(run)])
    state = checkpoint.load(run / "checkpoints" / "latest.pt")["hooks"]["branching"]
    derived = load_specs(run / "architecture.json")
    assert all(GroupTreeSpec.from_dict(state["trees"][role]).hidden == derived[role].hidden
               for role in ("actor", "critic"))
    assert "gain" in state  # the rule: a probe where held-out episodes allow


def test_a_stopped_stage_resumes_and_a_decided_one_is_not_searched_again(tmp_path, two_tasks,
                                                                        monkeypatch):
    run = tmp_path / "run"
    from conal_rl.training import conal_search

    calls = []
    real = conal_search.Trainer

    class Counting(real):
        def run(self, *args, **kwargs):
            calls.append(self.run_dir.name)
            return super().run(*args, **kwargs)
    monkeypatch.setattr(conal_search, "Trainer", Counting)
    train.main([*TINY, "--run-dir", str(run)])
    assert calls == ["stage1", "stage2"]
    (run / "search" / "stage2" / "decided.json").unlink()  # as if stopped in stage 2
    (run / "architecture.json").unlink()
    calls.clear()
    train.main(["--resume", str(run)])
    assert calls == ["stage2"]  # stage 1 stays decided; stage 2 resumes from its checkpoint


@pytest.mark.parametrize("flag", [["--gumbel"], ["--grad-surgery", "pcgrad"], ["--no-private"]])
def test_conal_pro_refuses_what_grouped_trees_do_not_have(flag, capsys):
    with pytest.raises(SystemExit) as stop:
        train.main([*TINY, *flag])
    assert stop.value.code == 2
    assert "--arch conal-pro does not take" in capsys.readouterr().err
