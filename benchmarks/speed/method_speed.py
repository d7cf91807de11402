"""Speed of the CoNAL method's batched parts against the straightforward versions.

    python -m benchmarks.speed.method_speed [--device cpu|cuda] [--repeats N] [--out FILE.json]

At the MT10 SAC sizes (T=10 tasks, P=3 hidden modules of width 400, 39 inputs, 128 samples
per task) it times, as the median over repeats after a warm-up (the compared functions take
turns in every repeat, so a background load slows them alike):
  (a) SuperNet forward+backward vs the per-task, per-path Python loop (same parameters);
  (b) per-task Gram matrices of the shared modules from one backward vs T backwards as the
      official code does them (each a full backward), all including the forward; also vs
      the cheapest T backwards (gradients of the shared modules only), and the cost of the
      Gram over a plain forward+backward;
  (c) a pruned TreeNet with branch points spread over 0..3 vs the MT-SAC MLP
      (TreeSpec.mtsac), forward+backward; (c') the same tree with its tasks sorted by
      branch point and its private weights restacked (SortedTree: no gather between modules).
Targets: (a) >= 5x, (b) >= 5x, (c) <= 1.5x of the MLP.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from benchmarks.report_files import command
from conal_rl.common import DEVICES, CommandParser, machine
from conal_rl.method import ConflictNoticing, SuperNet, TreeNet, TreeSpec
from conal_rl.method.reference import gram_by_separate_backwards, reference_forward

T, HIDDEN, IN, OUT, B = 10, (400, 400, 400), 39, 8, 128
MIXED_BRANCH_POINTS = (0, 1, 2, 3, 3, 3, 2, 1, 0, 3)


def median_ms(fns, device: torch.device, repeats: int, warmup: int = 2) -> list[float]:
    """Median wall time of each function, the functions taking turns in every repeat."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            bucket.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(bucket) for bucket in times]


def forward_backward(net, x):
    def step():
        net.zero_grad(set_to_none=True)
        net(x).square().mean().backward()
    return step


def bench_supernet(device, repeats) -> list[dict]:
    net = SuperNet(T, IN, OUT, HIDDEN).to(device)
    x = torch.randn(T, B, IN, device=device)

    def loop():
        net.zero_grad(set_to_none=True)
        reference_forward(net, x, net.path_weights()).square().mean().backward()
    batched, looped = median_ms([forward_backward(net, x), loop], device, repeats)
    return [row("(a) supernet fwd+bwd: batched vs loop", batched, looped, ">= 5x")]


def bench_gram(device, repeats) -> list[dict]:
    net = SuperNet(T, IN, OUT, HIDDEN).to(device)
    x = torch.randn(T, B, IN, device=device)
    noticing = ConflictNoticing(net)
    shared = [p for layer in noticing.layers.values()
              for p in (layer.module.weight, layer.module.bias)]

    def one_backward():
        net.zero_grad(set_to_none=True)
        with noticing.record():
            losses = net(x).square().mean(dim=(1, 2))
        losses.sum().backward()
        noticing.apply()

    def official_backwards():
        # NOCLGrad._pack_grad: a full backward per task loss, then the shared grads.
        losses = net(x).square().mean(dim=(1, 2))
        per_task = []
        for t in range(T):
            net.zero_grad(set_to_none=True)
            losses[t].backward(retain_graph=True)
            per_task.append(torch.cat([p.grad.flatten() for p in shared]))
        flat = torch.stack(per_task)
        return flat @ flat.T

    def shared_only_backwards():
        gram_by_separate_backwards(net(x).square().mean(dim=(1, 2)), noticing.layers)

    plain, ours, official, shared_only = median_ms(
        [forward_backward(net, x), one_backward, official_backwards, shared_only_backwards],
        device, repeats)
    return [row("(b) task Gram: 1 backward vs T (official)", ours, official, ">= 5x"),
            row("(b') ... vs T backwards of shared grads only", ours, shared_only, ">= (info)"),
            row("(b'') 1 backward + Gram vs plain fwd+bwd", ours, plain, "<= (info)")]


class SortedTree(nn.Module):
    """Prototype of a TreeNet layout without gathers between modules (here only to time it):
    tasks are kept sorted by branch point, descending, so at every depth the tasks still on
    the trunk are a prefix and the private ones a suffix, the private modules' weights
    restacked in that order. Each mixed layer is two slices (views) and one concatenation;
    the task order is permuted once at the input and once at the output. TreeNet keeps its
    weights stacked by task id (checkpoints, grown trees and probes read them so) and pays a
    gather of the rows where a module's order differs from the one before."""

    def __init__(self, tree: TreeNet):
        super().__init__()
        b = torch.tensor(tree.spec.branch_points)
        order = torch.argsort(-b, stable=True)
        self.register_buffer("order", order)
        self.register_buffer("unsort", order.argsort())
        self.on_trunk = [int((b >= j).sum()) for j in range(tree.spec.depth + 1)]
        self.shared = tree.shared
        self.private = nn.ParameterDict()
        for key, module in tree.private.items():
            # TreeNet stacks the private tasks in increasing id; restack them sorted.
            ids = (b < int(key)).nonzero().flatten().tolist()
            rows = [ids.index(int(t)) for t in order[self.on_trunk[int(key)]:]]
            self.private[f"w{key}"] = nn.Parameter(module.weight.detach()[rows].clone())
            self.private[f"b{key}"] = nn.Parameter(module.bias.detach()[rows].clone())
        self.head_weight = nn.Parameter(tree.head.weight.detach()[order].clone())
        self.head_bias = nn.Parameter(tree.head.bias.detach()[order].clone())

    def forward(self, x: Tensor) -> Tensor:
        x = x[self.order]
        trunk, off = x, x[:0]  # off: tasks already on their private modules
        for j in range(1, len(self.on_trunk)):
            k = self.on_trunk[j]
            if k < len(x):  # the leaving tasks go first: sorted order is kept
                inputs = torch.cat([trunk[k:], off]) if len(off) else trunk[k:]
                off = torch.relu(torch.baddbmm(self.private[f"b{j}"], inputs,
                                               self.private[f"w{j}"]))
            trunk = torch.relu(self.shared[str(j)](trunk[:k])) if k else trunk[:0]
        k = self.on_trunk[-1]
        outputs = [torch.baddbmm(self.head_bias[:k], trunk, self.head_weight[:k])] if k else []
        if len(off):
            outputs.append(torch.baddbmm(self.head_bias[k:], off, self.head_weight[k:]))
        return torch.cat(outputs)[self.unsort]


def bench_tree(device, repeats) -> list[dict]:
    tree = TreeNet(TreeSpec(HIDDEN, MIXED_BRANCH_POINTS), IN, OUT).to(device)
    sorted_tree = SortedTree(tree).to(device)
    mlp = TreeNet(TreeSpec.mtsac(HIDDEN, T), IN, OUT).to(device)
    x = torch.randn(T, B, IN, device=device)
    torch.testing.assert_close(sorted_tree(x), tree(x))  # the same function
    tree_ms, sorted_ms, mlp_ms = median_ms(
        [forward_backward(tree, x), forward_backward(sorted_tree, x), forward_backward(mlp, x)],
        device, repeats)
    return [row("(c) mixed tree vs MT-SAC MLP fwd+bwd", tree_ms, mlp_ms, "<= 1.5x"),
            row("(c') sorted-layout tree vs MT-SAC MLP", sorted_ms, mlp_ms, "<= 1.5x")]


def row(case: str, ours: float, baseline: float, target: str) -> dict:
    """``ratio``: baseline / ours (a speed-up) where the target starts with ">=", else
    ours / baseline (a cost relative to the baseline)."""
    ratio = baseline / ours if target.startswith(">=") else ours / baseline
    return {"case": case, "ours_ms": ours, "baseline_ms": baseline, "ratio": ratio,
            "target": target}


def main(argv=None) -> int:
    parser = CommandParser(prog="python -m benchmarks.speed.method_speed",
                           description=__doc__.splitlines()[0])
    # no "auto": a measurement names its device
    parser.add_argument("--device", default="cpu", choices=DEVICES[1:])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: leave torch's default)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    if args.repeats < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--repeats and --threads must be at least 1")
    if args.out is not None and args.out.is_dir():
        parser.error(f"--out {args.out} is a folder, not a file")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    rows = [r for bench in (bench_supernet, bench_gram, bench_tree)
            for r in bench(device, args.repeats)]

    print(f"{'case':46s} {'ours ms':>9s} {'base ms':>9s} {'ratio':>7s}  target")
    for r in rows:
        print(f"{r['case']:46s} {r['ours_ms']:9.2f} {r['baseline_ms']:9.2f} "
              f"{r['ratio']:6.2f}x  {r['target']}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        # The command as given and what it resolved to: the JSON alone says how it was made.
        payload = {"command": command("python -m benchmarks.speed.method_speed", argv),
                   "machine": machine(device) | {"load_average_1_5_15min": os.getloadavg(),
                                                "load_average_at_start": load_before},
                   "repeats": args.repeats, "threads": args.threads,
                   "sizes": {"tasks": T, "hidden": HIDDEN, "in": IN, "out": OUT,
                             "per_task_batch": B, "tree_branch_points": MIXED_BRANCH_POINTS},
                   "results": rows}
        args.out.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
