"""End-to-end training speed: env-steps/s and updates/s of every architecture.

    python -m benchmarks.speed.training_loop [--benchmark MT10] [--preset quick|paper] [--steps N]
        [--archs mtsac,mhsac,conal-search,conal-tree,env,sb3] [--device cpu|cuda]
        [--vector-strategy sync|async|worker]
        [--out benchmarks/results/speed-<device>.json] [--force]

Rows (each a real run of ``--steps`` env steps, summed over tasks):
  mtsac, mhsac      the Trainer with the fixed trees (phase "train");
  conal-search      the Trainer with supernets, the paper's search: the alpha step and
                    conflict-noticing (any-pair) on from the first update (phase "search");
  conal-tree        the Trainer with a pruned tree, branch points spread over 0..P
                    (phase "pruned");
  env               random actions on the same vector env: the floor no loop can beat;
  sb3               stable-baselines3 SAC on one task (MT1:reach-v3 for Meta-World) at the
                    preset's widths and per-task batch, one update per env step.
Overhead = wall / (env time + update time) of the same run, target <= 1.15: the rest is
acting, replay adds, logging and the loop itself. With ``--vector-strategy async`` (a process
per task) or ``worker`` (one process holding every task's env) the envs step while the update
runs: "env s" is then the stepping the update did not hide, and the ratio drops below 1 by
what the overlap saves. Wall time excludes evaluation and checkpoints as the Trainer's own
speed log does. Every row is written to the JSON (and a
markdown table beside it) as soon as it finishes; rows already there are skipped unless
--force, so a long paper-scale run can be finished across sessions. Each row records the
command and machine (torch threads included) that measured it; the JSON's top-level
``machine`` is the last call's.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from benchmarks.report_files import command, header, machine_text
from conal_rl.common import DEVICES, CommandParser, machine
from conal_rl.method import TreeSpec
from conal_rl.method.rules import PAPER_RULE
from conal_rl.training.conal_search import ConalSearch
from conal_rl.training.config import TrainConfig, add_config_arguments
from conal_rl.training.nets import fixed_trees, tree_factory
from conal_rl.training.trainer import Trainer
from envs import (
    VECTOR_STRATEGIES,
    Benchmark,
    UnknownBenchmark,
    check_benchmark_name,
    make_benchmark,
)

ROWS = ("env", "mtsac", "mhsac", "conal-search", "conal-tree", "sb3")
PHASES = {"env": "floor", "mtsac": "train", "mhsac": "train", "conal-search": "search",
          "conal-tree": "pruned", "sb3": "one task"}
# Quick MT10 on 2 CPU cores: ~40 s for mtsac/mhsac, ~75 s for the pruned tree, ~160 s for
# the search, ~200 s for SB3 (one update per env step).
DEFAULT_STEPS = {"quick": 15_000, "laptop": 15_000, "paper": 2_000}
TARGET = 1.15


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def trainer_row(arch: str, config: TrainConfig, bench: Benchmark) -> dict:
    """Run a real Trainer for ``config.total_steps`` and read its timers."""
    T = bench.num_tasks
    if arch == "conal-search":
        # The paper's search (its rule: an alpha step in every update); search_warmup_steps=0:
        # the arch step and conflict-noticing run in every update.
        config = replace(config, arch="conal", search_steps=config.total_steps,
                         search_warmup_steps=0, conflict_rule=PAPER_RULE)
    elif arch == "conal-tree":
        P = len(config.hidden)
        spec = TreeSpec(config.hidden, [t % (P + 1) for t in range(T)], bench.task_names)
        specs = {"actor": spec, "critic": spec}
    else:
        specs = fixed_trees(replace(config, arch=arch), bench.task_names)
    # An untimed short run first, so one-time costs (torch's first kernels, allocations)
    # do not land on the row.
    warmup = replace(config, total_steps=config.warmup_steps + 20 * T)
    for cfg in (warmup, config):
        with tempfile.TemporaryDirectory() as run_dir:
            if arch == "conal-search":  # a fresh search per Trainer: it owns its nets
                search = ConalSearch(cfg.search(), bench.task_names, cfg.batch_per_task)
                trainer = Trainer(cfg, Path(run_dir), bench, search.make_net,
                                  search.make_filter, [search], cfg.sac(searching=True),
                                  cfg.arch_holdout)
            else:
                trainer = Trainer(cfg, Path(run_dir), bench, tree_factory(specs))
            trainer.run(final_eval=False)
    # train_wall: the Trainer's own clock, less evaluation, checkpoints and videos.
    t = trainer.timers
    return measures(trainer.env_steps, trainer.updates, t["env"], t["update"], t["train_wall"],
                    act_s=t["act"], replay_add_s=t["replay_add"])


def env_row(bench: Benchmark, steps: int, seed: int) -> dict:
    """Random actions on the vector env: its pure stepping rate."""
    envs, T = bench.envs, bench.num_tasks
    envs.reset(seed=seed)
    rng = np.random.default_rng(seed)
    low, high = envs.action_space.low, envs.action_space.high
    actions = [rng.uniform(low, high).astype(envs.action_space.dtype) for _ in range(steps // T)]
    start = time.perf_counter()
    for action in actions:
        envs.step(action)
    wall = time.perf_counter() - start
    return measures(steps // T * T, 0, wall, 0.0, wall)


class _TimedEnv(gym.Wrapper):
    """Accumulates the seconds spent in the wrapped env's ``step``."""

    seconds = 0.0

    def step(self, action):
        start = time.perf_counter()
        out = self.env.step(action)
        self.seconds += time.perf_counter() - start
        return out


def sb3_row(task: str, config: TrainConfig, steps: int) -> dict:
    """SB3 SAC on one task; env and update time measured by wrapping the env and ``train``."""
    from stable_baselines3 import SAC

    env = _TimedEnv(make_benchmark(task, config.seed).envs.envs[0])
    model = SAC("MlpPolicy", env, learning_rate=config.lr, buffer_size=config.replay_size,
                learning_starts=100, batch_size=config.batch_per_task, gamma=config.gamma,
                tau=config.tau, policy_kwargs={"net_arch": list(config.hidden)},
                device=config.device, seed=config.seed)
    update = {"s": 0.0, "n": 0}
    train = model.train

    def timed_train(gradient_steps: int, batch_size: int = 64) -> None:
        start = time.perf_counter()
        train(gradient_steps=gradient_steps, batch_size=batch_size)
        update["s"] += time.perf_counter() - start
        update["n"] += gradient_steps

    model.train = timed_train  # an instance attribute: learn() calls self.train(...)
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    wall = time.perf_counter() - start
    return measures(model.num_timesteps, update["n"], env.seconds, update["s"], wall) | {
        "task": task}


def measures(env_steps: int, updates: int, env_s: float, update_s: float, wall_s: float,
             **extra: float) -> dict:
    return {"env_steps": env_steps, "updates": updates,
            "env_steps_per_s": env_steps / wall_s, "updates_per_s": updates / wall_s,
            "env_s": env_s, "update_s": update_s, "wall_s": wall_s,
            "overhead": wall_s / (env_s + update_s), **extra}


# ---- output ---------------------------------------------------------------------------------
HEADER = ("benchmark", "preset", "architecture", "phase", "envs", "torch threads", "env-steps/s",
          "updates/s", "env s", "update s", "wall s", "overhead", "load")


def table_cells(row: dict) -> tuple:
    return (row["benchmark"], row["preset"], row["arch"], row["phase"],
            row.get("vector_strategy", "sync"),
            str(row.get("torch_threads", row.get("machine", {}).get("torch_threads", 1))),
            f"{row['env_steps_per_s']:.0f}", f"{row['updates_per_s']:.1f}",
            f"{row['env_s']:.1f}", f"{row['update_s']:.1f}", f"{row['wall_s']:.1f}",
            f"{row['overhead']:.3f}",
            f"{row['load_average_start']:.1f}->{row['load_average_end']:.1f}")


def format_table(rows: list[dict]) -> str:
    cells = [HEADER, *(table_cells(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in cells)


def markdown(payload: dict) -> str:
    """The table; the machine line from the rows' own machines (one line when they agree,
    else a numbered list and a ``machine`` column). Rows written before rows recorded their
    machine are shown with the file's, the last call's."""
    last, rows = payload["machine"], payload["rows"]
    texts = [machine_text(r.get("machine", last)) for r in rows]
    machines = list(dict.fromkeys(texts)) or [machine_text(last)]
    columns, cells = HEADER, [table_cells(r) for r in rows]
    if len(machines) == 1:
        where = machines[0]
    else:
        where = "rows ran on " + "; ".join(f"machine {i}: {t}"
                                           for i, t in enumerate(machines, 1))
        columns = (*HEADER, "machine")
        cells = [(*c, str(machines.index(t) + 1)) for c, t in zip(cells, texts)]
    lines = [*header(f"End-to-end training speed ({last['device']})", payload.get("commands"),
                     where),
             f"Overhead = wall / (env s + update s), target <= {TARGET}. Load: "
             "1-min load average at the row's start -> end.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(lines) + "\n"


def save(out: Path, payload: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    out.with_suffix(".md").write_text(markdown(payload))


# ---- command line ---------------------------------------------------------------------------
def parse_args(argv):
    parser = CommandParser(prog="python -m benchmarks.speed.training_loop",
                           description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", default="MT10")
    parser.add_argument("--steps", type=int, default=None,
                        help="env steps per row, summed over tasks (default: quick "
                        f"{DEFAULT_STEPS['quick']}, laptop {DEFAULT_STEPS['laptop']}, paper "
                        f"{DEFAULT_STEPS['paper']})")
    parser.add_argument("--archs", default=",".join(ROWS),
                        help=f"comma-separated rows to run, of {','.join(ROWS)}")
    # no "auto": a measurement names its device
    parser.add_argument("--device", default="cpu", choices=DEVICES[1:])
    parser.add_argument("--vector-strategy", default="sync", choices=VECTOR_STRATEGIES,
                        help="the vector env of every row but sb3, as training's flag (async: "
                        "a process per task; worker: one process holding all tasks' envs; "
                        "both step while the update runs)")
    parser.add_argument("--sb3-task", default=None, help="the sb3 row's one-task benchmark "
                        "(default: MT1:reach-v3 for Meta-World, else the benchmark itself)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="CPU threads for torch, as training's --torch-threads (default: "
                        "%(default)s); 2 measures one run using both cores of a 2-core laptop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (default: benchmarks/results/speed-<device>.json)")
    parser.add_argument("--force", action="store_true", help="rerun rows already in --out")
    add_config_arguments(parser, only=("preset", "hidden"))  # training's, as it takes them
    parser.set_defaults(preset="quick")
    args = parser.parse_args(argv)
    args.archs = args.archs.split(",")
    unknown = set(args.archs) - set(ROWS)
    if unknown:
        parser.error(f"unknown --archs {sorted(unknown)}; valid: {','.join(ROWS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    if args.torch_threads < 1:
        parser.error("--torch-threads must be at least 1")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.seed < 0:
        parser.error(f"--seed must not be negative, got {args.seed}")
    for flag in ("benchmark", "sb3_task"):  # before any env is built
        try:
            check_benchmark_name(getattr(args, flag) or "MT10")
        except UnknownBenchmark as e:
            parser.error(f"--{flag.replace('_', '-')}: {e}")
    if args.hidden is not None:  # the widths training takes
        try:
            TrainConfig(benchmark=args.benchmark, preset=args.preset, hidden=args.hidden)
        except ValueError as e:
            parser.error(str(e))
    args.steps = args.steps or DEFAULT_STEPS[args.preset]
    args.out = args.out or Path(f"benchmarks/results/speed-{args.device}.json")
    if args.out.exists():  # rows are added to it: it must be one of ours
        try:
            previous = json.loads(args.out.read_text())
            if not isinstance(previous, dict) or not isinstance(previous.get("rows"), list):
                raise ValueError("no rows")
        except (OSError, ValueError) as e:
            parser.error(f"--out {args.out} is not a speed results file ({type(e).__name__}); "
                         "move it away or choose another --out")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    bench = make_benchmark(args.benchmark, args.seed, args.vector_strategy)
    T = bench.num_tasks
    given = {"hidden": args.hidden} if args.hidden else {}
    # warmup_steps: 10 vector steps of random actions, just enough to fill a first batch.
    # One update per env step whatever the preset's, as the sb3 row (and the rows of before):
    # the rows measure the loop around the update, the update's own cost per option is
    # benchmarks.speed.learner_options'.
    base = TrainConfig(benchmark=args.benchmark, preset=args.preset, total_steps=args.steps,
                       updates_per_step=1,
                       device=args.device, seed=args.seed, eval_every=0,
                       vector_strategy=args.vector_strategy,
                       checkpoint_every=10 * args.steps, warmup_steps=10 * T,
                       torch_threads=args.torch_threads, **given)
    torch.set_num_threads(base.torch_threads)  # as the Trainer does; recorded in machine()
    sb3_task = args.sb3_task or ("MT1:reach-v3" if bench.is_metaworld else args.benchmark)
    # One task: the preset's replay per task.
    sb3_config = replace(base, benchmark=sb3_task, replay_size=TrainConfig(
        benchmark=sb3_task, preset=args.preset).replay_size)

    payload = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    # "machine": the last call's; every row also records its own machine and command, so a
    # table built by several calls (other threads, another host) says where each row ran.
    this_machine = machine(args.device)
    payload["machine"] = this_machine | {"load_average_start": os.getloadavg()}
    call = command("python -m benchmarks.speed.training_loop", argv)
    payload.setdefault("commands", []).append(call)
    for name in args.archs:
        key = f"{args.benchmark}/{args.preset}/{name}"
        if args.vector_strategy != "sync" and name != "sb3":
            key += f"/{args.vector_strategy}"
        if args.torch_threads != 1 and name != "env":
            key += f"/threads{args.torch_threads}"
        if not args.force and any(r["key"] == key for r in payload["rows"]):
            print(f"{key}: already in {args.out}, skipped (--force reruns it)")
            continue
        load_start = load_average()
        if name == "env":
            row = env_row(bench, args.steps, args.seed)
        elif name == "sb3":
            row = sb3_row(sb3_task, sb3_config, args.steps)
        else:
            arch = {"conal-search": "conal", "conal-tree": "tree"}.get(name, name)
            # --arch tree must name its tree; trainer_row builds it (no file is read).
            tree = ("benchmarks.speed.training_loop: branch points t mod (P+1)"
                    if arch == "tree" else None)
            row = trainer_row(name, replace(base, arch=arch, architecture=tree), bench)
        row = {"key": key, "benchmark": args.benchmark, "preset": args.preset, "arch": name,
               "phase": PHASES[name], "device": args.device, "hidden": list(base.hidden),
               "vector_strategy": "sync" if name == "sb3" else args.vector_strategy,
               "batch_per_task": base.batch_per_task, "torch_threads": base.torch_threads, **row,
               "load_average_start": load_start, "load_average_end": load_average(),
               "time": time.strftime("%Y-%m-%d %H:%M:%S"), "command": call,
               "machine": this_machine}
        payload["rows"] = [r for r in payload["rows"] if r["key"] != key] + [row]
        payload["machine"]["load_average_end"] = os.getloadavg()
        save(args.out, payload)
        print(format_table([row]).splitlines()[1], flush=True)
    print()
    print(format_table(payload["rows"]))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.md')}")
    return payload


if __name__ == "__main__":
    main()
