import json

import pytest
import torch

from conal_rl.method.layers import NetOptions
from conal_rl.method.tree import (
    TreeNet,
    TreeSpec,
    grown_state,
    num_parameters,
    tree_parameters,
    widened_state,
)
from conal_rl.training.nets import load_specs, save_specs


def test_multi_head_equals_per_task_networks():
    torch.manual_seed(0)
    net = TreeNet(TreeSpec.mhsac((8, 8), 3), 5, 2)
    x = torch.randn(3, 4, 5)
    y = net(x)
    for t in range(3):
        h = x[t]
        for layer in ("1", "2"):
            h = torch.relu(net.shared[layer](h))
        expected = h @ net.head.weight[t] + net.head.bias[t]
        assert torch.allclose(y[t], expected, atol=1e-6)


def test_tree_routes_each_task_through_its_own_branch():
    torch.manual_seed(0)
    spec = TreeSpec((8, 8, 8), (0, 1, 3, 2))
    net = TreeNet(spec, 5, 2)
    x = torch.randn(4, 6, 5)
    y = net(x)
    for t, b in enumerate(spec.branch_points):
        h = x[t]
        for layer in range(1, 4):
            if layer <= b:
                h = net.shared[str(layer)](h)
            else:
                private_tasks = [s for s, bs in enumerate(spec.branch_points) if bs < layer]
                k = private_tasks.index(t)
                mod = net.private[str(layer)]
                h = h @ mod.weight[k] + mod.bias[k]
            h = torch.relu(h)
        assert torch.allclose(y[t], h @ net.head.weight[t] + net.head.bias[t], atol=1e-6)


def test_pruned_tree_holds_only_used_modules():
    all_shared = num_parameters(TreeNet(TreeSpec.mhsac((8, 8), 3), 5, 2))
    all_private = num_parameters(TreeNet(TreeSpec((8, 8), (0, 0, 0)), 5, 2))
    assert all_private - all_shared == 2 * ((5 * 8 + 8) + (8 * 8 + 8))
    mixed = TreeNet(TreeSpec((8, 8), (2, 1, 1)), 5, 2)
    assert set(mixed.shared) == {"1", "2"} and set(mixed.private) == {"2"}
    assert mixed.private["2"].n == 2


def test_mtsac_appends_one_hot_task_id():
    torch.manual_seed(0)
    net = TreeNet(TreeSpec.mtsac((8,), 4), 5, 2)
    assert net.shared["1"].in_features == 9
    x = torch.randn(4, 3, 5)
    y = net(x)
    first, head = net.shared["1"], net.head
    for t in range(4):  # task t's input is its observation with the one-hot of t appended
        one_hot = torch.nn.functional.one_hot(torch.tensor(t), 4).float().expand(3, 4)
        h = torch.relu(first(torch.cat([x[t], one_hot], dim=-1)))
        torch.testing.assert_close(y[t], head(h))
    zero = net(torch.zeros(4, 1, 5))[:, 0]  # on a zero observation only the task id speaks:
    expected = head(torch.relu(first.weight[:, 5:].T + first.bias))  # row t: column 5 + t
    torch.testing.assert_close(zero, expected)


@pytest.mark.parametrize("kwargs", [
    dict(hidden=(8,), branch_points=(2,)),
    dict(hidden=(8, 0), branch_points=(1,)),
    dict(hidden=(8,), branch_points=()),
    dict(hidden=(8,), branch_points=(1, 1), task_names=("a",)),
])
def test_invalid_specs_are_rejected(kwargs):
    with pytest.raises(ValueError):
        TreeSpec(**kwargs)


def test_specs_round_trip_through_json(tmp_path):
    specs = {"actor": TreeSpec((8, 8), (0, 2), ("a", "b")), "critic": TreeSpec.mhsac((4,), 2)}
    save_specs(tmp_path / "a.json", specs, {"actor": {"alpha": [[1.0, 2.0, 3.0]]}})
    assert load_specs(tmp_path / "a.json") == specs
    assert json.loads((tmp_path / "a.json").read_text())["actor"]["alpha"] == [[1.0, 2.0, 3.0]]
    # Any named trees are written; a run's architecture is read back only with both.
    save_specs(tmp_path / "b.json", {"actor": specs["actor"]})
    assert load_specs(tmp_path / "b.json", names=("actor",)) == {"actor": specs["actor"]}
    with pytest.raises(ValueError, match="no architecture for critic"):
        load_specs(tmp_path / "b.json")


def test_wrong_task_count_is_a_clear_error():
    with pytest.raises(ValueError, match="3 tasks"):
        TreeNet(TreeSpec.mhsac((8,), 3), 5, 2)(torch.zeros(2, 1, 5))


def test_a_branched_tree_computes_what_it_did_and_carries_moments_alike():
    """Tasks leaving shared modules get private copies that start as those modules: the
    grown net's outputs equal the old one's, for every task; other tensors keyed like the
    parameters (Adam's moments) are laid out the same way."""
    torch.manual_seed(0)
    old = TreeSpec((8, 8, 8), (3, 1, 3, 2, 3))
    new = old.branched({2: {0}, 3: {2, 3}, 1: set()})
    assert new.branch_points == (1, 1, 2, 2, 3)
    net = TreeNet(old, 5, 2)
    x = torch.randn(5, 4, 5)
    grown = TreeNet(new, 5, 2)
    grown.load_state_dict(grown_state(old, new, net.state_dict()))
    torch.testing.assert_close(grown(x), net(x))
    assert num_parameters(grown) > num_parameters(net)
    # module 3's private rows: tasks 0-3 now (1 and 3 before); task 0's new copy is shared
    # module 3 (as [in, out]), task 1's row is the one it had
    torch.testing.assert_close(grown.private["3"].weight[0], net.shared["3"].weight.T)
    torch.testing.assert_close(grown.private["3"].weight[1], net.private["3"].weight[0])
    torch.testing.assert_close(grown.private["3"].weight[3], net.private["3"].weight[1])
    moments = {k: torch.full_like(v, i) for i, (k, v) in enumerate(net.state_dict().items())}
    laid = grown_state(old, new, moments)
    assert {k: v.shape for k, v in laid.items()} == {
        k: v.shape for k, v in grown.state_dict().items()}
    with pytest.raises(ValueError, match="no later"):
        grown_state(new, old, grown.state_dict())


def test_a_shared_head_serves_the_tasks_on_the_whole_trunk_only():
    """With ``shared_head``, tasks that share every module read one head; a task that
    branched earlier reads its own, and the parameters count both kinds."""
    torch.manual_seed(0)
    spec = TreeSpec((8, 8), (2, 1, 2, 0), shared_head=True)
    assert spec.head_tasks() == ((0, 2), (1, 3))
    net = TreeNet(spec, 5, 2)
    assert num_parameters(net) == tree_parameters(spec, 5, 2)
    x = torch.randn(4, 3, 5)
    y = net(x)
    h = torch.relu(net.shared["2"](torch.relu(net.shared["1"](x))))
    for t in (0, 2):
        torch.testing.assert_close(y[t], net.head(h[t]))
    with torch.no_grad():  # each head moves the outputs of its own tasks only
        net.head.bias.add_(1.0)
        moved = net(x)
        assert torch.equal(moved[[1, 3]], y[[1, 3]]) and not moved[[0, 2]].eq(y[[0, 2]]).any()
        net.private_head.bias[1].add_(1.0)  # task 3's
        assert torch.equal(net(x)[:3], moved[:3]) and not net(x)[3].eq(moved[3]).any()
    for k, t in enumerate((1, 3)):
        weight, bias = net.head_weights([t])
        torch.testing.assert_close(weight[0], net.private_head.weight[k])
        torch.testing.assert_close(bias[0], net.private_head.bias[k])
    torch.testing.assert_close(net.head_weights([0])[0][0], net.head.weight.T)
    everyone_branched = TreeSpec((8,), (0, 0), shared_head=True)
    assert everyone_branched.head_tasks() == ((), (0, 1))
    assert num_parameters(TreeNet(everyone_branched, 5, 2)) == tree_parameters(
        everyone_branched, 5, 2)


def test_mtsac_grows_into_a_tree_whose_branched_tasks_get_the_head_as_their_own():
    """MT-SAC's tree branches like any other: a task leaving a shared module gets copies of
    the modules from there on and of the shared head, so the net computes what it did."""
    torch.manual_seed(0)
    old = TreeSpec.mtsac((8, 8), 4)
    new = old.branched({2: {1}, 1: {3}})
    assert new.branch_points == (2, 1, 2, 0) and new.shared_head and new.task_id_input
    net = TreeNet(old, 5, 2)
    with torch.no_grad():
        net.head.bias.uniform_(-1, 1)
    grown = TreeNet(new, 5, 2)
    grown.load_state_dict(grown_state(old, new, net.state_dict()))
    x = torch.randn(4, 6, 5)
    torch.testing.assert_close(grown(x), net(x))
    torch.testing.assert_close(grown.private_head.weight[0], net.head.weight.T)
    # growing again keeps the branched tasks' own heads and copies the shared one
    newer = new.branched({2: {0}})
    again = TreeNet(newer, 5, 2)
    with torch.no_grad():
        grown.private_head.weight[1].add_(1.0)  # task 3's head, its own now
    again.load_state_dict(grown_state(new, newer, grown.state_dict()))
    torch.testing.assert_close(again(x), grown(x))
    moments = {k: torch.zeros_like(v) for k, v in grown.state_dict().items()}
    assert {k: v.shape for k, v in grown_state(new, newer, moments).items()} == {
        k: v.shape for k, v in again.state_dict().items()}
    with pytest.raises(ValueError, match="heads"):
        grown_state(TreeSpec.mhsac((8, 8), 4), new, net.state_dict())


@pytest.mark.parametrize("spec", [
    TreeSpec.mtsac((8, 8, 8), 3),  # one-hot input, one shared head
    TreeSpec((8, 8, 8), (3, 1, 0, 2)),  # shared, private copies, a head per task
    TreeSpec((8, 8, 8), (3, 3, 1), shared_head=True),  # a shared head and private ones
])
def test_a_widened_tree_computes_what_it_did_with_layer_norm_and_residuals(spec):
    """Every hidden unit copied, the copies read with a factor-th of the weight, the noise
    summing to zero over copies: the wider net's outputs equal the old one's, for every
    task, under LayerNorm and residual connections."""
    torch.manual_seed(0)
    options = NetOptions(layer_norm=True, residual=True)
    net = TreeNet(spec, 7, 2, options)  # no input as wide as a module (its residual would go)
    x = torch.randn(spec.num_tasks, 6, 7)
    wide = TreeNet(spec.widened(3), 7, 2, options)
    wide.load_state_dict(widened_state(net.state_dict(), 3, noise=0.5))
    torch.testing.assert_close(wide(x), net(x))
    assert num_parameters(wide) == tree_parameters(spec.widened(3), 7, 2)


def test_noise_parts_a_widened_trees_copies_and_without_it_they_stay_one():
    """Copies of a unit that start equal see equal gradients and stay copies; the
    zero-sum noise gives them different ones (the width is then real)."""
    torch.manual_seed(0)
    spec = TreeSpec.mhsac((4, 4), 2)
    net = TreeNet(spec, 3, 1)
    x, y = torch.randn(2, 16, 3), torch.randn(2, 16, 1)
    for noise, parted in ((0.0, False), (0.1, True)):
        wide = TreeNet(spec.widened(2), 3, 1)
        wide.load_state_dict(widened_state(net.state_dict(), 2, noise=noise))
        (wide(x) - y).square().mean().backward()
        grad = wide.shared["1"].weight.grad  # [8, 3]: units 0-3 and their copies 4-7
        assert not torch.allclose(grad[:4], grad[4:]) == parted


def test_widening_asks_for_a_whole_factor():
    with pytest.raises(ValueError, match="whole factor"):
        TreeSpec.mhsac((4,), 2).widened(0)
