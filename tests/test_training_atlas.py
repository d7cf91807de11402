"""The conflict atlas's measurement (conal_rl/training/conflict_atlas.py): the task gradients it
reads are the ones autograd gives task by task, and measuring leaves the run as it was."""

import pytest
import torch

from agents import MultiTaskReplay, MultiTaskSAC, random_batch
from conal_rl.method import TreeSpec
from conal_rl.method.task_gradients import cosines
from conal_rl.training import conflict_atlas as atlas
from conal_rl.training.nets import tree_factory

T, OBS, ACT = 4, 6, 2


def agent(arch: str = "mtsac") -> MultiTaskSAC:
    torch.manual_seed(0)
    spec = {"mtsac": TreeSpec.mtsac, "mhsac": TreeSpec.mhsac,
            "independent": TreeSpec.independent}[arch]((16, 16), T)
    return MultiTaskSAC(tree_factory({"actor": spec, "critic": spec}), T, OBS, ACT)


def per_task_gradients(net_agent: MultiTaskSAC, batch, layer, tasks=range(T),
                       group: int | None = None) -> torch.Tensor:
    """``[len(tasks), params]``: each task's critic-loss gradient on ``layer`` (a grouped
    layer: on its group ``group``'s weights), one backward each."""
    grads = []
    for t in tasks:
        net_agent.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same sampled next actions for every task
        net_agent.critic_losses(batch)[t].backward()
        weight, bias = layer.weight.grad, layer.bias.grad
        if group is not None:
            weight, bias = weight[group], bias[group]
        grads.append(torch.cat([weight.flatten(), bias.flatten()]))
    net_agent.zero_grad(set_to_none=True)
    return torch.stack(grads)


def test_the_cosines_are_those_of_each_tasks_own_gradient():
    a, batch = agent(), random_batch(T, 64, OBS, ACT)
    torch.manual_seed(1)
    measured = atlas.measure(a, batch)
    ev = measured["critic"]["q1/shared.1"]
    grads = per_task_gradients(a, batch, a.critic.q1.shared["1"])
    expected = cosines(grads @ grads.T)
    assert torch.allclose(ev.cosine.float(), expected, atol=1e-4)
    assert set(measured) == {"critic", "actor"}
    assert "head" in measured["actor"]  # MT-SAC's output layer is shared too


def test_measuring_leaves_the_agent_its_gradients_and_the_rng_as_they_were():
    a, batch = agent(), random_batch(T, 64, OBS, ACT)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    a.critic.q1.shared["1"].weight.grad = marker = torch.ones_like(a.critic.q1.shared["1"].weight)
    rng = torch.get_rng_state()
    atlas.measure(a, batch)
    assert torch.equal(torch.get_rng_state(), rng)
    assert a.critic.q1.shared["1"].weight.grad is marker
    assert a.actor.net.shared["1"].weight.grad is None
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in a.critic.parameters())


def test_a_generator_of_its_own_keeps_the_replays_draws():
    replay = MultiTaskReplay(100, T, OBS, ACT)
    for _ in range(100):
        replay.add(*(torch.randn(T, d) for d in (OBS, ACT, 1, OBS, 1)))
    twin = MultiTaskReplay(100, T, OBS, ACT)
    twin.load_state_dict(replay.state_dict())
    replay.sample(64, torch.Generator().manual_seed(5))  # a measurement's sample
    assert torch.equal(replay.sample(8).obs, twin.sample(8).obs)


def test_nets_without_shared_layers_and_small_samples_are_refused():
    assert atlas.shared_layer_count(agent("independent")) == 0
    assert atlas.shared_layer_count(agent("mhsac")) > 0
    with pytest.raises(ValueError, match="at least"):
        atlas.measure(agent(), random_batch(T, 16, OBS, ACT))


def test_the_json_names_the_tasks_and_reads_back():
    a, batch = agent(), random_batch(T, 64, OBS, ACT)
    measured = atlas.measure(a, batch)
    names = ["a", "b", "c", "d"]
    payload = atlas.to_json(measured, names, env_steps=7)
    layer = payload["nets"]["critic"]["q1/shared.1"]
    assert layer["task_names"] == names and payload["env_steps"] == 7
    back = atlas.from_json(payload)["critic"]["q1/shared.1"]
    assert torch.allclose(back.cosine, measured["critic"]["q1/shared.1"].cosine.double(),
                          atol=1e-4)  # the file keeps 4 decimals


def test_a_grouped_tree_is_read_group_by_group():
    """CoNAL-Pro's grouped trees: a depth's groups of two tasks or more are its shared
    layers, each read on its own tasks' rows of the depth's one batched product."""
    from conal_rl.method import GroupTreeSpec

    torch.manual_seed(0)
    spec = GroupTreeSpec((16, 16), ((0, 0, 0, 0), (0, 0, 1, 2)))
    a = MultiTaskSAC(tree_factory({"actor": spec, "critic": spec}), T, OBS, ACT)
    batch = random_batch(T, 64, OBS, ACT)
    torch.manual_seed(1)
    measured = atlas.measure(a, batch)
    assert set(measured["critic"]) == {f"{q}/group.{d}.0" for q in ("q1", "q2") for d in (1, 2)}
    ev = measured["critic"]["q1/group.2.0"]
    assert ev.tasks == (0, 1)
    grads = per_task_gradients(a, batch, a.critic.q1.layers[1], tasks=(0, 1), group=0)
    assert torch.allclose(ev.cosine[0, 1].float(), torch.cosine_similarity(*grads, dim=0),
                          atol=1e-4)


def test_a_grouped_trees_shared_head_is_read_per_group():
    """With a shared head (CoNAL-Pro's default), a last group of two tasks or more reads one
    head: the atlas reads it as ``head.{g}``, on that group's rows."""
    from dataclasses import replace

    from conal_rl.method import GroupTreeSpec

    torch.manual_seed(0)
    spec = GroupTreeSpec((16, 16), ((0, 0, 0, 0), (0, 0, 1, 2)), shared_head=True)
    a = MultiTaskSAC(tree_factory({"actor": spec, "critic": spec}), T, OBS, ACT)
    batch = random_batch(T, 64, OBS, ACT)
    torch.manual_seed(1)
    measured = atlas.measure(a, batch)
    assert "q1/head.0" in measured["critic"] and "q1/head.1" not in measured["critic"]
    ev = measured["critic"]["q1/head.0"]
    assert ev.tasks == (0, 1)
    grads = per_task_gradients(a, batch, a.critic.q1.head, tasks=(0, 1), group=0)
    assert torch.allclose(ev.cosine[0, 1].float(), torch.cosine_similarity(*grads, dim=0),
                          atol=1e-4)
    without = atlas.measure(MultiTaskSAC(tree_factory(
        {"actor": spec, "critic": replace(spec, shared_head=False)}), T, OBS, ACT), batch)
    assert not any("head" in name for name in without["critic"])
