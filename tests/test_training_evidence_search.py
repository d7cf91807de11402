"""CoNAL deciding on evidence inside multi-task SAC (the rule itself is tested in
test_method_evidence.py and on the synthetic families in test_method_families.py): the hook
measures on its schedule, gives every net of a role the same gate, never steps alpha, and a
resumed search gates as the uninterrupted one."""

import json

import torch

from agents import MultiTaskReplay, MultiTaskSAC, random_batch
from conal_rl import train
from conal_rl.method import ConflictNoticing, SearchSettings
from conal_rl.training import conal_search
from conal_rl.training.conal_search import ConalSearch
from conal_rl.training.rundir import RunDir

T, OBS, ACT = 3, 5, 2
NAMES = ["a", "b", "c"]


def _search():
    torch.manual_seed(0)
    settings = SearchSettings(hidden=(16, 16), conflict_rule="evidence", evidence_every=100,
                              evidence_samples=64, warmup_steps=0)
    search = ConalSearch(settings, NAMES, batch_per_task=8)
    return MultiTaskSAC(search.make_net, T, OBS, ACT, make_filter=search.make_filter), search


def _replay(steps=80):
    replay = MultiTaskReplay(100, T, OBS, ACT)
    for i in range(steps):
        b = random_batch(T, 1, OBS, ACT, seed=i)
        replay.add(b.obs[:, 0], b.actions[:, 0], b.rewards[:, 0], b.next_obs[:, 0], b.dones[:, 0])
    return replay


def _task_b_conflicts_on_the_first_module(monkeypatch, from_refresh: int = 1) -> list[int]:
    """set_evidence as if task 1 were in significant conflict on every net's first module
    from the ``from_refresh``-th refresh on; returns the list the refreshes are counted in
    (one entry per role and refresh)."""
    calls = []

    def set_evidence(self, evidence):
        calls.append(len(evidence))
        if len(calls) > 2 * (from_refresh - 1):  # actor and critic per refresh
            first = [name for name in self.layers if name.endswith("shared.1")]
            self._leaving = {name: (1,) for name in first}
    monkeypatch.setattr(ConflictNoticing, "set_evidence", set_evidence)
    return calls


def _branch_points(net) -> list[int]:
    return list(net.derive(NAMES).branch_points)


def test_without_evidence_every_task_stays_on_the_trunk_and_alpha_never_steps(monkeypatch):
    agent, search = _search()
    steps = []
    monkeypatch.setattr(ConalSearch, "arch_step", lambda *a: steps.append(1))
    monkeypatch.setattr(ConflictNoticing, "set_evidence", lambda self, ev: None)
    replay = _replay()
    for env_steps in range(0, 300, 3):
        search.before_update(agent, replay, env_steps)
    assert steps == []
    for net in (agent.actor.net, agent.critic.q1, agent.critic_target.q2):
        assert _branch_points(net) == [2, 2, 2]


def test_a_significant_conflict_opens_the_tasks_branch_on_every_net_of_the_role(monkeypatch):
    agent, search = _search()
    calls = _task_b_conflicts_on_the_first_module(monkeypatch, from_refresh=2)
    replay = _replay()
    for env_steps in range(0, 250, 3):  # refreshes at 0, 102, 204: every 100 env steps
        search.before_update(agent, replay, env_steps)
    assert len(calls) == 2 * 3  # actor and critic, three refreshes
    for net in (agent.actor.net, agent.critic.q1, agent.critic.q2, agent.critic_target.q1,
                agent.critic_target.q2):
        assert _branch_points(net) == [2, 0, 2]


def test_a_resumed_search_gates_as_before_without_measuring_again(monkeypatch):
    agent, search = _search()
    calls = _task_b_conflicts_on_the_first_module(monkeypatch)
    replay = _replay()
    search.before_update(agent, replay, 0)
    state = search.state_dict()
    fresh_agent, fresh = _search()
    fresh.load_state_dict(state)
    fresh.before_update(fresh_agent, replay, 50)  # not due: the last refresh was at 0
    assert len(calls) == 2  # the first search's refresh only
    assert _branch_points(fresh_agent.critic_target.q1) == [2, 0, 2]


def test_the_default_search_decides_on_evidence_end_to_end(tmp_path, two_tasks, monkeypatch):
    """A tiny CoNAL run with the default rule: the evidence is measured during the search
    (its schedule from --evidence-every), no alpha step is taken, the trees are derived."""
    measured = []
    real = conal_search.atlas.measure
    monkeypatch.setattr(conal_search.atlas, "measure",
                        lambda agent, batch, episodes=None: measured.append(
                            batch.obs.shape[1]) or real(agent, batch, episodes))
    monkeypatch.setattr(ConalSearch, "arch_step", lambda *a: (_ for _ in ()).throw(
        AssertionError("no architecture step under the evidence rule")))
    run = tmp_path / "run"
    train.main(["--benchmark", "gym:Pendulum-v1", "--arch", "conal", "--search-steps", "400",
                "--evidence-every", "100", "--hidden", "8,8", "--batch-per-task", "8",
                "--warmup-steps", "100", "--total-steps", "100", "--eval-every", "0",
                "--eval-episodes", "1", "--vector-strategy", "sync", "--run-dir", str(run)])
    config = json.loads(RunDir(run).config.read_text())
    assert config["conflict_rule"] == "evidence"
    assert len(measured) == 3 and min(measured) >= 64  # at 100 (replay 50+ rows), 200, 300
    assert RunDir(run).architecture.exists()
