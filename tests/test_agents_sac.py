import torch

from agents import MultiTaskSAC, SACConfig, random_batch
from conal_rl.method.tree import TreeSpec
from conal_rl.training.nets import tree_factory

T, OBS, ACT = 3, 5, 2


def _agent(spec_fn=TreeSpec.mhsac, **config):
    torch.manual_seed(0)
    spec = spec_fn((32, 32), T)
    return MultiTaskSAC(tree_factory({"actor": spec, "critic": spec}), T, OBS, ACT,
                        SACConfig(**config))


def _batch(B=64):
    return random_batch(T, B, OBS, ACT, seed=1)


def test_shapes_and_action_range():
    agent = _agent()
    obs = torch.randn(T, 7, OBS)
    for deterministic in (True, False):
        a = agent.act(obs, deterministic)
        assert a.shape == (T, 7, ACT) and a.abs().max() <= 1
    assert agent.critic_losses(_batch()).shape == (T,)


def test_update_decreases_critic_loss_on_fixed_batch():
    for spec_fn in (TreeSpec.mtsac, TreeSpec.mhsac):
        agent = _agent(spec_fn)
        batch = _batch()
        torch.manual_seed(2)
        before = agent.critic_losses(batch).mean().item()
        for _ in range(300):
            metrics = agent.update(batch)
        torch.manual_seed(2)
        after = agent.critic_losses(batch).mean().item()
        assert after < 0.5 * before, (spec_fn, before, after)
        assert set(metrics) >= {"critic_loss", "actor_loss", "temperature", "entropy"}
        assert metrics["critic_loss"].shape == (T,)


def test_per_task_temperatures_move_independently():
    agent = _agent(initial_temperature=1.0)
    # task 0: policy far less random than the target entropy -> its temperature must rise;
    # task 1: far more random -> it must fall; task 2: exactly on target -> no gradient.
    log_prob = torch.zeros(T, 16, 1)
    log_prob[0] = 10.0
    log_prob[1] = -10.0
    log_prob[2] = -agent.target_entropy
    agent.temperature_optim.zero_grad()
    agent.temperature_losses(log_prob).sum().backward()
    assert agent.log_temperature.grad[2] == 0
    agent.temperature_optim.step()
    temperature = agent.temperature.detach()
    assert temperature[0] > 1.0 > temperature[1]
    assert temperature[2] == 1.0


def test_targets_follow_slowly():
    agent = _agent(tau=0.1)
    before = [p.clone() for p in agent.critic_target.parameters()]
    agent.update(_batch())
    for old, target, online in zip(before, agent.critic_target.parameters(),
                                   agent.critic.parameters()):
        assert torch.allclose(target, 0.9 * old + 0.1 * online, atol=1e-6)


def test_fused_adam_computes_what_the_per_tensor_adam_did():
    """The fast update (fused Adam) against the update as it was (Adam as per-tensor ops),
    from the same weights and random draws: equal to 1e-5 after several updates."""
    fast = _agent(spec_fn=TreeSpec.mtsac)
    old = _agent(spec_fn=TreeSpec.mtsac)
    for optim in (old.actor_optim, old.critic_optim, old.temperature_optim):
        for group in optim.param_groups:
            group.update(fused=None, foreach=None)
    assert fast.critic_optim.param_groups[0]["fused"]
    batch = _batch()
    for step in range(5):
        torch.manual_seed(step)
        fast_metrics = fast.update(batch)
        torch.manual_seed(step)
        old_metrics = old.update(batch)
    for (name, a), b in zip(fast.state_dict().items(), old.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)
    for key, value in fast_metrics.items():
        torch.testing.assert_close(value, old_metrics[key], rtol=0, atol=1e-5)
    moved = [p for p in fast.critic.parameters() if p.grad is not None]
    assert moved and all(fast.critic_optim.state[p]["step"] == 5 for p in moved)


def test_a_parameter_without_gradient_keeps_its_adam_state():
    """What conflict-noticing's freeze relies on, with the agent's fused Adam: a parameter
    whose .grad is None neither moves nor advances its moments or step."""
    agent = _agent()
    agent.update(_batch())
    frozen = agent.critic.q1.shared["1"].weight
    before = frozen.detach().clone()
    state = {k: v.clone() for k, v in agent.critic_optim.state[frozen].items()}
    agent.critic_optim.zero_grad(set_to_none=True)
    agent.critic_losses(_batch()).mean().backward()
    frozen.grad = None
    agent.critic_optim.step()
    assert torch.equal(frozen, before)
    assert all(torch.equal(agent.critic_optim.state[frozen][k], v) for k, v in state.items())
    other = agent.critic.q2.shared["1"].weight
    assert agent.critic_optim.state[other]["step"] == 2


def test_optimizer_state_saved_before_the_fused_step_loads_fused():
    """Checkpoints from before the fused Adam carry fused=None; they resume fused."""
    old = _agent()
    for optim in (old.actor_optim, old.critic_optim, old.temperature_optim):
        for group in optim.param_groups:
            group.update(fused=None, foreach=None)
    old.update(_batch())
    new = _agent()
    new.load_optimizer_state(old.optimizer_state())
    assert all(g["fused"] for o in (new.actor_optim, new.critic_optim, new.temperature_optim)
               for g in o.param_groups)


def test_a_rebuilt_agent_holds_the_state_of_the_old_one_in_its_new_nets():
    """``rebuilt`` with a tree that grew (task 1 leaves shared module 2 of both nets): the
    same actions and Q-values, the same temperatures and observation statistics, the
    moments carried (a new private
    copy's moments are its shared module's), and it goes on updating."""
    from conal_rl.method.tree import grown_state

    agent, batch = _agent(normalize_obs=True), _batch()
    for _ in range(3):
        agent.update(batch)
    old = TreeSpec.mhsac((32, 32), T)
    new = old.branched({2: {1}})
    grown = agent.rebuilt(tree_factory({"actor": new, "critic": new}),
                          lambda role, tensors: grown_state(old, new, tensors))
    obs = torch.randn(T, 7, OBS)
    torch.testing.assert_close(grown.act(obs, deterministic=True),
                               agent.act(obs, deterministic=True))
    torch.manual_seed(3)
    before = agent.critic_losses(batch)
    torch.manual_seed(3)
    torch.testing.assert_close(grown.critic_losses(batch), before)
    torch.testing.assert_close(grown.log_temperature, agent.log_temperature)
    assert grown.obs_norm.count == 3 * T * 64  # the observation statistics come along
    names = [n for n, _ in grown.critic.named_parameters()]
    state = grown.critic_optim.state_dict()["state"]
    private = state[names.index("q2.private.2.weight")]["exp_avg"]
    shared_old = agent.critic_optim.state_dict()["state"][
        [n for n, _ in agent.critic.named_parameters()].index("q2.shared.2.weight")]
    torch.testing.assert_close(private[0], shared_old["exp_avg"].T)
    assert int(state[names.index("q2.private.2.weight")]["step"]) == 3
    grown.update(batch)
    assert not torch.equal(grown.actor.net.private["2"].weight[0],
                           agent.actor.net.shared["2"].weight.T)
