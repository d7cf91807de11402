"""Every architecture of ``--arch``, declared once: the only place that compares their names.

An :class:`Architecture` says what a command line, the config's checks, the preflight,
the trainer, the saver and the tables need to know of it: its name and help, the label
tables give it, how its actor's and critic's trees come from the config (fixed trees) or
from a search, whether its trees can grow while they train, whether it needs a tree file,
its own flag rules and which command trains it. Adding an architecture is one entry in
``ARCHITECTURES`` (and its test).

Importable without torch (flags are checked before torch is loaded): what builds trees
imports the method inside the functions.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

if typing.TYPE_CHECKING:
    from conal_rl.method import GroupTreeSpec, TreeSpec

    Specs = dict[str, TreeSpec | GroupTreeSpec]

TrainConfig = Any  # a training/config.py TrainConfig (which builds on this module)

ROLES = ("actor", "critic")
WIDEN_TOLERANCE = 0.05  # a widened critic's parameters: within 5% of the target
MAX_WIDTH = 65_536  # a wider layer is a typo (and would not fit in memory with its twin)


@dataclass(frozen=True)
class Architecture:
    name: str
    help: str
    label: str
    """What tables and plots call it."""
    trees: Callable[[TrainConfig, list[str], tuple[int, int] | None], Specs] | None = None
    """Fixed trees made from the config: ``trees(config, task_names, (obs_dim, act_dim))``
    (the sizes None where only an env can tell); None for trees from a file or a search
    (``nets.fixed_trees`` reads the first, ``train.py`` runs the second)."""
    search: str | None = None
    """Searched: the function of ``training/conal_search.py`` that searches its trees."""
    stages: bool = False
    """The search runs stage by stage (one per hidden module): its evidence refreshes per
    stage."""
    can_grow: bool = False
    """Its trees share modules: ``--branch-every`` can grow them."""
    grows: bool = False
    """Its trees grow by default (``--branch-every``: the preset's)."""
    needs_file: bool = False
    """Its trees come from ``--architecture FILE``."""
    widened: bool = False
    """Its critic is widened to ``--critic-params`` parameters."""
    like_mtsac: bool = False
    """Where no task has branched its trees are MT-SAC's by default: the id read
    (``--task-id``), one head for the tasks on the whole trunk (``--shared-head``)."""
    check: Callable[[TrainConfig], None] | None = None
    """Its own rules on the other flags: ValueError, one line."""
    command: str = "conal_rl.train"
    """The command that trains it."""

    @property
    def searched(self) -> bool:
        return self.search is not None

    @property
    def fixed(self) -> bool:
        """Its trees are known before training: made from the config or read from a file."""
        return self.trees is not None or self.needs_file


# ---- the fixed trees ------------------------------------------------------------------------
def _per_role(make: str) -> Callable:
    """Trees of one TreeSpec kind (mtsac, mhsac, independent), each role at its widths."""
    def trees(config: TrainConfig, task_names: list[str], sizes) -> Specs:
        from conal_rl.method import TreeSpec

        kind = getattr(TreeSpec, make)
        return {role: kind(config.widths(role), len(task_names), task_names) for role in ROLES}
    return trees


def _widened(make: str) -> Callable:
    """The actor of ``make``'s trees; its critic the same tree with every hidden module
    widened alike until the twin critics hold ``--critic-params`` parameters (default: the
    private critics', every task its own critic at ``--hidden``)."""
    def trees(config: TrainConfig, task_names: list[str], sizes) -> Specs:
        from conal_rl.method import TreeSpec, tree_parameters

        if sizes is None:
            raise ValueError(f"--arch {config.arch} needs a benchmark whose sizes are known "
                             "(Meta-World), to count the critic's parameters")
        kind, T, depth = getattr(TreeSpec, make), len(task_names), len(config.hidden)
        critic_in = sizes[0] + sizes[1]
        target = config.critic_params or 2 * tree_parameters(
            TreeSpec.independent(config.hidden, T), critic_in, 1)

        def twin(width: int) -> int:  # the critic as it will be built (--task-id etc.)
            spec = configured({"critic": kind((width,) * depth, T)}, config)["critic"]
            return 2 * tree_parameters(spec, critic_in, 1)

        low, high = 1, MAX_WIDTH  # the widest width whose critic is not above the target
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if twin(mid) <= target else (low, mid - 1)
        width = min((low, min(low + 1, MAX_WIDTH)), key=lambda w: abs(twin(w) - target))
        if abs(twin(width) - target) > WIDEN_TOLERANCE * target:
            raise ValueError(f"--critic-params {target:,}: no width of {depth} modules gives "
                             f"a critic within {WIDEN_TOLERANCE:.0%} of it")
        return {"actor": kind(config.widths("actor"), T, task_names),
                "critic": kind((width,) * depth, T, task_names)}
    return trees


def configured(specs: Specs, config: TrainConfig) -> Specs:
    """The trees with what ``--task-id`` and ``--shared-head`` set on every architecture's
    (each a no-op where the tree has it already, as MT-SAC's)."""
    return {role: replace(spec, task_id_input=spec.task_id_input or config.task_id,
                          **({"shared_head": True} if config.shared_head else {}))
            for role, spec in specs.items()}


def _private_critic(config: TrainConfig, task_names: list[str], sizes) -> Specs:
    from conal_rl.method import TreeSpec

    T = len(task_names)
    return {"actor": TreeSpec.mhsac(config.widths("actor"), T, task_names),
            "critic": TreeSpec.independent(config.widths("critic"), T, task_names)}


# ---- the searched ---------------------------------------------------------------------------
def _check_conal(config: TrainConfig) -> None:
    if config.search_warmup_steps >= config.search_steps:
        raise ValueError("--search-warmup-steps must be smaller than --search-steps")
    if config.shared_head and config.inherit_weights:
        raise ValueError("--inherit-weights does not take --shared-head (the searched nets "
                         "have a head per task)")


def _check_conal_pro(config: TrainConfig) -> None:
    unsupported = [flag for flag, on in (
        ("--gumbel", config.gumbel), ("--no-private", config.no_private),
        ("--inherit-weights", config.inherit_weights),
        ("--grad-surgery pcgrad", config.grad_surgery != "none")) if on]
    if config.branch_every and config.branch_rule != "gain":
        unsupported.append(f"--branch-rule {config.branch_rule}")
    if unsupported:
        raise ValueError(f"--arch conal-pro does not take {', '.join(unsupported)} (grouped "
                         "trees have no single trunk to sample, share, project on or read "
                         "clusters of)")


def _check_searched(config: TrainConfig) -> None:
    if len(config.widths("critic")) != len(config.hidden):
        raise ValueError(f"--arch {config.arch} searches the actor and the critic over the "
                         "same depth: --critic-hidden needs as many widths as --hidden")


def _checks(*checks: Callable[[TrainConfig], None]) -> Callable[[TrainConfig], None]:
    def check(config: TrainConfig) -> None:
        for c in checks:
            c(config)
    return check


def _check_tree(config: TrainConfig) -> None:
    if not config.architecture:
        raise ValueError("--arch tree needs --architecture FILE.json")


def _check_widened(config: TrainConfig) -> None:
    if config.critic_hidden:
        raise ValueError(f"--arch {config.arch} widens the critic itself: it does not take "
                         "--critic-hidden (set --critic-params)")


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("mtsac", "shared MLP + one-hot task id", "MT-SAC", trees=_per_role("mtsac"),
                 can_grow=True),
    Architecture("mhsac", "shared trunk, one head per task", "MH-SAC",
                 trees=_per_role("mhsac"), can_grow=True),
    Architecture("independent", "single-task learning: every task its own networks, all "
                 "trained in one batched update", "STL (batched)",
                 trees=_per_role("independent")),
    Architecture("conal", "search the trees with CoNAL, derive, prune, then train them, "
                 "growing private modules where a probe measures that they pay", "CoNAL",
                 search="search_architecture", can_grow=True, grows=True, like_mtsac=True,
                 check=_checks(_check_searched, _check_conal)),
    Architecture("conal-pro", "grow grouped trees stage by stage with CoNAL-Pro, then train "
                 "them, a task leaving its group where a probe measures that its own module "
                 "pays", "CoNAL-Pro", search="search_progressive", stages=True,
                 can_grow=True, grows=True, like_mtsac=True,
                 check=_checks(_check_searched, _check_conal_pro)),
    Architecture("tree", "a given tree, see --architecture", "tree", can_grow=True,
                 needs_file=True, check=_check_tree),
    Architecture("mtsac-wide", "MT-SAC with its critic widened to --critic-params "
                 "parameters (default: the private critics'): the equal-parameter control",
                 "MT-SAC, wide critic", trees=_widened("mtsac"), can_grow=True,
                 widened=True, check=_check_widened),
    Architecture("mhsac-wide", "MH-SAC with its critic widened to --critic-params "
                 "parameters (default: the private critics'): the equal-parameter control",
                 "MH-SAC, wide critic", trees=_widened("mhsac"), can_grow=True,
                 widened=True, check=_check_widened),
    Architecture("private-critic", "MH-SAC's actor and every task its own critic, no "
                 "search: the capacity control of the searched trees", "private critic",
                 trees=_private_critic, can_grow=True),
    Architecture("stl", "one stable-baselines3 SAC per task", "STL (SB3)",
                 command="conal_rl.stl"),
)}

TRAINED = tuple(name for name, a in ARCHITECTURES.items() if a.command == "conal_rl.train")
"""``--arch`` of ``conal_rl.train``."""


def architecture(name: str) -> Architecture:
    """The architecture of that name; ValueError, with the names there are, otherwise."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; valid: "
                         f"{', '.join(ARCHITECTURES)}") from None


def growing() -> tuple[str, ...]:
    """The architectures whose trees ``--branch-every`` can grow."""
    return tuple(name for name in TRAINED if ARCHITECTURES[name].can_grow)


def help_text() -> str:
    """``--arch``'s help: every architecture ``conal_rl.train`` trains, with what it is."""
    return "network architecture: " + "; ".join(f"{name} ({ARCHITECTURES[name].help})"
                                                for name in TRAINED)
