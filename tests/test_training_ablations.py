"""The training ablations: random loss weighting (--loss-weighting rlw) and PCGrad on the
shared modules (--grad-surgery pcgrad); the search ablations --no-conflict-noticing and
--no-private as the train command hands them to the search."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from agents import MultiTaskReplay, MultiTaskSAC, SACConfig, random_batch
from conal_rl import train
from conal_rl.analysis.grouping import arch_label
from conal_rl.method.pcgrad import PCGrad, pcgrad_coefficients, random_orders
from conal_rl.method.task_gradients import gram_method
from conal_rl.method.tree import TreeNet, TreeSpec
from conal_rl.training.conal_search import ConalSearch
from conal_rl.training.config import TrainConfig, given_arguments
from conal_rl.training.nets import surgery_filter, tree_factory

T, OBS, ACT, IN, OUT = 3, 5, 2, 4, 3


def _agent(loss_weighting="rlw", spec=None, make_filter=None) -> MultiTaskSAC:
    torch.manual_seed(0)
    spec = spec or TreeSpec.mhsac((16, 16), T)
    return MultiTaskSAC(tree_factory({"actor": spec, "critic": spec}), T, OBS, ACT,
                        SACConfig(loss_weighting=loss_weighting), make_filter)


# ---- random loss weighting ---------------------------------------------------------------

def _drawn_weights(agent: MultiTaskSAC) -> torch.Tensor:
    losses = torch.zeros(T, requires_grad=True)
    agent.reduce_task_losses(losses).backward()
    return losses.grad  # d(Σ λ_t L_t)/dL = λ


def test_rlw_weights_are_a_fresh_softmax_of_a_normal_draw():
    agent = _agent()
    torch.manual_seed(3)
    first, second = _drawn_weights(agent), _drawn_weights(agent)
    for weights in (first, second):
        assert torch.all(weights > 0) and weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert not torch.allclose(first, second)
    torch.manual_seed(3)
    torch.testing.assert_close(first, torch.softmax(torch.randn(T), 0))


def test_mean_weighting_is_the_plain_mean_and_draws_nothing():
    agent = _agent("mean")
    state = torch.get_rng_state()
    losses = torch.tensor([1.0, 2.0, 6.0])
    assert agent.reduce_task_losses(losses).item() == 3.0
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="unknown loss weighting"):
        SACConfig(loss_weighting="uniform")


def test_rlw_critic_gradient_is_that_of_the_weighted_losses():
    agent = _agent()
    batch = random_batch(T, 8, OBS, ACT, seed=1)
    reference = copy.deepcopy(agent)
    calls = []
    reduce = agent.reduce_task_losses
    agent.reduce_task_losses = lambda losses: calls.append(losses.shape) or reduce(losses)
    torch.manual_seed(5)
    agent.update(batch)
    assert calls == [(T,), (T,)]  # the critic step and the actor step
    # The update's random stream: the critic loss's next actions, then the critic's weights.
    torch.manual_seed(5)
    losses = reference.critic_losses(batch)
    weights = torch.softmax(torch.randn(T), 0)
    (weights * losses).sum().backward()
    for got, expected in zip(agent.critic.parameters(), reference.critic.parameters()):
        torch.testing.assert_close(got.grad, expected.grad, rtol=1e-5, atol=1e-7)


# ---- PCGrad ------------------------------------------------------------------------------

def pcgrad_reference(flat: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The paper's loop on per-task gradients ``flat [k, D]``: the projected ``g_i'``."""
    out = flat.clone()
    for i in range(flat.shape[0]):
        for j in order[i].tolist():
            dot = out[i] @ flat[j]
            if dot < 0:
                out[i] -= dot / (flat[j] @ flat[j]) * flat[j]
    return out


def _task_losses(net, x, target):
    return (net(x) - target).square().mean(dim=(1, 2))


@pytest.mark.parametrize("spec, batch, method", [
    (TreeSpec((6, 7, 5), (3, 1, 2)), 16, "materialise"),  # modules of 3, 2 and 1 tasks
    (TreeSpec.mtsac((6, 7), T), 16, "materialise"),  # everything shared, the head included
    (TreeSpec((64, 64), (2, 2, 1)), 2, "kernel"),  # wide modules, few samples
], ids=["tree", "mtsac", "kernel-gram"])
def test_pcgrad_equals_separate_backwards_and_the_paper_loop(spec, batch, method):
    torch.manual_seed(0)
    net = TreeNet(spec, IN, OUT).double()
    x = torch.randn(T, batch, IN, dtype=torch.float64)
    target = torch.randn(T, batch, OUT, dtype=torch.float64)
    widths = [IN + (T if spec.task_id_input else 0), *spec.hidden]
    assert gram_method(T, batch, widths[0], widths[1]) == method  # the formula under test
    # Positive task weights (RLW's): the per-task gradients are those of the weighted loss.
    weights = torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64)
    surgery = PCGrad(net)
    if spec.shared_head:
        assert "head" in surgery.layers
    with surgery.record():
        loss = (weights * _task_losses(net, x, target)).sum()
    loss.backward()
    plain = {n: p.grad.clone() for n, p in net.named_parameters()}
    torch.manual_seed(7)
    applied = surgery.apply()

    # Reference: one autograd.grad per task on a forward of its own.
    task_losses = weights * _task_losses(net, x, target)
    changed = 0
    for name, layer in surgery.layers.items():
        params = [layer.module.weight, layer.module.bias]
        per_task = torch.stack([
            torch.cat([g.flatten() for g in torch.autograd.grad(task_losses[t], params,
                                                                retain_graph=True)])
            for t in layer.tasks])
        if len(layer.tasks) == 1:
            assert name not in applied
            expected = per_task[0]
        else:
            expected = pcgrad_reference(per_task, surgery.last_order[name]).sum(0)
        got = torch.cat([p.grad.flatten() for p in params])
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12, msg=name)
        changed += not torch.equal(got, per_task.sum(0))
    assert changed  # some pair conflicted
    for name, param in net.named_parameters():  # private modules and per-task heads
        if name.startswith("private.") or (name.startswith("head.") and not spec.shared_head):
            assert torch.equal(param.grad, plain[name]), name


def test_random_orders_are_permutations_of_the_other_tasks():
    torch.manual_seed(0)
    orders = random_orders((50,), 4)
    assert orders.shape == (50, 4, 3)
    for i in range(4):
        assert all(sorted(row) == [t for t in range(4) if t != i]
                   for row in orders[:, i].tolist())
    assert len({tuple(row) for row in orders[:, 0].tolist()}) == 6  # all 3! orders occur


def test_pcgrad_projects_out_the_conflicting_component():
    flat = torch.tensor([[1.0, 0.0, 0.5], [-1.0, 1.0, 0.0]], dtype=torch.float64)
    gram = flat @ flat.T
    assert gram[0, 1] < 0
    projected = pcgrad_coefficients(gram, torch.tensor([[1], [0]])) @ flat
    torch.testing.assert_close(projected, pcgrad_reference(flat, torch.tensor([[1], [0]])))
    assert projected[0] @ flat[1] >= -1e-12 and projected[1] @ flat[0] >= -1e-12
    total = projected.sum(0)  # no task's gradient points against the update
    assert total @ flat[0] >= 0 and total @ flat[1] >= 0
    agreeing = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    assert torch.equal(pcgrad_coefficients(agreeing @ agreeing.T, torch.tensor([[1], [0]])),
                       torch.eye(2, dtype=torch.float64))


def _twin_task_grads(signs):
    """Two tasks on a shared trunk (identical heads and inputs): task t's gradient on each
    shared module is sign_t times one common gradient."""
    torch.manual_seed(0)
    net = TreeNet(TreeSpec.mhsac((6, 7), 2), IN, OUT).double()
    with torch.no_grad():
        net.head.weight[1], net.head.bias[1] = net.head.weight[0], net.head.bias[0]
    x = torch.randn(1, 10, IN, dtype=torch.float64).expand(2, 10, IN)
    surgery = PCGrad(net)
    with surgery.record():
        out = net(x)
    (out.sum(dim=(1, 2)) * torch.tensor(signs, dtype=out.dtype)).sum().backward()
    plain = {n: p.grad.clone() for n, p in net.named_parameters()}
    surgery.apply()
    return plain, {n: p.grad for n, p in net.named_parameters()}


def test_agreeing_tasks_keep_their_gradient_bit_for_bit():
    plain, projected = _twin_task_grads((1.0, 0.5))
    assert all(torch.equal(projected[n], plain[n]) for n in plain)


def test_opposing_tasks_cancel_on_shared_modules_only():
    # g_2 = -0.5 g_1: each loses its whole component along the other, so both vanish.
    plain, projected = _twin_task_grads((1.0, -0.5))
    for name in plain:
        if name.startswith("shared."):
            assert plain[name].abs().sum() > 0
            torch.testing.assert_close(projected[name], torch.zeros_like(plain[name]))
        else:
            assert torch.equal(projected[name], plain[name]), name


def test_surgery_filters_cover_actor_and_both_critics():
    agent = _agent("mean", TreeSpec.mtsac((16, 16), T), surgery_filter("pcgrad"))
    filters = agent.gradient_filters
    assert set(filters["actor"].layers) == {"shared.1", "shared.2", "head"}
    assert {name.split("/")[0] for name in filters["critic"].layers} == {"q1", "q2"}
    assert surgery_filter("none") is None
    plain = _agent("mean", TreeSpec.mtsac((16, 16), T), surgery_filter("none"))
    assert plain.gradient_filters == {}
    agent.update(random_batch(T, 8, OBS, ACT, seed=1))  # runs through the agent's seam
    assert filters["actor"].last_order.keys() == {"shared.1", "shared.2", "head"}


# ---- the flags -------------------------------------------------------------------------

def test_labels_name_the_added_methods():
    config = TrainConfig(benchmark="MT10", preset="quick", loss_weighting="rlw",
                         grad_surgery="pcgrad")
    assert arch_label(config) == "MT-SAC + RLW + PCGrad"


def test_training_with_both_flags_acts_on_two_tasks(tmp_path, monkeypatch, two_tasks):
    """RLW and PCGrad through the train command on a two-task benchmark (on one task both
    are no-ops): the agent it builds weights its task losses at random and projects the
    shared modules' task gradients, in every update."""
    projected, changed, reduced, trainers = [], [], [], []
    apply = PCGrad.apply

    def spy_apply(self):
        params = [p for layer in self.layers.values()
                  for p in (layer.module.weight, layer.module.bias)]
        before = [p.grad.clone() for p in params]
        projected.append(apply(self))
        changed.append(any(not torch.equal(p.grad, g) for p, g in zip(params, before)))
        return projected[-1]

    monkeypatch.setattr(PCGrad, "apply", spy_apply)
    reduce = MultiTaskSAC.reduce_task_losses

    def spy(self, losses):
        out = reduce(self, losses)
        reduced.append((losses.detach(), out.detach()))
        return out

    monkeypatch.setattr(MultiTaskSAC, "reduce_task_losses", spy)
    prepare = train.prepare
    monkeypatch.setattr(train, "prepare", lambda *a: trainers.append(prepare(*a)) or trainers[-1])
    run = tmp_path / "run"
    train.main(["--benchmark", "gym:Pendulum-v1", "--total-steps", "300", "--eval-every", "0",
                "--run-dir", str(run), "--hidden", "8,8", "--batch-per-task", "8",
                "--warmup-steps", "100", "--eval-episodes", "1", "--log-every", "50",
                "--grad-surgery", "pcgrad", "--loss-weighting", "rlw"])
    config = json.loads((run / "config.json").read_text())
    assert config["grad_surgery"] == "pcgrad" and config["loss_weighting"] == "rlw"
    [trainer] = trainers
    agent = trainer.agent
    assert agent.num_tasks == 2 and agent.config.loss_weighting == "rlw"
    filters = agent.gradient_filters
    assert set(filters) == {"actor", "critic"}
    assert all(isinstance(f, PCGrad) for f in filters.values())
    assert {layer.tasks for layer in filters["actor"].layers.values()} == {(0, 1)}
    updates = trainer.updates
    assert updates == (300 - 100) // 2  # one update per vector step after the warm-up
    # PCGrad on the actor's and the critics' shared modules in every update, and some
    # projection changed a gradient (weights of the task gradients other than 1).
    assert len(projected) == 2 * updates
    assert all(w.shape == (2,) for weights in projected for w in weights.values())
    assert any(not torch.equal(w, torch.ones_like(w)) for ws in projected for w in ws.values())
    assert any(changed)  # ... and rewrote the shared modules' gradients
    # RLW: the critic's and the actor's losses combined with random weights, not the mean.
    assert len(reduced) == 2 * updates
    assert all(not torch.isclose(out, losses.mean()) for losses, out in reduced)


def test_the_search_ablation_flags_reach_the_search(tmp_path):
    """--no-conflict-noticing and --no-private, as the train command parses them, switch
    the search's conflict-noticing off and its private modules out (and nothing else)."""
    for flags in ([], ["--no-conflict-noticing"], ["--no-private"],
                  ["--no-conflict-noticing", "--no-private"]):
        args = train.build_parser().parse_args(["--arch", "conal", "--preset", "quick", *flags])
        config = TrainConfig(**given_arguments(args))
        settings = config.search()
        noticing = "--no-conflict-noticing" not in flags
        private = "--no-private" not in flags
        assert (settings.conflict_noticing, settings.no_private) == (noticing, not private)
        search = ConalSearch(settings, ["a", "b", "c"], config.batch_per_task)
        agent = MultiTaskSAC(search.make_net, T, OBS, ACT, make_filter=search.make_filter)
        assert agent.actor.net.no_private is (not private)
        assert agent.critic.q2.no_private is (not private)
        assert ("private" in dict(agent.actor.net.named_children())) is private
        assert ("branch" in dict(agent.actor.net.named_children())) is (not private)
        # Past the search's warm-up the filters notice conflicts unless switched off.
        replay = MultiTaskReplay(50, T, OBS, ACT)
        batch = random_batch(T, 8, OBS, ACT, seed=0)
        for _ in range(8):
            replay.add(batch.obs[:, 0], batch.actions[:, 0], batch.rewards[:, 0],
                       batch.next_obs[:, 0], batch.dones[:, 0])
        search.before_update(agent, replay, env_steps=settings.warmup_steps)
        agent.update(batch)
        assert all(n.enabled is noticing for n in search.noticing.values())
        steps = {s["steps"] for n in search.noticing.values() for s in n.stats().values()}
        assert steps == ({1} if noticing else {0})
