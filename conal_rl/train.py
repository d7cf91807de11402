"""Train multi-task SAC on a benchmark: ``python -m conal_rl.train --benchmark MT10``.

Parses the flags into one :class:`TrainConfig`, builds the benchmark's envs, takes the
networks' trees (fixed by ``--arch``, or searched by CoNAL and pruned), and runs the
training loop, which resumes from a checkpoint (``--resume RUN_DIR``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from conal_rl.common import CommandParser, UserError, run_cli
from conal_rl.training.architectures import architecture as architecture_of
from conal_rl.training.architectures import configured
from conal_rl.training.config import TrainConfig, add_config_arguments, given_arguments
from conal_rl.training.preflight import config_for_run
from conal_rl.training.rundir import RunDir

# Torch, the envs and the search are imported once the flags and files are checked (below):
# a wrong flag answers before they load.

PROG = "python -m conal_rl.train"
EXIT_STATUSES = ("exit status: 0 done; 2 a bad flag or file (one line, before any env is "
                 "built); 3 non-finite values (NaN/inf in a loss, temperature or parameter: "
                 "stopped without saving, the last good checkpoint kept); 4 an env worker "
                 "process died (checkpoint saved: --resume continues); 5 a checkpoint could "
                 "not be written (disk full, read-only: the previous one kept); 128+N "
                 "stopped by signal N (checkpoint saved)")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog=PROG, description=__doc__.split("\n\n")[0],
                           epilog=EXIT_STATUSES)
    add_config_arguments(parser)
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue the run in RUN_DIR from its last checkpoint (its "
                        "config.json is used; --total-steps etc. may extend it)")
    return parser


def architecture(config: TrainConfig, run_dir: Path, bench
                 ) -> tuple[dict, dict | None]:
    """The trees to train, from the run's architecture file once it exists (written last
    by a search: its presence means the search is done), else fixed by ``--arch`` or
    searched by CoNAL. Also returns the searched weights with ``--inherit-weights``."""
    from conal_rl.analysis.draw import heatmap_figure, save_tree_pictures
    from conal_rl.training import checkpoint
    from conal_rl.training.nets import fixed_trees, load_specs, save_specs

    run = RunDir(run_dir)
    arch_file, arch = run.architecture, architecture_of(config.arch)
    if not arch_file.exists():
        if arch.searched:
            from conal_rl.training import conal_search

            search = getattr(conal_search, arch.search)
            specs, details = search(config, run_dir, bench, heatmap_figure)
            specs = configured(specs, config)
        else:
            sizes = (bench.obs_dim, int(bench.action_space.shape[0]))
            specs, details = fixed_trees(config, bench.task_names, sizes), None
        run_dir.mkdir(parents=True, exist_ok=True)
        save_tree_pictures(run.architecture_picture, specs)
        save_specs(arch_file, specs, details)
    inherited = None
    if arch.searched and config.inherit_weights:
        inherited = checkpoint.load(run.inherited)["trees"]
    return load_specs(arch_file), inherited


def prepare(config: TrainConfig, run_dir: Path):
    """Envs, trees (searched first for --arch conal) and the trainer, resumed if a
    checkpoint is there."""
    from conal_rl.analysis.atlas_figures import atlas_figure
    from conal_rl.method import num_parameters
    from conal_rl.training.nets import surgery_filter, tree_factory
    from conal_rl.training.trainer import Trainer
    from envs import make_benchmark

    print("config:", json.dumps(asdict(config)))
    bench = make_benchmark(config.benchmark, config.seed, config.vector_strategy)
    specs, inherited = architecture(config, run_dir, bench)
    make_filter, hooks = surgery_filter(config.grad_surgery), []
    make_net = tree_factory(specs, config.net_options())
    if config.branch_every:
        hooks.append(branching_hook(config, run_dir, specs, bench.task_names, make_filter))
        make_net = hooks[-1].make_net
    trainer = Trainer(config, run_dir, bench, make_net, make_filter, hooks=hooks,
                      atlas_figure=atlas_figure, **held_out_episodes(config, bench))
    if inherited is not None and not trainer.resumed:
        trainer.agent.load_networks(inherited)
        print("training the pruned trees from the searched weights (--inherit-weights)")
    print(f"run directory: {run_dir}")
    for role in ("actor", "critic"):
        net = getattr(trainer.agent, role)
        print(f"{role}: {num_parameters(net):,} parameters ({config.arch})")
    return trainer


def held_out_episodes(config: TrainConfig, bench) -> dict:
    """The replay's held-out buffer for ``--branch-rule gain``: probes are compared on whole
    episodes the weights never train on, every ``--gain-holdout``-th one, the newest twice
    the fewest a verdict needs kept per task (older ones go back to training)."""
    if not (config.branch_every and config.branch_rule == "gain"):
        return {}
    from conal_rl.method.evidence import MIN_EPISODES

    window = 2 * MIN_EPISODES * (bench.max_episode_steps or 0)
    return {"holdout_every": config.gain_holdout, "holdout_by": "episodes",
            "holdout_window": window}


def branching_hook(config: TrainConfig, run_dir: Path, specs: dict, task_names: list[str],
                   make_filter):
    """``--branch-every``: the hook growing the trees, from the trees the run's checkpoint
    holds when it resumes (they may have grown since the architecture file)."""
    from conal_rl.training import checkpoint
    from conal_rl.training.branching import Branching
    from conal_rl.training.nets import trees_in

    run = RunDir(run_dir)
    if run.checkpoint.exists():
        state = checkpoint.load(run.checkpoint, mmap=True)
        specs = trees_in(checkpoint.hook_state(state, "branching")) or specs
    return Branching(specs, config.growth(), task_names, make_filter, config.net_options())


def save_grown(run_dir: Path, hooks: list, train_seconds: float) -> None:
    """The grown trees and their branches (and --branch-rule gain's verdicts, with what
    measuring them cost), beside the architecture file."""
    hook = next((h for h in hooks if h.name == "branching"), None)
    if hook is None or not (hook.branches or hook.rule.measured):
        return
    from conal_rl.analysis.draw import save_gain_picture, save_tree_pictures
    from conal_rl.training.nets import save_specs

    run = RunDir(run_dir)
    probes = {}
    if hook.rule.measured:
        seconds = hook.rule.seconds
        probes = {"probes": [v | {"task": hook.task_names[v["task"]]}
                             for v in hook.rule.measured],
                  "probe_seconds": round(seconds, 1), "train_seconds": round(train_seconds, 1)}
        print(f"probes: {seconds:.0f} s of {train_seconds:.0f} s of training "
              f"({seconds / max(train_seconds, 1e-9):.1%})")
    save_specs(run.grown, hook.specs, {role: {"branches": [b for b in hook.branches
                                                           if b["net"] == role]}
                                       | (probes if role == "critic" else {})
                                       for role in hook.specs})
    save_tree_pictures(run.grown_picture, hook.specs)
    if probes:
        save_gain_picture(run.gains_picture, probes["probes"])
    for b in hook.branches:
        why = (f" (its held-out TD error {b['gain']:.1%} lower, ± {b['se']:.1%}, "
               f"{b['episodes']} episodes)" if "gain" in b else
               " (the other tasks of its group left it)" if b.get("left_alone") else "")
        print(f"branch at env step {b['env_steps']:,}: {b['net']} {b['task']} has its own "
              f"modules from module {b['module']} on{why}")


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    from envs.video import use_headless_gl

    use_headless_gl()  # for videos: before anything imports mujoco (metaworld does)
    config, run_dir = run_cli(PROG, lambda: config_for_run(given_arguments(args), args.resume))
    trainer = run_cli(PROG, lambda: prepare(config, run_dir), (UserError, ValueError))
    from conal_rl.training.conal_search import search_seconds

    try:
        return run_cli(PROG, lambda: trainer.run(spent_s=search_seconds(run_dir)))
    finally:
        save_grown(run_dir, trainer.hooks, trainer.train_seconds())


if __name__ == "__main__":
    main()
