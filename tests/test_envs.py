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
