"""The plotting CLI on fabricated runs: a config.json and the evaluations.csv that training
writes (plots need no checkpoint)."""

import numpy as np
import pytest
from PIL import Image

from conal_rl import plot
from conal_rl.analysis.curves import read_curves
from conal_rl.training.config import TrainConfig
from conal_rl.training.runs import record_evaluation
from envs import EvalResult

TASKS = ["reach-v3", "push-v3", "pick-place-v3"]


def fake_run(path, arch, seed, success, benchmark="MT10", steps=(1000, 2000, 3000),
             preset="quick"):
    """A run whose per-task success at ``steps[i]`` is ``success[i][task]``, evaluated
    a minute of training apart."""
    path.mkdir(parents=True)
    TrainConfig(benchmark=benchmark, arch=arch, seed=seed, preset=preset).save(
        path / "config.json")
    for i, (step, values) in enumerate(zip(steps, success)):
        result = EvalResult(TASKS, dict(zip(TASKS, map(float, values))),
                            dict.fromkeys(TASKS, 100.0 * i), 5)
        record_evaluation(path, result, step, train_minutes=i + 1.0)
    return path


def test_curves_are_read_back_and_a_step_logged_twice_keeps_its_last_value(tmp_path):
    run = fake_run(tmp_path / "r", "mtsac", 0, [[0, 0, 0], [1, 0, 0], [1, 1, 1]],
                   steps=(1000, 2000, 2000))  # a resumed run logs step 2000 again
    curves = read_curves(run, "success")
    assert set(curves) == {plot.MEAN, *TASKS}
    steps, values = curves["push-v3"]
    assert list(steps) == [1000, 2000] and list(values) == [0, 1]


def test_band_is_mean_and_se_over_seeds_at_the_steps_all_runs_have():
    band = plot.band("MT-SAC", [(np.array([1, 2, 3]), np.array([0.0, 0.2, 0.4])),
                                (np.array([1, 2]), np.array([0.2, 0.6]))])
    assert list(band.steps) == [1, 2] and band.runs == 2
    np.testing.assert_allclose(band.mean, [0.1, 0.4])
    np.testing.assert_allclose(band.se, [0.1, 0.2])  # |a - b| / 2 for two values


def test_plot_writes_one_figure_per_comparison(tmp_path, capsys, monkeypatch):
    values = {(arch, seed): np.random.default_rng(10 * seed + len(arch)).uniform(size=(3, 3))
              for arch in ("mtsac", "conal") for seed in (0, 1)}
    runs = [fake_run(tmp_path / f"{arch}{seed}", arch, seed, v.tolist())
            for (arch, seed), v in values.items()]
    drawn = []
    original = plot.draw
    monkeypatch.setattr(plot, "draw", lambda ax, bands, title, metric: drawn.append(
        (title, {b.label: b for b in bands})) or original(ax, bands, title, metric))
    paths = plot.main([*map(str, runs), "--out", str(tmp_path / "plots")])
    # What is drawn: per architecture, mean ± s.e. over its two seeds at every step, of the
    # mean over tasks (first figure), then of every task (one panel each).
    assert [title for title, _ in drawn][1:] == TASKS
    for index, curve in enumerate([slice(None), *range(len(TASKS))]):
        _, bands = drawn[index]
        assert set(bands) == {"MT-SAC", "CoNAL"}
        for label, arch in (("MT-SAC", "mtsac"), ("CoNAL", "conal")):
            per_seed = [values[arch, seed][:, curve] for seed in (0, 1)]
            if index == 0:
                per_seed = [v.mean(axis=1) for v in per_seed]
            band = bands[label]
            assert band.runs == 2 and list(band.steps) == [1000, 2000, 3000]
            np.testing.assert_allclose(band.mean, (per_seed[0] + per_seed[1]) / 2)
            np.testing.assert_allclose(band.se, abs(per_seed[0] - per_seed[1]) / 2)
    assert [p.name for p in paths] == ["MT10-success.png", "MT10-success-per-task.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 300
    assert capsys.readouterr().out.split() == ["wrote", str(paths[0]), "wrote", str(paths[1])]


@pytest.mark.parametrize("case, message", [
    ("no evaluation", "has no evaluation logged yet"),
    ("mixed benchmarks", "runs of different benchmarks"),
    ("not a run", "is not a conal-rl run"),
])
def test_errors_are_one_line(tmp_path, capsys, case, message):
    good = fake_run(tmp_path / "good", "mtsac", 0, [[0, 0, 0]])
    other = {
        "no evaluation": lambda: fake_run(tmp_path / "other", "mtsac", 1, []),
        "mixed benchmarks": lambda: fake_run(tmp_path / "other", "mtsac", 1, [[0, 0, 0]],
                                             benchmark="MT50"),
        "not a run": lambda: tmp_path,
    }[case]()
    with pytest.raises(SystemExit) as exit_info:
        plot.main([str(good), str(other), "--out", str(tmp_path / "plots")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], err


def test_two_presets_of_one_architecture_are_two_lines(tmp_path, monkeypatch):
    runs = [fake_run(tmp_path / f"{preset}{seed}", "mtsac", seed, [[0, 0, 0], [seed, 1, 0]],
                     steps=(1000, 2000), preset=preset)
            for preset in ("laptop", "quick") for seed in (0, 1)]
    drawn = []

    def remember(ax, bands, title, metric):
        drawn.append({b.label: (b.runs, list(b.mean)) for b in bands})
        original(ax, bands, title, metric)

    original = plot.draw
    monkeypatch.setattr(plot, "draw", remember)
    paths = plot.plot_runs(runs, tmp_path / "plots", progress=False)
    assert len(paths) == 2 and len(drawn) == 1 + len(TASKS)
    assert drawn[0] == {"MT-SAC (preset=laptop)": (2, [0.0, 0.5]),  # mean over tasks
                        "MT-SAC (preset=quick)": (2, [0.0, 0.5])}
    assert drawn[1]["MT-SAC (preset=laptop)"] == (2, [0.0, 0.5])  # reach: seeds 0 and 1
