"""CoNAL wired into multi-task SAC (the method itself is tested in test_method_conal.py):
the architecture step, conflict-noticing inside the SAC update, inherited weights, and a
search stopped part-way and continued."""

import copy
import json
import signal

import pytest
import torch

from agents import MultiTaskReplay, MultiTaskSAC, random_batch
from conal_rl import train
from conal_rl.method import SearchSettings
from conal_rl.training import checkpoint
from conal_rl.training import trainer as trainer_module
from conal_rl.training.conal_search import ConalSearch, inherited_trees
from conal_rl.training.nets import load_specs, tree_factory
from conal_rl.training.trainer import seed_everything

T, OBS, ACT = 3, 5, 2
NAMES = ["a", "b", "c"]


def _search(**settings):
    torch.manual_seed(0)
    settings = SearchSettings(hidden=(16, 16), arch_lr=1e-2, **settings)
    search = ConalSearch(settings, NAMES, batch_per_task=32)
    return MultiTaskSAC(search.make_net, T, OBS, ACT, make_filter=search.make_filter), search


def _batch(B=32):
    return random_batch(T, B, OBS, ACT, seed=1)


def _replay(steps=20, holdout_every=0):
    """A replay holding ``steps`` vector steps of random transitions."""
    replay = MultiTaskReplay(100, T, OBS, ACT, holdout_every=holdout_every)
    for i in range(steps):
        b = random_batch(T, 1, OBS, ACT, seed=i)
        replay.add(b.obs[:, 0], b.actions[:, 0], b.rewards[:, 0], b.next_obs[:, 0], b.dones[:, 0])
    return replay


def test_twin_critics_share_one_architecture_and_weights_exclude_alpha():
    agent, search = _search()
    assert agent.critic.q1.alpha is agent.critic.q2.alpha
    assert agent.critic_target.q1.alpha is agent.critic_target.q2.alpha
    assert agent.actor.net.alpha is not agent.critic.q1.alpha
    optimised = {id(p) for g in agent.critic_optim.param_groups for p in g["params"]}
    assert id(agent.critic.q1.alpha) not in optimised


def _role_losses(agent, batch, seed=5):
    """(critic loss, actor loss) of the architecture step, with the policy noise of ``seed``
    (the critic's first, as arch_step draws them)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        critic = agent.critic_losses(batch).mean().item()
        actor = agent.actor_losses(batch.obs)[0].mean().item()
    return critic, actor


def test_architecture_step_descends_each_roles_loss_and_moves_alpha_only():
    agent, search = _search()
    batch = _batch()
    weights = {k: v.clone() for k, v in agent.state_dict().items() if "alpha" not in k}
    before = _role_losses(agent, batch)
    old = {role: a.detach().clone() for role, a in search.alpha.items()}
    torch.manual_seed(5)  # the step sees the noise _role_losses sees
    search.arch_step(agent, batch, env_steps=0)
    new = {role: a.detach().clone() for role, a in search.alpha.items()}
    # Each alpha descended its own role's loss: the critic's TD loss with the actor's alpha
    # held where it was, the actor's loss with the critic's held.
    after = {}
    for index, (role, other) in enumerate((("critic", "actor"), ("actor", "critic"))):
        assert not torch.equal(new[role], old[role])
        with torch.no_grad():
            search.alpha[other].copy_(old[other])
        after[role] = _role_losses(agent, batch)[index]
        with torch.no_grad():
            search.alpha[other].copy_(new[other])
    assert after["critic"] < before[0] and after["actor"] < before[1], (before, after)
    for k, v in agent.state_dict().items():
        if "alpha" not in k:
            assert torch.equal(v, weights[k]), k


def test_conflict_noticing_is_a_real_switch():
    for enabled in (True, False):
        agent, search = _search(conflict_noticing=enabled)
        for _ in range(5):
            agent.update(_batch())
        steps = [s["steps"] for n in search.noticing.values() for s in n.stats().values()]
        assert all(s == (5 if enabled else 0) for s in steps)


def _record_decisions(search) -> list[dict[str, dict[str, bool]]]:
    """Per SAC update, per role, which shared modules conflict-noticing froze."""
    decisions = []
    for role, noticing in search.noticing.items():
        def spy(apply=noticing.apply, role=role):
            frozen = apply()
            if role == "critic":  # the critic's step comes first in an update
                decisions.append({})
            decisions[-1][role] = {name: bool(f) for name, f in frozen.items()}
            return frozen
        noticing.apply = spy
    return decisions


def _conflicting_batch():
    """Tasks with opposite rewards: their critic gradients on the shared trunk oppose."""
    batch = _batch()
    signs = torch.tensor([1.0, -1.0, 1.0])[:, None, None]
    return batch._replace(rewards=10 * signs * batch.rewards.abs())


def test_a_conflict_freezes_the_shared_modules_inside_the_sac_update():
    """In the SAC update, after conflict-noticing: a module it froze has no gradient for
    the step (zero or none at all), one it let through keeps the ordinary gradient."""
    agent, search = _search()
    decisions = _record_decisions(search)
    agent.update(_conflicting_batch())
    [decided] = decisions
    frozen = 0
    for role, noticing in search.noticing.items():
        assert decided[role].keys() == noticing.layers.keys()
        for name, layer in noticing.layers.items():
            grads = [layer.module.weight.grad, layer.module.bias.grad]
            if decided[role][name]:
                frozen += 1
                assert all(g is None or not g.any() for g in grads), (role, name)
            else:
                assert all(g is not None and g.any() for g in grads), (role, name)
    assert frozen  # the opposite rewards made some module conflict
    private = search.nets["critic"].private["1"].weight.grad
    assert private is not None and private.any()  # task-specific modules are never frozen


def test_the_hooks_state_carries_the_rules_averages_and_counts():
    """What a search checkpoint restores of conflict-noticing: the averaged cosines the
    ema-pair rule decides on and the frozen counts (TensorBoard's frozen fractions and the
    success report read them: a resumed search counts from its start)."""
    agent, search = _search(conflict_rule="ema-pair")
    for noticing in search.noticing.values():
        noticing.enabled = True
    for _ in range(3):
        agent.update(_batch())
    state = copy.deepcopy(search.state_dict())
    _, resumed = _search(conflict_rule="ema-pair")
    resumed.load_state_dict(state)
    for role, noticing in search.noticing.items():
        again = resumed.noticing[role]
        assert again.stats() == noticing.stats() and noticing.stats()
        assert next(iter(noticing.stats().values()))["steps"] == 3
        assert again._average.keys() == noticing._average.keys() and noticing._average
        assert all(torch.equal(again._average[k], v) for k, v in noticing._average.items())
    del state["noticing"]  # a checkpoint from before: the counts restart, nothing fails
    _, old = _search(conflict_rule="ema-pair")
    old.load_state_dict(state)
    assert all(s["steps"] == 0 for n in old.noticing.values() for s in n.stats().values())


def test_event_files_are_read_in_the_order_they_were_written(tmp_path):
    """Two files of one process in one second: its 9th writer's, then its 10th's (the
    writer's count ends the name, not zero-padded, so their names sort the other way)."""
    from torch.utils.tensorboard import SummaryWriter

    from conal_rl.training.conal_search import search_conflict_logs

    search = tmp_path / "search"
    search.mkdir()
    for n, (step, value) in ((9, (1, 0.25)), (10, (2, 0.75))):
        with SummaryWriter(tmp_path / "writing") as writer:
            writer.add_scalar("conflict/actor/shared.1/frozen_fraction", value, step)
            writer.add_histogram("conflict_cosines/actor/shared.1",
                                 torch.tensor([-0.5, 0.5, 0.5, 0.5]) * (n - 8), step)
        [written] = (tmp_path / "writing").glob("events.out.tfevents.*")
        written.rename(search / f"events.out.tfevents.1796227675.host.123.{n}")
    read = search_conflict_logs(tmp_path)
    assert read["frozen_fraction"] == {"actor/shared.1": 0.75}
    assert read["negative_cosines"] == {"actor/shared.1": pytest.approx(0.25)}


def test_the_conflict_logs_of_a_search_are_read_back(tmp_path):
    """search_conflict_logs reads what ConalSearch.log wrote: the last frozen fraction per
    shared module (a resumed search's later event file included) and the share of negative
    pairwise cosines over every logged update; CoNAL-Pro's per stage."""
    from torch.utils.tensorboard import SummaryWriter

    from conal_rl.training.conal_search import search_conflict_logs

    agent, search = _search()
    for noticing in search.noticing.values():
        noticing.enabled = True
    cosines = {}  # per module, the cosines of every logged update

    def log(step: int) -> None:
        with SummaryWriter(tmp_path / "search") as writer:
            search.log(writer, step)
        for role, noticing in search.noticing.items():
            for name, values in noticing.last_cosines().items():
                cosines.setdefault(f"{role}/{name}", []).extend(values.tolist())

    agent.update(_conflicting_batch())
    log(1)  # the search as it was stopped
    agent.update(_batch())
    log(2)  # and resumed: a second file
    expected = {f"{role}/{name}": stats["frozen_fraction"]
                for role, noticing in search.noticing.items()
                for name, stats in noticing.stats().items()}
    assert {"actor/shared.1", "critic/q1/shared.1", "critic/q2/shared.2"} <= expected.keys()
    assert 0 < sum(expected.values()) < len(expected)  # frozen on one of the two updates
    read = search_conflict_logs(tmp_path)
    assert read["frozen_fraction"].keys() == expected.keys()
    assert all(read["frozen_fraction"][k] == pytest.approx(v) for k, v in expected.items())
    negative = {k: sum(c < 0 for c in v) / len(v) for k, v in cosines.items()}
    assert 0 < sum(negative.values()) < len(negative)
    assert read["negative_cosines"] == pytest.approx(negative)
    assert search_conflict_logs(tmp_path / "nothing") == {"frozen_fraction": {},
                                                          "negative_cosines": {}}
    stage = tmp_path / "pro" / "search" / "stage2"
    with SummaryWriter(stage) as writer:
        writer.add_scalar("conflict/actor/stay.0/frozen_fraction", 0.25, 7)
        writer.add_scalar("conflict/actor/stay.0/left_out_fraction", 0.5, 7)
        writer.add_histogram("conflict_cosines/actor/stay.0", torch.tensor([-0.5, 0.1, 0.2]), 7)
    assert search_conflict_logs(tmp_path / "pro") == {
        "frozen_fraction": {"stage2/actor/stay.0": 0.25},
        "negative_cosines": {"stage2/actor/stay.0": pytest.approx(1 / 3)}}


def test_a_frozen_module_does_not_move_in_the_optimizer_step():
    """Stricter: a module frozen in an update keeps its weights through that update's
    optimizer step, even with Adam moments from earlier, unfrozen steps."""
    agent, search = _search()
    decisions = _record_decisions(search)
    for noticing in search.noticing.values():  # moments first, from unfrozen steps
        noticing.enabled = False
    for seed in range(3):
        agent.update(random_batch(T, 32, OBS, ACT, seed=seed))
    for noticing in search.noticing.values():
        noticing.enabled = True
    shared = {(role, name): layer.module for role, n in search.noticing.items()
              for name, layer in n.layers.items()}
    before = {key: (m.weight.detach().clone(), m.bias.detach().clone())
              for key, m in shared.items()}
    agent.update(_conflicting_batch())
    frozen = [(role, name) for role, d in decisions[-1].items() for name, f in d.items() if f]
    assert frozen
    for key in frozen:
        weight, bias = before[key]
        assert torch.equal(shared[key].weight, weight) and torch.equal(shared[key].bias, bias), key


def test_inherited_trees_compute_what_the_supernet_computes_at_the_argmax():
    agent, search = _search()
    for _ in range(20):
        search.arch_step(agent, _batch(), env_steps=0)
    specs = search.derive()
    tree_agent = MultiTaskSAC(tree_factory(specs), T, OBS, ACT)
    tree_agent.load_networks(inherited_trees(agent, NAMES))
    obs = torch.randn(T, 4, OBS)
    one_hot = {role: torch.nn.functional.one_hot(a.argmax(-1), a.shape[1]).float()
               for role, a in search.alpha.items()}
    torch.testing.assert_close(tree_agent.actor.net(obs), agent.actor.net(obs, one_hot["actor"]))
    x = torch.randn(T, 4, OBS + ACT)
    torch.testing.assert_close(tree_agent.critic_target.q2(x),
                               agent.critic.q2(x, one_hot["critic"]))


def test_inherited_trees_keep_the_observation_statistics_they_were_trained_on():
    from agents import SACConfig

    torch.manual_seed(0)
    search = ConalSearch(SearchSettings(hidden=(16, 16)), NAMES, batch_per_task=32)
    agent = MultiTaskSAC(search.make_net, T, OBS, ACT, SACConfig(normalize_obs=True),
                         search.make_filter)
    agent.update(_batch())
    tree_agent = MultiTaskSAC(tree_factory(search.derive()), T, OBS, ACT,
                              SACConfig(normalize_obs=True))
    tree_agent.load_networks(inherited_trees(agent, NAMES))
    torch.testing.assert_close(tree_agent.obs_norm.mean, agent.obs_norm.mean)
    assert tree_agent.obs_norm.count == agent.obs_norm.count > 0


def test_search_warmup_trains_weights_only():
    agent, search = _search(warmup_steps=100, total_steps=200)
    alpha = {role: a.detach().clone() for role, a in search.alpha.items()}
    search.before_update(agent, _replay(), env_steps=50)
    agent.update(_batch())
    assert all(torch.equal(alpha[r], search.alpha[r]) for r in alpha)
    assert all(s["steps"] == 0 for n in search.noticing.values() for s in n.stats().values())
    search.before_update(agent, _replay(), env_steps=100)
    agent.update(_batch())
    assert not any(torch.equal(alpha[r], search.alpha[r]) for r in alpha)
    assert all(s["steps"] == 1 for n in search.noticing.values() for s in n.stats().values())


# ---- the search through the train command (two Pendulum tasks: see conftest.two_tasks) ------
TINY_CONAL = ["--benchmark", "gym:Pendulum-v1", "--arch", "conal", "--search-steps", "200",
              "--hidden", "8,8", "--batch-per-task", "8", "--warmup-steps", "100",
              "--eval-every", "0", "--eval-episodes", "1", "--log-every", "50",
              "--conflict-rule", "any-pair"]  # the paper's search: alpha decides


def test_inherit_weights_trains_the_pruned_trees_from_the_searched_weights(tmp_path, two_tasks,
                                                                           capsys):
    run = tmp_path / "run"
    # --total-steps 100 is the tree phase's warm-up: it ends before its first update, so its
    # checkpoint holds the weights the tree phase started from.
    train.main([*TINY_CONAL, "--total-steps", "100", "--inherit-weights", "--run-dir", str(run)])
    assert "from the searched weights (--inherit-weights)" in capsys.readouterr().out
    inherited = checkpoint.load(run / "search" / "inherited.pt")["trees"]
    state = checkpoint.load(run / "checkpoints" / "latest.pt")
    assert state["counters"] == {"env_steps": 100, "updates": 0}
    agent = state["agent"]
    for key, weights in inherited.items():
        for name, value in weights.items():
            assert torch.equal(agent[f"{key}.{name}"], value), (key, name)
    for net in ("q1", "q2"):  # the target critics start as the critics
        for name, value in inherited[f"critic.{net}"].items():
            assert torch.equal(agent[f"critic_target.{net}.{name}"], value)
    # Not what a fresh tree of the same seed would have been.
    seed_everything(0)
    fresh = MultiTaskSAC(tree_factory(load_specs(run / "architecture.json")), 2, 3, 1)
    assert not torch.equal(fresh.actor.net.head.weight, agent["actor.net.head.weight"])


class _StopAfter:
    """A StopSignal whose stop is requested at the ``n``-th look (one per vector step)."""

    n = 0

    def __init__(self):
        self.looks, self.signum = 0, signal.SIGINT

    @property
    def requested(self) -> bool:
        self.looks += 1
        return self.looks > self.n

    def restore(self) -> None:
        pass


def test_a_search_stopped_midway_continues_from_its_checkpoint(tmp_path, two_tasks, monkeypatch,
                                                               capsys):
    run = tmp_path / "run"
    # 150 vector steps of search, stopped after 70 (the first 50 are its warm-up); resumed
    # without --save-replay, it refills a warm-up's worth (50) and updates in the last 30.
    argv = [*TINY_CONAL, "--search-steps", "300", "--total-steps", "100", "--run-dir", str(run)]
    real_stop_signal = trainer_module.StopSignal
    monkeypatch.setattr(trainer_module, "StopSignal", type("Stop", (_StopAfter,), {"n": 70}))
    with pytest.raises(SystemExit) as stopped:
        train.main(argv)
    assert stopped.value.code == 128 + signal.SIGINT
    saved = checkpoint.load(run / "search" / "checkpoints" / "latest.pt")
    assert saved["counters"] == {"env_steps": 140, "updates": 20}  # 70 of 100 vector steps
    assert not (run / "architecture.json").exists()  # the search has not ended
    saved_alpha_steps = _alpha_adam_steps(saved["hooks"]["search"])
    assert saved_alpha_steps > 0

    # The same command again: the search goes on from there with its alpha, the alpha
    # optimizer and everything else it saved, then derives and trains the trees.
    monkeypatch.setattr(trainer_module, "StopSignal", real_stop_signal)
    resumed, arch_steps = [], []
    load = ConalSearch.load_state_dict

    def spy_load(self, state):
        load(self, state)
        resumed.append({"optim": copy.deepcopy(self.optim.state_dict()),
                        "alpha": {r: a.detach().clone() for r, a in self.alpha.items()}})

    monkeypatch.setattr(ConalSearch, "load_state_dict", spy_load)
    step = ConalSearch.arch_step
    monkeypatch.setattr(ConalSearch, "arch_step",
                        lambda self, *a: arch_steps.append(1) or step(self, *a))
    capsys.readouterr()
    train.main(argv)
    assert f"resumed {run / 'search'} at env step 140" in capsys.readouterr().out
    [at_resume] = resumed
    assert _same_state(at_resume["optim"], saved["hooks"]["search"]["optim"])
    for role in ("actor", "critic"):
        assert torch.equal(at_resume["alpha"][role], saved["agent"][f"{role}.net.alpha"
                                                                    if role == "actor" else
                                                                    "critic.q1.alpha"])
    final = checkpoint.load(run / "search" / "checkpoints" / "latest.pt")
    assert final["counters"] == {"env_steps": 300, "updates": 20 + 30}
    # The alpha optimizer counted on from where it stopped, not from zero.
    assert arch_steps
    assert _alpha_adam_steps(final["hooks"]["search"]) == saved_alpha_steps + len(arch_steps)
    assert len(arch_steps) == 30  # one before every update of the resumed part
    assert json.loads((run / "search" / "timing.json").read_text())["env_steps"] == 300
    arch = json.loads((run / "architecture.json").read_text())
    assert set(arch["actor"]["branch_point_by_task"]) == set(two_tasks)
    assert checkpoint.load(run / "checkpoints" / "latest.pt")["counters"]["env_steps"] == 100


def _alpha_adam_steps(search_state: dict) -> int:
    steps = {int(s["step"]) for s in search_state["optim"]["state"].values()}
    assert len(steps) == 1  # both alphas step together
    return steps.pop()


def _same_state(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b
