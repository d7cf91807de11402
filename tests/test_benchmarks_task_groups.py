"""benchmarks/studies/task_groups.py: sibling tasks' shared modules against all pairs, for grouped
and branch-point trees; bad input is one line and exit status 2."""

import json

import pytest

from benchmarks.studies import task_groups

NAMES = ["drawer-open-v3", "drawer-close-v3", "window-open-v3", "window-close-v3", "reach-v3"]


def _write(path, actor, critic):
    path.write_text(json.dumps({"actor": actor, "critic": critic}))
    return path


def test_siblings_grouped_together_score_above_all_pairs(tmp_path):
    hidden = [8, 8]
    # drawers together at both depths, windows at the first only; reach alone below the root
    grouped = {"hidden": hidden, "task_names": NAMES,
               "groups": [[0, 0, 1, 1, 1], [0, 0, 1, 2, 3]]}
    # branch points: the drawers private from the input, everyone else shared throughout
    tree = {"hidden": hidden, "task_names": NAMES, "branch_points": [0, 0, 2, 2, 2]}
    out = tmp_path / "groups"
    rows = task_groups.main([str(_write(tmp_path / "a.json", grouped, tree)),
                             "--out", str(out)])["rows"]
    actor, critic = rows
    assert actor["siblings"] == {"drawer-open/drawer-close": 2, "window-open/window-close": 1}
    assert actor["sibling_mean"] == 1.5
    # pairs: drawers 2, windows 1, window-open/reach 1, window-close/reach 1, the other 6 none
    assert actor["all_pairs"] == pytest.approx(5 / 10)
    assert critic["siblings"] == {"drawer-open/drawer-close": 0, "window-open/window-close": 2}
    assert critic["all_pairs"] == pytest.approx(3 * 2 / 10)
    assert "| a | actor | 2 | 2 | 1.50 | 0.50 | +1.00 |" in (out.with_suffix(".md")).read_text()


@pytest.mark.parametrize("content", [None, "{}", "not json"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, content):
    path = tmp_path / "architecture.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as stop:
        task_groups.main([str(path), "--out", str(tmp_path / "x")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "architecture" in err
