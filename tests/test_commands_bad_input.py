"""Bad inputs to every command line give one line on stderr and exit status 2, fast: a
subset of benchmarks/studies/bad_inputs.py's cases (the whole table: python -m
benchmarks.studies.bad_inputs,
benchmarks/results/bad-inputs.md), run as subprocesses against its scratch files."""

import pytest

from benchmarks.studies.bad_inputs import CASES, applicable, make_workspace, run_case

COMMANDS = {"conal_rl.train", "conal_rl.evaluate", "conal_rl.render", "conal_rl.plot",
            "conal_rl.stl", "benchmarks.experiments.success", "benchmarks.speed.training_loop",
            "benchmarks.experiments.laptop_sweep", "benchmarks.speed.method_speed",
            "benchmarks.speed.twin_critics", "benchmarks.speed.row_costs"}

# (case name, what its one line must say): those that failed late or with a traceback
# before, and one of every kind of file.
SUBSET = {
    "conal_rl.train: --architecture missing.json": "no such architecture file",
    "conal_rl.train: --architecture: no critic tree": "no architecture for critic",
    "conal_rl.train: --resume: config.json holds {}": "config keys missing",
    "conal_rl.train: --resume: checkpoint made to run code on load": "refused",
    "conal_rl.train: --minutes nan": "--minutes must be a finite number",
    "conal_rl.evaluate: checkpoint truncated": "not a readable checkpoint",
    "conal_rl.plot: evaluations.csv truncated mid-row": "not an evaluation row",
    "conal_rl.stl: --resume: stl.json holds {}": "not an STL run's stl.json",
    "benchmarks.speed.twin_critics: --repeats 0": "--repeats must be at least 1",
    "conal_rl.train: --critic-params too small to reach": "no width of 3 modules",
    "conal_rl.train: --max-grad-norm -1": "--max-grad-norm must not be negative",
    "conal_rl.train: --shared-head with --inherit-weights": "does not take --shared-head",
}


def test_the_table_tries_every_command_with_many_inputs():
    assert len(CASES) >= 30 and {c.command for c in CASES} == COMMANDS
    assert len({c.name for c in CASES}) == len(CASES)  # every case named once
    assert set(SUBSET) <= {c.name for c in applicable(CASES)}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("bad-inputs"))


@pytest.mark.parametrize("name", list(SUBSET))
def test_a_bad_input_is_one_clean_line_and_exit_status_2(workspace, name):
    [case] = [c for c in CASES if c.name == name]
    record = run_case(case, workspace, timeout=120)
    assert record["exit_status"] == 2, record
    assert record["stderr_lines"] == 1 and not record["traceback"], record
    assert SUBSET[name] in record["first_stderr_line"], record
    assert not record["code_ran_on_load"]
    assert record["seconds"] < 30  # fails before any env is built: imports, then the check


def test_task_names_without_envs_are_the_envs_task_names(mt10_eval):
    """The checks before any env is built read the tasks from the benchmark's name alone."""
    from envs import task_names

    assert task_names("MT10") == mt10_eval.task_names
    assert len(task_names("MT50")) == 50 and task_names("MT1:reach-v3") == ["reach-v3"]
    assert task_names("gym:Pendulum-v1") == ["Pendulum-v1"]
