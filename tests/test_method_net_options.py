"""The learner's levers that live in the nets (NetOptions): LayerNorm, residual connections
and He-uniform init, in every net the method builds."""

import math

import pytest
import torch
from torch import nn

from conal_rl.method import GroupTreeNet, GroupTreeSpec, NetOptions, SuperNet, TreeNet, TreeSpec
from conal_rl.method.progressive import StageNet

T, IN, OUT, HIDDEN = 3, 5, 2, (8, 8)


def every_net(options: NetOptions) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "mtsac": TreeNet(TreeSpec.mtsac(HIDDEN, T), IN, OUT, options),
        "tree": TreeNet(TreeSpec(HIDDEN, (0, 1, 2)), IN, OUT, options),
        "groups": GroupTreeNet(GroupTreeSpec(HIDDEN, ((0, 0, 1), (0, 1, 2))), IN, OUT, options),
        "supernet": SuperNet(T, IN, OUT, HIDDEN, options=options),
        "supernet-no-private": SuperNet(T, IN, OUT, HIDDEN, no_private=True, options=options),
        "stage": StageNet(((0, 0, 1),), T, IN, OUT, HIDDEN, options),
    }


def first_layer(net: nn.Module) -> list[nn.Parameter]:
    """The parameters of every module that reads the net's input."""
    names = ("shared.1.", "private.1.", "layers.0.", "branch.0_1.", "decided.0.")
    return [p for n, p in net.named_parameters() if n.startswith(names)]


@pytest.mark.parametrize("name", list(every_net(NetOptions())))
def test_layer_norm_makes_every_net_blind_to_the_first_layers_scale(name):
    x = torch.randn(T, 4, IN)
    for layer_norm in (True, False):
        net = every_net(NetOptions(layer_norm=layer_norm))[name]
        before = net(x)
        with torch.no_grad():
            for p in first_layer(net):
                p.mul_(3.0)
        same = torch.allclose(net(x), before, atol=1e-4)
        assert same == layer_norm, (name, layer_norm)


def test_residual_adds_a_modules_input_where_the_widths_agree():
    torch.manual_seed(0)
    x = torch.randn(T, 4, IN)
    for residual in (True, False):
        net = TreeNet(TreeSpec.mhsac((8, 8), T), IN, OUT, NetOptions(residual=residual))
        with torch.no_grad():  # module 2 outputs zeros: with the skip it passes h1 on
            net.shared["2"].weight.zero_()
            net.shared["2"].bias.zero_()
        h1 = torch.relu(net.shared["1"](x))  # 5 -> 8: widths differ, no skip
        h2 = h1 if residual else torch.zeros_like(h1)
        assert torch.allclose(net(x), net.head(h2), atol=1e-6)


@pytest.mark.parametrize("name", list(every_net(NetOptions())))
def test_he_uniform_draws_every_linear_map_within_its_bound_and_zero_biases(name):
    he = every_net(NetOptions(init="he-uniform"))[name]
    torch_default = every_net(NetOptions())[name]
    for (n, p), (_, q) in zip(he.named_parameters(), torch_default.named_parameters()):
        if n == "alpha":
            assert torch.equal(p, q)
            continue
        if n.endswith("bias"):
            assert not p.any(), n
            continue
        fan_in = p.shape[1]  # nn.Linear's [out, in], the per-task layers' [n, in, out]
        bound = math.sqrt(6 / fan_in)
        assert p.abs().max() <= bound and p.abs().max() > 1 / math.sqrt(fan_in), n


def test_default_options_build_the_plain_relu_nets():
    torch.manual_seed(0)
    plain = TreeNet(TreeSpec.mhsac(HIDDEN, T), IN, OUT)
    torch.manual_seed(0)
    default = TreeNet(TreeSpec.mhsac(HIDDEN, T), IN, OUT, NetOptions())
    x = torch.randn(T, 4, IN)
    h = x
    for layer in ("1", "2"):
        h = torch.relu(plain.shared[layer](h))
    assert torch.allclose(plain(x), plain.head(h)) and torch.equal(plain(x), default(x))


def test_a_derived_tree_keeps_the_supernets_options():
    options = NetOptions(layer_norm=True, residual=True)
    tree = SuperNet(T, IN, OUT, HIDDEN, options=options).to_tree()
    assert tree.options == options and tree.act.layer_norm and tree.act.residual


def test_an_unknown_weight_init_is_refused():
    with pytest.raises(ValueError, match="unknown weight init"):
        NetOptions(init="xavier")
