import numpy as np
import pytest
from metaworld.policies import ENV_POLICY_MAP

from envs import UnknownBenchmark, check_benchmark_name, evaluate, make_benchmark


def test_mt10_layout(mt10_eval):
    assert mt10_eval.num_tasks == 10 and mt10_eval.envs.num_envs == 10
    assert mt10_eval.task_names[0] == "reach-v3" and len(set(mt10_eval.task_names)) == 10
    assert mt10_eval.obs_dim == 39 and mt10_eval.action_space.shape == (4,)


@pytest.mark.parametrize("name", ["MT11", "MT1:no-such-task-v3", "gym:NoSuchEnv-v9", "MT1:", ""])
def test_unknown_benchmark_lists_valid_names(name):
    with pytest.raises(UnknownBenchmark, match="valid|unknown"):
        check_benchmark_name(name)
    with pytest.raises(UnknownBenchmark):
        make_benchmark(name, seed=0)


def test_expert_policies_succeed_and_random_fails(mt10_eval):
    experts = [ENV_POLICY_MAP[t]() for t in mt10_eval.task_names]

    def expert(obs):
        return np.stack([p.get_action(o) for p, o in zip(experts, obs)])

    result = evaluate(expert, mt10_eval, num_episodes=3)
    assert set(result.success) == set(mt10_eval.task_names)
    assert result.mean_success >= 0.8, result.success

    rng = np.random.default_rng(0)
    random_result = evaluate(lambda obs: rng.uniform(-1, 1, (len(obs), 4)), mt10_eval, 2)
    assert random_result.mean_success <= 0.2, random_result.success


def test_gym_benchmark_reports_returns():
    bench = make_benchmark("gym:Pendulum-v1", seed=0)
    result = evaluate(lambda obs: np.zeros((len(obs), 1)), bench, num_episodes=2)
    assert result.task_names == ["Pendulum-v1"]
    assert np.isnan(result.mean_success) and result.mean_return < 0


# ---- MT50 -------------------------------------------------------------------------------------
def test_mt50_names_fifty_tasks_and_an_mt50_agent_updates():
    """MT50 from its name alone (building its envs takes ~1 min on 2 cores: the slow test
    below): 50 distinct tasks, MT10's among them, budgets scaled by 50, and the agent's
    update on a batch of 50 tasks with Meta-World's observation and action sizes."""
    import torch
    from metaworld.env_dict import MT10_V3, MT50_V3

    from agents import MultiTaskSAC, random_batch
    from conal_rl.training.config import TrainConfig
    from conal_rl.training.nets import fixed_trees, tree_factory
    from envs import num_tasks

    check_benchmark_name("MT50")
    names = list(MT50_V3)
    assert num_tasks("MT50") == len(names) == len(set(names)) == 50
    assert set(MT10_V3) < set(names)
    config = TrainConfig(benchmark="MT50", preset="quick")
    assert (config.total_steps, config.batch_per_task, config.replay_size) == (
        50 * 20_000, 32, 50 * 20_000)  # the quick preset's per-task budget, times 50
    for arch in ("mtsac", "mhsac"):
        torch.manual_seed(0)
        trees = fixed_trees(TrainConfig(benchmark="MT50", arch=arch, hidden=(8,)), names)
        agent = MultiTaskSAC(tree_factory(trees), 50, 39, 4)
        before = agent.actor.net.head.weight.detach().clone()
        metrics = agent.update(random_batch(50, 2, 39, 4))
        assert all(v.shape == (50,) and torch.isfinite(v).all() for v in metrics.values())
        assert not torch.equal(agent.actor.net.head.weight, before)


@pytest.mark.slow  # MT50's 50 envs: about a minute to build on 2 cores
def test_mt50_builds_fifty_envs_and_trains(tmp_path):
    from metaworld.env_dict import MT50_V3

    from conal_rl.training.config import TrainConfig
    from conal_rl.training.nets import fixed_trees, tree_factory
    from conal_rl.training.trainer import Trainer

    bench = make_benchmark("MT50", seed=0)
    assert bench.task_names == list(MT50_V3) and bench.envs.num_envs == 50
    assert bench.obs_dim == 39 and bench.action_space.shape == (4,)
    config = TrainConfig(benchmark="MT50", preset="quick", total_steps=200, warmup_steps=100,
                         hidden=(8,), batch_per_task=2, eval_every=0, device="cpu")
    trainer = Trainer(config, tmp_path, bench,
                      tree_factory(fixed_trees(config, bench.task_names)))
    trainer.run(final_eval=False)
    assert (trainer.env_steps, trainer.updates) == (200, 2)  # 4 vector steps, 2 of warm-up
