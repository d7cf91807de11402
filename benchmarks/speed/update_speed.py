"""The SAC update against its own arithmetic: ms per update before and after the fast path,
the matrix-product FLOPs, and how close the update comes to those products run bare.

    python -m benchmarks.speed.update_speed [--sizes laptop,paper] [--repeats N] [--out STEM]

Per update kind (MT-SAC, MH-SAC, a CoNAL tree, a CoNAL-Pro grouped tree, the CoNAL search
update) at MT10 (T=10, 39 observations, 4 actions) and the preset sizes:

* **before / after**: the update as it ran before (Adam as a chain of per-tensor ops,
  glibc's default malloc) and as it runs now (fused Adam, freed memory kept for reuse:
  ``conal_rl.common.keep_freed_memory``, as the trainer sets it). The malloc setting holds
  for a whole process, so each variant is timed in a fresh process of its own, the two
  taking turns for ``--rounds`` rounds (a background load slows both alike); a row gives
  the median over rounds of each process's median;
* **GFLOP**: the update's matrix-product FLOPs (forward and backward), counted by
  ``torch.utils.flop_counter``;
* **bare GEMMs**: every matrix product the update ran (recorded with their shapes), run back
  to back on fresh contiguous tensors in the same process: the time of the arithmetic
  alone. ``of peak`` = bare GEMM time / update time: the share of the update that is its
  arithmetic at the speed this machine does it;
* **bf16**: the same bare GEMMs with bf16 operands: how fast this machine does the update's
  arithmetic in bf16, what an update kept in bf16 through its products would build on
  (CPUs without AVX512-BF16 or AMX convert to fp32 and back).

A search update is one ``ConalSearch.before_update`` (architecture step on held-out data,
conflict-noticing on) and one SAC update, as in training, timed as the average over a
multiple of 4 updates (so ``--arch-every 4`` is charged its alpha steps); ``vs MT-SAC`` is
the ratio of its time to the MT-SAC update's at the same size.
"""

from __future__ import annotations

import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from agents import MultiTaskReplay, MultiTaskSAC, random_batch
from benchmarks.report_files import command, header, now, save
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

    def __init__(self, kind: str, hidden: tuple[int, ...], batch: int, fast: bool):
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


def bare_gemms(calls: list[tuple[str, list[tuple[int, ...]]]], dtype=torch.float32):
    """A callable running the recorded products on fresh contiguous tensors of ``dtype``."""
    ops = [(getattr(torch, name), [torch.randn(s, dtype=dtype) for s in shapes])
           for name, shapes in calls]

    def run() -> None:
        for op, tensors in ops:
            op(*tensors)
    return run


def median_ms(fn, repeats: int, inner: int, warmup: int = 2) -> float:
    """Median ms per call over ``repeats`` blocks of ``inner`` calls (after ``warmup``
    untimed blocks), in this thread's CPU
    time, not wall time: another process on the same core then delays a call without
    charging it (what still leaks through: caches and memory bandwidth it takes)."""
    for _ in range(warmup * inner):
        fn()
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        for _ in range(inner):
            fn()
        times.append((time.thread_time() - start) * 1e3 / inner)
    return statistics.median(times)


def measure(kind: str, size: str, variant: str, repeats: int) -> dict:
    """In a fresh process: one variant's ms per update; for "after" also its FLOPs and the
    bare GEMMs. Updates are counted in blocks of 4 (``--arch-every 4`` is charged its alpha
    steps)."""
    torch.set_num_threads(1)
    after = variant == "after"
    if after:
        keep_freed_memory()
    hidden, batch = SIZES[size]
    update = Update(kind, hidden, batch, fast=after)
    inner = 12 if size == "laptop" else 4
    result = {"ms": median_ms(update, repeats, inner)}
    if after:
        with FlopCounterMode(display=False) as flops:
            for _ in range(4):
                update()
        recorder = GemmRecorder()
        with recorder:
            for _ in range(4):
                update()
        result |= {"gflop": flops.get_total_flops() / 4e9,
                   "gemm_calls": len(recorder.calls) / 4,
                   "bare_gemm_ms": median_ms(bare_gemms(recorder.calls), repeats, 1) / 4,
                   "bare_gemm_bf16_ms":
                       median_ms(bare_gemms(recorder.calls, torch.bfloat16), repeats, 1) / 4}
    return result


def row(kind: str, size: str, before: list[dict], after: list[dict]) -> dict:
    """A table row from the rounds of both variants."""
    hidden, batch = SIZES[size]
    before_ms = statistics.median(r["ms"] for r in before)
    after_ms = statistics.median(r["ms"] for r in after)
    gemm = statistics.median(r["bare_gemm_ms"] for r in after)
    gemm_bf16 = statistics.median(r["bare_gemm_bf16_ms"] for r in after)
    gflop = after[0]["gflop"]
    return {"kind": kind, "size": size, "hidden": list(hidden), "batch_per_task": batch,
            "before_ms": before_ms, "after_ms": after_ms, "speedup": before_ms / after_ms,
            "gflop": gflop, "gemm_calls": after[0]["gemm_calls"], "bare_gemm_ms": gemm,
            "gflops_after": gflop / after_ms * 1e3, "gflops_bare": gflop / gemm * 1e3,
            "of_peak_before": gemm / before_ms, "of_peak_after": gemm / after_ms,
            "bare_gemm_bf16_ms": gemm_bf16, "bf16_speedup": gemm / gemm_bf16,
            "rounds": {"before_ms": [r["ms"] for r in before],
                       "after_ms": [r["ms"] for r in after]}}


def markdown(payload: dict) -> str:
    lines = [
        *header("The SAC update against its arithmetic (CPU, one thread)", payload["command"],
                payload["machine"], payload.get("date")),
        f"{payload['machine']['torch_threads']} torch thread; {payload['repeats']} repeats, "
        "medians of the thread's CPU time.  ",
        f"Load average (1 min) at start -> end: {payload['load'][0]:.2f} -> "
        f"{payload['load'][1]:.2f}.", "",
        "MT10 sizes: " + "; ".join(
            f"{size} {'x'.join(map(str, SIZES[size][0]))}, {SIZES[size][1]} per task"
            for size in dict.fromkeys(r["size"] for r in payload["rows"])) + ". Before: Adam per "
        "tensor, glibc's default malloc (the update as it was). After: fused Adam, freed "
        "memory kept. Each variant in a fresh process, the two taking turns "
        f"{payload['rounds']} times; medians over the rounds. Bare GEMMs: the same matrix "
        "products back to back on fresh tensors; of peak = bare GEMM ms / update ms.", "",
        "| kind | size | before ms | after ms | speedup | GFLOP | GFLOP/s after | "
        "GFLOP/s bare | of peak before | of peak after | vs MT-SAC after |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    base = {r["size"]: r["after_ms"] for r in payload["rows"] if r["kind"] == "mtsac"}
    for r in payload["rows"]:
        ratio = f"{r['after_ms'] / base[r['size']]:.2f}x" if r["size"] in base else "-"
        lines.append(
            f"| {r['kind']} | {r['size']} | {r['before_ms']:.2f} | {r['after_ms']:.2f} | "
            f"{r['speedup']:.2f}x | {r['gflop']:.3f} | {r['gflops_after']:.0f} | "
            f"{r['gflops_bare']:.0f} | {r['of_peak_before']:.0%} | {r['of_peak_after']:.0%} | "
            f"{ratio} |")
    bf16 = [r for r in payload["rows"] if "bare_gemm_bf16_ms" in r]
    if bf16:  # reports from before the bf16 column render as they were
        flags = payload.get("cpu_bf16_flags") or ["none"]
        lines += [
            "", "Reduced precision: the same bare GEMMs with bf16 operands (kept bf16 through "
            "the products, no casts): how fast this machine does the update's arithmetic in "
            f"bf16. CPU bf16 instructions: {', '.join(flags)}.", "",
            "| kind | size | bare GEMM fp32 ms | bare GEMM bf16 ms | bf16 speed-up |",
            "|---|---|---|---|---|"]
        lines += [f"| {r['kind']} | {r['size']} | {r['bare_gemm_ms']:.2f} | "
                  f"{r['bare_gemm_bf16_ms']:.2f} | "
                  f"{r['bf16_speedup']:.2f}x |" for r in bf16]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = CommandParser(prog="python -m benchmarks.speed.update_speed", description=__doc__)
    parser.add_argument("--sizes", default="laptop,paper",
                        help="comma-separated sizes among laptop, paper")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"comma-separated update kinds among {', '.join(KINDS)}")
    parser.add_argument("--repeats", type=int, default=8,
                        help="timed blocks of updates per process (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="processes per variant, taking turns (default: %(default)s)")
    parser.add_argument("--out", default="benchmarks/results/update-speed",
                        help="output stem: STEM.json and STEM.md")
    args = parser.parse_args(argv)
    sizes, kinds = args.sizes.split(","), args.kinds.split(",")
    bad = [s for s in sizes if s not in SIZES] + [k for k in kinds if k not in KINDS]
    if bad or min(args.repeats, args.rounds) < 1:
        parser.error(f"unknown size or kind {bad}" if bad else
                     "--repeats and --rounds must be >= 1")
    torch.set_num_threads(1)  # as every measuring process does
    load_start = _load()
    rows = []
    spawn = multiprocessing.get_context("spawn")
    for size in sizes:
        for kind in kinds:
            runs: dict[str, list[dict]] = {"before": [], "after": []}
            for _ in range(args.rounds):
                for variant in runs:
                    with ProcessPoolExecutor(1, mp_context=spawn) as fresh:
                        runs[variant].append(
                            fresh.submit(measure, kind, size, variant, args.repeats).result())
            rows.append(row(kind, size, runs["before"], runs["after"]))
            print({k: rows[-1][k] for k in ("kind", "size", "before_ms", "after_ms")},
                  file=sys.stderr)
    payload = {"command": command("python -m benchmarks.speed.update_speed", argv),
               "machine": machine(), "date": now(), "cpu_bf16_flags": _bf16_flags(),
               "repeats": args.repeats, "rounds": args.rounds,
               "load": [load_start, _load()],
               "rows": rows}
    save(Path(args.out), payload, markdown(payload))
    return payload


def _bf16_flags() -> list[str]:
    """The CPU's native bf16 instructions (without them bf16 products cannot run natively)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]


def _load() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


if __name__ == "__main__":
    main()
