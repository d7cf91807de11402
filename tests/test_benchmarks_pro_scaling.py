"""benchmarks/speed/pro_scaling.py: CoNAL's supernet against CoNAL-Pro's stages, on tiny nets."""

import json

from benchmarks.speed import pro_scaling


def test_rows_for_every_task_count_and_stage(tmp_path):
    out = tmp_path / "scaling"
    payload = pro_scaling.main(["--tasks", "2,3", "--hidden", "4,4", "--batch", "2",
                                "--repeats", "1", "--out", str(out)])
    assert [(r["tasks"], r["search"], r["stage"]) for r in payload["rows"]] == [
        (2, "CoNAL", None), (2, "CoNAL-Pro", 1), (2, "CoNAL-Pro", 2),
        (3, "CoNAL", None), (3, "CoNAL-Pro", 1), (3, "CoNAL-Pro", 2)]
    # two candidates per task at one depth hold fewer saved activations than P + 1 paths
    conal, stage1 = payload["rows"][0], payload["rows"][1]
    assert 0 < stage1["saved_mb"] < conal["saved_mb"]
    assert json.loads(out.with_suffix(".json").read_text())["rows"] == payload["rows"]
    assert "| 3 | CoNAL-Pro | 2 |" in out.with_suffix(".md").read_text()
