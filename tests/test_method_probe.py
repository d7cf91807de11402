"""Probes: a private copy of a shared module that starts as the net's function and trains
without touching the net; the gain of a probe against the net on held-out samples, with its
error by episodes."""

import math

import pytest
import torch

from conal_rl.method import GroupTreeNet, GroupTreeSpec, NetOptions, TreeNet, TreeSpec
from conal_rl.method.probe import ModuleProbe, one_sided_z, paired_gain


@pytest.mark.parametrize("options, task_id, shared_head", [
    (NetOptions(), False, False), (NetOptions(), True, False), (NetOptions(), True, True),
    (NetOptions(layer_norm=True, residual=True), False, False)])
@pytest.mark.parametrize("module", [1, 2, 3])
def test_a_probe_starts_as_the_net_and_trains_only_itself(module, options, task_id,
                                                          shared_head):
    torch.manual_seed(0)
    # Tasks 0 and 2 have their own modules after ``module`` (copied too); task 1 shares all
    # (and with shared_head the head, which a probe of module 3 copies for tasks 0 and 2).
    spec = TreeSpec((8, 8, 8), (module, 3, module, 0) if module < 3 else (3, 2, 3, 0),
                    task_id_input=task_id, shared_head=shared_head)
    net = TreeNet(spec, 5, 2, options)
    tasks = [t for t, b in enumerate(spec.branch_points) if b == module]
    probe = ModuleProbe(net, tasks, module)
    x = torch.randn(spec.num_tasks, 7, 5)
    torch.testing.assert_close(probe(x), net(x)[tasks])

    before = {k: v.clone() for k, v in net.state_dict().items()}
    optim = torch.optim.SGD(probe.parameters(), lr=0.1)
    probe(x).square().sum().backward()
    optim.step()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    assert not torch.allclose(probe(x), net(x)[tasks])
    assert not any(k.startswith("net") for k in probe.state_dict())  # not saved with it


@pytest.mark.parametrize("shared_head", [False, True])
@pytest.mark.parametrize("module, tasks", [(2, [0, 1]), (3, [2, 3])])
def test_a_probe_of_a_grouped_tree_starts_as_its_net(module, tasks, shared_head):
    torch.manual_seed(0)
    # All share module 1; {0, 1} and {2, 3} module 2; {2, 3} module 3 (and its head).
    spec = GroupTreeSpec((8, 8, 8), ((0, 0, 0, 0), (0, 0, 1, 1), (0, 1, 2, 2)),
                         shared_head=shared_head)
    net = GroupTreeNet(spec, 5, 2, NetOptions(layer_norm=True))
    probe = ModuleProbe(net, tasks, module)
    x = torch.randn(4, 7, 5)
    torch.testing.assert_close(probe(x), net(x)[tasks])
    assert probe.parameters_per_task() == (8 + 1) * 8
    probe(x).square().sum().backward()
    assert all(p.grad is None for p in net.parameters())
    with pytest.raises(ValueError, match="branch after module 2"):
        ModuleProbe(net, [2], 2)


def test_a_probe_takes_only_tasks_branching_at_its_module():
    net = TreeNet(TreeSpec((8, 8), (2, 1)), 5, 1)
    with pytest.raises(ValueError, match="branch after module 2"):
        ModuleProbe(net, [0, 1], 2)
    mtsac = TreeNet(TreeSpec.mtsac((8, 8), 2), 5, 1)  # MT-SAC's tree: the shared head copied
    x = torch.randn(2, 3, 5)
    torch.testing.assert_close(ModuleProbe(mtsac, [0, 1], 2)(x), mtsac(x))


def test_the_gain_is_the_relative_drop_with_its_error_by_episodes():
    episodes = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3]])
    net_loss = torch.tensor([[1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0]])
    (same,) = paired_gain(net_loss, net_loss * 0.5, episodes)
    assert same.gain == pytest.approx(0.5) and same.se == pytest.approx(0.0, abs=1e-12)
    assert same.episodes == 4 and same.pays(0.4, 2.0) and not same.pays(0.5, 2.0)

    # Episodes that disagree: the error grows; only between-episode spread counts.
    probe_loss = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0, 0.0, 2.0, 2.0]])
    (mixed,) = paired_gain(net_loss, probe_loss, episodes)
    assert mixed.gain == pytest.approx(2 / 6)
    assert mixed.se > 0.2 and not mixed.pays(0.0, one_sided_z(1))
    # The same numbers, each sample its own episode, would claim far more certainty.
    (split,) = paired_gain(net_loss, probe_loss, torch.arange(8)[None])
    assert split.se < mixed.se

    (one,) = paired_gain(net_loss, probe_loss, torch.zeros(1, 8, dtype=torch.long))
    assert one.episodes == 1 and math.isinf(one.se) and not one.pays(0.0, 1.0)


def test_more_tasks_tested_need_a_larger_z():
    assert one_sided_z(1) == pytest.approx(1.645, abs=1e-3)
    assert one_sided_z(10) > one_sided_z(2) > one_sided_z(1)


def _probe_verdicts(agreeing: bool, seed: int, T: int = 4, IN: int = 8, F: int = 3,
                    shared_head: bool = False):
    """A one-module trunk F wide: where every task reads the same F features (each its own
    scale of one target, with a head per task) it serves them all; where each reads its own
    F features it cannot. With one head for all (``shared_head``) agreeing tasks share the
    scale too, since one head cannot scale them apart. Fresh samples
    every step (data is plentiful, as in a replay); the probe (every task private from the
    input) trains as used beside the net, then both are compared on fresh samples (each its
    own 'episode': independent)."""
    g = torch.Generator().manual_seed(seed)
    reads = [torch.randn(F, IN, generator=g) for _ in range(T)]
    scale = 0.5 + torch.rand(T, generator=g)
    if shared_head:
        scale = scale[:1].expand(T)

    def data(n):
        x = torch.randn(T, n, IN, generator=g)
        y = torch.stack([scale[t] * torch.tanh(x[t] @ reads[0 if agreeing else t].T).sum(-1)
                         for t in range(T)])
        return x, y[..., None]

    torch.manual_seed(seed)
    net = TreeNet(TreeSpec((F,), (1,) * T, shared_head=shared_head), IN, 1)
    optim = torch.optim.Adam(net.parameters(), lr=1e-2)
    probe = probe_optim = None
    for step in range(1500):
        if step == 1000:
            probe = ModuleProbe(net, list(range(T)), 1)
            probe_optim = torch.optim.Adam(probe.parameters(), lr=1e-2)
        x, y = data(64)
        optim.zero_grad()
        (net(x) - y).square().mean().backward()
        optim.step()
        if probe is not None:
            probe_optim.zero_grad()
            (probe(x) - y).square().mean(dim=(1, 2)).sum().backward()
            probe_optim.step()
    x, y = data(512)
    with torch.no_grad():
        gains = paired_gain((net(x) - y).square()[..., 0], (probe(x) - y).square()[..., 0],
                            torch.arange(512).expand(T, -1))
    return [g.pays(0.05, one_sided_z(T)) for g in gains]


@pytest.mark.parametrize("shared_head", [False, True])
def test_probes_give_capacity_where_it_pays_and_none_where_tasks_agree(shared_head):
    for seed in range(3):
        assert not any(_probe_verdicts(agreeing=True, seed=seed, shared_head=shared_head))
    opened = [_probe_verdicts(agreeing=False, seed=seed, shared_head=shared_head)
              for seed in range(3)]
    assert all(any(v) for v in opened) and sum(map(sum, opened)) >= 6
