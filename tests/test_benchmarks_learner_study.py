"""benchmarks/experiments/learner_study.py: its variants are training flags that exist, and
its report pairs each variant's runs with base's by seed."""

import pytest

from benchmarks.experiments import learner_study
from benchmarks.experiments.success_runs import parse_given
from conal_rl.training.config import TrainConfig


def _run(seed, curve, train_wall=60.0):
    """A run's record as the success report keeps it."""
    steps = [100 * (i + 1) for i in range(len(curve))]
    return {"seed": seed, "mean": curve[-1], "env_steps": steps[-1],
            "train_wall_s": train_wall, "curves": {"env_steps": [steps, list(curve)]}}


@pytest.mark.parametrize("name", list(learner_study.VARIANTS))
def test_every_variant_is_a_valid_training_config(name):
    flags = ["--benchmark", "MT10", "--preset", "laptop", "--arch", "mtsac",
             *learner_study.VARIANTS[name][0]]
    TrainConfig(**parse_given("conal_rl.train", flags))


def test_the_report_pairs_by_seed_and_reads_the_whole_curve(tmp_path):
    base = [_run(seed, [0.0, b]) for seed, b in enumerate([0.1, 0.2, 0.3])]
    ln = [_run(seed, [v, v], train_wall=90.0) for seed, v in enumerate([0.3, 0.5, 0.4])]
    ln.append(_run(3, [1.0, 1.0]))  # no base run of seed 3: not in the difference
    table = [{"row": "learner-base", "runs": base}, {"row": "learner-ln", "runs": ln},
             {"row": "learner-u2", "runs": [_run(0, [0.5])]}]  # short of the budget
    rows = {r["variant"]: r for r in learner_study.summarize(table, ["base", "ln", "u2"], 200)}
    base, ln = rows["base"], rows["ln"]
    assert base["final"]["mean"] == pytest.approx(0.2)
    assert base["curve"]["mean"] == pytest.approx(0.1)
    assert ln["seeds"] == [0, 1, 2, 3]
    diff = ln["final_vs_base"]
    assert diff["seeds"] == 3 and diff["mean"] == pytest.approx(0.2)  # (0.2 + 0.3 + 0.1) / 3
    assert diff["low"] < diff["mean"] < diff["high"]
    assert ln["curve_vs_base"]["mean"] == pytest.approx(0.3)  # 0.4 - 0.1 on average
    assert ln["ms_per_env_step"] == pytest.approx(1e3 * (3 * 90 + 60) / 4 / 200)
    assert ln["time_vs_base"] == pytest.approx((3 * 90 + 60) / 4 / 60)
    assert rows["u2"]["seeds"] == [] and rows["u2"]["final_vs_base"] is None
    text = learner_study.markdown({"machine": "m", "date": "d", "commands": ["c"],
                                   "total_steps": 200, "eval_every": 100, "eval_episodes": 10,
                                   "variants": list(rows.values())})
    assert "| ln | `--layer-norm --updates-per-step 1` | 4 | 0.55 ± 0.16 | +0.20 [" in text
    learner_study.plot(table, ["base", "ln", "u2"], 200, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_unknown_variants_are_refused(capsys):
    with pytest.raises(SystemExit) as e:
        learner_study.main(["--variants", "ln,nope", "--report-only"])
    assert e.value.code == 2 and "unknown variants ['nope']" in capsys.readouterr().err
