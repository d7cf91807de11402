"""--branch-every: trees that open a branch where the evidence puts a task outside a shared
module twice running: the decision (twice running, every net of the role), the grown agent
taking over the loop, its trees in the checkpoint (resume, load_run) and in grown.json."""

import json

import pytest
import torch

from conal_rl import train
from conal_rl.method import num_parameters
from conal_rl.training import branching, checkpoint
from conal_rl.training.rundir import RunDir

TINY = ["--benchmark", "gym:Pendulum-v1", "--preset", "quick", "--hidden", "16,16",
        "--batch-per-task", "16", "--warmup-steps", "100", "--eval-every", "0",
        "--eval-episodes", "1", "--device", "cpu", "--vector-strategy", "sync",
        "--evidence-samples", "64", "--checkpoint-every", "200",
        "--branch-rule", "lasting-cluster"]


class _Evidence:
    """What branching reads of a layer's evidence: its tasks and its main cluster."""

    def __init__(self, tasks, cluster):
        self.tasks, self._cluster = tuple(tasks), tuple(cluster)

    def main_cluster(self):
        return self._cluster


def _measured(critic_q1_out, critic_q2_out=None, actor_out=()):
    """An atlas of two tasks on two shared modules; the tasks given leave module 2."""
    def layer(out):
        return _Evidence((0, 1), [t for t in (0, 1) if t not in out])
    q2 = critic_q1_out if critic_q2_out is None else critic_q2_out
    return {"critic": {"q1/shared.1": layer(()), "q1/shared.2": layer(critic_q1_out),
                       "q2/shared.1": layer(()), "q2/shared.2": layer(q2)},
            "actor": {"shared.1": layer(()), "shared.2": layer(actor_out)}}


def test_only_what_every_net_of_a_role_puts_outside_counts():
    assert branching.outside(_measured({1}, {1}, {0})) == {
        "critic": {1: set(), 2: {1}}, "actor": {1: set(), 2: {0}}}
    assert branching.outside(_measured({1}, set()))["critic"][2] == set()


@pytest.fixture
def measured_outside(monkeypatch):
    """The atlas measurement replaced: task pendulum-g4 (1) outside the critic's module 2
    from the second measurement on (in both twins), the actor's only at the second."""
    calls = []

    def measure(agent, batch, episodes=None):
        calls.append(agent)
        n = len(calls)
        return _measured({1} if n >= 2 else set(), actor_out={1} if n == 2 else set())
    monkeypatch.setattr(branching.atlas, "measure", measure)
    return calls


def test_a_lasting_conflict_opens_a_branch_that_resumes_and_evaluates(
        tmp_path, two_tasks, measured_outside, monkeypatch):
    from conal_rl.training import preflight, runs

    for module in (preflight, runs):  # what a resume and evaluate check the trees against
        monkeypatch.setattr(module, "task_names", lambda name: list(two_tasks))
    run = tmp_path / "run"
    train.main([*TINY, "--arch", "mhsac", "--total-steps", "500", "--branch-every", "100",
                "--run-dir", str(run)])
    # measurements at the first update and every 100 env steps on: the critic's task 1
    # outside at the 2nd and 3rd -> its branch opens at the 3rd; the actor's once -> none
    state = checkpoint.load(RunDir(run).checkpoint)
    trees = state["hooks"]["branching"]["trees"]
    assert tuple(trees["critic"]["branch_points"]) == (2, 1)
    assert tuple(trees["actor"]["branch_points"]) == (2, 2)
    grown = json.loads(RunDir(run).grown.read_text())
    assert grown["critic"]["branch_point_by_task"] == {"pendulum-g10": 2, "pendulum-g4": 1}
    assert [(b["net"], b["task"], b["module"]) for b in grown["critic"]["branches"]] == [
        ("critic", "pendulum-g4", 2)]
    assert RunDir(run).grown_picture.is_file()
    # The loop went on with the grown agent: the 4th measurement read it.
    assert len(measured_outside) == 4
    assert measured_outside[3] is not measured_outside[2] is measured_outside[0]
    assert "critic.q1.private.2.weight" in state["agent"]
    # A resume builds the grown trees from the checkpoint and goes on.
    train.main(["--resume", str(run), "--total-steps", "700"])
    resumed = checkpoint.load(RunDir(run).checkpoint)
    assert resumed["counters"]["env_steps"] == 700
    assert tuple(resumed["hooks"]["branching"]["trees"]["critic"]["branch_points"]) == (2, 1)
    # what evaluate, render and the atlas rebuild: an MH-SAC q-net (386 parameters) and task
    # 1's copy of module 2 (16x16+16)
    loaded = runs.load_run(run)
    assert num_parameters(loaded.agent.critic.q1) == 386 + 16 * 16 + 16
    torch.testing.assert_close(loaded.agent.critic.q1.private["2"].weight,
                               resumed["agent"]["critic.q1.private.2.weight"])


def test_without_lasting_evidence_nothing_grows(tmp_path, two_tasks, monkeypatch):
    flips = iter([{1}, set(), {1}, set(), {1}, set()])
    monkeypatch.setattr(branching.atlas, "measure",
                        lambda agent, batch, episodes=None: _measured(next(flips)))
    run = tmp_path / "run"
    train.main([*TINY, "--arch", "mhsac", "--total-steps", "400", "--branch-every", "100",
                "--run-dir", str(run)])
    state = checkpoint.load(RunDir(run).checkpoint)
    assert tuple(state["hooks"]["branching"]["trees"]["critic"]["branch_points"]) == (2, 2)
    assert state["hooks"]["branching"]["branches"] == [] and not RunDir(run).grown.exists()


def test_trees_that_cannot_branch_are_refused(tmp_path, capsys):
    for arch, message in (("independent", "--branch-every needs trees"),
                          ("conal-pro", "does not take --branch-rule lasting-cluster")):
        with pytest.raises(SystemExit) as exit_:
            train.main([*TINY, "--arch", arch, "--branch-every", "100",
                        "--run-dir", str(tmp_path / arch)])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err


def test_a_grouped_tree_file_is_refused_the_cluster_rule():
    from conal_rl.method import GroupTreeSpec
    from conal_rl.training.config import GrowthSettings

    grouped = GroupTreeSpec((8, 8), ((0, 0), (0, 0)))
    with pytest.raises(ValueError, match="grow by --branch-rule gain"):
        branching.Branching({"actor": grouped, "critic": grouped},
                            GrowthSettings(every=100, rule="lasting-cluster"), ["a", "b"])
    branching.Branching({"actor": grouped, "critic": grouped}, GrowthSettings(every=100),
                        ["a", "b"])  # the gain rule takes it
