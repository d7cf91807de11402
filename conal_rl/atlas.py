"""Which tasks conflict? ``python -m conal_rl.atlas RUN_DIR``: the conflict atlas of a run.

For the run's last checkpoint, per net (critic, actor) and shared layer: the cosines of the
tasks' gradients of their own losses, with jackknife standard errors and the split-half
reliability of the whole matrix, the tasks that point significantly against the others,
and a clustering of the tasks. Data: the run's saved replay (``--save-replay``), the live
measurement training made on its replay at the checkpoint (``--atlas-every``), or fresh
rollouts of its stochastic policy. With live measurements (``train
--atlas-every``) also how the structure changed over training. Writes, in RUN_DIR/atlas/
(or ``--out``): atlas.json, <net>.png, <net>-over-training.png, and the pictures to the
run's TensorBoard.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from conal_rl.common import (
    DEVICES,
    CommandParser,
    UserError,
    machine,
    resolve_device,
    run_cli,
)
from conal_rl.method.evidence import MIN_EPISODES
from conal_rl.training.config import ATLAS_MIN_SAMPLES
from conal_rl.training.preflight import load_config, run_dir_of
from conal_rl.training.rundir import RunDir

PROG = "python -m conal_rl.atlas"
SOURCES = ("auto", "replay", "rollouts")
PANELS = 6  # measurements shown over training, evenly spaced from the first to the last


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog=PROG, description=__doc__.split("\n\n")[1])
    parser.add_argument("run", metavar="RUN_DIR", help="run directory (or its checkpoint)")
    parser.add_argument("--samples", type=int, default=1024,
                        help="transitions per task (default: %(default)s)")
    parser.add_argument("--source", choices=SOURCES, default="auto",
                        help="the data: the saved replay, or fresh rollouts of the policy "
                        "(--episodes whole episodes of every task), or auto (default): the "
                        "saved replay, else the live measurement on the replay at the "
                        "checkpoint (train --atlas-every), else rollouts")
    parser.add_argument("--episodes", type=int, default=8,
                        help="--source rollouts: episodes of every task to collect; the "
                        "statistics' chunks and halves share no episode, so this bounds "
                        f"their number (at least {MIN_EPISODES}; default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the sample and the rollouts (default: %(default)s)")
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="torch device (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="output folder "
                        "(default: RUN_DIR/atlas)")
    parser.add_argument("--no-tensorboard", action="store_true",
                        help="do not add the pictures to the run's TensorBoard")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    return run_cli(PROG, lambda: _main(args))


def _main(args: argparse.Namespace) -> dict:
    if args.samples < ATLAS_MIN_SAMPLES:
        raise UserError(f"--samples must be at least {ATLAS_MIN_SAMPLES}, got {args.samples}")
    if args.seed < 0:
        raise UserError(f"--seed must not be negative, got {args.seed}")
    if args.episodes < MIN_EPISODES:
        raise UserError(f"--episodes must be at least {MIN_EPISODES} (two per half of the "
                        f"split-half reliability), got {args.episodes}")
    run_dir = run_dir_of(args.run)
    config = load_config(run_dir)
    from envs.video import use_headless_gl

    use_headless_gl()  # before metaworld imports mujoco
    import torch

    from conal_rl.training import checkpoint
    from conal_rl.training import conflict_atlas as atlas
    from conal_rl.training.runs import load_checked

    torch.set_num_threads(1)
    device = resolve_device(args.device)
    run = load_checked(run_dir, device)
    if run.agent.num_tasks < 2:
        raise UserError(f"{run_dir}: a run of one task ({config.benchmark}) has no conflicts "
                        "between tasks to measure")
    if not atlas.shared_layer_count(run.agent):
        raise UserError(f"{run_dir}: its networks have no shared layers the atlas can "
                        f"measure ({config.arch})")
    tasks = list(run.specs["actor"].task_names) or [config.benchmark]
    files = RunDir(run_dir)
    live = {m["env_steps"]: m for m in atlas.live_measurements(files)}
    # mmap: the saved replay is mapped, read only if it is measured on
    state = checkpoint.load(files.checkpoint, mmap=True)
    if args.source == "auto" and run.env_steps in live and not state.get("replay"):
        measured = atlas.from_json(live[run.env_steps])
        payload = atlas.to_json(measured, tasks, env_steps=run.env_steps,
                                source="replay (measured live)", samples=config.atlas_samples)
    else:
        replay = _data(args, run, state, device)
        torch.manual_seed(args.seed)
        generator = torch.Generator(device).manual_seed(args.seed)
        batch, episodes = replay.sample_distinct(args.samples, generator)
        measured = atlas.measure(run.agent, batch, episodes)
        payload = atlas.to_json(measured, tasks, env_steps=run.env_steps, source=args.source,
                                samples=args.samples, seed=args.seed)
    payload |= {"command": shlex.join([*PROG.split(), *(args.argv or [])]),
                "machine": machine(device), "date": time.strftime("%Y-%m-%d"),
                "run": {k: getattr(config, k) for k in ("benchmark", "arch", "preset", "seed")}}
    _write(args, files, payload, measured, tasks)
    return payload


def _data(args, run, state: dict, device):
    """The transitions to measure on: the replay saved in the checkpoint ``state``, else
    fresh rollouts."""
    from conal_rl.training import conflict_atlas as atlas
    from envs import make_benchmark

    bench = make_benchmark(run.config.benchmark, run.config.seed)
    obs_dim, act_dim = bench.obs_dim, bench.action_space.shape[0]
    replay = None
    if args.source != "rollouts":
        replay = atlas.saved_replay(state, bench.num_tasks, obs_dim, act_dim, device)
        if replay is None and args.source == "replay":
            raise UserError(f"{run.run_dir}: its checkpoint holds no replay (trained without "
                            "--save-replay); use --source rollouts")
    if replay is None:
        from conal_rl.training.runs import Policy

        args.source = "rollouts"
        policy = Policy(run.agent, bench.action_space, device, deterministic=False)
        steps = max(args.samples, args.episodes * (bench.max_episode_steps or 1))
        replay = atlas.rollout_replay(policy, bench, steps, args.seed)
    else:
        args.source = "replay"
    bench.envs.close()
    return replay


def _write(args, run: RunDir, payload: dict, measured, tasks: list[str]) -> None:
    from conal_rl.analysis.atlas_figures import atlas_figure, over_training_figure
    from conal_rl.training import conflict_atlas as atlas

    out = args.out or run.atlas
    out.mkdir(parents=True, exist_ok=True)
    history = {m["env_steps"]: atlas.from_json(m) for m in atlas.live_measurements(run)}
    history[payload["env_steps"]] = measured
    steps = sorted(history)
    payload["over_training"] = atlas.history([(s, history[s]) for s in steps], tasks)
    summary = out / run.atlas_summary.name
    run.write_json(summary, payload)
    shown = [steps[round(i * (len(steps) - 1) / (PANELS - 1))] for i in range(PANELS)]
    shown = sorted(set(shown)) if len(steps) > PANELS else steps
    figures = {}
    for role in measured:
        figures[role] = atlas_figure(measured, role, tasks)
        first = next(iter(measured[role]), None)
        if len(steps) > 1 and first is not None:
            figures[f"{role}-over-training"] = over_training_figure(
                [(step, history[step]) for step in shown], role, first, tasks)
    for name, fig in figures.items():
        fig.savefig(out / f"{name}.png", dpi=90)
    if not args.no_tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run.path))
        for name, fig in figures.items():
            writer.add_figure(f"atlas/{name}", fig, payload["env_steps"])
        writer.close()
    print(summary_text(payload))
    print(f"wrote {summary} and {', '.join(f'{n}.png' for n in figures)} in {out}")


def summary_text(payload: dict) -> str:
    """Per net and layer of the last measurement: reliability, mean cosine, the tasks
    against the others."""
    last = payload["over_training"][-1]
    lines = [f"conflict atlas at env step {payload['env_steps']:,} ({payload['samples']} "
             f"samples per task from {payload['source']}):"]
    lines.append("  " + episodes_note(
        [d.get("episodes") for layers in last["nets"].values() for d in layers.values()]))
    for role, layers in last["nets"].items():
        # "q1/head": the trunk's tasks read one head; "q1/head.2": group 2 reads one
        shared_head = any(name.rsplit("/", 1)[-1].split(".")[0] == "head" for name in layers)
        if not shared_head:
            lines.append(f"  ({role}: a head per task, so the signs follow the heads: read "
                         "'outside the main cluster', by the sign-blind affinity)")
        for name, d in layers.items():
            reliability = "n/a" if d["reliability"] is None else f"{d['reliability']:.2f}"
            lines.append(f"  {role} {name:<12} r_split-half {reliability:>5}  mean cosine "
                         f"{d['mean_cosine']:+.2f}  negative {d['negative_share']:.0%}  "
                         f"against the others: {', '.join(d['conflicting']) or 'none'}; "
                         "outside the main cluster: "
                         f"{', '.join(d['outside_main_cluster']) or 'none'}")
    return "\n".join(lines)


def episodes_note(episodes: list[int | None]) -> str:
    """What the figures rest on, in a line: how many episodes per task, and a warning where
    the statistics' chunks may share episodes (too few, or not known)."""
    if None in episodes:
        return ("warning: the samples' episodes are not known (a replay saved before they "
                "were counted, or a live measurement of before): its chunks may share "
                "episodes, so the errors and the reliability may come out too small")
    fewest = min(episodes, default=0)
    if fewest < MIN_EPISODES:
        return (f"warning: some task's samples come from {fewest} episode(s), fewer than "
                f"{MIN_EPISODES}: the chunks share episodes, so the errors and the "
                "reliability come out too small; measure later in training or on more "
                "episodes")
    return (f"every figure rests on samples of at least {fewest} episodes per task; its "
            "chunks and halves share none")


if __name__ == "__main__":
    main()
