"""benchmarks/speed/training_loop.py on tiny one-task runs: every kind of row, its counts against
the warm-up rule and its timers against the loop's own calls, rows skipped or rerun, each row's
machine; benchmarks/speed/method_speed.py and benchmarks/speed/twin_critics.py on small sizes."""

import json
import time

import gymnasium as gym
import pytest
import torch

from agents import MultiTaskSAC
from benchmarks.speed import method_speed, twin_critics
from benchmarks.speed import training_loop as speed
from conal_rl.training.conal_search import ConalSearch

STEPS = 200
TINY = ["--benchmark", "gym:Pendulum-v1", "--steps", str(STEPS), "--hidden", "8,8"]
# speed.py's warm-up: 10 vector steps of random actions (T = 1 here). Updates start once the
# replay holds them, so a row of 200 env steps makes 190 updates, and the untimed run before
# it (warm-up + 20 vector steps) makes 20.
WARMUP, UNTIMED_UPDATES = 10, 20
UPDATES = STEPS - WARMUP


@pytest.fixture
def out(tmp_path):
    return tmp_path / "speed.json"


def _timed(monkeypatch, cls, name, pause=0.0):
    """Wrap ``cls.name`` to record the duration of every call (made ``pause`` s longer)."""
    durations = []
    original = getattr(cls, name)

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            time.sleep(pause)
            return original(self, *args, **kwargs)
        finally:
            durations.append(time.perf_counter() - start)

    monkeypatch.setattr(cls, name, timed)
    return durations


class _Clock:
    """A stand-in for ``time.perf_counter`` that moves only inside the calls the test ticks,
    so the row's timers can be checked exactly, whatever else runs on the machine."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def tick(self, monkeypatch, cls, name, seconds: float) -> list:
        """Make every call of ``cls.name`` take ``seconds`` on this clock; returns the calls."""
        calls = []
        original = getattr(cls, name)

        def ticking(self_, *args, **kwargs):
            calls.append(seconds)
            self.now += seconds
            return original(self_, *args, **kwargs)

        monkeypatch.setattr(cls, name, ticking)
        return calls


def test_a_trainer_row_counts_its_updates_and_times_the_loop(out, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(time, "perf_counter", clock)
    updates = clock.tick(monkeypatch, MultiTaskSAC, "update", 0.001)
    steps = clock.tick(monkeypatch, gym.vector.SyncVectorEnv, "step", 0.002)
    payload = speed.main([*TINY, "--archs", "mtsac", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == payload["rows"]
    [row] = payload["rows"]
    assert row["key"] == "gym:Pendulum-v1/quick/mtsac" and row["phase"] == "train"
    assert row["env_steps"] == STEPS and row["updates"] == UPDATES
    assert len(updates) == UNTIMED_UPDATES + UPDATES  # the agent's own count agrees
    assert len(steps) == WARMUP + UNTIMED_UPDATES + STEPS
    # The row's timers hold what the timed run's calls took, not those of the untimed run
    # before it, and each timer only its own calls.
    assert row["update_s"] == pytest.approx(UPDATES * 0.001)
    assert row["env_s"] == pytest.approx(STEPS * 0.002)
    assert row["wall_s"] == pytest.approx(row["env_s"] + row["update_s"])
    assert row["overhead"] == pytest.approx(1.0)
    assert row["env_steps_per_s"] * row["wall_s"] == pytest.approx(STEPS)
    # The row records the machine and the command that measured it.
    assert row["command"] == payload["commands"][-1] == (
        "python -m benchmarks.speed.training_loop "
        + " ".join([*TINY, "--archs", "mtsac", "--out", str(out)]))
    assert row["machine"]["torch_threads"] == row["torch_threads"] == 1
    assert {k: payload["machine"][k] for k in row["machine"]} == row["machine"]
    md = out.with_suffix(".md").read_text()
    [line] = [line for line in md.splitlines() if line.startswith("| gym:Pendulum-v1 |")]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:6] == ["gym:Pendulum-v1", "quick", "mtsac", "train", "sync", "1"]
    assert cells[6] == f"{row['env_steps_per_s']:.0f}" and cells[11] == f"{row['overhead']:.3f}"


def test_rows_already_written_are_skipped_and_force_reruns_them(out, monkeypatch):
    calls = []
    env_row = speed.env_row
    monkeypatch.setattr(speed, "env_row", lambda *a: calls.append(a) or env_row(*a))
    speed.main([*TINY, "--archs", "env", "--out", str(out)])
    first = json.loads(out.read_text())["rows"][0]
    assert len(calls) == 1 and first["updates"] == 0 and first["env_steps"] == STEPS
    speed.main([*TINY, "--archs", "env", "--out", str(out)])
    payload = json.loads(out.read_text())
    assert len(calls) == 1 and payload["rows"] == [first]  # not measured again
    assert len(payload["commands"]) == 1  # a call that measured nothing leaves the file
    speed.main([*TINY, "--archs", "env", "--force", "--out", str(out)])
    payload = json.loads(out.read_text())
    assert len(calls) == 2  # measured again ...
    [again] = payload["rows"]  # ... and the row replaced, not added
    assert again["wall_s"] != first["wall_s"] and again["command"].endswith("--force --out "
                                                                             + str(out))


def test_rows_keep_their_own_machine_and_threads(out, monkeypatch):
    """A table built by several calls: each row says where it ran; the top-level machine is
    the last call's. (speed-laptop-threads.json was written before rows kept theirs.)"""
    speed.main([*TINY, "--archs", "env", "--out", str(out)])
    here = speed.machine
    monkeypatch.setattr(speed, "machine", lambda device: here(device) | {"platform": "Other"})
    payload = speed.main([*TINY, "--archs", "env", "--preset", "laptop", "--torch-threads", "2",
                          "--out", str(out)])
    first, second = payload["rows"]
    assert first["machine"]["platform"] != "Other" and first["machine"]["torch_threads"] == 1
    assert second["machine"]["platform"] == "Other" and second["machine"]["torch_threads"] == 2
    assert payload["machine"]["platform"] == "Other"
    assert payload["machine"]["torch_threads"] == 2
    md = out.with_suffix(".md").read_text()
    assert f"machine 1: {speed.machine_text(first['machine'])}" in md
    assert f"machine 2: {speed.machine_text(second['machine'])}" in md
    lines = [line for line in md.splitlines() if line.startswith("| gym:Pendulum-v1 |")]
    threads_and_machine = [(c[5], c[-1]) for c in
                           ([x.strip() for x in line.strip("|").split("|")] for line in lines)]
    assert threads_and_machine == [("1", "1"), ("2", "2")]


def test_conal_and_sb3_rows(out, monkeypatch):
    arch_steps = _timed(monkeypatch, ConalSearch, "arch_step")
    payload = speed.main([*TINY, "--archs", "conal-search,conal-tree,sb3", "--out", str(out)])
    rows = {r["arch"]: r for r in payload["rows"]}
    assert {a: (r["phase"], r["key"]) for a, r in rows.items()} == {
        "conal-search": ("search", "gym:Pendulum-v1/quick/conal-search"),
        "conal-tree": ("pruned", "gym:Pendulum-v1/quick/conal-tree"),
        "sb3": ("one task", "gym:Pendulum-v1/quick/sb3")}
    for arch in ("conal-search", "conal-tree"):
        assert rows[arch]["env_steps"] == STEPS and rows[arch]["updates"] == UPDATES, arch
    # The search row searches from its first update: an architecture step before every one
    # (of the untimed run too).
    assert len(arch_steps) == UNTIMED_UPDATES + UPDATES
    # SB3 on the benchmark itself (no Meta-World), one update per env step after its 100
    # learning-start steps.
    sb3 = rows["sb3"]
    assert sb3["task"] == "gym:Pendulum-v1" and sb3["env_steps"] == STEPS
    assert sb3["updates"] == STEPS - 100 and sb3["vector_strategy"] == "sync"
    for r in rows.values():
        assert r["env_s"] > 0 and r["update_s"] > 0 and r["wall_s"] >= r["env_s"] + r["update_s"]


# ---- benchmarks/speed/method_speed.py
@pytest.fixture
def small_method_sizes(monkeypatch):
    for name, value in dict(T=4, HIDDEN=(8, 8, 8), IN=5, OUT=2, B=6,
                            MIXED_BRANCH_POINTS=(0, 3, 1, 2)).items():
        monkeypatch.setattr(method_speed, name, value)


def test_method_speed_records_its_command_and_rows(tmp_path, small_method_sizes):
    out = tmp_path / "method.json"
    argv = ["--repeats", "2", "--threads", "1", "--out", str(out)]
    assert method_speed.main(argv) == 0
    payload = json.loads(out.read_text())
    assert payload["command"] == "python -m benchmarks.speed.method_speed " + " ".join(argv)
    assert payload["repeats"] == 2 and payload["threads"] == 1
    assert payload["machine"]["torch_threads"] == 1
    assert payload["sizes"]["hidden"] == [8, 8, 8] and payload["sizes"]["tasks"] == 4
    cases = [r["case"][:5] for r in payload["results"]]
    assert cases == ["(a) s", "(b) t", "(b') ", "(b'')", "(c) m", "(c') "]
    for r in payload["results"]:
        speedup = r["target"].startswith(">=")
        expected = r["baseline_ms"] / r["ours_ms"] if speedup else r["ours_ms"] / r["baseline_ms"]
        assert r["ours_ms"] > 0 and r["ratio"] == pytest.approx(expected), r["case"]


def test_the_sorted_tree_prototype_computes_the_tree(small_method_sizes):
    torch.manual_seed(0)
    tree = method_speed.TreeNet(method_speed.TreeSpec((8, 8, 8), (0, 3, 1, 2)), 5, 2)
    sorted_tree = method_speed.SortedTree(tree)
    x = torch.randn(4, 6, 5)
    torch.testing.assert_close(sorted_tree(x), tree(x))


# ---- benchmarks/speed/twin_critics.py
def _batched_from(two: torch.nn.Module, hidden) -> twin_critics.BatchedTwins:
    """BatchedTwins holding the weights of ``two``'s q1 and q2."""
    batched = twin_critics.BatchedTwins(hidden)
    linears = [[m for m in q if isinstance(m, torch.nn.Linear)] for q in (two.q1, two.q2)]
    with torch.no_grad():
        for i, (w, b) in enumerate(zip(batched.weights, batched.biases)):
            w.copy_(torch.stack([q[i].weight.T for q in linears]))
            b.copy_(torch.stack([q[i].bias[None] for q in linears]))
    return batched


def test_batched_twins_compute_the_two_networks_function():
    torch.manual_seed(0)
    hidden = (16, 16)
    two = twin_critics.two_networks(hidden)
    batched = _batched_from(two, hidden)
    x = torch.randn(12, twin_critics.IN)
    y_two, y_batched = two(x), batched(x)
    assert y_two.shape == y_batched.shape == (2, 12, 1)
    torch.testing.assert_close(y_batched, y_two)
    (y_two ** 2).mean().backward()
    (y_batched ** 2).mean().backward()
    first = [m for m in two.q1 if isinstance(m, torch.nn.Linear)][0]
    torch.testing.assert_close(batched.weights[0].grad[0], first.weight.grad.T)


def test_twin_critics_records_its_command(tmp_path, monkeypatch):
    monkeypatch.setattr(twin_critics, "SIZES", {"tiny": dict(hidden=(8,), batch=2)})
    out = tmp_path / "twins.json"
    argv = ["--repeats", "3", "--out", str(out)]
    payload = twin_critics.main(argv)
    assert json.loads(out.read_text())["command"] == payload["command"]
    assert payload["command"] == "python -m benchmarks.speed.twin_critics " + " ".join(argv)
    assert payload["repeats"] == 3 and payload["machine"]["device"] == "cpu"
    [row] = payload["rows"]
    assert row["size"] == "tiny" and row["speedup"] == pytest.approx(
        row["two_networks_ms"] / row["batched_ms"])


def test_a_row_with_the_env_worker_steps_in_it(out):
    payload = speed.main([*TINY, "--archs", "mtsac", "--vector-strategy", "worker",
                          "--out", str(out)])
    [row] = payload["rows"]
    assert row["key"] == "gym:Pendulum-v1/quick/mtsac/worker"
    assert row["vector_strategy"] == "worker"
    assert row["env_steps"] == STEPS and row["updates"] == UPDATES


def test_update_speed_times_the_update_gemms_in_bf16_and_reports_them_apart():
    """benchmarks/speed/update_speed.py: the bf16 bare GEMMs are the recorded products with bf16
    operands; the bf16 table is added below the main one, which stays as older reports
    render it."""
    from benchmarks.speed import update_speed

    recorder = update_speed.GemmRecorder()
    with recorder:
        torch.addmm(torch.zeros(3), torch.randn(5, 4), torch.randn(4, 3))
        torch.bmm(torch.randn(2, 5, 4), torch.randn(2, 4, 3))
    assert [name for name, _ in recorder.calls] == ["addmm", "bmm"]
    seen = []

    class Dtypes(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append({a.dtype for a in args if isinstance(a, torch.Tensor)})
            return func(*args, **(kwargs or {}))
    run = update_speed.bare_gemms(recorder.calls, torch.bfloat16)
    with Dtypes():
        run()
    assert seen == [{torch.bfloat16}] * 2

    row = {"kind": "mtsac", "size": "laptop", "before_ms": 2.0, "after_ms": 1.0,
           "speedup": 2.0, "gflop": 0.1, "gflops_after": 100, "gflops_bare": 200,
           "of_peak_before": 0.25, "of_peak_after": 0.5, "bare_gemm_ms": 0.5}
    payload = {"command": "c", "repeats": 1, "rounds": 1, "load": [0, 0], "rows": [row],
               "machine": {"platform": "p", "cpu_count": 2, "torch": "t", "torch_threads": 1}}
    older = update_speed.markdown(payload)
    assert "bf16" not in older
    bf16_row = row | {"bare_gemm_bf16_ms": 1.0, "bf16_speedup": 0.5}
    newer = update_speed.markdown(payload | {"cpu_bf16_flags": [], "rows": [bf16_row]})
    assert newer.startswith(older.rstrip("\n"))
    assert "| mtsac | laptop | 0.50 | 1.00 | 0.50x |" in newer
    assert "CPU bf16 instructions: none." in newer


# ---- benchmarks/speed/learner_options.py ----------------------------------------------------
def test_learner_options_times_every_variant_against_plain(tmp_path, monkeypatch):
    from benchmarks.speed import learner_options

    monkeypatch.setattr(learner_options, "cpu_bf16_units", lambda: ())  # as on such a CPU
    payload = learner_options.main(["--sizes", "laptop", "--variants", "plain,ln,bf16",
                                    "--repeats", "1", "--rounds", "1",
                                    "--out", str(tmp_path / "lo")])
    rows = {r["variant"]: r for r in payload["rows"]}
    assert set(rows) == {"plain", "ln"}  # bf16 left out where the CPU has no bf16 units
    assert rows["plain"]["vs_plain"] == 1.0 and rows["ln"]["ms"] > 0
    assert rows["ln"]["gflop"] == pytest.approx(rows["plain"]["gflop"])  # LN: no products
    assert "| laptop | 128x128x128 | 32 | ln |" in (tmp_path / "lo.md").read_text()


# ---- benchmarks/speed/probe_cost.py ---------------------------------------------------------
def test_probe_cost_times_each_tree_with_and_without_its_probe(tmp_path):
    from benchmarks.speed import probe_cost

    payload = probe_cost.main(["--sizes", "laptop", "--repeats", "1", "--rounds", "1",
                               "--out", str(tmp_path / "pc")])
    assert payload["probed_tasks"] == 3  # a quarter of MT10's ten, rounded up
    assert [r["tree"] for r in payload["rows"]] == ["mhsac", "shared-1"]
    assert all(r["ms"] > 0 and r["ms_probed"] > 0 for r in payload["rows"])
    built = probe_cost.build("laptop", "shared-1", probed=True)[0]
    built.update(probe_cost.random_batch(10, 32, 39, 4))
    assert built.hook.rule.module == 1  # the probe runs from the input on
    assert "| laptop | 128x128x128 | 32 |" in (tmp_path / "pc.md").read_text()


# ---- benchmarks/speed/row_costs.py ----------------------------------------------------------
def test_row_costs_are_measured_from_the_report_alone_and_the_report_reads_them(tmp_path):
    """The runs' folders gone (a new machine): each run is built from its record (config and
    final trees), its parameters those its checkpoint had, and the report shows the costs."""
    import shutil

    from benchmarks.experiments import success, success_report
    from benchmarks.speed import row_costs

    # MT10: the widened critic matches the private critics of ten tasks (of one: no wider)
    args = ["--benchmark", "MT10", "--archs", "mtsac,mtsac-wide", "--seeds", "1",
            "--budget", "quick", "--total-steps", "120", "--eval-episodes", "1",
            "--warmup-steps", "100", "--runs-dir", str(tmp_path / "runs"),
            "--out-dir", str(tmp_path / "report")]
    before = success.main(args)
    shutil.rmtree(tmp_path / "runs")
    report = tmp_path / "report" / "MT10-quick.json"
    payload = row_costs.main([str(report), "--repeats", "1", "--rounds", "1"])
    runs = {r["row"]: r for r in payload["runs"]}
    assert set(runs) == {"mtsac", "mtsac-wide"} and runs["mtsac"]["seed"] == 0
    for row in before["rows"]:
        assert runs[row["row"]]["critic_params"] == row["runs"][0]["parameters"]["critic"]
    assert runs["mtsac-wide"]["flops_per_sample"] > 4 * runs["mtsac"]["flops_per_sample"]
    assert (tmp_path / "report" / "MT10-quick-costs.md").exists()
    after = success.main([*args, "--report-only"])
    costs = after["costs"]
    assert set(costs["rows"]) == {"mtsac", "mtsac-wide"}
    assert costs["rows"]["mtsac-wide"]["update_ms"] == runs["mtsac-wide"]["update_ms"]
    assert "| mtsac-wide | " in "\n".join(success_report.costs_lines(costs))
    assert (tmp_path / "report" / costs["plot"]).stat().st_size > 1000
    # A record whose trees do not give its parameters is not measured.
    broken = json.loads(report.read_text())
    broken["rows"][0]["runs"][0]["parameters"]["critic"] += 1
    report.write_text(json.dumps(broken))
    assert {r["row"] for r in row_costs.main([str(report), "--repeats", "1",
                                              "--rounds", "1"])["runs"]} == {"mtsac-wide"}


def test_row_costs_refuse_a_file_that_is_not_a_report(tmp_path, capsys):
    from benchmarks.speed import row_costs

    for text in ("not json", "[1, 2]"):
        (tmp_path / "r.json").write_text(text)
        with pytest.raises(SystemExit) as e:
            row_costs.main([str(tmp_path / "r.json")])
        assert e.value.code == 2
        assert capsys.readouterr().err.count("\n") == 1


# ---- benchmarks/speed/jax_reference.py ------------------------------------------------------
def test_the_jax_comparison_is_skipped_in_one_line_without_the_reference(capsys, monkeypatch):
    from benchmarks.speed import jax_reference

    monkeypatch.delenv("CONAL_JAX_PYTHON", raising=False)
    assert jax_reference.main([]) is None
    assert capsys.readouterr().out.strip() == (
        "python -m benchmarks.speed.jax_reference: skipped: no --reference-python given")
    assert jax_reference.main(["--reference-python", "/no/such/python"]) is None
    assert "no such interpreter" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        jax_reference.main(["--sizes", "huge"])
    assert e.value.code == 2


def test_our_side_of_the_jax_comparison_times_the_mtsac_update():
    import sys

    from benchmarks.speed import jax_reference

    ms = jax_reference.run_side(sys.executable, jax_reference.OURS, "laptop", 2, 0)
    assert 0 < ms < 1000


@pytest.mark.slow
def test_our_compiled_side_times_the_update_under_torch_compile():
    import sys

    from benchmarks.speed import jax_reference

    assert 0 < jax_reference.run_side(sys.executable, jax_reference.OURS, "floor", 2, 0,
                                      compiled=True) < 10_000


def test_the_jax_table_shows_the_compiled_side_only_when_timed():
    from benchmarks.speed import jax_reference

    row = {"size": "floor", "width": 8, "depth": 3, "batch_per_task": 1, "ours_ms": 2.5,
           "reference_ms": 0.4, "ratio": 6.25}
    payload = {"command": "c", "machine": {}, "date": "d", "tasks": 10, "obs_dim": 39,
               "act_dim": 4, "core": 0, "repeats": 3, "rounds": 1, "rows": [row]}
    assert "compiled" not in jax_reference.markdown(payload)
    payload |= {"compiled": True, "rows": [row | {"compiled_ms": 5.25}]}
    table = jax_reference.markdown(payload)
    assert "| ours compiled ms |" in table and "| 6.25 | 5.25 |" in table
