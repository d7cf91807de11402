"""benchmarks/experiments/learner_study.py: its variants are training flags that exist, and
its report pairs each variant's runs with base's by seed."""

import json

import pytest

from benchmarks.experiments import learner_study
from benchmarks.experiments.success_runs import parse_given
from conal_rl.training.config import TrainConfig


def _run(root, name, seed, curve, train_wall=60.0, updates=100):
    d = root / f"learner-{name}-s{seed}"
    d.mkdir(parents=True)
    rows = ["env_steps,train_minutes,task,success,return,episodes"]
    for i, value in enumerate(curve, 1):
        rows += [f"{i * 100},{i},a,{value},0,10", f"{i * 100},{i},b,{value},0,10"]
    (d / "evaluations.csv").write_text("\n".join(rows) + "\n")
    (d / "timing.json").write_text(json.dumps({
        "train_wall": train_wall, "env_steps": 100 * len(curve), "updates": updates,
        "update": updates * 0.01, "stopped_by": "steps"}))


@pytest.mark.parametrize("name", list(learner_study.VARIANTS))
def test_every_variant_is_a_valid_training_config(name):
    flags = ["--benchmark", "MT10", "--preset", "laptop", "--arch", "mtsac",
             *learner_study.VARIANTS[name][0]]
    TrainConfig(**parse_given("conal_rl.train", flags))


def test_the_report_pairs_by_seed_and_reads_the_whole_curve(tmp_path):
    for seed, (b, v) in enumerate([(0.1, 0.3), (0.2, 0.5), (0.3, 0.4)]):
        _run(tmp_path, "base", seed, [0.0, b])
        _run(tmp_path, "ln", seed, [v, v], train_wall=90.0)
    _run(tmp_path, "ln", 3, [1.0, 1.0])  # no base run of seed 3: not in the difference
    _run(tmp_path, "u2", 0, [0.5])  # short of the budget: not counted
    rows = {r["variant"]: r for r in learner_study.summarize(tmp_path, ["base", "ln", "u2"], 200)}
    base, ln = rows["base"], rows["ln"]
    assert base["final"]["mean"] == pytest.approx(0.2)
    assert base["curve"]["mean"] == pytest.approx(0.1)
    assert ln["seeds"] == [0, 1, 2, 3]
    diff = ln["final_vs_base"]
    assert diff["seeds"] == 3 and diff["mean"] == pytest.approx(0.2)  # (0.2 + 0.3 + 0.1) / 3
    assert diff["low"] < diff["mean"] < diff["high"]
    assert ln["curve_vs_base"]["mean"] == pytest.approx(0.3)  # 0.4 - 0.1 on average
    assert ln["ms_per_env_step"] == pytest.approx(1e3 * (3 * 90 + 60) / 4 / 200)
    assert rows["u2"]["seeds"] == [] and rows["u2"]["final_vs_base"] is None
    text = learner_study.markdown({"machine": "m", "date": "d", "commands": ["c"],
                                   "total_steps": 200, "eval_every": 100, "eval_episodes": 10,
                                   "variants": list(rows.values())})
    assert "| ln | `--layer-norm` | 4 | 0.55 ± 0.16 | +0.20 [" in text


def test_unknown_variants_are_refused(capsys):
    with pytest.raises(SystemExit) as e:
        learner_study.main(["--variants", "ln,nope", "--report-only"])
    assert e.value.code == 2 and "unknown variants ['nope']" in capsys.readouterr().err
