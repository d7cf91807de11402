"""Conflict-noticing's rules, a freeze that really freezes, Gumbel samples shared by an
update's nets, and the held-out slice of the replay that the architecture step uses."""

import pytest
import torch

from agents import MultiTaskReplay, MultiTaskSAC, random_batch
from conal_rl.method import ConflictNoticing, SearchSettings, SuperNet, TreeNet, TreeSpec
from conal_rl.training.conal_search import ConalSearch

T, IN = 3, 5


def _tree():
    """A shared trunk whose task heads are equal: task t's trunk gradient is then sign_t
    times one common gradient (see _step)."""
    torch.manual_seed(0)
    net = TreeNet(TreeSpec((8, 8), (2,) * T), IN, 1)
    with torch.no_grad():
        net.head.weight[:], net.head.bias[:] = net.head.weight[0], net.head.bias[0]
    return net


def _step(net, optim, noticing, signs):
    """One optimizer step on sum_t sign_t * output_t: tasks with opposite signs conflict."""
    x = torch.randn(1, 16, IN).expand(T, 16, IN)
    optim.zero_grad(set_to_none=True)
    with noticing.record():
        out = net(x)
    (out.sum(dim=(1, 2)) * torch.tensor(signs)).sum().backward()
    noticing.apply()
    optim.step()


def _snapshot(net, optim):
    state = {n: p.detach().clone() for n, p in net.named_parameters()}
    moments = {n: {k: v.clone() for k, v in optim.state[p].items()}
               for n, p in net.named_parameters() if p in optim.state}
    return state, moments


def test_a_frozen_module_and_its_adam_moments_do_not_move():
    net = _tree()
    optim = torch.optim.Adam(net.parameters(), lr=1e-2)
    noticing = ConflictNoticing(net)
    for _ in range(3):  # agreeing steps: Adam builds momentum everywhere
        _step(net, optim, noticing, (1.0, 0.5, 0.2))
    weights, moments = _snapshot(net, optim)
    _step(net, optim, noticing, (1.0, -0.5, 0.2))  # a conflict: the trunk is frozen
    after, after_moments = _snapshot(net, optim)
    for name in weights:
        if name.startswith("shared."):
            assert torch.equal(after[name], weights[name]), name
            assert all(torch.equal(after_moments[name][k], moments[name][k])
                       for k in moments[name]), name
        else:  # the task heads keep training
            assert not torch.equal(after[name], weights[name]), name
    _step(net, optim, noticing, (1.0, 0.5, 0.2))  # agreeing again: the trunk moves
    moved, _ = _snapshot(net, optim)
    assert all(not torch.equal(moved[n], after[n]) for n in weights if n.startswith("shared."))


def test_ema_pair_needs_a_persistent_conflict():
    net = _tree()
    optim = torch.optim.SGD(net.parameters(), lr=1e-3)
    noticing = ConflictNoticing(net, rule="ema-pair", ema=0.8)
    for _ in range(10):
        _step(net, optim, noticing, (1.0, 0.5, 0.2))
    _step(net, optim, noticing, (1.0, -0.5, 0.2))  # one conflicting batch: not enough
    assert noticing.stats()["shared.1"]["frozen_steps"] == 0
    for _ in range(10):
        _step(net, optim, noticing, (1.0, -0.5, 0.2))
    assert noticing.stats()["shared.1"]["frozen_steps"] >= 5


@pytest.mark.parametrize("rule", ["ema-pair", "consensus"])
def test_a_rule_restored_from_its_state_decides_as_the_uninterrupted_one(rule):
    """A resumed search (its hook's checkpoint) carries the averaged cosines and the counts
    over; restarting them would let the first conflicting batch decide on its own."""
    def run(at_step_9):  # 8 agreeing batches, then conflicting ones
        net = _tree()
        optim = torch.optim.SGD(net.parameters(), lr=1e-3)
        noticing = ConflictNoticing(net, rule=rule, ema=0.8)
        torch.manual_seed(1)
        for i in range(12):
            if i == 9:
                noticing = at_step_9(noticing, net)
            _step(net, optim, noticing, (1.0, 0.5, 0.2) if i < 8 else (1.0, -0.5, 0.2))
        return noticing.stats(), [p.detach().clone() for p in net.parameters()]

    def restored(noticing, net):
        again = ConflictNoticing(net, rule=rule, ema=0.8)
        again.load_state_dict(noticing.state_dict())
        return again

    stats, weights = run(lambda noticing, net: noticing)
    resumed_stats, resumed_weights = run(restored)
    assert resumed_stats == stats
    assert all(torch.equal(a, b) for a, b in zip(weights, resumed_weights))
    _, restarted_weights = run(lambda noticing, net: ConflictNoticing(net, rule=rule, ema=0.8))
    assert not all(torch.equal(a, b) for a, b in zip(weights, restarted_weights))


def test_consensus_leaves_out_the_task_against_the_others_and_trains_the_rest():
    net = _tree()
    noticing = ConflictNoticing(net, rule="consensus", ema=0.0)  # decide on this batch
    x = torch.randn(1, 16, IN).expand(T, 16, IN)
    signs = torch.tensor([1.0, 0.8, -0.3])
    per_task = []
    for t in range(T):  # each task's own gradient, by a separate backward
        net.zero_grad(set_to_none=True)
        (net(x).sum(dim=(1, 2)) * signs)[t].backward()
        per_task.append(net.shared["1"].weight.grad.clone())
    net.zero_grad(set_to_none=True)
    with noticing.record():
        out = net(x)
    (out.sum(dim=(1, 2)) * signs).sum().backward()
    frozen = noticing.apply()
    assert not any(bool(f) for f in frozen.values())
    # task 2 points against tasks 0 + 1: its gradient is taken off, theirs stay
    torch.testing.assert_close(net.shared["1"].weight.grad, per_task[0] + per_task[1])
    assert noticing.stats()["shared.1"]["left_out_fraction"] == pytest.approx(1 / 3)


def test_gumbel_sample_is_shared_by_the_update_and_computes_the_sampled_path():
    settings = SearchSettings(hidden=(8, 8), gumbel=True)
    search = ConalSearch(settings, ["a", "b", "c"], batch_per_task=4)
    torch.manual_seed(0)
    agent = MultiTaskSAC(search.make_net, T, IN, 2, make_filter=search.make_filter)
    search.draw_samples(agent)
    q1, q2, target = agent.critic.q1, agent.critic.q2, agent.critic_target.q1
    assert q1.sample is q2.sample is target.sample
    x = torch.randn(T, 6, IN + 2)
    one_hot = torch.nn.functional.one_hot(q1.sample[1], 3).float()
    torch.testing.assert_close(q1(x), q1(x, one_hot))  # the sampled path alone
    q1(x).sum().backward(inputs=[q1.alpha])  # straight-through: alpha gets a gradient
    assert q1.alpha.grad.abs().sum() > 0


def test_held_out_steps_never_reach_the_training_batches():
    replay = MultiTaskReplay(50, 2, 1, 1, holdout_every=5)
    for i in range(1, 41):  # observation i at vector step i
        obs = torch.full((2, 1), float(i))
        replay.add(obs, torch.zeros(2, 1), torch.zeros(2), obs, torch.zeros(2))
    train = set(replay.sample(200).obs.flatten().tolist())
    held_out = set(replay.sample_holdout(200).obs.flatten().tolist())
    assert held_out == {5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0}
    assert not train & held_out and len(train) == 32
    copy = MultiTaskReplay(50, 2, 1, 1, holdout_every=5)
    copy.load_state_dict(replay.state_dict())
    assert copy.added == 40 and copy.holdout.size == 8


def test_a_supernet_without_gumbel_ignores_samples():
    net = SuperNet(T, IN, 1, (4, 4))
    x = torch.randn(T, 3, IN)
    before = net(x)
    net.sample = net.draw_sample()
    torch.testing.assert_close(net(x), before)
    batch = random_batch(T, 4, IN, 1)
    assert batch.obs.shape == (T, 4, IN)
