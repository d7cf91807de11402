"""The success report's sections on trees that grew while training."""

from benchmarks.experiments import grown_report as report


def verdict(task: str, gain: float, opened: bool = False) -> dict:
    return {"env_steps": 1, "module": 3, "task": task, "price": 0.05, "z": 2.0,
            "opened": opened, "gain": gain, "se": abs(gain) / 4, "episodes": 8}


def test_the_report_says_what_grew_and_why():
    grown = {"actor": {"branches": [], "hidden": [8]},
             "critic": {"branches": [{"env_steps": 97500, "net": "critic", "task": "push-v3",
                                      "module": 3, "gain": 0.398, "se": 0.068, "episodes": 4,
                                      "price": 0.05}],
                        "probes": [verdict("push-v3", 0.398, True), verdict("push-v3", 0.1),
                                   verdict("reach-v3", -0.2)],
                        "probe_seconds": 30.0, "train_seconds": 1000.0}}
    summary = report.grown_summary(grown)
    assert summary["critic"]["probe_share"] == 0.03 and summary["critic"]["verdicts"] == 3
    lines = report.grown_lines([{"row": "conal", "runs": [{"seed": 1, "grown": summary}]}])
    assert "- `conal-s1` critic: opened 97,500 push-v3 module 3 (40% ± 7%); 3 verdicts, " \
           "probes 3.0% of the training time" in lines
    assert "- `conal-s1` actor: opened none" in lines
    assert report.grown_lines([{"row": "mtsac", "runs": [{"seed": 0}]}]) == []


def test_the_report_says_whether_the_branches_went_where_success_came():
    def run(score: dict, opened: list[str]) -> dict:
        return {"tasks": score, "grown": {"critic": {"branches": [
            {"env_steps": 1, "task": t, "module": 3} for t in opened], "verdicts": 1}}}

    rows = [{"row": "mtsac", "task_mean": {"push": 0.0, "door": 0.8}, "runs": [{"seed": 0}]},
            {"row": "conal", "runs": [run({"push": 0.0, "door": 1.0}, ["push"]),
                                      run({"push": 0.5, "door": 0.4}, ["door"]),
                                      run({"push": 0.0, "door": 0.6}, ["push", "door"])]}]
    lines = report.branch_success_lines(report.branch_success(rows), rows, "mtsac")
    assert "| conal | critic | push | 0.00 (2) | 0.50 (1) | 0.00 |" in lines
    assert "| conal | critic | door | 0.50 (2) | 1.00 (1) | 0.80 |" in lines
    assert report.branch_success([{"row": "mtsac", "runs": [{"seed": 0}]}]) == []


def test_the_report_says_what_the_probes_measured_per_task():
    def run(*verdicts) -> dict:
        grown = {"critic": {"branches": [], "probes": list(verdicts)}}
        return {"grown": report.grown_summary(grown)}

    rows = [{"row": "mtsac", "runs": [{"seed": 0}]},
            {"row": "conal", "runs": [run(verdict("push", 0.8, True), verdict("door", -0.2)),
                                      run(verdict("door", 0.4), verdict("door", -0.1)),
                                      {"grown": {"critic": {"branches": [], "verdicts": 2}}}]}]
    entries = report.probe_verdicts(rows, ["push", "door", "reach"])
    assert [(e["task"], e["runs"], e["verdicts"], e["opened"], e["negative"]) for e in entries] \
        == [("push", 2, 1, 1, 0), ("door", 2, 3, 0, 2)]  # the run without verdicts not counted
    assert entries[1]["median_gain"] == -0.1 and entries[1]["median_se"] == 0.05
    lines = report.probe_verdict_lines(entries)
    assert "| conal | critic | door | 2 | 3 | 0 | 2 | -10% | 5% |" in lines
    assert report.probe_verdicts([{"row": "mtsac", "runs": [{"seed": 0}]}], ["push"]) == []
