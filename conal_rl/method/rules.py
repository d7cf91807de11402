"""The conflict rules, one table: how conflict-noticing decides, per shared module and
update, which tasks' gradients the module's update keeps. The only place that knows a rule
by its name; importable without torch (the flags are checked before torch loads).

A rule is a :class:`ConflictRule`: its name and help, and ``kept(noticing, layer, gram)``,
the ``[k]`` bool mask of the tasks kept, from the layer's Gram matrix of task gradients and
what the conflict-noticing carries (:class:`Noticing`: its averages, its threshold, the
evidence it was given).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from torch import Tensor


class Noticing(Protocol):
    """What a rule reads of the conflict-noticing that asks it
    (:class:`~conal_rl.method.conflict.ConflictNoticing`)."""

    threshold: float
    layers: Mapping  # layer name -> its SharedLayer (``.tasks``)

    def averaged(self, name: str, now: Tensor) -> Tensor: ...
    def leaving(self) -> dict[str, tuple[int, ...]]: ...


Kept = Callable[[Noticing, str, "Tensor"], "Tensor"]


@dataclass(frozen=True)
class ConflictRule:
    name: str
    help: str
    kept: Kept
    per_task: bool = False
    """It decides per task (the others keep training the module): the share of tasks left
    out is worth reporting."""
    from_evidence: bool = False
    """It decides from large-sample evidence given by the caller, not from the batch: the
    evidence gates the search's architecture too."""


def _off_diagonal(gram: Tensor) -> Tensor:
    return ~gram.new_ones(gram.shape[0]).diag().bool()


def _any_pair(noticing: Noticing, layer: str, gram: Tensor) -> Tensor:
    conflict = ((gram < 0) & _off_diagonal(gram)).any()
    return (~conflict).expand(gram.shape[0])


def _ema_pair(noticing: Noticing, layer: str, gram: Tensor) -> Tensor:
    from conal_rl.method.task_gradients import cosines

    average = noticing.averaged(layer, cosines(gram))
    conflict = ((average < -noticing.threshold) & _off_diagonal(gram)).any()
    return (~conflict).expand(gram.shape[0])


def _consensus(noticing: Noticing, layer: str, gram: Tensor) -> Tensor:
    from conal_rl.method.task_gradients import consensus_cosines

    return noticing.averaged(layer, consensus_cosines(gram)) >= -noticing.threshold


def _affinity(noticing: Noticing, layer: str, gram: Tensor) -> Tensor:
    from conal_rl.method.task_gradients import cosines, main_group

    return main_group(noticing.averaged(layer, cosines(gram).square()))


def _evidence(noticing: Noticing, layer: str, gram: Tensor) -> Tensor:
    leaving = set(noticing.leaving().get(layer, ()))
    return gram.new_tensor([t not in leaving for t in noticing.layers[layer].tasks]).bool()


RULES: dict[str, ConflictRule] = {r.name: r for r in (
    ConflictRule("any-pair", "the paper's: freeze the module when some pair of tasks' "
                 "gradients has a negative inner product on this batch (with many tasks, "
                 "nearly always)", _any_pair),
    ConflictRule("ema-pair", "the same on a moving average of the pairwise cosines",
                 _ema_pair),
    ConflictRule("consensus", "leave out of the module's update each task whose gradient "
                 "points against the sum of the others' (averaged over updates)", _consensus,
                 per_task=True),
    ConflictRule("affinity", "the same, blind to signs: keep the module's main group by the "
                 "averaged squared cosines", _affinity, per_task=True),
    ConflictRule("evidence", "from large-sample statistics of the task gradients with their "
                 "errors, refreshed every --evidence-every env steps: a task leaves a module "
                 "(off its update, and its branch forced below it) only where its conflict "
                 "there is significant; without significant conflict every task stays on "
                 "the trunk", _evidence, per_task=True, from_evidence=True),
)}
CONFLICT_RULES = tuple(RULES)
PAPER_RULE = "any-pair"
DEFAULT_RULE = "evidence"
"""The default of a search: the one rule that recovered known task families and kept
agreeing tasks shared (benchmarks/results/conflict-rules.md)."""


def rule_named(name: str) -> ConflictRule:
    """The rule of that name; ValueError, with the names there are, otherwise."""
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown conflict rule {name!r}; valid: "
                         f"{', '.join(CONFLICT_RULES)}") from None


def rules_help() -> str:
    """``--conflict-rule``'s help: every rule with what it does."""
    return ("how conflict-noticing decides, per shared module: " + "; ".join(
        f"{r.name}{' (default)' if r.name == DEFAULT_RULE else ''}: {r.help}"
        for r in RULES.values()) + ". A frozen module does not move (nor do its Adam moments)")
