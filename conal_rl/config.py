"""The training configuration: one dataclass whose field docs become ``--help``.

Fields whose default is ``PRESET`` take their value from the chosen preset (``paper``,
``quick`` or ``laptop``); presets give budgets per task, scaled by the number of tasks, so
MT10, MT50 and MT1 get the same per-task budget.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

PRESET = None  # marker: the value comes from the preset


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


# Per-task budgets and network sizes. "paper": the Meta-World multi-task SAC reference
# (rainx0r/metaworld-algorithms MT10: 20M steps in all = 2M per task, batch 1280 = 128 per
# task, replay 1M = 100k per task, 4k warm-up, evaluation every 200k steps with 50 episodes
# per task; 3x400 nets as in Yu et al. 2019 and mtrl). "quick": a CPU smoke run, ~10 min on
# 2 cores for MT10.
PRESETS = {
    "paper": dict(steps_per_task=2_000_000, hidden=(400, 400, 400), batch_per_task=128,
                  replay_per_task=100_000, warmup_per_task=400, eval_every_per_task=20_000,
                  eval_episodes=50, checkpoint_every_per_task=20_000,
                  search_per_task=200_000, arch_lr=5e-5, minutes=None),
    "quick": dict(steps_per_task=10_000, hidden=(128, 128, 128), batch_per_task=32,
                  replay_per_task=10_000, warmup_per_task=500, eval_every_per_task=5_000,
                  eval_episodes=5, checkpoint_every_per_task=5_000,
                  search_per_task=3_000, arch_lr=1e-3, minutes=None),
    # "laptop": one hour of training on 2 CPU cores (--minutes binds, the step budget is
    # only a ceiling). Nets and batch chosen by benchmarks/laptop_sweep.py (results in
    # benchmarks/results/laptop-sweep/): after 60 minutes 3x128 with 32 per task and 3x256
    # with 64 per task end within noise (0.20 and 0.22), but 3x128 takes 2.3x the env steps
    # and leads from 20 minutes on (0.26 mean of its evaluations past 30 minutes vs 0.24).
    "laptop": dict(steps_per_task=1_000_000, hidden=(128, 128, 128), batch_per_task=32,
                   replay_per_task=100_000, warmup_per_task=500, eval_every_per_task=15_000,
                   eval_episodes=10, checkpoint_every_per_task=15_000,
                   search_per_task=5_000, arch_lr=1e-3, minutes=60),
}


@dataclass
class TrainConfig:
    benchmark: str = _f("MT10", "MT10, MT50, MT1:<task> (e.g. MT1:reach-v3) or gym:<env-id> "
                        "(e.g. gym:Pendulum-v1, a one-task sanity check)")
    arch: str = _f("mtsac", "network architecture: mtsac (shared MLP + one-hot task id), "
                   "mhsac (shared trunk, one head per task), conal (search the trees with "
                   "CoNAL, derive, prune, then train them), tree (a given tree, see "
                   "--architecture)", choices=("mtsac", "mhsac", "conal", "tree"))
    architecture: str | None = _f(None, "architecture JSON (actor and critic trees) for "
                                  "--arch tree")
    preset: str = _f("paper", "default sizes and budgets: paper (3x400 nets, 2M steps per "
                     "task), quick (small nets, 10k steps per task: a ~10 min CPU smoke run "
                     "on MT10) or laptop (60 minutes of training on 2 CPU cores, 3x128 nets, "
                     "32 per task: the best of benchmarks/results/laptop-sweep/)",
                     choices=tuple(PRESETS))
    total_steps: int | None = _f(PRESET, "env steps in all, summed over tasks (default: the "
                                 "preset's steps per task x number of tasks)")
    minutes: float | None = _f(PRESET, "wall-clock budget of training in minutes: the run stops "
                               "at the first of --total-steps and --minutes. Counts training "
                               "only (evaluation, checkpoints and videos excluded), summed over "
                               "resumes; for --arch conal the search counts too. 0: no limit "
                               "(default: none, laptop 60)")
    seed: int = _f(0, "random seed (networks, replay sampling, envs)")
    device: str = _f("auto", "torch device: auto (cuda when available), cpu or cuda",
                     choices=("auto", "cpu", "cuda"))
    run_dir: str | None = _f(None, "output directory (default: runs/<benchmark>-<arch>-s<seed>"
                             "-<time>)")
    eval_every: int | None = _f(PRESET, "env steps (in all) between evaluations (default: "
                                "the preset's per task x tasks); 0 evaluates only at the end")
    eval_episodes: int | None = _f(PRESET, "evaluation episodes per task (default: paper 50, "
                                   "quick 5)")
    video_every: int = _f(0, "env steps (in all) between rollout videos: one deterministic "
                          "episode of every task, mp4s in RUN_DIR/videos/step_<N>/ and the grid's "
                          "last frame in TensorBoard; 0: none. Slow on a CPU (~0.1 s a frame, "
                          "~1 min per Meta-World task)")
    checkpoint_every: int | None = _f(PRESET, "env steps (in all) between checkpoints "
                                      "(default: as eval)")
    save_replay: bool = _f(False, "also store the replay buffer in checkpoints (exact resume "
                           "of the data; large)")
    hidden: tuple[int, ...] | None = _f(PRESET, "hidden widths, comma separated, e.g. "
                                        "400,400,400 (default: preset)")
    batch_per_task: int | None = _f(PRESET, "samples per task in every update batch")
    replay_size: int | None = _f(PRESET, "transitions kept in all, split equally over tasks "
                                 "(default: 100k per task, quick 10k)")
    warmup_steps: int | None = _f(PRESET, "env steps (in all) of uniform random actions "
                                  "before updates start (default: 400 per task, quick 500)")
    search_steps: int | None = _f(PRESET, "--arch conal: env steps (in all) of the search "
                                  "phase, before the pruned trees train for --total-steps "
                                  "(default: 10%% of the paper budget, quick 3k per task)")
    search_warmup_steps: int | None = _f(PRESET, "--arch conal: env steps (in all) at the "
                                         "start of the search that train the supernets' "
                                         "weights only (no alpha step, no conflict-noticing): "
                                         "a from-scratch stand-in for the official search's "
                                         "pretrained start (default: a quarter of the search)")
    arch_lr: float | None = _f(PRESET, "--arch conal: Adam learning rate of alpha (default: "
                               "paper 5e-5 as the official CoNAL search, quick 1e-3 to move "
                               "alpha within a short search)")
    gumbel: bool = _f(False, "--arch conal: mix the branch points with a hard Gumbel-softmax "
                      "sample (temperature annealed 5 -> 0.5) instead of softmax(alpha)",
                      off_flag="--softmax")
    no_conflict_noticing: bool = _f(False, "--arch conal: ablation, search without "
                                    "conflict-noticing")
    no_private: bool = _f(False, "--arch conal: ablation, search space without purely-"
                          "specific modules (LTB-style: the modules after a branch point are "
                          "shared by all tasks that leave there)")
    inherit_weights: bool = _f(False, "--arch conal: train the pruned trees from the searched "
                               "weights instead of from scratch (the paper retrains from "
                               "scratch)")
    loss_weighting: str = _f("mean", "how the per-task critic and actor losses combine: mean, "
                             "or rlw (Random Loss Weighting, Lin et al., TMLR 2022: weights "
                             "softmax(z), z ~ N(0, I), drawn afresh for each loss at every "
                             "update; the temperature losses stay unweighted). Trained "
                             "networks only: CoNAL's search keeps the mean",
                             choices=("mean", "rlw"))
    grad_surgery: str = _f("none", "gradient surgery on the shared modules of the trained "
                           "actor and critics: none, or pcgrad (PCGrad, Yu et al., NeurIPS "
                           "2020: per shared module, each task's gradient loses its component "
                           "along every other task's gradient it conflicts with; task-specific "
                           "modules untouched; see conal_rl/pcgrad.py). With --arch conal the "
                           "search keeps conflict-noticing and runs without PCGrad: 'CoNAL + "
                           "PCGrad' is the conflict-noticed search's architecture trained with "
                           "PCGrad on its shared modules", choices=("none", "pcgrad"))
    updates_per_step: int = _f(1, "gradient updates per vector-env step (one step of every "
                               "task)")
    lr: float = _f(3e-4, "Adam learning rate of actor, critics and temperatures")
    gamma: float = _f(0.99, "discount factor")
    tau: float = _f(0.005, "Polyak rate of the target critics")
    log_every: int = _f(2_000, "env steps (in all) between TensorBoard scalar logs")
    torch_threads: int = _f(1, "CPU threads for torch. 1 by default: the env loop is serial, "
                            "the matrices are small, and several runs sharing a few cores slow "
                            "down ~100x when each spins a thread pool")
    vector_strategy: str = _f("sync", "gymnasium vector env: sync (one process) or async "
                              "(a process per task)", choices=("sync", "async"))

    def resolved(self, num_tasks: int) -> TrainConfig:
        """Fill preset-valued fields for a benchmark with ``num_tasks`` tasks."""
        p = PRESETS[self.preset]
        per_task = {
            "total_steps": p["steps_per_task"], "eval_every": p["eval_every_per_task"],
            "checkpoint_every": p["checkpoint_every_per_task"],
            "replay_size": p["replay_per_task"], "warmup_steps": p["warmup_per_task"],
            "search_steps": p["search_per_task"],
        }
        values = asdict(self)
        for k, v in per_task.items():
            if values[k] is None:
                values[k] = v * num_tasks
        for k in ("hidden", "batch_per_task", "eval_episodes", "arch_lr", "minutes"):
            if values[k] is None:
                values[k] = p[k]
        if values["search_warmup_steps"] is None:
            values["search_warmup_steps"] = values["search_steps"] // 4
        values["hidden"] = tuple(values["hidden"])
        return TrainConfig(**values)

    def validate(self) -> None:
        positive = ("total_steps", "eval_episodes", "checkpoint_every", "batch_per_task",
                    "replay_size", "updates_per_step", "log_every", "torch_threads", "search_steps",
                    "arch_lr")
        for k in positive:
            v = getattr(self, k)
            if v is not None and v <= 0:
                raise ValueError(f"--{k.replace('_', '-')} must be positive, got {v}")
        for k in ("eval_every", "warmup_steps", "search_warmup_steps", "video_every", "minutes"):
            v = getattr(self, k)
            if v is not None and v < 0:
                raise ValueError(f"--{k.replace('_', '-')} must not be negative, got {v}")
        if self.hidden is not None and (not self.hidden or min(self.hidden) <= 0):
            raise ValueError(f"--hidden needs positive widths, got {self.hidden}")
        if not (0 < self.lr and 0 <= self.gamma <= 1 and 0 < self.tau <= 1):
            raise ValueError("need lr > 0, 0 <= gamma <= 1 and 0 < tau <= 1")
        if (self.arch == "conal" and self.search_steps is not None
                and self.search_warmup_steps is not None
                and self.search_warmup_steps >= self.search_steps):
            raise ValueError("--search-warmup-steps must be smaller than --search-steps")
        if self.arch == "tree" and not self.architecture:
            raise ValueError("--arch tree needs --architecture FILE.json")

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        values = json.loads(path.read_text())
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"{path}: unknown config keys {sorted(unknown)}")
        if values.get("hidden") is not None:
            values["hidden"] = tuple(values["hidden"])
        return cls(**values)


def _parse_widths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        msg = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def add_config_arguments(parser: argparse.ArgumentParser, cls=TrainConfig) -> None:
    """One ``--flag`` per dataclass field; every default is None so that the flags a user
    really gave can be told apart (needed by presets and --resume)."""
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        meta = dict(f.metadata)
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        if kind == "bool":
            parser.add_argument(flag, action="store_true", default=None, help=meta["help"])
            if "off_flag" in meta:
                parser.add_argument(meta["off_flag"], dest=f.name, action="store_false",
                                    help=f"the opposite of {flag} (the default)")
            continue
        if kind.startswith("tuple"):
            conv = _parse_widths
        elif kind.startswith("int"):
            conv = int
        elif kind.startswith("float"):
            conv = float
        else:
            conv = str
        default = f.default
        shown = "" if default is None else f" (default: {default})"
        parser.add_argument(flag, type=conv, default=None, choices=meta.get("choices"),
                            help=meta["help"] + shown, metavar=None if meta.get("choices")
                            else f.name.upper())


def given_arguments(args: argparse.Namespace, cls=TrainConfig) -> dict:
    """The config fields the user set on the command line."""
    return {f.name: getattr(args, f.name) for f in fields(cls)
            if getattr(args, f.name, None) is not None}
