"""benchmarks/studies/conflict_persistence.py: flagged tasks recurring against chance, the twin
critics' agreement and the persistent events, from a run's live atlas; bad input is one line
and exit status 2."""

import json

import pytest

from benchmarks.studies import conflict_persistence
from conal_rl.training import conflict_atlas as atlas
from conal_rl.training.rundir import RunDir

NAMES = [f"task-{i}" for i in range(6)]


def _layer(conflicting, outside=()):
    return {"task_names": NAMES, "conflicting": list(conflicting),
            "main_cluster": [n for n in NAMES if n not in outside]}


def _run(path, flagged_q1, flagged_q2, actor_outside=()):
    """A run whose live atlas flags, per measurement, the given tasks on both critic layers
    of q1 and q2; the actor flags nothing."""
    run = RunDir(path)
    for n, (q1, q2) in enumerate(zip(flagged_q1, flagged_q2)):
        step = 10_000 * (n + 1)
        run.write_json(run.atlas_measurement(step), {"env_steps": step, "nets": {
            "critic": {"q1/shared.1": _layer(q1), "q2/shared.1": _layer(q2)},
            "actor": {"shared.1": _layer((), actor_outside)}}})
    return path


def test_a_lasting_conflict_recurs_above_chance_and_counts_as_persistent(tmp_path):
    lasting = _run(tmp_path / "lasting", [["task-0"]] * 4, [["task-0"]] * 4)
    rows = conflict_persistence.main([str(lasting), "--out", str(tmp_path / "r")])["rows"]
    critic, actor = rows
    # task-0 flagged at all 4 measurements on both layers: 3 recurrences per layer, of 3
    # chances each, where chance gives 1/6 per chance
    assert critic["flags"] == 8
    assert critic["recurrence"]["flagged"] == critic["recurrence"]["observed"] == 6
    assert critic["recurrence"]["expected"] == pytest.approx(1.0)
    assert critic["recurrence"]["z"] > 3
    assert critic["twins"]["observed"] == critic["twins"]["flagged"] == 4
    assert critic["persistent_in_both_twins"] == [["shared.1", s, "task-0"]
                                                  for s in (20_000, 30_000, 40_000)]
    assert actor["recurrence"]["flagged"] == 0 and actor["twins"] is None


def test_a_turning_over_conflict_recurs_never_and_twins_disagree(tmp_path):
    turning = _run(tmp_path / "turning", [[f"task-{i}"] for i in range(4)],
                   [[f"task-{i + 1}"] for i in range(4)], actor_outside=["task-5"])
    critic, actor = conflict_persistence.main([str(turning), "--out",
                                               str(tmp_path / "r")])["rows"]
    assert critic["recurrence"]["observed"] == 0 and critic["recurrence"]["z"] < 0
    assert critic["twins"]["observed"] == 0
    assert critic["persistent_in_both_twins"] == []
    assert actor["left_main_cluster"] == [["shared.1", "task-5"]]
    assert actor["left_twice_running"] == [["shared.1", s, "task-5"]
                                           for s in (20_000, 30_000, 40_000)]
    md = (tmp_path / "r.md").read_text()
    assert "| turning | critic | per task | 4 (10,000-40,000) | 8 | 0/6 (chance" in md


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    one = _run(tmp_path / "one", [["task-0"]], [["task-0"]])
    for args in ([str(one)], [str(tmp_path / "missing")]):
        with pytest.raises(SystemExit) as exit_:
            conflict_persistence.main([*args, "--out", str(tmp_path / "r")])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err


def test_the_atlas_commands_file_reads_as_the_live_measurements(tmp_path):
    """An atlas.json of conal_rl.atlas (its history over training) gives the rows the run's
    live measurements give."""
    live = _run(tmp_path / "live", [["task-0"], ["task-0"], ["task-1"]],
                [["task-0"], [], ["task-1"]], actor_outside=["task-5"])
    measured = atlas.live_measurements(RunDir(live))
    history = [{"env_steps": m["env_steps"], "nets": {net: {name: {
                    "conflicting": layer["conflicting"],
                    "outside_main_cluster": sorted(set(NAMES) - set(layer["main_cluster"]))}
                for name, layer in layers.items()} for net, layers in m["nets"].items()}}
               for m in measured]
    summary = tmp_path / "out" / "atlas.json"
    summary.parent.mkdir()
    summary.write_text(json.dumps({"nets": measured[-1]["nets"], "over_training": history}))
    from_live = conflict_persistence.main([str(live), "--out", str(tmp_path / "a")])["rows"]
    from_file = conflict_persistence.main([str(summary), "--out", str(tmp_path / "b")])["rows"]
    assert [m["env_steps"] for m in history] == [10_000, 20_000, 30_000]
    assert [r | {"run": None} for r in from_live] == [r | {"run": None} for r in from_file]
    assert from_file[0]["run"] == "out"

