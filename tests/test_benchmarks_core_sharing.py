"""benchmarks/speed/core_sharing.py on short rows: a row per neighbour, each as a share of the
idle rate, the files written; bad CPUs refused in one line."""

import json
import os

import pytest

from benchmarks.speed import core_sharing

CPUS = sorted(os.sched_getaffinity(0))


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")
def test_every_neighbour_gets_a_row_against_the_idle_rate(tmp_path):
    out = tmp_path / "cores"
    payload = core_sharing.main(["--cpu", str(CPUS[1]), "--other", str(CPUS[0]),
                                 "--seconds", "0.05", "--repeats", "2", "--out", str(out)])
    assert [r["other_cpu"] for r in payload["rows"]] == list(core_sharing.NEIGHBOURS)
    assert all(r["gflops"] > 0 and len(r["rounds"]) == 2 for r in payload["rows"])
    assert payload["rows"][0]["of_idle"] == 1.0
    assert json.loads(out.with_suffix(".json").read_text()) == payload
    md = out.with_suffix(".md").read_text()
    assert f"| same product | {payload['rows'][1]['gflops']:.1f} |" in md
    assert sorted(os.sched_getaffinity(0)) == CPUS  # pinned while it measured only


@pytest.mark.parametrize("args", [["--cpu", "0", "--other", "0"], ["--cpu", "999"],
                                  ["--seconds", "0"], ["--repeats", "0"]])
def test_bad_input_is_one_line_and_exit_2(args, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        core_sharing.main([*args, "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
