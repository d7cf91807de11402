"""The training configuration: one frozen dataclass whose attribute docstrings become
``--help``.

Fields whose default is ``PRESET`` take their value from the chosen preset (``paper``,
``quick`` or ``laptop``) when the config is made, so every config holds concrete values.
Presets give budgets per task, scaled by the number of tasks, so MT10, MT50 and MT1 get
the same per-task budget.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import math
import textwrap
import types
import typing
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Literal

from agents.choices import LOSS_WEIGHTINGS, PRECISIONS
from conal_rl.common import DEVICES, write_json_atomic
from conal_rl.method.rules import CONFLICT_RULES, DEFAULT_RULE, PAPER_RULE, rules_help
from conal_rl.method.weight_inits import WEIGHT_INITS
from conal_rl.training.architectures import (
    ARCHITECTURES,
    MAX_WIDTH,
    TRAINED,
    architecture,
    growing,
)
from conal_rl.training.architectures import help_text as arch_help
from envs import VECTOR_STRATEGIES, num_tasks

if typing.TYPE_CHECKING:  # imported where used: flags are parsed before torch is loaded
    from agents import SACConfig
    from conal_rl.method import NetOptions, SearchSettings


GRAD_SURGERIES = ("none", "pcgrad")
"""``--grad-surgery``: gradient surgery on the trained networks' shared modules."""
ATLAS_MIN_SAMPLES = 64  # per task: fewer leaves the jackknife's chunks a handful each


class _Preset:
    def __repr__(self) -> str:
        return "PRESET"


PRESET = _Preset()  # marker default: the value comes from the preset

# Per-task budgets and network sizes. "paper": the Meta-World multi-task SAC reference
# (rainx0r/metaworld-algorithms MT10: 20M steps in all = 2M per task, batch 1280 = 128 per
# task, replay 1M = 100k per task, 4k warm-up counted in vector steps = 4k per task,
# evaluation every 200k steps with 50 episodes per task; 3x400 nets as in Yu et al. 2019
# and mtrl). "quick": a CPU smoke run on MT10 that ends with some success (the README says
# what it gives, measured).
PRESETS = {
    "paper": dict(steps_per_task=2_000_000, hidden=(400, 400, 400), batch_per_task=128,
                  replay_per_task=100_000, warmup_per_task=4_000, eval_every_per_task=20_000,
                  eval_episodes=50, checkpoint_every_per_task=20_000,
                  search_per_task=200_000, arch_lr=5e-5, minutes=None, vector_strategy="sync",
                  layer_norm=False, updates_per_step=1, branch_every_per_task=100_000),
    "quick": dict(steps_per_task=20_000, hidden=(128, 128, 128), batch_per_task=32,
                  replay_per_task=20_000, warmup_per_task=500, eval_every_per_task=10_000,
                  eval_episodes=5, checkpoint_every_per_task=10_000,
                  search_per_task=3_000, arch_lr=1e-3, minutes=None, vector_strategy="worker",
                  layer_norm=True, updates_per_step=2, branch_every_per_task=0),
    # "laptop": one hour of training on 2 CPU cores (--minutes binds, the step budget is
    # only a ceiling). Nets and batch chosen by benchmarks/experiments/laptop_sweep.py (results in
    # benchmarks/results/laptop-sweep/): 3x128 with 32 per task takes about twice the env steps
    # of 3x256 with 64 per task and leads at 30 and 45 minutes. LayerNorm and 2 updates per env
    # step (quick too, same nets) chosen by benchmarks/experiments/learner_study.py (results in
    # benchmarks/results/learner-study/ and learner-1m/).
    "laptop": dict(steps_per_task=1_000_000, hidden=(128, 128, 128), batch_per_task=32,
                   replay_per_task=100_000, warmup_per_task=500, eval_every_per_task=15_000,
                   eval_episodes=10, checkpoint_every_per_task=15_000,
                   search_per_task=5_000, arch_lr=1e-3, minutes=60, vector_strategy="worker",
                   layer_norm=True, updates_per_step=2, branch_every_per_task=5_000),
}
PRESET_NAMES = tuple(PRESETS)
# Preset-valued fields: per task (scaled by the number of tasks), or taken as they are.
_PER_TASK = {"total_steps": "steps_per_task", "eval_every": "eval_every_per_task",
             "checkpoint_every": "checkpoint_every_per_task", "replay_size": "replay_per_task",
             "warmup_steps": "warmup_per_task", "search_steps": "search_per_task"}
_AS_IS = ("hidden", "batch_per_task", "eval_episodes", "arch_lr", "minutes", "vector_strategy",
          "layer_norm", "updates_per_step")

# Fields added since the first config.json format, with the value that reproduces what a run
# written before them did: CoNAL's search had the paper's rule, no held-out replay and an
# architecture step before every update (and no run was CoNAL-Pro's, whose stage length
# follows the preset).
ADDED_FIELDS = {"conflict_rule": PAPER_RULE, "arch_holdout": 0, "stage_steps": PRESET,
                "arch_every": 1, "atlas_every": 0, "atlas_samples": 1024,
                "evidence_every": PRESET, "evidence_samples": 1024, "branch_every": 0,
                "layer_norm": False, "normalize_obs": False, "residual": False,
                "weight_init": "torch", "max_grad_norm": 0.0, "weight_decay": 0.0, "reset_every": 0,
                "precision": "fp32", "critic_hidden": None, "critic_params": 0,
                "branch_rule": "lasting-cluster", "gain_price": 0.05, "gain_holdout": 10,
                "gain_budget": 0, "task_id": False, "shared_head": False}

# The config's parts, as --help groups its flags: what a run is and how it is run, the
# learner (networks and update), the search (CoNAL, CoNAL-Pro and their rules), and the
# measurements taken while it trains. Every field in exactly one part.
PARTS = {
    "the run (benchmark, budget, evaluation, checkpoints, where and how fast)": (
        "benchmark", "arch", "architecture", "preset", "total_steps", "minutes", "seed",
        "device", "run_dir", "eval_every", "eval_episodes", "video_every", "checkpoint_every",
        "save_replay", "log_every", "torch_threads", "vector_strategy"),
    "the learner (networks and update, every architecture)": (
        "hidden", "critic_hidden", "critic_params", "batch_per_task", "replay_size",
        "warmup_steps", "updates_per_step", "layer_norm", "normalize_obs", "residual",
        "task_id", "shared_head", "weight_init", "precision", "max_grad_norm", "weight_decay",
        "reset_every", "lr", "gamma", "tau", "loss_weighting", "grad_surgery"),
    "the search (--arch conal, conal-pro) and growing trees": (
        "search_steps", "stage_steps", "search_warmup_steps", "arch_lr", "gumbel",
        "no_conflict_noticing", "conflict_rule", "evidence_every", "evidence_samples",
        "branch_every", "branch_rule", "gain_price", "gain_budget", "gain_holdout",
        "arch_holdout", "arch_every", "no_private", "inherit_weights"),
    "measurements while training": ("atlas_every", "atlas_samples"),
}

# Flags that may change when a run is resumed; all others must match the saved config.
RESUMABLE = frozenset({"total_steps", "minutes", "device", "eval_every", "eval_episodes",
                       "checkpoint_every", "save_replay", "log_every", "video_every",
                       "vector_strategy", "atlas_every", "atlas_samples"})


@dataclass(frozen=True)
class GrowthSettings:
    """How trees grow (:meth:`TrainConfig.growth`): a decision every ``every`` env steps by
    ``rule`` (a name of ``training/branching.py``'s ``BRANCH_RULES``); the evidence's
    ``samples`` per task (``lasting-cluster``); the ``price`` a probe's gain must clear and
    the twin critics' parameter ``budget`` the growth may not pass (``gain``; 0: none)."""

    every: int
    samples: int = 1024
    rule: str = "gain"
    price: float = 0.05
    budget: int = 0


@dataclass(frozen=True)
class TrainConfig:
    benchmark: str = "MT10"
    """MT10, MT50, MT1:<task> (e.g. MT1:reach-v3) or gym:<env-id> (e.g. gym:Pendulum-v1, a
    one-task sanity check)"""
    arch: Literal[TRAINED] = "mtsac"
    """network architecture (conal_rl/training/architectures.py; --help lists them)"""
    architecture: str | None = None
    """architecture JSON (actor and critic trees) for --arch tree"""
    preset: Literal[PRESET_NAMES] = "paper"
    """default sizes and budgets: paper (3x400 nets, 2M steps per task), quick (small nets, 20k
    steps per task: a CPU smoke run on MT10) or laptop (60 minutes of training on 2 CPU
    cores, 3x128 nets, 32 per task, as chosen by benchmarks.experiments.laptop_sweep)"""
    total_steps: int = PRESET
    """env steps in all, summed over tasks (default: the preset's steps per task x number of
    tasks)"""
    minutes: float | None = PRESET
    """wall-clock budget of training in minutes: the run stops at the first of --total-steps
    and --minutes. Counts training only (evaluation, checkpoints and videos excluded), summed
    over resumes; for --arch conal the search counts too. 0: no limit (default: none, laptop
    60)"""
    seed: int = 0
    """random seed (networks, replay sampling, envs)"""
    device: Literal[DEVICES] = "auto"
    """torch device: auto (cuda when available), cpu or cuda"""
    run_dir: str | None = None
    """output directory (default: runs/<benchmark>-<arch>-s<seed>-<time>)"""
    eval_every: int = PRESET
    """env steps (in all) between evaluations (default: the preset's per task x tasks); 0
    evaluates only at the end"""
    eval_episodes: int = PRESET
    """evaluation episodes per task (default: paper 50, quick 5)"""
    video_every: int = 0
    """env steps (in all) between rollout videos: one deterministic episode of every task,
    mp4s in RUN_DIR/videos/step_<N>/ and the grid's last frame in TensorBoard; 0: none. Slow
    on a CPU (software rendering)"""
    atlas_every: int = 0
    """env steps (in all) between live measurements of the conflict atlas: per net and
    shared layer the cosines of the tasks' gradients with their standard errors, measured on
    --atlas-samples transitions per task from the replay, into RUN_DIR/atlas/ and
    TensorBoard (draw them with python -m conal_rl.atlas); 0: none"""
    atlas_samples: int = 1024
    """transitions per task of each atlas measurement"""
    checkpoint_every: int = PRESET
    """env steps (in all) between checkpoints (default: as eval)"""
    save_replay: bool = False
    """also store the replay buffer in checkpoints (exact resume of the data; large)"""
    hidden: tuple[int, ...] = PRESET
    """hidden widths, comma separated, e.g. 400,400,400 (default: preset); the actor's, and
    the critics' unless --critic-hidden is given"""
    critic_hidden: tuple[int, ...] | None = None
    """hidden widths of the critics, comma separated (default: --hidden)"""
    critic_params: int = 0
    """--arch mtsac-wide / mhsac-wide: the parameters of the twin critics (both Q-nets) to
    widen the critic to, within 5% (0: the private critics', every task its own critic
    at --hidden)"""
    batch_per_task: int = PRESET
    """samples per task in every update batch"""
    replay_size: int = PRESET
    """transitions kept in all, split equally over tasks (default: 100k per task, quick
    10k)"""
    warmup_steps: int = PRESET
    """env steps (in all) of uniform random actions before updates start (default: paper
    4,000 per task as Meta-World+'s reference, 4k vector steps; quick and laptop 500)"""
    search_steps: int = PRESET
    """--arch conal: env steps (in all) of the search phase, before the pruned trees train
    for --total-steps (default: 10% of the paper budget, quick 3k per task)"""
    stage_steps: int = PRESET
    """--arch conal-pro: env steps (in all) of each of its stages, one per hidden module;
    each stage trains a fresh agent, its first quarter weights only (default: the search
    budget split over the stages)"""
    search_warmup_steps: int = PRESET
    """--arch conal: env steps (in all) at the start of the search that train the supernets'
    weights only (no alpha step, no conflict-noticing): a from-scratch stand-in for the
    official search's pretrained start (default: a quarter of the search)"""
    arch_lr: float = PRESET
    """--arch conal: Adam learning rate of alpha (default: paper 5e-5 as the official CoNAL
    search, quick 1e-3 to move alpha within a short search)"""
    gumbel: bool = False
    """--arch conal: mix the branch points with a hard Gumbel-softmax sample (temperature
    annealed 5 -> 0.5) instead of softmax(alpha)"""
    no_conflict_noticing: bool = False
    """--arch conal: ablation, search without conflict-noticing"""
    conflict_rule: Literal[CONFLICT_RULES] = DEFAULT_RULE
    """--arch conal/conal-pro: how conflict-noticing decides (conal_rl/method/rules.py;
    --help lists them)"""
    evidence_every: int = PRESET
    """--conflict-rule evidence: env steps (in all) between refreshes of the evidence during
    the search (default: a tenth of --search-steps; conal-pro: of --stage-steps)"""
    evidence_samples: int = 1024
    """--conflict-rule evidence and --branch-rule lasting-cluster: transitions per task each
    measurement of the evidence reads (from the replay, with a generator of its own)"""
    branch_every: int = PRESET
    """trees with shared modules (e.g. --arch mtsac, mhsac, tree, the derived trees of conal
    and conal-pro): env steps (in all) between two decisions of --branch-rule while the trees
    train; a task it takes off a shared module (or out of its group's) gets its own copies
    from that module on, starting as the shared ones (the net computes what it did; Adam's
    moments carried). The grown trees are saved with the checkpoints and in
    RUN_DIR/grown.json. 0: the trees stay as they were made. Default: for --arch conal and
    conal-pro the preset's (per task: paper 100k, laptop 5k, about a
    twentieth of the env steps its runs reach; quick 0, too short for a gain's verdict), 0
    for the others"""
    branch_rule: Literal["gain", "lasting-cluster"] = "gain"
    """--branch-every: how a task is chosen to leave a shared module
    (conal_rl/training/branching.py). gain: a probe (a private copy of the module, trained
    beside the first critic on its batches for --branch-every env steps) lowered the task's
    TD error on held-out whole episodes by more than --gain-price beyond that measurement's
    error. lasting-cluster: the conflict evidence put it outside the module's main cluster
    (sign-blind; the critic: in both twins) twice running"""
    gain_price: float = 0.05
    """--branch-rule gain: the relative drop of a task's held-out TD error a private copy of
    a module must buy (beyond the measurement's error) before it is given: what a module's
    parameters and update time must earn (0: any drop beyond the error)"""
    gain_budget: int = 0
    """--branch-rule gain: the twin critics' parameters the growth may reach; a verdict that
    would pass it is refused, the smallest gains first (0: no budget)"""
    gain_holdout: int = 10
    """--branch-rule gain: every k-th episode (of every task) goes to a held-out buffer the
    weights do not train on, on which probes are compared; it keeps each task's newest 8
    held-out episodes (twice the fewest a verdict needs) and gives older ones back to
    training"""
    arch_holdout: int = 5
    """--arch conal: every k-th vector step of the search goes to a held-out buffer that the
    weights never train on, and the architecture step draws from it (5: the official
    search's 80/20 split); 0: alpha steps on the training replay"""
    arch_every: int = 1
    """--arch conal / conal-pro: one architecture step on alpha every K weight updates (1:
    every update, as the official search; larger K makes the search cheaper, alpha then sees
    1/K of the updates' held-out batches)"""
    no_private: bool = False
    """--arch conal: ablation, search space without purely-specific modules (LTB-style: the
    modules after a branch point are shared by all tasks that leave there)"""
    inherit_weights: bool = False
    """--arch conal: train the pruned trees from the searched weights instead of from scratch
    (the paper retrains from scratch)"""
    loss_weighting: Literal[LOSS_WEIGHTINGS] = "mean"
    """how the per-task critic and actor losses combine: mean, or rlw (Random Loss Weighting,
    Lin et al., TMLR 2022: weights softmax(z), z ~ N(0, I), drawn afresh for each loss at
    every update; the temperature losses stay unweighted). Trained networks only: CoNAL's
    search keeps the mean"""
    grad_surgery: Literal[GRAD_SURGERIES] = "none"
    """gradient surgery on the shared modules of the trained actor and critics: none, or
    pcgrad (PCGrad, Yu et al., NeurIPS 2020: per shared module, each task's gradient loses
    its component along every other task's gradient it conflicts with; task-specific modules
    untouched; see conal_rl/method/pcgrad.py). With --arch conal the search keeps
    conflict-noticing and runs without PCGrad: 'CoNAL + PCGrad' is the conflict-noticed
    search's architecture trained with PCGrad on its shared modules"""
    updates_per_step: int = PRESET
    """gradient updates per vector-env step (one step of every task)"""
    layer_norm: bool = PRESET
    """LayerNorm (without affine parameters) on every hidden module's output, before the
    ReLU, in the actor and the critics of every architecture (the search's nets too);
    --no-layer-norm: without"""
    normalize_obs: bool = False
    """observations standardized by the running mean and variance of every observation the
    updates drew (all tasks together), clipped to +-10 (SimBa's input normalization); the
    statistics are saved with the agent"""
    residual: bool = False
    """residual connections: each hidden module's input added to its output where the two
    widths agree"""
    task_id: bool = PRESET
    """the one-hot task id appended to the input of the actor and the critics, so their
    trunk knows the task from its first module on (as MT-SAC's nets always do, and the
    field's MH-SAC: Meta-World+'s reference, mtrl); every architecture's, CoNAL's and
    CoNAL-Pro's searched nets and the trees they derive included. Default: on for --arch
    conal and conal-pro (their trees are MT-SAC's where no task has branched), off for the
    others"""
    shared_head: bool = PRESET
    """the tasks that share every module share one output head too, as MT-SAC's do (a task
    that branches, in the search or while the trees grow, has its own): trees with a head
    per task (mhsac, tree, private-critic, the trees conal and conal-pro derive) take it;
    MT-SAC's have it always. Default: on for --arch conal and conal-pro (off with
    --inherit-weights: the searched nets have a head per task), off for the others"""
    weight_init: Literal[WEIGHT_INITS] = "torch"
    """how the linear maps start: torch (uniform in +-1/sqrt(fan_in), biases too) or
    he-uniform (uniform in +-sqrt(6/fan_in), zero biases: the Meta-World+ reference's)"""
    precision: Literal[PRECISIONS] = "fp32"
    """the update's matrix products: fp32, or bf16 (autocast: the nets' products in bf16;
    weights, Adam and every loss in fp32). Pays for wide nets on a CPU with bf16 matrix
    units (AMX, AVX-512 BF16; refused on one without) or a GPU; the trained networks only
    (not a search's, not with --grad-surgery)"""
    reset_every: int = 0
    """updates between resets of the actor's and the critics' weights and Adam moments
    (BRO's periodic resets; the replay, temperatures and observation statistics stay; not
    during a search); 0: none"""
    weight_decay: float = 0.0
    """decoupled (AdamW) weight decay of the actor's and the critics' weights (BRO's
    regularization of wide critics); 0: none"""
    max_grad_norm: float = 0.0
    """clip the actor's and the critics' gradient norm at this value before each step (the
    Meta-World+ reference: 1.0); 0: no clipping"""
    lr: float = 3e-4
    """Adam learning rate of actor, critics and temperatures"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """Polyak rate of the target critics"""
    log_every: int = 2_000
    """env steps (in all) between TensorBoard scalar logs"""
    torch_threads: int = 1
    """CPU threads for torch. 1 by default: the env loop is serial, the matrices are small,
    and several runs sharing a few cores slow down badly when each spins a thread pool"""
    vector_strategy: Literal[VECTOR_STRATEGIES] = PRESET
    """gymnasium vector env: sync (one process), async (a process per task) or worker (one
    process holding all envs, stepped while the update runs: both cores for one run, see
    benchmarks/results/end-to-end.md). The results are the same either way. Default: worker
    for quick and laptop, sync for paper"""

    def __post_init__(self):
        """Fill the preset-valued fields, then check the values."""
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        p, T = PRESETS[self.preset], num_tasks(self.benchmark)
        for name, key in _PER_TASK.items():
            if getattr(self, name) is PRESET:
                object.__setattr__(self, name, p[key] * T)
        for name in _AS_IS:
            if getattr(self, name) is PRESET:
                object.__setattr__(self, name, p[name])
        if self.stage_steps is PRESET:
            object.__setattr__(self, "stage_steps", max(1, self.search_steps // len(self.hidden)))
        if self.evidence_every is PRESET:
            search = (self.stage_steps if architecture(self.arch).stages
                      else self.search_steps)
            object.__setattr__(self, "evidence_every", max(1, search // 10))
        if self.branch_every is PRESET:  # the architectures that grow by default only
            grows = architecture(self.arch).grows
            object.__setattr__(self, "branch_every", p["branch_every_per_task"] * T if grows
                               else 0)
        like_mtsac = architecture(self.arch).like_mtsac
        if self.task_id is PRESET:
            object.__setattr__(self, "task_id", like_mtsac)
        if self.shared_head is PRESET:
            object.__setattr__(self, "shared_head", like_mtsac and not self.inherit_weights)
        if self.search_warmup_steps is PRESET:
            object.__setattr__(self, "search_warmup_steps", self.search_steps // 4)
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if self.critic_hidden is not None:
            object.__setattr__(self, "critic_hidden", tuple(self.critic_hidden))
        self._validate()

    def _validate(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):  # a config.json's choices (the flags' are argparse's)
            allowed = typing.get_args(hints[f.name])
            if f.name == "arch":
                allowed = tuple(ARCHITECTURES)  # conal_rl.stl records its runs as stl
            if (typing.get_origin(hints[f.name]) is Literal
                    and getattr(self, f.name) not in allowed):
                raise ValueError(f"--{f.name.replace('_', '-')} must be one of "
                                 f"{', '.join(allowed)}, got {getattr(self, f.name)!r}")
        # NaN passes every comparison
        for k in ("minutes", "arch_lr", "lr", "gamma", "tau", "max_grad_norm", "weight_decay"):
            v = getattr(self, k)
            if v is not None and not math.isfinite(v):
                raise ValueError(f"--{k.replace('_', '-')} must be a finite number, got {v}")
        positive = ("total_steps", "eval_episodes", "checkpoint_every", "batch_per_task",
                    "replay_size", "updates_per_step", "log_every", "torch_threads",
                    "search_steps", "stage_steps", "arch_lr", "arch_every", "evidence_every")
        for k in positive:
            v = getattr(self, k)
            if v <= 0:
                raise ValueError(f"--{k.replace('_', '-')} must be positive, got {v}")
        if self.evidence_samples < ATLAS_MIN_SAMPLES:
            raise ValueError(f"--evidence-samples must be at least {ATLAS_MIN_SAMPLES}, got "
                             f"{self.evidence_samples}")
        if self.atlas_samples < ATLAS_MIN_SAMPLES:
            raise ValueError(f"--atlas-samples must be at least {ATLAS_MIN_SAMPLES}, got "
                             f"{self.atlas_samples}")
        for k in ("eval_every", "warmup_steps", "search_warmup_steps", "video_every", "minutes",
                  "atlas_every", "arch_holdout", "branch_every", "max_grad_norm",
                  "weight_decay", "reset_every"):
            v = getattr(self, k)
            if v is not None and v < 0:
                raise ValueError(f"--{k.replace('_', '-')} must not be negative, got {v}")
        if self.seed < 0:
            raise ValueError(f"--seed must not be negative, got {self.seed}")
        for flag, widths in (("hidden", self.hidden), ("critic-hidden", self.widths("critic"))):
            if not widths or min(widths) <= 0 or max(widths) > MAX_WIDTH:
                raise ValueError(f"--{flag} needs widths in 1..{MAX_WIDTH}, got {widths}")
        if self.critic_params < 0:
            raise ValueError(f"--critic-params must not be negative, got {self.critic_params}")
        if not (0 < self.lr < math.inf and 0 <= self.gamma <= 1 and 0 < self.tau <= 1):
            raise ValueError("need lr > 0, 0 <= gamma <= 1 and 0 < tau <= 1")
        if self.arch_holdout == 1:
            raise ValueError("--arch-holdout must be 0 (none) or at least 2")
        if not 0 <= self.gain_price < math.inf:
            raise ValueError(f"--gain-price must be a finite number >= 0, got {self.gain_price}")
        if self.gain_budget < 0:
            raise ValueError(f"--gain-budget must not be negative, got {self.gain_budget}")
        if self.gain_holdout < 2:
            raise ValueError(f"--gain-holdout must be at least 2, got {self.gain_holdout}")
        if self.precision != "fp32" and self.grad_surgery != "none":
            raise ValueError(f"--precision {self.precision} does not take --grad-surgery (its "
                             "per-task gradients are read in fp32)")
        arch = architecture(self.arch)
        if arch.check is not None:
            arch.check(self)
        if self.branch_every and not arch.can_grow:
            raise ValueError(f"--branch-every needs trees with shared modules: --arch "
                             f"{', '.join(growing())}, not {self.arch}")
        if self.critic_params and not arch.widened:
            raise ValueError(f"--critic-params sizes the critic of --arch "
                             f"{', '.join(a for a in TRAINED if ARCHITECTURES[a].widened)}, "
                             f"not {self.arch}")

    def widths(self, role: str) -> tuple[int, ...]:
        """The hidden widths of the actor's or the critics' nets."""
        return tuple(self.critic_hidden) if role == "critic" and self.critic_hidden else \
            self.hidden

    # ---- the one translation into each part's settings ------------------------------------
    def sac(self, searching: bool = False) -> SACConfig:
        """The agent's settings. --loss-weighting acts on the trained networks only: CoNAL's
        search (supernets, conflict-noticing) keeps the mean."""
        from agents import SACConfig

        return SACConfig(gamma=self.gamma, tau=self.tau, actor_lr=self.lr, critic_lr=self.lr,
                         temperature_lr=self.lr, max_grad_norm=self.max_grad_norm or None,
                         weight_decay=self.weight_decay,
                         loss_weighting="mean" if searching else self.loss_weighting,
                         precision="fp32" if searching else self.precision,
                         normalize_obs=self.normalize_obs)

    def search(self) -> SearchSettings:
        """CoNAL's search settings."""
        from conal_rl.method import SearchSettings

        return SearchSettings(
            hidden=self.hidden, critic_hidden=self.critic_hidden, arch_lr=self.arch_lr,
            gumbel=self.gumbel,
            conflict_noticing=not self.no_conflict_noticing,
            conflict_rule=self.conflict_rule, no_private=self.no_private,
            warmup_steps=self.search_warmup_steps, total_steps=self.search_steps,
            arch_every=self.arch_every, evidence_every=self.evidence_every,
            evidence_samples=self.evidence_samples, options=self.net_options(),
            task_id_input=self.task_id)

    def growth(self) -> GrowthSettings:
        """How the trees grow (--branch-every and its rule's settings)."""
        return GrowthSettings(every=self.branch_every, samples=self.evidence_samples,
                              rule=self.branch_rule, price=self.gain_price,
                              budget=self.gain_budget)

    def net_options(self) -> NetOptions:
        """How every net of the run is built, whatever its architecture."""
        from conal_rl.method import NetOptions

        return NetOptions(layer_norm=self.layer_norm, residual=self.residual,
                          init=self.weight_init)

    # ---- files ------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        write_json_atomic(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        """A saved config; ValueError for unknown or missing keys (a config.json holds every
        field: the values it ran with). A field added since a config was written takes the
        value that keeps that run as it ran (``ADDED_FIELDS``)."""
        return cls.from_dict(json.loads(path.read_text()), str(path))

    @classmethod
    def from_dict(cls, values: object, where: str = "config") -> TrainConfig:
        """``load`` of the values a config.json holds (kept elsewhere: a report's record)."""
        if not isinstance(values, dict):
            raise ValueError(f"{where}: not a JSON object")
        values = ADDED_FIELDS | values
        names = {f.name for f in fields(cls)}
        unknown, missing = set(values) - names, names - set(values)
        if unknown:
            raise ValueError(f"{where}: unknown config keys {sorted(unknown)}")
        if missing:
            raise ValueError(f"{where}: config keys missing {sorted(missing)}")
        return cls(**values)

    def resumed_with(self, given: dict, allowed: frozenset[str] = RESUMABLE) -> TrainConfig:
        """This (saved) config with the flags ``given`` on a resume; ValueError for a flag
        that may not change."""
        clash = {k for k, v in given.items() if k not in allowed and v != getattr(self, k)}
        if clash:
            raise ValueError(f"--resume cannot change {', '.join(sorted(clash))} "
                             f"(only {', '.join(sorted(allowed))})")
        return replace(self, **{k: v for k, v in given.items() if k in allowed})


# ---- command line -------------------------------------------------------------------------
def field_docs(cls) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string under each field), one line each."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _parse_widths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        msg = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _value_type(hint) -> tuple[object, tuple | None]:
    """(converter, choices) for a field's type hint; Optional is unwrapped."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is Literal:
        return str, typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return _parse_widths, None
    return hint, None


OFF_FLAGS = {"gumbel": "--softmax", "layer_norm": "--no-layer-norm",  # named opposites
             "task_id": "--no-task-id", "shared_head": "--no-shared-head"}


def _presets_help(name: str) -> str:
    """The presets' values of field ``name`` as --help shows them."""
    def shown(value) -> str:
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, tuple):
            return ",".join(map(str, value))
        return "none" if value is None else str(value)
    return " (default: the preset's: " + ", ".join(
        f"{preset} {shown(values[name])}" for preset, values in PRESETS.items()) + ")"


def add_config_arguments(parser: argparse.ArgumentParser, cls=TrainConfig,
                         only: tuple[str, ...] | None = None) -> None:
    """One ``--flag`` per dataclass field (or per field in ``only``), its docstring the help;
    every default is None so that the flags a user really gave can be told apart (needed by
    presets and --resume)."""
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    target = {f.name: parser for f in fields(cls)}
    if cls is TrainConfig:  # the tables' entries, each with what it is
        docs["arch"] = arch_help()
        docs["conflict_rule"] = "--arch conal/conal-pro: " + rules_help()
        if only is None and hasattr(parser, "add_argument_group"):  # --help by part
            for title, names in PARTS.items():
                group = parser.add_argument_group(title)
                target |= {name: group for name in names}
    for f in fields(cls):
        if only is not None and f.name not in only:
            continue
        parser = target[f.name]
        flag, help = "--" + f.name.replace("_", "-"), docs[f.name].replace("%", "%%")
        if hints[f.name] is bool:
            if f.name in _AS_IS and "default" not in help.lower():
                help += _presets_help(f.name)
            parser.add_argument(flag, action="store_true", default=None, help=help)
            if f.name in OFF_FLAGS:
                parser.add_argument(OFF_FLAGS[f.name], dest=f.name, action="store_false",
                                    help=f"the opposite of {flag}" + (
                                        "" if f.default is PRESET else " (the default)"))
            continue
        conv, choices = _value_type(hints[f.name])
        shown = "" if f.default is None or f.default is PRESET else f" (default: {f.default})"
        if f.name in _AS_IS and "default" not in help.lower():
            shown = _presets_help(f.name)
        parser.add_argument(flag, type=conv, default=None, choices=choices, help=help + shown,
                            metavar=None if choices else f.name.upper())


def given_arguments(args: argparse.Namespace, cls=TrainConfig) -> dict:
    """The config fields the user set on the command line."""
    return {f.name: getattr(args, f.name) for f in fields(cls)
            if getattr(args, f.name, None) is not None}
