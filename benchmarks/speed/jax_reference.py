"""This project's MT-SAC update against the Meta-World+ reference's (rainx0r/
metaworld-algorithms, JAX, jitted), side by side on one core, on random batches of the same
sizes.

    python -m benchmarks.speed.jax_reference --reference-python PYTHON
        [--sizes floor,laptop,paper] [--repeats 30] [--rounds 3] [--core 0] [--out STEM]

Sizes: ``laptop`` (3x128, 32 per task) and ``paper`` (3x400, 128 per task) as the presets;
``floor`` (3x8, one sample per task), where the arithmetic is next to nothing: what is left
is each framework's cost of running the update at all (dispatch, autograd, optimizer calls),
the part of the small update that is not its arithmetic.

PYTHON: the interpreter of an environment where the reference is installed (its repository
needs Python 3.12 or newer: e.g. ``python3.12 -m venv ref && ref/bin/pip install
"jax[cpu]" flax optax distrax jaxtyping orbax-checkpoint tyro wandb`` and ``ref/bin/pip
install --no-deps -e <a clone of rainx0r/metaworld-algorithms>``). Without one, or where it
cannot import the reference, the benchmark says so in one line and exits 0 (skipped).

Each side runs in its own process pinned to ``--core`` (``taskset``), one thread (torch:
``torch.set_num_threads(1)``; XLA: its CPU client single-threaded), the two taking turns for
``--rounds`` rounds; a round is the median of ``--repeats`` updates' process CPU time (JAX
after its compile, both after warm-up updates). The reference's MT-SAC: its defaults (He-
uniform weights, twin critics as one ensemble) at our nets' widths and depth, the one-hot
task id in the observation as its buffer gives it; ours: ``--arch mtsac`` as it trains.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.report_files import command, header, now, save
from benchmarks.speed.turn_flags import add_turn_flags, chosen_sizes
from conal_rl.common import CommandParser, machine

PROG = "python -m benchmarks.speed.jax_reference"
T, OBS, ACT = 10, 39, 4
# width, depth, batch per task
SIZES = {"floor": (8, 3, 1), "laptop": (128, 3, 32), "paper": (400, 3, 128)}

# Run by the reference's interpreter: its MT-SAC built from its own config classes, updated on
# a random batch; prints the per-update process CPU times in ms as JSON.
REFERENCE = r"""
import json, sys, time
import numpy as np, jax, gymnasium as gym
from metaworld_algorithms.config.networks import (ContinuousActionPolicyConfig,
                                                  QValueFunctionConfig)
from metaworld_algorithms.config.nn import VanillaNetworkConfig
from metaworld_algorithms.rl.algorithms.mtsac import MTSAC, MTSACConfig
from metaworld_algorithms.types import ReplayBufferSamples
T, OBS, ACT, width, depth, per_task, repeats = map(int, sys.argv[1:8])
class Spaces:  # what MTSAC.initialize reads of an env config
    observation_space = gym.spaces.Box(-1.0, 1.0, (OBS + T,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (ACT,), np.float32)
net = VanillaNetworkConfig(width=width, depth=depth)
config = MTSACConfig(num_tasks=T, actor_config=ContinuousActionPolicyConfig(network_config=net),
                     critic_config=QValueFunctionConfig(network_config=net))
agent = MTSAC.initialize(config, Spaces(), seed=1)
rng = np.random.default_rng(0)
n = T * per_task
task = np.repeat(np.eye(T, dtype=np.float32), per_task, axis=0)
obs = np.concatenate([rng.standard_normal((n, OBS), dtype=np.float32), task], 1)
nxt = np.concatenate([rng.standard_normal((n, OBS), dtype=np.float32), task], 1)
data = ReplayBufferSamples(obs, rng.uniform(-1, 1, (n, ACT)).astype(np.float32), nxt,
                           np.zeros((n, 1), np.float32),
                           rng.standard_normal((n, 1), dtype=np.float32))
data = jax.device_put(data)
for _ in range(5):  # compile, then warm
    agent, logs = agent.update(data)
jax.block_until_ready(logs)
times = []
for _ in range(repeats):
    t0 = time.process_time()
    agent, logs = agent.update(data)
    jax.block_until_ready(logs)
    times.append(1e3 * (time.process_time() - t0))
print(json.dumps(times))
"""

OURS = r"""
import json, sys, time
import torch
from agents import MultiTaskSAC, random_batch
from conal_rl.common import keep_freed_memory
from conal_rl.training.config import TrainConfig
from conal_rl.training.nets import fixed_trees, tree_factory
T, OBS, ACT, width, depth, per_task, repeats, compiled = map(int, sys.argv[1:9])
torch.set_num_threads(1)
keep_freed_memory()  # as the trainer sets it
config = TrainConfig(benchmark="MT10", arch="mtsac", hidden=(width,) * depth,
                     batch_per_task=per_task)
torch.manual_seed(0)
agent = MultiTaskSAC(tree_factory(fixed_trees(config, [f"t{t}" for t in range(T)], (OBS, ACT)),
                                  config.net_options()), T, OBS, ACT, config.sac())
batch = random_batch(T, per_task, OBS, ACT, seed=0)
update = torch.compile(agent.update) if compiled else agent.update
for _ in range(5):  # (compiled: compile, then warm)
    update(batch)
times = []
for _ in range(repeats):
    t0 = time.process_time()
    update(batch)
    times.append(1e3 * (time.process_time() - t0))
print(json.dumps(times))
"""


def one_thread_env() -> dict:
    return os.environ | {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false "
                                      "intra_op_parallelism_threads=1",
                         "OMP_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu"}


def run_side(python: str, script: str, size: str, repeats: int, core: int,
             compiled: bool = False) -> float:
    """The median update ms of one side, in a fresh process pinned to ``core``
    (``compiled``: ours under ``torch.compile``)."""
    width, depth, per_task = SIZES[size]
    pin = ["taskset", "-c", str(core)] if shutil.which("taskset") else []
    proc = subprocess.run([*pin, python, "-c", script, *map(str, (
        T, OBS, ACT, width, depth, per_task, repeats, int(compiled)))], capture_output=True,
        text=True, env=one_thread_env(), cwd=Path(__file__).resolve().parents[2], timeout=1800)
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                           else f"exit {proc.returncode}")
    return statistics.median(json.loads(proc.stdout.strip().splitlines()[-1]))


def reference_missing(python: str | None) -> str | None:
    """Why the reference cannot run (None: it can)."""
    if not python:
        return "no --reference-python given"
    found = shutil.which(python) or (python if Path(python).is_file() else None)
    if not found:
        return f"{python}: no such interpreter"
    proc = subprocess.run([found, "-c", "import jax, metaworld_algorithms.rl.algorithms.mtsac"],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "?"
        return f"{python} cannot import the reference ({last})"
    return None


def markdown(payload: dict) -> str:
    lines = [*header("MT-SAC update: this project against the Meta-World+ reference (JAX)",
                     payload["command"], payload["machine"], payload["date"]), "",
             f"Random batches, {payload['tasks']} tasks, {payload['obs_dim']} observations "
             f"(+ the one-hot task id), {payload['act_dim']} actions; each side in its own "
             f"process on core {payload['core']}, one thread; median process CPU time of "
             f"{payload['repeats']} updates per round, median over {payload['rounds']} rounds "
             "taking turns.", "",
             "| size | nets | batch per task | ours ms | reference ms | ours / reference |"
             + (" ours compiled ms |" if payload.get("compiled") else ""),
             "|---|---|---|---|---|---|" + ("---|" if payload.get("compiled") else "")]
    for r in payload["rows"]:
        lines.append(f"| {r['size']} | {r['depth']}x{r['width']} | {r['batch_per_task']} | "
                     f"{r['ours_ms']:.2f} | {r['reference_ms']:.2f} | {r['ratio']:.2f} |"
                     + (f" {r['compiled_ms']:.2f} |" if "compiled_ms" in r else ""))
    if payload.get("compiled"):
        lines += ["", "Ours compiled: the same update under `torch.compile` (its default "
                  "backend, inductor), timed after its compile, in the same turns."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict | None:
    parser = CommandParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-python", default=os.environ.get("CONAL_JAX_PYTHON"),
                        help="interpreter with the reference installed (default: "
                        "$CONAL_JAX_PYTHON)")
    add_turn_flags(parser, SIZES, "floor,laptop,paper", repeats=30)
    parser.add_argument("--core", type=int, default=0, help="the core both sides run on")
    parser.add_argument("--compiled", action="store_true",
                        help="also time our update under torch.compile (a third side)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/jax-reference"))
    args = parser.parse_args(argv)
    sizes = chosen_sizes(parser, args, SIZES)
    if args.core < 0:
        parser.error(f"--core must not be negative, got {args.core}")
    why = reference_missing(args.reference_python)
    if why:
        print(f"{PROG}: skipped: {why}")
        return None
    rows = []
    for size in sizes:
        ours, reference, compiled = [], [], []
        for _ in range(args.rounds):
            ours.append(run_side(sys.executable, OURS, size, args.repeats, args.core))
            reference.append(run_side(args.reference_python, REFERENCE, size, args.repeats,
                                      args.core))
            if args.compiled:
                compiled.append(run_side(sys.executable, OURS, size, args.repeats, args.core,
                                         compiled=True))
        width, depth, per_task = SIZES[size]
        rows.append({"size": size, "width": width, "depth": depth, "batch_per_task": per_task,
                     "ours_ms": statistics.median(ours),
                     "reference_ms": statistics.median(reference),
                     "ours_rounds": ours, "reference_rounds": reference})
        rows[-1]["ratio"] = rows[-1]["ours_ms"] / rows[-1]["reference_ms"]
        if compiled:
            rows[-1] |= {"compiled_ms": statistics.median(compiled), "compiled_rounds": compiled}
        print(f"{size}: ours {rows[-1]['ours_ms']:.2f} ms, reference "
              f"{rows[-1]['reference_ms']:.2f} ms"
              + (f", ours compiled {rows[-1]['compiled_ms']:.2f} ms" if compiled else ""),
              flush=True)
    payload = {"command": command(PROG, argv), "machine": machine(), "date": now(),
               "tasks": T, "obs_dim": OBS, "act_dim": ACT, "core": args.core,
               "compiled": args.compiled, "repeats": args.repeats, "rounds": args.rounds,
               "rows": rows}
    save(args.out, payload, markdown(payload))
    return payload


if __name__ == "__main__":
    main()
