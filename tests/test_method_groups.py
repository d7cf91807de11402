"""Grouped trees (CoNAL-Pro's format) and the progressive search that grows them."""

import pytest
import torch

from conal_rl.method import TreeNet, TreeSpec
from conal_rl.method.groups import GroupTreeNet, GroupTreeSpec, grown_group_state
from conal_rl.method.progressive import StageNet, progressive_search

T, IN = 4, 6


@pytest.mark.parametrize("task_id", [False, True])
def test_a_conal_tree_is_a_grouped_tree_computing_the_same_function(task_id):
    spec = TreeSpec((5, 5, 5), (3, 1, 0, 2), task_id_input=task_id)
    grouped = GroupTreeSpec.from_branch_points(spec.hidden, spec.branch_points)
    grouped = GroupTreeSpec.from_dict(grouped.to_dict() | {"task_id_input": task_id})
    assert grouped.groups == ((0, 0, 1, 0), (0, 1, 2, 0), (0, 1, 2, 3))
    assert grouped.task_id_input == task_id
    torch.manual_seed(0)
    tree, net = TreeNet(spec, IN, 2), GroupTreeNet(grouped, IN, 2)
    with torch.no_grad():  # copy the tree's modules into the groups that run them
        for j, layer in enumerate(net.layers, start=1):
            key, labels = str(j), grouped.groups[j - 1]
            private = [t for t, b in enumerate(spec.branch_points) if b < j]
            for t, g in enumerate(labels):
                if spec.branch_points[t] >= j:
                    layer.weight[g] = tree.shared[key].weight.T
                    layer.bias[g, 0] = tree.shared[key].bias
                else:
                    i = private.index(t)
                    layer.weight[g] = tree.private[key].weight[i]
                    layer.bias[g] = tree.private[key].bias[i]
        net.head.load_state_dict(tree.head.state_dict())
    x = torch.randn(T, 3, IN)
    torch.testing.assert_close(net(x), tree(x))


@pytest.mark.parametrize("shared_head", [False, True])
def test_each_task_computes_with_its_groups_weights_whatever_the_rows_order(shared_head):
    """The net keeps its rows sorted by groups (interleaved here: tasks 0 and 2 together,
    1 and 3), yet every task's output is its own path's, in task order."""
    from conal_rl.method import NetOptions

    spec = GroupTreeSpec((5, 5), ((0, 1, 0, 1), (0, 1, 2, 1)), shared_head=shared_head)
    torch.manual_seed(0)
    net = GroupTreeNet(spec, IN, 2, NetOptions(layer_norm=True))
    assert net.row_tasks == [0, 2, 1, 3]
    x = torch.randn(T, 3, IN)
    for t in range(T):
        h = x[t:t + 1]
        for layer in (1, 2):
            weight, bias = net.task_weights(layer, [t])
            h = net.act(torch.baddbmm(bias, h, weight), h)
        weight, bias = net.head_weights([t])
        torch.testing.assert_close(net(x)[t:t + 1], torch.baddbmm(bias, h, weight))


def test_partitions_must_refine_depth_by_depth():
    with pytest.raises(ValueError, match="does not refine"):
        GroupTreeSpec((4, 4), ((0, 0, 1, 1), (0, 1, 1, 2)))  # tasks 1, 2 rejoin
    spec = GroupTreeSpec((4, 4), ((0, 0, 1, 1), (0, 1, 2, 2)), ("a", "b", "c", "d"))
    assert spec.groups_by_name() == [[["a", "b"], ["c", "d"]], [["a"], ["b"], ["c", "d"]]]
    assert GroupTreeSpec.from_dict(spec.to_dict()) == spec
    assert spec.shared_modules()[2][3] == 2 and spec.shared_modules()[0][2] == 0


# Four tasks, three modules: all share module 1; {0, 1} and {2, 3} module 2; {2, 3} module 3.
GROUPED = GroupTreeSpec((8, 8, 8), ((0, 0, 0, 0), (0, 0, 1, 1), (0, 1, 2, 2)))


def test_a_grouped_tree_branches_as_a_plain_one():
    assert GROUPED.branch_points == (2, 2, 3, 3)  # the leading modules shared with another
    grown = GROUPED.branched({2: {2}})
    # Task 2 runs its own modules from module 2 on; task 3, left alone, from module 2 too.
    assert grown.groups == ((0, 0, 0, 0), (0, 0, 1, 2), (0, 1, 2, 3))
    assert grown.branch_points == (2, 2, 1, 1)
    assert GROUPED.branched({3: {0}}) == GROUPED  # task 0 already has its own module 3


def test_a_grown_grouped_tree_computes_what_it_computed_and_carries_its_moments():
    torch.manual_seed(0)
    net = GroupTreeNet(GROUPED, 5, 2)
    grown_spec = GROUPED.branched({2: {2}})
    grown = GroupTreeNet(grown_spec, 5, 2)
    grown.load_state_dict(grown_group_state(GROUPED, grown_spec, net.state_dict()))
    x = torch.randn(4, 6, 5)
    torch.testing.assert_close(grown(x), net(x))
    moments = {k: torch.rand_like(v) for k, v in net.state_dict().items()}
    laid = grown_group_state(GROUPED, grown_spec, moments)
    assert laid["layers.1.weight"].shape[0] == 3  # module 2: {0, 1}, {2}, {3}
    assert torch.equal(laid["layers.1.weight"][1], moments["layers.1.weight"][1])
    assert torch.equal(laid["layers.1.weight"][2], moments["layers.1.weight"][1])
    with pytest.raises(ValueError, match="split the old ones, not join"):
        grown_group_state(grown_spec, GROUPED, grown.state_dict())


def test_a_stage_splits_each_group_into_stayers_and_leavers():
    net = StageNet(((0, 0, 1, 1),), T, IN, 1, (4, 4, 4))
    with torch.no_grad():
        net.alpha[:] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    assert net(torch.randn(T, 2, IN)).shape == (T, 2, 1)
    assert net.decide() == (0, 1, 2, 2)  # group {0, 1} splits, group {2, 3} leaves together
    last = StageNet(((0, 0, 1, 1), (0, 1, 2, 2)), T, IN, 1, (4, 4, 4))
    with torch.no_grad():
        last.alpha[:] = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert last.decide() == (0, 1, 2, 3)  # at the last stage leaving is purely specific


def test_progressive_search_grows_a_refining_tree():
    torch.manual_seed(0)
    x = torch.randn(1, 32, IN).expand(T, 32, IN)
    y = torch.stack([x[0, :, 0], x[0, :, 0], -x[0, :, 1], x[0, :, 2]])[..., None]

    def loss(net):
        return (net(x) - y).square().mean()
    spec = progressive_search(T, IN, 1, (4, 4), loss, loss, warmup=5, steps=5,
                              noticing={"rule": "any-pair"})
    assert spec.depth == 2 and spec.num_tasks == T  # the constructor checked refinement


def _two_pairs(seed=0):
    """Tasks 0, 1 read input feature 0, tasks 2, 3 feature 1; a first module of width 1
    holds one of them, so one pair does better on a module of its own."""
    torch.manual_seed(seed)
    x = torch.randn(T, 64, IN)
    y = torch.stack([torch.tanh(x[t, :, 0 if t < 2 else 1]) * (1 + t) for t in range(T)])

    def loss(net):
        return (net(x) - y[..., None]).square().mean()
    return loss


def test_the_architecture_step_splits_a_group_whose_tasks_need_different_features():
    """alpha starts uniform, where every task stays: only the architecture step moves one
    pair to the leave module."""
    loss = _two_pairs()
    spec = progressive_search(T, IN, 1, (1, 4), loss, loss, warmup=50, steps=200,
                              arch_lr=3e-2, weight_lr=1e-2, noticing={"enabled": False})
    assert spec.groups[0] == (0, 0, 1, 1)


def test_conflict_noticing_acts_on_every_stage_candidate_modules():
    """Under the paper's rule the stage's shared candidates are frozen on conflicting
    batches, and a frozen module does not move."""
    loss, seen = _two_pairs(), []

    def on_stage(stage, net, notice):
        seen.append((stage, notice.stats()))
    progressive_search(T, IN, 1, (4, 4), loss, loss, warmup=5, steps=20,
                       noticing={"rule": "any-pair"}, on_stage=on_stage)
    assert [s for s, _ in seen] == [1, 2]
    for _, stats in seen:
        assert stats and all(v["steps"] == 20 and v["frozen_steps"] > 0 for v in stats.values())


def test_pro_evidence_groups_follow_the_significant_clusters():
    """benchmarks/studies/conflict_rules.py's families: under the evidence rule the first module
    splits the tasks into the two families, which then share every module (recovery 3,
    the most a grouped tree can score); tasks that all read the same features stay one
    group."""
    from benchmarks.studies import conflict_rules as study

    families = study.search(study.make_problem(0), "pro-evidence", seed=0)
    assert study.recovery(families["shared"]) == 3.0, families["groups"]
    agreeing = study.search(study.make_problem(0, agreeing=True), "pro-evidence", seed=0)
    assert agreeing["groups"] == [[0] * study.T] * len(study.HIDDEN), agreeing["groups"]


def test_with_a_shared_head_each_last_group_reads_one_head_and_a_leaver_takes_a_copy():
    from dataclasses import replace

    spec = replace(GROUPED, shared_head=True)  # last depth: {0}, {1}, {2, 3}
    assert GroupTreeSpec.from_dict(spec.to_dict()) == spec
    torch.manual_seed(0)
    net = GroupTreeNet(spec, 5, 2)
    assert net.head.weight.shape[0] == 3
    x = torch.randn(4, 6, 5)
    y = net(x)
    with torch.no_grad():
        net.head.bias[2].add_(1.0)  # the head of group {2, 3}
    moved = net(x)
    assert torch.equal(moved[:2], y[:2]) and not moved[2:].eq(y[2:]).any()
    torch.testing.assert_close(net.head_weights([3])[0][0], net.head.weight[2])
    grown_spec = spec.branched({3: {3}})  # task 3 leaves {2, 3} at module 3: a head of its own
    grown = GroupTreeNet(grown_spec, 5, 2)
    grown.load_state_dict(grown_group_state(spec, grown_spec, net.state_dict()))
    assert grown.head.weight.shape[0] == 4
    torch.testing.assert_close(grown(x), net(x))
    with pytest.raises(ValueError, match="heads"):
        grown_group_state(GROUPED, grown_spec, net.state_dict())
