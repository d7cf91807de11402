"""The learner's flags reach every architecture's nets and the update: LayerNorm, residual
connections, weight init, gradient clipping."""

import pytest
import torch

from agents import MultiTaskSAC, SACConfig, random_batch
from conal_rl.method import GroupTreeSpec, TreeSpec
from conal_rl.train import main
from conal_rl.training.conal_search import ConalSearch, ProStage
from conal_rl.training.config import TrainConfig
from conal_rl.training.nets import fixed_trees, load_specs, save_specs, tree_factory
from conal_rl.training.runs import load_run

LEVERS = dict(layer_norm=True, residual=True, weight_init="he-uniform")
TASKS = ["a", "b", "c"]


def _acts(net) -> tuple[bool, bool]:
    return net.act.layer_norm, net.act.residual


@pytest.mark.parametrize("arch", ["mtsac", "mhsac", "independent"])
def test_fixed_trees_are_built_with_the_flags(arch):
    config = TrainConfig(benchmark="MT10", arch=arch, hidden=(8, 8), **LEVERS)
    spec = {"mtsac": TreeSpec.mtsac, "mhsac": TreeSpec.mhsac,
            "independent": TreeSpec.independent}[arch]((8, 8), 3)
    net = tree_factory({"actor": spec, "critic": spec}, config.net_options())("actor", 5, 2)
    assert _acts(net) == (True, True) and not net.head.bias.any()


def test_the_searches_nets_are_built_with_the_flags():
    config = TrainConfig(benchmark="MT10", arch="conal", hidden=(8, 8), **LEVERS)
    search = ConalSearch(config.search(), TASKS, 4)
    stage = ProStage(config.search(), TASKS, 4, {"actor": (), "critic": ()})
    for net in (search.make_net("actor", 5, 2), stage.make_net("critic", 5, 1)):
        assert _acts(net) == (True, True) and not net.head.bias.any()
    assert search.make_net("critic", 5, 1).to_tree().options == config.net_options()


def test_a_run_with_the_flags_is_loaded_back_with_them(tmp_path):
    run = tmp_path / "run"
    main(["--benchmark", "gym:Pendulum-v1", "--total-steps", "120", "--eval-every", "0",
          "--hidden", "16,16", "--batch-per-task", "8", "--warmup-steps", "100",
          "--eval-episodes", "1", "--layer-norm", "--normalize-obs", "--run-dir", str(run)])
    loaded = load_run(run)
    assert _acts(loaded.agent.actor.net) == (True, False)
    assert _acts(loaded.agent.critic.q1) == (True, False)
    assert loaded.agent.obs_norm.count == 20 * 8  # 20 updates of 8 observations, restored


def test_an_old_config_without_the_flags_loads_as_it_ran(tmp_path):
    path = tmp_path / "config.json"
    TrainConfig(benchmark="MT10").save(path)
    import json

    values = json.loads(path.read_text())
    for key in ("layer_norm", "residual", "weight_init", "max_grad_norm", "task_id"):
        del values[key]
    path.write_text(json.dumps(values))
    options = TrainConfig.load(path).net_options()
    assert (options.layer_norm, options.residual, options.init) == (False, False, "torch")
    assert not TrainConfig.load(path).task_id
    assert TrainConfig.load(path).sac().max_grad_norm is None


@pytest.mark.parametrize("arch", ["mhsac", "independent", "private-critic", "mhsac-wide"])
def test_task_id_gives_every_fixed_trees_first_module_the_one_hot_task_id(arch):
    obs, act = 5, 2
    config = TrainConfig(benchmark="MT10", arch=arch, hidden=(8, 8), task_id=True)
    specs = fixed_trees(config, TASKS, (obs, act))
    for role, d_in in (("actor", obs), ("critic", obs + act)):
        assert specs[role].task_id_input
        net = tree_factory(specs, config.net_options())(role, d_in, 1)
        assert net.task_weights(1, [0])[0].shape[1] == d_in + len(TASKS)
        x = torch.zeros(len(TASKS), 1, d_in)
        torch.testing.assert_close(net.inputs(x)[:, 0, d_in:], torch.eye(len(TASKS)))


def test_with_task_id_mhsacs_shared_trunk_tells_the_tasks_apart():
    features = {}
    for task_id in (False, True):
        config = TrainConfig(benchmark="MT10", arch="mhsac", hidden=(8, 8), task_id=task_id)
        net = tree_factory(fixed_trees(config, TASKS), config.net_options())("critic", 7, 1)
        x = torch.randn(1, 4, 7).expand(len(TASKS), 4, 7)  # one batch, seen by every task
        features[task_id] = net.shared["2"](net.act(net.shared["1"](net.inputs(x))))
    assert torch.equal(features[False][0], features[False][1])  # a trunk blind to the task
    assert not torch.allclose(features[True][0], features[True][1])


def test_task_id_reaches_the_searches_and_grouped_trees(tmp_path):
    config = TrainConfig(benchmark="MT10", arch="conal", hidden=(8, 8), task_id=True)
    net = ConalSearch(config.search(), TASKS, 4).make_net("critic", 5, 1)
    assert net.task_id_input and net.derive(TASKS).task_id_input
    config = TrainConfig(benchmark="MT10", arch="conal-pro", hidden=(8, 8), task_id=True)
    stage = ProStage(config.search(), TASKS, 4, {"actor": (), "critic": ()})
    assert stage.make_net("critic", 5, 1).stay[0].in_features == 5 + len(TASKS)
    grouped = GroupTreeSpec((8,), ((0, 0, 1),), tuple(TASKS))
    path = tmp_path / "groups.json"
    save_specs(path, {"actor": grouped, "critic": grouped})
    config = TrainConfig(benchmark="MT10", arch="tree", architecture=str(path), task_id=True)
    specs = fixed_trees(config, TASKS)
    assert all(spec.task_id_input for spec in specs.values())
    net = tree_factory(specs)("critic", 5, 1)
    x = torch.zeros(len(TASKS), 2, 5)  # one input for every task: tasks 0 and 1 share module 1
    first = net.layers[0](net.inputs(x))
    assert not torch.allclose(first[0], first[1])  # told apart by the id alone
    assert load_specs(path)["critic"].task_id_input is False  # the file as it was


@pytest.mark.parametrize("flags, message", [
    (dict(max_grad_norm=-1.0), "--max-grad-norm must not be negative"),
    (dict(max_grad_norm=float("nan")), "--max-grad-norm must be a finite number"),
    (dict(weight_init="xavier"), "--weight-init must be one of torch, he-uniform"),
])
def test_bad_learner_values_are_refused(flags, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(benchmark="MT10", **flags)


@pytest.mark.parametrize("clip", [None, 0.05])
def test_max_grad_norm_clips_the_actors_and_the_critics_gradients(clip):
    torch.manual_seed(0)
    spec = TreeSpec.mhsac((32, 32), 3)
    agent = MultiTaskSAC(tree_factory({"actor": spec, "critic": spec}), 3, 5, 2,
                         SACConfig(max_grad_norm=clip))
    norms = {}
    for role, optim in (("critic", agent.critic_optim), ("actor", agent.actor_optim)):
        step = optim.step

        def recorded(*args, role=role, optim=optim, step=step, **kwargs):
            grads = [p.grad for g in optim.param_groups for p in g["params"]
                     if p.grad is not None]
            norms[role] = torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(g) for g in grads])).item()
            return step(*args, **kwargs)
        optim.step = recorded
    agent.update(random_batch(3, 64, 5, 2, seed=1))
    for role, norm in norms.items():
        if clip is None:
            assert norm > 0.05, role  # the unclipped norms are larger than the clip
        else:
            assert norm == pytest.approx(clip, rel=1e-4), role


def test_a_bf16_update_runs_the_nets_products_in_bf16_and_the_rest_in_fp32():
    torch.manual_seed(0)
    spec = TreeSpec.mhsac((32, 32), 3)
    agent = MultiTaskSAC(tree_factory({"actor": spec, "critic": spec}), 3, 5, 2,
                         SACConfig(precision="bf16"))
    seen = []
    agent.critic.q1.shared["2"].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    metrics = agent.update(random_batch(3, 16, 5, 2, seed=1))
    assert seen == [torch.bfloat16, torch.bfloat16]  # the critic step and the actor step
    assert metrics["critic_loss"].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in agent.parameters())
    assert agent.act(torch.zeros(3, 1, 5)).dtype == torch.float32  # acting stays fp32


def test_bf16_is_refused_with_gradient_surgery_and_on_a_cpu_without_bf16_units(
        tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="does not take --grad-surgery"):
        TrainConfig(benchmark="MT10", precision="bf16", grad_surgery="pcgrad")
    from conal_rl.common import UserError
    from conal_rl.training import preflight

    monkeypatch.setattr(preflight, "cpu_bf16_units", lambda: ())
    with pytest.raises(UserError, match="needs a CPU with bf16 matrix units"):
        preflight.config_for_run({"benchmark": "MT10", "precision": "bf16", "device": "cpu",
                                  "run_dir": str(tmp_path / "run")}, None)
    monkeypatch.setattr(preflight, "cpu_bf16_units", lambda: ("amx_bf16",))
    config, _ = preflight.config_for_run({"benchmark": "MT10", "precision": "bf16",
                                          "device": "cpu", "run_dir": str(tmp_path / "r2")},
                                         None)
    assert config.sac().precision == "bf16" and config.sac(searching=True).precision == "fp32"


def test_normalize_obs_standardizes_what_the_nets_see_by_the_updates_running_statistics():
    torch.manual_seed(0)
    spec = TreeSpec.mhsac((16,), 3)
    agent = MultiTaskSAC(tree_factory({"actor": spec, "critic": spec}), 3, 5, 2,
                         SACConfig(normalize_obs=True))
    batches = [random_batch(3, 32, 5, 2, seed=s) for s in range(4)]
    for b in batches:
        b.obs.mul_(torch.arange(1.0, 6.0)).add_(100.0)  # far from standard
        agent.update(b)
    seen = torch.cat([b.obs.reshape(-1, 5) for b in batches])
    torch.testing.assert_close(agent.obs_norm.mean, seen.mean(0))
    torch.testing.assert_close(agent.obs_norm.var, seen.var(0, unbiased=False))
    standardized = agent.observed(seen)
    assert standardized.mean(0).abs().max() < 1e-4
    assert (standardized.std(0) - 1).abs().max() < 0.01
    # the statistics are part of the agent's state; an agent without the option has none
    assert "obs_norm.mean" in agent.state_dict()
    plain = MultiTaskSAC(tree_factory({"actor": spec, "critic": spec}), 3, 5, 2)
    assert plain.obs_norm is None and torch.equal(plain.observed(seen), seen)


def test_weight_decay_shrinks_the_weights_apart_from_the_moments():
    """Decoupled decay: from the same start and batch, the step with decay is the step
    without it minus lr * decay * the weight (AdamW's rule)."""
    spec = TreeSpec.mhsac((16,), 3)
    batch = random_batch(3, 16, 5, 2, seed=1)
    steps = []
    for decay in (0.0, 10.0):
        torch.manual_seed(0)
        agent = MultiTaskSAC(tree_factory({"actor": spec, "critic": spec}), 3, 5, 2,
                             SACConfig(weight_decay=decay))
        before = agent.critic.q1.shared["1"].weight.detach().clone()
        torch.manual_seed(1)
        agent.update(batch)
        steps.append(agent.critic.q1.shared["1"].weight.detach())
    torch.testing.assert_close(steps[1], steps[0] - 3e-4 * 10.0 * before)
    with pytest.raises(ValueError, match="--weight-decay must not be negative"):
        TrainConfig(benchmark="MT10", weight_decay=-1.0)


def test_reset_networks_draws_fresh_weights_and_clears_their_moments():
    torch.manual_seed(0)
    spec = TreeSpec.mhsac((16,), 3)
    agent = MultiTaskSAC(tree_factory({"actor": spec, "critic": spec}, ), 3, 5, 2,
                         SACConfig(normalize_obs=True))
    batch = random_batch(3, 16, 5, 2, seed=1)
    for _ in range(3):
        agent.update(batch)
    trained = agent.critic.q1.shared["1"].weight.detach().clone()
    temperature, count = agent.log_temperature.detach().clone(), agent.obs_norm.count.clone()
    net = agent.critic.q1
    agent.reset_networks()
    assert agent.critic.q1 is net and not torch.equal(net.shared["1"].weight, trained)
    assert not agent.critic_optim.state and not agent.actor_optim.state
    torch.testing.assert_close(agent.critic_target.q1.shared["1"].weight, net.shared["1"].weight)
    assert torch.equal(agent.log_temperature, temperature) and agent.obs_norm.count == count
    agent.update(batch)  # it trains on


def test_the_loop_resets_every_n_updates_and_not_during_a_search(tmp_path, monkeypatch):
    resets = []
    monkeypatch.setattr(MultiTaskSAC, "reset_networks", lambda self: resets.append(1))
    main(["--benchmark", "gym:Pendulum-v1", "--total-steps", "130", "--eval-every", "0",
          "--hidden", "8", "--batch-per-task", "4", "--warmup-steps", "100",
          "--eval-episodes", "1", "--reset-every", "7", "--run-dir", str(tmp_path / "run")])
    assert len(resets) == 30 // 7  # 30 updates (one per env step after the warm-up)
    resets.clear()
    main(["--benchmark", "gym:Pendulum-v1", "--arch", "conal", "--search-steps", "150",
          "--total-steps", "130", "--eval-every", "0", "--hidden", "8", "--batch-per-task",
          "4", "--warmup-steps", "100", "--eval-episodes", "1", "--reset-every", "7",
          "--run-dir", str(tmp_path / "conal")])
    assert len(resets) == 30 // 7  # the tree's updates only: none in the search's 50
