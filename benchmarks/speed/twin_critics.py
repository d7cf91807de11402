"""Twin critics as two networks or as one batched module: which trains faster?

    python -m benchmarks.speed.twin_critics [--device cpu|cuda] [--out FILE.json]

The SAC agent runs its two critics as two networks (``q1(x)``, ``q2(x)``). The alternative
is one module holding both, every layer a ``baddbmm`` over a leading axis of 2. This times
a forward and backward of both critics of the MT-SAC trunk (MT10: T=10 tasks, observation
39 + action 4 + one-hot 10) at the quick and the paper sizes, each way, and writes the
table as JSON. The agent keeps two networks unless the batched form is clearly faster
where it matters (see benchmarks/results/twin_critics-*.json).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.report_files import command
from conal_rl.common import DEVICES, CommandParser, machine

SIZES = {"quick": dict(hidden=(128, 128, 128), batch=32),
         "paper": dict(hidden=(400, 400, 400), batch=128)}
T, IN = 10, 39 + 4 + 10


def two_networks(hidden: tuple[int, ...]) -> nn.Module:
    def mlp() -> nn.Sequential:
        dims, layers = (IN, *hidden), []
        for a, b in zip(dims, dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(dims[-1], 1))

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.q1, self.q2 = mlp(), mlp()

        def forward(self, x):
            return torch.stack([self.q1(x), self.q2(x)])
    return Two()


class BatchedTwins(nn.Module):
    """Both critics in one module: weights ``[2, in, out]``, one baddbmm per layer."""

    def __init__(self, hidden: tuple[int, ...]):
        super().__init__()
        dims = (IN, *hidden, 1)
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(2, a, b) / a ** 0.5) for a, b in zip(dims, dims[1:]))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(2, 1, b)) for b in dims[1:])

    def forward(self, x):
        h = x.expand(2, *x.shape)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < len(self.weights) - 1:
                h = torch.relu(h)
        return h


def time_step(net: nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Milliseconds of one forward + backward of both critics."""
    def step():
        net.zero_grad(set_to_none=True)
        (net(x) ** 2).mean().backward()
    for _ in range(10):
        step()
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e3


def main(argv: list[str] | None = None) -> dict:
    parser = CommandParser(prog="python -m benchmarks.speed.twin_critics",
                           description=__doc__.split("\n\n")[0])
    # no "auto": a measurement names its device
    parser.add_argument("--device", default="cpu", choices=DEVICES[1:])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/twin_critics-<device>.json")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    if args.out is not None and args.out.is_dir():
        parser.error(f"--out {args.out} is a folder, not a file")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    for name, size in SIZES.items():
        x = torch.randn(T * size["batch"], IN, device=args.device)
        two = time_step(two_networks(size["hidden"]).to(args.device), x, args.repeats)
        batched = time_step(BatchedTwins(size["hidden"]).to(args.device), x, args.repeats)
        rows.append({"size": name, **size, "two_networks_ms": two, "batched_ms": batched,
                     "speedup": two / batched})
        print(f"{name:<6} two networks {two:8.3f} ms   batched {batched:8.3f} ms   "
              f"speed-up {two / batched:.2f}x")
    out = args.out or Path(f"benchmarks/results/twin_critics-{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"command": command(parser.prog, argv), "repeats": args.repeats,
               "machine": machine(args.device), "rows": rows}
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
