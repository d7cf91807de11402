"""The SAC update against its own arithmetic: ms per update before and after the fast path,
the matrix-product FLOPs, and how close the update comes to those products run bare.

    python -m benchmarks.update_speed [--sizes laptop,paper] [--repeats N] [--out STEM]

Per update kind (MT-SAC, MH-SAC, a CoNAL tree, a CoNAL-Pro grouped tree, the CoNAL search
update) at MT10 (T=10, 39 observations, 4 actions) and the preset sizes:

* **before / after**: the update as it ran before (Adam as a chain of per-tensor ops,
  glibc's default malloc) and as it runs now (fused Adam, then freed memory kept for reuse:
  ``conal_rl.common.keep_freed_memory``, as the trainer sets it). The malloc setting holds
  for the whole process once made, so every kind is first timed with glibc's defaults
  (before, and fused Adam alone) and then, after the setting, again (before, after); the
  agents start from the same weights and take turns in every repeat, so a background load
  slows them alike;
* **GFLOP**: the update's matrix-product FLOPs (forward and backward), counted by
  ``torch.utils.flop_counter``;
* **bare GEMMs**: every matrix product the update ran (recorded with their shapes), run back
  to back on fresh contiguous tensors in the same process: the time of the arithmetic
  alone. ``of peak`` = bare GEMM time / update time: the share of the update that is its
  arithmetic at the speed this machine does it.

A search update is one ``ConalSearch.before_update`` (architecture step on held-out data,
conflict-noticing on) and one SAC update, as in training, timed as the average over a
multiple of 4 updates (so ``--arch-every 4`` is charged its alpha steps); ``vs MT-SAC`` is
the ratio of its time to the MT-SAC update's at the same size.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from agents import MultiTaskReplay, MultiTaskSAC, random_batch
from benchmarks.report_files import command, save
from conal_rl.common import CommandParser, keep_freed_memory, machine
from conal_rl.method import GroupTreeSpec, TreeSpec
from conal_rl.training.conal_search import ConalSearch
from conal_rl.training.config import TrainConfig
from conal_rl.training.nets import tree_factory

T, OBS, ACT = 10, 39, 4
SIZES = {"laptop": ((128, 128, 128), 32), "paper": ((400, 400, 400), 128)}
# The search: as the official one (softmax mix of all paths, alpha step every update), and
# cheaper (alpha step every 4th update; hard Gumbel samples computing only the sampled path).
SEARCHES = {"conal-search": {}, "conal-search-k4": {"arch_every": 4},
            "conal-search-gumbel-k4": {"arch_every": 4, "gumbel": True}}
KINDS = ("mtsac", "mhsac", "conal-tree", "conal-pro-tree", *SEARCHES)
TASK_NAMES = [f"task{t}" for t in range(T)]
# A CoNAL tree with its tasks branching at every depth, and a CoNAL-Pro tree of two families
# that split again below (the shapes those searches produce).
BRANCH_POINTS = (0, 1, 2, 3, 3, 3, 2, 1, 0, 3)
GROUPS = ((0,) * 10, (0,) * 5 + (1,) * 5, (0, 0, 1, 1, 2, 3, 3, 4, 4, 5))
GEMMS = {"mm", "addmm", "bmm", "baddbmm"}


class Update:
    """One kind's update as a callable: ``fast`` False turns the fast path off."""

    def __init__(self, kind: str, hidden: tuple[int, ...], batch: int, fast: bool,
                 like: Update | None = None):
        torch.manual_seed(0)
        self.search = None
        if kind in SEARCHES:
            config = TrainConfig(benchmark="MT10", arch="conal", preset="laptop",
                                 hidden=hidden, batch_per_task=batch, **SEARCHES[kind])
            settings = config.search()
            self.search = ConalSearch(settings, TASK_NAMES, batch)
            self.agent = MultiTaskSAC(self.search.make_net, T, OBS, ACT, config.sac(True),
                                      self.search.make_filter)
            self.env_steps = settings.warmup_steps  # past the warm-up: the search proper
        else:
            specs = {"mtsac": TreeSpec.mtsac(hidden, T), "mhsac": TreeSpec.mhsac(hidden, T),
                     "conal-tree": TreeSpec(hidden, BRANCH_POINTS),
                     "conal-pro-tree": GroupTreeSpec(hidden, GROUPS)}
            spec = specs[kind]
            self.agent = MultiTaskSAC(tree_factory({"actor": spec, "critic": spec}), T, OBS, ACT)
        if like is not None:  # the same weights as the other agent
            self.agent.load_state_dict(like.agent.state_dict())
        if not fast:
            for optim in (self.agent.actor_optim, self.agent.critic_optim,
                          self.agent.temperature_optim):
                for group in optim.param_groups:
                    group.update(fused=None, foreach=None)  # torch's default on the CPU
        self.batch = random_batch(T, batch, OBS, ACT)
        self.replay = MultiTaskReplay(64, T, OBS, ACT, holdout_every=2)
        for step in range(128):
            b = random_batch(T, 1, OBS, ACT, seed=step)
            self.replay.add(*(x[:, 0] for x in b))

    def __call__(self) -> None:
        if self.search is not None:
            self.search.before_update(self.agent, self.replay, self.env_steps)
        self.agent.update(self.batch)


class GemmRecorder(TorchDispatchMode):
    """Records the shapes of every matrix product run under it."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, list[tuple[int, ...]]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in GEMMS:
            self.calls.append((name, [tuple(a.shape) for a in args
                                      if isinstance(a, torch.Tensor)]))
        return func(*args, **(kwargs or {}))


def bare_gemms(calls: list[tuple[str, list[tuple[int, ...]]]]):
    """A callable running the recorded products on fresh contiguous tensors."""
    ops = [(getattr(torch, name), [torch.randn(s) for s in shapes]) for name, shapes in calls]

    def run() -> None:
        for op, tensors in ops:
            op(*tensors)
    return run


def median_ms(fns, repeats: int, inner: int, warmup: int = 20) -> list[float]:
    """Median ms per call of each function, the functions taking turns in every repeat.
    Timed in this thread's CPU time, not wall time: on a shared machine another process
    on the same core then delays a function without charging it (what still leaks
    through: caches the other process evicts)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            start = time.thread_time()
            for _ in range(inner):
                fn()
            bucket.append((time.thread_time() - start) * 1e3 / inner)
    return [statistics.median(b) for b in times]


def measure(kind: str, size: str, repeats: int, malloc_kept: bool) -> dict:
    """Before and after (and the bare GEMMs) of one kind, in the malloc state given."""
    hidden, batch = SIZES[size]
    after = Update(kind, hidden, batch, fast=True)
    before = Update(kind, hidden, batch, fast=False, like=after)
    with FlopCounterMode(display=False) as flops:  # over 4 updates, as the timing
        for _ in range(4):
            after()
    recorder = GemmRecorder()
    with recorder:
        for _ in range(4):
            after()
    gemms = bare_gemms(recorder.calls)
    inner = 12 if size == "laptop" else 4
    before_ms, after_ms, gemm4_ms = median_ms([before, after, gemms], repeats, inner)
    gemm_ms = gemm4_ms / 4
    return {"kind": kind, "size": size, "malloc_kept": malloc_kept, "before_ms": before_ms,
            "after_ms": after_ms, "gflop": flops.get_total_flops() / 4e9,
            "gemm_calls": len(recorder.calls) / 4, "bare_gemm_ms": gemm_ms}


def row(default: dict, kept: dict) -> dict:
    """One table row from a kind's two passes: before = the first pass's unfused update
    (the old code), after = the second pass's fused update with memory kept."""
    hidden, batch = SIZES[default["size"]]
    before, after, gemm = default["before_ms"], kept["after_ms"], kept["bare_gemm_ms"]
    gflop = kept["gflop"]
    return {"kind": default["kind"], "size": default["size"], "hidden": list(hidden),
            "batch_per_task": batch, "before_ms": before, "fused_adam_ms": default["after_ms"],
            "after_ms": after, "speedup": before / after, "gflop": gflop,
            "gemm_calls": kept["gemm_calls"], "bare_gemm_ms": gemm,
            "gflops_after": gflop / after * 1e3, "gflops_bare": gflop / gemm * 1e3,
            "of_peak_before": default["bare_gemm_ms"] / before, "of_peak_after": gemm / after,
            "passes": [default, kept]}


def markdown(payload: dict) -> str:
    m = payload["machine"]
    lines = [
        "# The SAC update against its arithmetic (CPU, one thread)", "",
        f"Command: `{payload['command']}`  ",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']}, "
        f"{m['torch_threads']} torch thread; {payload['repeats']} repeats, medians of the "
        "thread's CPU time.  ",
        f"Load average (1 min) at start -> end: {payload['load'][0]:.2f} -> "
        f"{payload['load'][1]:.2f}.", "",
        "MT10 sizes: laptop 3x128, 32 per task; paper 3x400, 128 per task. Before: Adam per "
        "tensor, glibc's default malloc (the update as it was). Fused Adam: only that changed. "
        "After: fused Adam and freed memory kept (timed after the process switched its malloc "
        "setting). Bare GEMMs: the same matrix products back to back on fresh tensors; of "
        "peak = bare GEMM ms / update ms.", "",
        "| kind | size | before ms | fused Adam ms | after ms | speedup | GFLOP | "
        "GFLOP/s after | GFLOP/s bare | of peak before | of peak after | vs MT-SAC after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = {r["size"]: r["after_ms"] for r in payload["rows"] if r["kind"] == "mtsac"}
    for r in payload["rows"]:
        ratio = f"{r['after_ms'] / base[r['size']]:.2f}x" if r["size"] in base else "-"
        lines.append(
            f"| {r['kind']} | {r['size']} | {r['before_ms']:.2f} | {r['fused_adam_ms']:.2f} | "
            f"{r['after_ms']:.2f} | "
            f"{r['speedup']:.2f}x | {r['gflop']:.3f} | {r['gflops_after']:.0f} | "
            f"{r['gflops_bare']:.0f} | {r['of_peak_before']:.0%} | {r['of_peak_after']:.0%} | "
            f"{ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = CommandParser(prog="python -m benchmarks.update_speed", description=__doc__)
    parser.add_argument("--sizes", default="laptop,paper",
                        help="comma-separated sizes among laptop, paper")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"comma-separated update kinds among {', '.join(KINDS)}")
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per function")
    parser.add_argument("--out", default="benchmarks/results/update-speed",
                        help="output stem: STEM.json and STEM.md")
    args = parser.parse_args(argv)
    sizes, kinds = args.sizes.split(","), args.kinds.split(",")
    bad = [s for s in sizes if s not in SIZES] + [k for k in kinds if k not in KINDS]
    if bad or args.repeats < 1:
        parser.error(f"unknown size or kind {bad}" if bad else "--repeats must be >= 1")
    torch.set_num_threads(1)
    load_start = _load()
    cases = [(kind, size) for size in sizes for kind in kinds]
    passes = []
    for malloc_kept in (False, True):
        if malloc_kept and not keep_freed_memory():
            parser.error("this C library is not glibc: nothing to compare")
        passes.append([measure(kind, size, args.repeats, malloc_kept) for kind, size in cases])
        for result in passes[-1]:
            print(result, file=sys.stderr)
    rows = [row(default, kept) for default, kept in zip(*passes)]
    payload = {"command": command("python -m benchmarks.update_speed", argv),
               "machine": machine(), "repeats": args.repeats, "load": [load_start, _load()],
               "rows": rows}
    save(Path(args.out), payload, markdown(payload))
    return payload


def _load() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


if __name__ == "__main__":
    main()
