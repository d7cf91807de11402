"""The CoNAL method on its own (no RL): supernet, conflict-noticing, pruning, a search."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from conal_rl.method.conflict import ConflictNoticing
from conal_rl.method.reference import gram_by_separate_backwards, reference_forward
from conal_rl.method.search import search_optimizers, search_step
from conal_rl.method.supernet import SuperNet
from conal_rl.method.task_gradients import shared_layers, task_gram
from conal_rl.method.tree import TreeNet, TreeSpec, num_parameters

T, IN, OUT, HIDDEN = 4, 5, 3, (6, 7, 8)
P = len(HIDDEN)


def random_supernet(dtype=torch.float64, **kwargs) -> SuperNet:
    torch.manual_seed(0)
    net = SuperNet(T, IN, OUT, HIDDEN, **kwargs).to(dtype)
    with torch.no_grad():
        net.alpha.normal_()  # a non-uniform mix, so every path's weight matters
    return net


def grads(net, loss) -> dict[str, torch.Tensor]:
    net.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in net.named_parameters()}


# ---- the batched supernet computes the per-task, per-path function ----------------------

@pytest.mark.parametrize("kwargs", [{}, {"gumbel": True, "tau": 0.7}, {"no_private": True}],
                         ids=["softmax", "hard-gumbel", "no-private"])
def test_batched_supernet_equals_loop(kwargs):
    net = random_supernet(**kwargs)
    x = torch.randn(T, 9, IN, dtype=torch.float64)
    torch.manual_seed(1)  # the same Gumbel sample for both
    batched = net(x)
    batched_grads = grads(net, batched.square().sum())
    torch.manual_seed(1)
    looped = reference_forward(net, x, net.path_weights())
    looped_grads = grads(net, looped.square().sum())

    torch.testing.assert_close(batched, looped, rtol=1e-12, atol=1e-12)
    assert batched_grads.keys() == looped_grads.keys()
    for name in batched_grads:
        torch.testing.assert_close(batched_grads[name], looped_grads[name],
                                   rtol=1e-10, atol=1e-12, msg=name)


def test_hard_gumbel_weights_are_one_hot_with_gradients():
    net = random_supernet(gumbel=True, tau=0.5)
    w = net.path_weights()
    assert torch.equal(w.sum(-1), torch.ones(T, dtype=w.dtype))
    assert set(w.unique().tolist()) <= {0.0, 1.0}
    w[:, 0].sum().backward()
    assert net.alpha.grad is not None and net.alpha.grad.abs().sum() > 0  # straight-through


def test_each_private_module_runs_once_per_forward():
    net = random_supernet()
    calls = {key: 0 for key in net.private}

    def count(key):
        def hook(module, args, output):
            calls[key] += 1
            j = int(key)  # paths 0..j-1 reach module j, all in one call
            assert args[0].shape == (T, j * 9, module.in_features)
        return hook
    for key, module in net.private.items():
        module.register_forward_hook(count(key))
    net(torch.randn(T, 9, IN, dtype=torch.float64))
    assert calls == {key: 1 for key in net.private}


def test_parameter_split():
    net = random_supernet()
    assert [p is net.alpha for p in net.arch_parameters()] == [True]
    assert net.alpha.shape == (T, P + 1)
    assert torch.equal(SuperNet(T, IN, OUT, HIDDEN).alpha, torch.ones(T, P + 1))
    weights = net.weight_parameters()
    assert all(p is not net.alpha for p in weights)
    assert len(weights) + 1 == len(list(net.parameters()))


# ---- per-task Gram matrices from one backward -------------------------------------------

def tree_net(dtype) -> TreeNet:
    torch.manual_seed(0)
    return TreeNet(TreeSpec(HIDDEN, (0, 3, 1, 2)), IN, OUT).to(dtype)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
@pytest.mark.parametrize("make_net", [random_supernet, lambda dtype: random_supernet(
    dtype, no_private=True), tree_net], ids=["supernet", "no-private", "tree"])
def test_gram_from_one_backward_equals_separate_backwards(make_net, dtype, tolerance):
    net = make_net(dtype=dtype)
    noticing = ConflictNoticing(net)
    x = torch.randn(T, 16, IN, dtype=dtype)
    target = torch.randn(T, 16, OUT, dtype=dtype)
    with noticing.record():
        task_losses = (net(x) - target).square().mean(dim=(1, 2))  # [T]
    task_losses.sum().backward()
    got = noticing.grams()
    # The reference on a forward of its own: backward passes through a recorded forward,
    # autograd.grad ones included, would add to the captured output gradients.
    expected = gram_by_separate_backwards((net(x) - target).square().mean(dim=(1, 2)),
                                          noticing.layers)
    assert got.keys() == expected.keys() and len(got) > 0
    for name, gram in got.items():
        error = (gram - expected[name]).norm() / expected[name].norm()
        assert error <= tolerance, (name, float(error))


def test_gram_sums_calls_and_backward_passes():
    """A module called twice in the forward, and the loss back-propagated in two parts."""
    net = random_supernet()
    noticing = ConflictNoticing(net)
    x1, x2 = torch.randn(2, T, 8, IN, dtype=torch.float64)
    def task_losses():
        return net(x1).square().mean(dim=(1, 2)), net(x2).sum(dim=(1, 2))
    with noticing.record():
        first, second = task_losses()
    first.sum().backward(retain_graph=True)
    second.sum().backward()
    expected = gram_by_separate_backwards(sum(task_losses()), noticing.layers)
    for name, gram in noticing.grams().items():
        torch.testing.assert_close(gram, expected[name], rtol=1e-10, atol=1e-12)


def test_both_gram_formulas_agree():
    torch.manual_seed(0)
    a, d = torch.randn(5, 7, 11, dtype=torch.float64), torch.randn(5, 7, 3, dtype=torch.float64)
    per_task = torch.cat([torch.einsum("tno,tni->toi", d, a).flatten(1), d.sum(1)], dim=1)
    expected = per_task @ per_task.T
    for method in ("materialise", "kernel", "auto"):
        torch.testing.assert_close(task_gram(a, d, method), expected)


def test_tree_layers_list_only_the_tasks_that_share_them():
    layers = shared_layers(tree_net(torch.float64))  # branch points (0, 3, 1, 2)
    assert {k: v.tasks for k, v in layers.items()} == {
        "shared.1": (1, 2, 3), "shared.2": (1, 3), "shared.3": (1,)}


# ---- the conflict-noticing rule -------------------------------------------------------

def twin_task_tree() -> tuple[TreeNet, torch.Tensor]:
    """Two tasks on one shared trunk with identical heads and inputs: task t's gradient on a
    shared module is sign_t times one common gradient, so the signs decide the conflict."""
    torch.manual_seed(0)
    net = TreeNet(TreeSpec.mhsac(HIDDEN, 2), IN, OUT).double()
    with torch.no_grad():
        net.head.weight[1] = net.head.weight[0]
        net.head.bias[1] = net.head.bias[0]
    return net, torch.randn(1, 10, IN, dtype=torch.float64).expand(2, 10, IN)


def noticed_grads(net, x, signs, enabled=True):
    noticing = ConflictNoticing(net, enabled=enabled)
    net.zero_grad(set_to_none=True)
    with noticing.record():
        out = net(x)
    (out.sum(dim=(1, 2)) * torch.tensor(signs, dtype=out.dtype)).sum().backward()
    plain = {n: p.grad.clone() for n, p in net.named_parameters()}
    noticing.apply()
    return plain, {n: p.grad for n, p in net.named_parameters()}, noticing


def test_conflicting_tasks_freeze_the_shared_modules():
    net, x = twin_task_tree()
    plain, noticed, noticing = noticed_grads(net, x, signs=(1.0, -0.5))
    for name in noticed:
        if name.startswith("shared."):
            # frozen: no gradient at all, so the optimizer skips the module (moments too)
            assert plain[name].abs().sum() > 0 and noticed[name] is None, name
        else:  # the heads are task-specific: never touched
            assert torch.equal(noticed[name], plain[name]), name
    assert all(s == {"frozen_steps": 1, "steps": 1, "frozen_fraction": 1.0}
               for s in noticing.stats().values())
    expected_signs = torch.tensor([[1, -1], [-1, 1]], dtype=torch.int8)
    assert all(torch.equal(s, expected_signs) for s in noticing.last_signs().values())


def test_agreeing_tasks_keep_the_ordinary_gradient():
    net, x = twin_task_tree()
    plain, noticed, noticing = noticed_grads(net, x, signs=(1.0, 0.5))
    assert all(torch.equal(noticed[n], plain[n]) for n in plain)
    assert all(s["frozen_steps"] == 0 and s["steps"] == 1 for s in noticing.stats().values())


def test_disabled_noticing_leaves_everything_untouched():
    net, x = twin_task_tree()
    plain, noticed, noticing = noticed_grads(net, x, signs=(1.0, -1.0), enabled=False)
    assert all(torch.equal(noticed[n], plain[n]) for n in plain)
    assert all(not m._forward_hooks for m in net.modules())  # no hooks were installed
    assert all(s["steps"] == 0 for s in noticing.stats().values())


def test_supernet_conflict_freezes_shared_but_not_private_modules():
    net = random_supernet()
    with torch.no_grad():  # task 1 becomes a copy of task 0, on the same inputs...
        for module in [*net.private.values(), net.head]:
            module.weight[1], module.bias[1] = module.weight[0], module.bias[0]
        net.alpha[1] = net.alpha[0]
    x = torch.randn(1, 8, IN, dtype=torch.float64).expand(T, 8, IN)
    noticing = ConflictNoticing(net)
    with noticing.record():
        out = net(x)
    # ...that wants the opposite: its gradient on every shared module is -0.5 times task 0's.
    (out[0].sum() - 0.5 * out[1].sum()).backward()
    frozen = noticing.apply()
    assert frozen.keys() == {"shared.1", "shared.2", "shared.3"}
    assert all(bool(f) for f in frozen.values())
    assert all(m.weight.grad is None for m in net.shared.values())
    assert all(m.weight.grad.abs().sum() > 0 for m in net.private.values())


def test_captures_are_released():
    net = random_supernet()
    noticing = ConflictNoticing(net)
    with noticing.record():
        loss = net(torch.randn(T, 4, IN, dtype=torch.float64)).sum()
    assert noticing._captures and all(m._forward_hooks == {} for m in net.shared.values())
    loss.backward()
    noticing.apply()
    assert noticing._captures == {}


# ---- derivation and pruning ----------------------------------------------------------------

@pytest.mark.parametrize("no_private", [False, True], ids=["conal", "no-private"])
def test_pruned_tree_computes_the_argmax_path_exactly(no_private):
    net = random_supernet(no_private=no_private)
    with torch.no_grad():
        net.alpha.copy_(torch.tensor([[0.0, 0, 0, 2], [2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 1]]))
    assert net.branch_points() == (3, 0, 1, 2)
    spec = net.derive(task_names=("a", "b", "c", "d"))
    assert spec.branch_points == (3, 0, 1, 2) and spec.task_names == ("a", "b", "c", "d")

    tree = net.to_tree(inherit_weights=True)
    x = torch.randn(T, 9, IN, dtype=torch.float64)
    one_hot = F.one_hot(net.alpha.argmax(-1), P + 1).to(torch.float64)
    torch.testing.assert_close(tree(x), net(x, one_hot), rtol=1e-12, atol=1e-12)

    # Parameter counts: the supernet holds every module; the tree only what its tasks use.
    widths = [IN, *HIDDEN]
    layer = [widths[j - 1] * widths[j] + widths[j] for j in range(1, P + 1)]
    heads = T * (HIDDEN[-1] * OUT + OUT)
    copies = T * sum(layer) if not no_private else sum(j * layer[j - 1] for j in range(1, P + 1))
    assert num_parameters(net) == sum(layer) + copies + heads + T * (P + 1)
    b = spec.branch_points
    private_in_tree = sum(sum(bt < j for bt in b) * layer[j - 1] for j in range(1, P + 1))
    shared_in_tree = sum(layer[j - 1] for j in range(1, P + 1) if max(b) >= j)
    assert num_parameters(tree) == shared_in_tree + private_in_tree + heads
    assert num_parameters(tree) < num_parameters(net)


@pytest.mark.parametrize("gumbel", [False, True])
def test_with_the_task_id_every_path_reads_it_and_the_derived_tree_too(gumbel):
    torch.manual_seed(0)
    net = SuperNet(T, IN, OUT, HIDDEN, gumbel=gumbel, task_id_input=True).double()
    assert net.shared["1"].in_features == IN + T and net.private["1"].weight.shape[1] == IN + T
    x = torch.randn(1, 9, IN, dtype=torch.float64).expand(T, 9, IN)  # one batch, every task
    with torch.no_grad():  # on the trunk the tasks differ by their id alone
        net.alpha.copy_(torch.tensor([[0.0, 0, 0, 9]] * T))
        trunk = F.one_hot(torch.full((T,), P), P + 1).double()
        net.head.weight.copy_(net.head.weight[:1].expand_as(net.head.weight))
        net.head.bias.copy_(net.head.bias[:1].expand_as(net.head.bias))
    out = net(x, trunk)
    assert not torch.allclose(out[0], out[1])
    tree = net.to_tree(inherit_weights=True)
    assert tree.spec.task_id_input
    torch.testing.assert_close(tree(x), out, rtol=1e-12, atol=1e-12)
    if gumbel:
        net.sample = net.draw_sample()
        assert net(x).shape == (T, 9, OUT)


def test_fresh_tree_does_not_inherit():
    net = random_supernet()
    tree = net.to_tree(inherit_weights=False)
    assert tree.head.weight.dtype == torch.float64
    assert not torch.equal(tree.head.weight, net.head.weight)


# ---- a synthetic search -----------------------------------------------------------------
#
# Six regression tasks on one input batch (as in NYUv2, where all tasks see the same image).
# In the "conflicting" problem tasks 0, 1, 4, 5 learn f(x) = tanh(2 u.x) and tasks 2, 3 learn
# g(x) = tanh(2 v.x) with v orthogonal to u; in the "agreeing" problem all six learn f.
# The weights are first warmed up at the uniform mix without noticing (the official search
# starts from an ImageNet-pretrained trunk; from random heads every pair of task gradients
# has a random sign and the trunk would be frozen from the first step). Learning rates are
# larger than the official ones (alpha 3e-2, weights 3e-3) for a short run.
#
# What the faithful rule does: conflict-noticing decides per module, for all tasks at once,
# so in the conflicting problem the trunk is frozen on nearly every step and the tasks leave
# it (the opposing family goes to branch point 0); in the agreeing problem the first modules
# keep training and the tasks keep more of the trunk.

SEARCH_TASKS, SEARCH_IN, SEARCH_SEEDS = 6, 8, (0, 1, 2)
FAMILY_F, FAMILY_G = (0, 1, 4, 5), (2, 3)


def run_search(conflicting: bool, seed: int, noticing: bool, no_private: bool = False,
               warmup: int = 150, steps: int = 150, batch: int = 64):
    torch.manual_seed(seed)
    u, v = torch.linalg.qr(torch.randn(SEARCH_IN, 2))[0].T
    directions = torch.stack([v if conflicting and t in FAMILY_G else u
                              for t in range(SEARCH_TASKS)])  # [T, in]
    net = SuperNet(SEARCH_TASKS, SEARCH_IN, 1, (16, 16, 16), no_private=no_private)
    arch_opt, weight_opt = search_optimizers(net, arch_lr=3e-2, weight_lr=3e-3)
    notice = ConflictNoticing(net, enabled=noticing)

    def loss():
        x = torch.randn(batch, SEARCH_IN).expand(SEARCH_TASKS, batch, SEARCH_IN)
        y = torch.tanh(2 * torch.einsum("tbi,ti->tb", x, directions))[..., None]
        return (net(x) - y).square().mean()
    for _ in range(warmup):
        search_step(net, None, loss, None, weight_opt)
    for _ in range(steps):
        search_step(net, loss, loss, arch_opt, weight_opt, notice)
    return torch.softmax(net.alpha.detach(), -1), notice.stats()


def expected_shared_modules(w: torch.Tensor, pairs, no_private: bool) -> float:
    """Mean over task pairs of how many modules the two share, under the softmax(alpha)
    distributions ``w [T, P+1]``. With purely-specific modules tasks s, t at branch points
    i, j share min(i, j); without them, tasks at the same point also share that branch."""
    points = torch.arange(w.shape[1])
    shared = torch.minimum(points[:, None], points[None]).float()
    if no_private:
        shared.fill_diagonal_(w.shape[1] - 1)
    return sum(float(w[s] @ shared @ w[t]) for s, t in pairs) / len(pairs)


def mean_branch_point(w: torch.Tensor) -> float:
    return float((w * torch.arange(w.shape[1])).sum(-1).mean())


CROSS_PAIRS = list(itertools.product(FAMILY_F, FAMILY_G))


@pytest.fixture(scope="module")
def searches():
    runs = {}
    for seed in SEARCH_SEEDS:
        runs["conal", seed] = run_search(True, seed, noticing=True)
        runs["no-noticing", seed] = run_search(True, seed, noticing=False)
        runs["ltb", seed] = run_search(True, seed, noticing=False, no_private=True)
        runs["agreeing", seed] = run_search(False, seed, noticing=True)
    return runs


def test_search_freezes_the_conflicted_trunk_and_the_opposing_family_branches_at_0(searches):
    for seed in SEARCH_SEEDS:
        stats = searches["conal", seed][1]
        assert all(s["frozen_fraction"] >= 0.75 for s in stats.values()), stats
    g_points = [int(searches["conal", s][0][t].argmax()) for s in SEARCH_SEEDS for t in FAMILY_G]
    assert sum(g_points) / len(g_points) <= 0.5, g_points


def mean_over_seeds(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def test_search_on_agreeing_tasks_keeps_more_of_the_trunk(searches):
    agreeing = mean_over_seeds(mean_branch_point(searches["agreeing", s][0])
                               for s in SEARCH_SEEDS)
    conflicting = mean_over_seeds(mean_branch_point(searches["conal", s][0])
                                  for s in SEARCH_SEEDS)
    assert agreeing >= conflicting + 0.15, (agreeing, conflicting)

    def first_module_frozen(kind):
        return mean_over_seeds(searches[kind, s][1]["shared.1"]["frozen_fraction"]
                               for s in SEARCH_SEEDS)
    assert first_module_frozen("agreeing") <= first_module_frozen("conal") - 0.3


def test_search_ablations_separate_the_families_less(searches):
    def cross(kind):
        return mean_over_seeds(
            expected_shared_modules(searches[kind, s][0], CROSS_PAIRS, kind == "ltb")
            for s in SEARCH_SEEDS)
    conal, no_noticing, ltb = cross("conal"), cross("no-noticing"), cross("ltb")
    assert no_noticing >= conal + 0.05, (conal, no_noticing)
    assert ltb >= 1.5 * conal, (conal, ltb)
    for seed in SEARCH_SEEDS:
        assert all(s["steps"] == 0 for s in searches["no-noticing", seed][1].values())
