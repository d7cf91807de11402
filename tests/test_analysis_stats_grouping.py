import math

import numpy as np
import pytest

from conal_rl.analysis.grouping import AggregateError, arch_label, group_runs
from conal_rl.analysis.stats import iqm, iqm_interval, mean_se, summarize
from conal_rl.training.config import TrainConfig


def test_mean_and_standard_error():
    mean, se = mean_se(np.array([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5
    assert se == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)  # 0.6455
    mean, se = mean_se(np.array([[1.0, 5.0]]))  # one run: no standard error
    assert list(mean) == [1.0, 5.0] and np.isnan(se).all()


def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm(np.arange(1, 9)) == 4.5  # cuts 1, 2 and 7, 8
    assert iqm(np.array([[0.0, 100.0], [1.0, 2.0]])) == 1.5  # over all run-task scores


def test_summary_of_known_scores():
    s = summarize(np.array([[0.2, 0.4], [0.6, 0.8]]), ["a", "b"])
    assert s.task_names == ["a", "b"] and s.num_runs == 2
    np.testing.assert_allclose(s.task_mean, [0.4, 0.6])
    np.testing.assert_allclose(s.task_se, [0.2, 0.2])  # std [0.2, 0.6] = 0.283, / sqrt(2)
    assert s.mean == pytest.approx(0.5) and s.se == pytest.approx(0.2)  # runs' means 0.3, 0.7
    assert s.iqm == pytest.approx(0.5)  # middle two of 0.2, 0.4, 0.6, 0.8
    low, high = s.iqm_ci
    assert 0.2 <= low <= s.iqm <= high <= 0.8


def test_iqm_interval_matches_rliable():
    # Reference: rliable 1.2.0, get_interval_estimates(aggregate_iqm, reps=50000) on these
    # scores gives IQM 0.46 with 95% interval [0.39, 0.52] (stratified percentile bootstrap).
    scores = np.array([[0.1, 0.5, 0.9, 0.3], [0.2, 0.6, 1.0, 0.4], [0.0, 0.7, 0.8, 0.3],
                       [0.3, 0.4, 0.9, 0.5], [0.1, 0.6, 1.0, 0.2]])
    assert iqm(scores) == pytest.approx(0.46)
    low, high = iqm_interval(scores, resamples=50_000)
    assert low == pytest.approx(0.39, abs=0.011) and high == pytest.approx(0.52, abs=0.011)


def test_iqm_interval_degenerate_cases():
    assert iqm_interval(np.full((3, 4), 0.7)) == pytest.approx((0.7, 0.7))
    assert all(math.isnan(x) for x in iqm_interval(np.ones((1, 4))))  # one run


def test_summary_checks_the_task_count():
    with pytest.raises(ValueError, match="expected scores"):
        summarize(np.zeros((2, 3)), ["a", "b"])


def _config(**kw) -> TrainConfig:
    return TrainConfig(benchmark="MT10", preset="quick", **kw)


def test_seeds_of_one_configuration_form_one_group():
    configs = [_config(seed=0, device="cpu"), _config(seed=1, device="cuda")]
    assert group_runs(configs, compare=False) == {"MT-SAC": [0, 1]}


def test_compare_groups_by_architecture_and_ablation():
    configs = [_config(arch="mtsac"), _config(arch="conal", seed=1), _config(arch="mtsac", seed=2),
               _config(arch="conal", no_conflict_noticing=True)]
    assert group_runs(configs, compare=True) == {
        "MT-SAC": [0, 2], "CoNAL": [1], "CoNAL (w/o conflict-noticing)": [3]}
    assert arch_label(_config(arch="tree", architecture="archs/mine.json")) == "tree (mine)"


@pytest.mark.parametrize("configs, compare, message", [
    ([_config(), _config(arch="mhsac")], False, "differ in arch .* use --compare"),
    ([_config(), _config(hidden=(64, 64))], False, "differ in hidden"),
    ([_config(), TrainConfig(benchmark="MT10", preset="laptop")], False,
     "differ in preset \\(quick vs laptop\\).* use --compare"),
    ([_config(), TrainConfig(benchmark="MT1:reach-v3", preset="quick")], True,
     "different benchmarks \\(MT10, MT1:reach-v3\\)"),
    ([_config(), TrainConfig(benchmark="MT1:reach-v3", preset="laptop")], True,
     "different benchmarks \\(MT10, MT1:reach-v3\\)"),
])
def test_runs_that_do_not_aggregate(configs, compare, message):
    with pytest.raises(AggregateError, match=message):
        group_runs(configs, compare)


def test_compare_puts_two_settings_of_one_architecture_side_by_side():
    # Until configurations were compared whole, this pair raised "differ in hidden".
    configs = [_config(), _config(seed=1, hidden=(64, 64))]
    assert group_runs(configs, compare=True) == {"MT-SAC (hidden=128,128,128)": [0],
                                                 "MT-SAC (hidden=64,64)": [1]}


def test_compare_names_two_presets_by_the_preset_alone():
    laptop = [TrainConfig(benchmark="MT10", preset="laptop", seed=s) for s in (0, 1)]
    configs = [laptop[0], _config(), laptop[1], _config(seed=1, eval_episodes=3),
               _config(arch="mhsac")]
    # The presets differ in steps, replay, minutes, ... too; those follow the preset.
    assert group_runs(configs, compare=True) == {
        "MT-SAC (preset=laptop)": [0, 2], "MT-SAC (preset=quick)": [1, 3], "MH-SAC": [4]}


def test_compare_names_a_value_given_over_the_preset():
    configs = [TrainConfig(benchmark="MT10", preset="laptop"),
               TrainConfig(benchmark="MT10", preset="laptop", hidden=(256, 256, 256)),
               _config(hidden=(256, 256, 256)), _config(hidden=(128, 128, 128), lr=1e-3)]
    assert list(group_runs(configs, compare=True)) == [
        "MT-SAC (preset=laptop, hidden=128,128,128, lr=0.0003)",
        "MT-SAC (preset=laptop, hidden=256,256,256, lr=0.0003)",
        "MT-SAC (preset=quick, hidden=256,256,256, lr=0.0003)",
        "MT-SAC (preset=quick, hidden=128,128,128, lr=0.001)"]
    # A search warm-up follows the search's length; a search the preset's length could not
    # hold the given warm-up, so the given length is no preset value either.
    long = _config(arch="conal", search_steps=100_000, search_warmup_steps=50_000)
    assert list(group_runs([_config(arch="conal"), long], compare=True)) == [
        "CoNAL (search_steps=30000, search_warmup_steps=7500)",
        "CoNAL (search_steps=100000, search_warmup_steps=50000)"]

