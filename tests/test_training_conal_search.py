"""CoNAL wired into multi-task SAC (the method itself is tested in test_method_conal.py)."""

import torch

from agents import MultiTaskSAC, random_batch
from conal_rl.method import SearchSettings
from conal_rl.training.conal_search import ConalSearch, inherited_trees
from conal_rl.training.nets import tree_factory

T, OBS, ACT = 3, 5, 2
NAMES = ["a", "b", "c"]


def _search(**settings):
    torch.manual_seed(0)
    settings = SearchSettings(hidden=(16, 16), arch_lr=1e-2, **settings)
    search = ConalSearch(settings, NAMES)
    return MultiTaskSAC(search.make_net, T, OBS, ACT, make_filter=search.make_filter), search


def _batch(B=32):
    return random_batch(T, B, OBS, ACT, seed=1)


def test_twin_critics_share_one_architecture_and_weights_exclude_alpha():
    agent, search = _search()
    assert agent.critic.q1.alpha is agent.critic.q2.alpha
    assert agent.critic_target.q1.alpha is agent.critic_target.q2.alpha
    assert agent.actor.net.alpha is not agent.critic.q1.alpha
    optimised = {id(p) for g in agent.critic_optim.param_groups for p in g["params"]}
    assert id(agent.critic.q1.alpha) not in optimised


def test_architecture_step_moves_alpha_only():
    agent, search = _search()
    weights = {k: v.clone() for k, v in agent.state_dict().items() if "alpha" not in k}
    alpha = {role: a.detach().clone() for role, a in search.alpha.items()}
    search.arch_step(agent, _batch(), env_steps=0)
    for role in alpha:
        assert not torch.equal(alpha[role], search.alpha[role])
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


def test_search_warmup_trains_weights_only():
    agent, search = _search(warmup_steps=100, total_steps=200)
    alpha = {role: a.detach().clone() for role, a in search.alpha.items()}
    search.before_update(agent, _batch(), env_steps=50)
    agent.update(_batch())
    assert all(torch.equal(alpha[r], search.alpha[r]) for r in alpha)
    assert all(s["steps"] == 0 for n in search.noticing.values() for s in n.stats().values())
    search.before_update(agent, _batch(), env_steps=100)
    agent.update(_batch())
    assert not any(torch.equal(alpha[r], search.alpha[r]) for r in alpha)
    assert all(s["steps"] == 1 for n in search.noticing.values() for s in n.stats().values())
