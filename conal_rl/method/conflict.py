"""Conflict-noticing: keep a shared module's update from the tasks whose gradients on it
conflict, by a rule of ``rules.py``.

The paper's rule (official ``NOCLGrad``): for every shared module, compare the per-task
gradients pairwise (weight and bias flattened together); if any pair has a negative inner
product the module's gradient is zeroed for this step, otherwise it keeps the ordinary
gradient. The official code takes the mean of the task gradients; we keep whatever
``loss.backward()`` produced, which is that mean when the loss is the mean of the task losses
(with a sum it is T times the mean; the decision depends on signs only, so it is
unaffected). The per-task gradients come from one backward (``task_gradients.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from conal_rl.method.rules import PAPER_RULE, rule_named
from conal_rl.method.task_gradients import (
    SharedLayer,
    TaskGradientCapture,
    cosines,
    task_gram,
)

if TYPE_CHECKING:
    from conal_rl.method.evidence import LayerEvidence


class ConflictNoticing(TaskGradientCapture):
    """Conflict-noticing for the shared modules of a SuperNet or TreeNet.

    Usage in a training step::

        noticing = ConflictNoticing(net)           # enabled=False makes every call a no-op
        with noticing.record():                    # hooks live only inside this block
            loss = loss_fn(net(x))                 # net input task-major [T, B, in]
        loss.backward()
        noticing.apply()                           # freeze conflicting modules
        optimizer.step()

    Rules (``rule``, a name of ``rules.py``'s table), per shared module:

    * ``"any-pair"`` (the paper's): frozen for this update when any pair of tasks' gradients
      has a negative inner product on this batch. With T tasks there are T(T-1)/2 pairs of
      noisy gradients, so at T >= 10 some pair is negative on nearly every batch and the rule
      stops telling which tasks conflict.
    * ``"ema-pair"``: the same test on an exponential moving average (rate ``1 - ema``) of
      the pairwise cosines, so a pair must conflict persistently, and by more than
      ``threshold`` (frozen when some averaged cosine < -threshold).
    * ``"consensus"``: a decision per task. Each task's gradient is compared with the sum of
      the other tasks' gradients on the module (its consensus); a task whose averaged cosine
      with it is below -``threshold`` is left out of the module's update, which the others
      keep training. The module is frozen only when every task is left out. The left-out
      task's loss no longer improves through the shared module, which is what pushes its
      architecture weights towards its own branch.
    * ``"affinity"``: a decision per task that ignores signs, since two tasks with their own
      heads can share features they read with opposite signs (a trunk serves h and -h).
      The affinity of two tasks is the averaged squared cosine of their gradients (high
      when they need the same directions, whatever the signs); the module keeps the tasks
      of its main group (:func:`main_group`, the leading eigenvector of the affinities)
      and leaves the others out, as ``consensus`` does.
    * ``"evidence"``: decides from large-sample statistics with their errors
      (:mod:`~conal_rl.method.evidence`), given by :meth:`set_evidence` and refreshed by
      the caller every few hundred or thousand updates, not from the batch: the tasks the
      evidence shows in significant conflict on a module (``LayerEvidence.leaving``: outside
      its main significant cluster by the sign-blind affinity; with ``signed``, for nets
      whose tasks share a head, also those pointing significantly against the others) are
      left out of its update. Without evidence every task trains every module. The same
      :meth:`leaving` sets gate the architecture (``SuperNet.gate``): a task leaves a
      module only where its conflict there is significant, and there it leaves.

    A frozen module does not move: its ``.grad`` is set to None, so the optimizer skips it
    and its moments and step count are not advanced (zeroing the gradient is not enough
    under Adam, whose momentum would still move it). That needs the decisions on the host:
    one sync per ``apply`` for all modules together. ``stats()`` gives per module the
    frozen fraction (and, with ``consensus``, the fraction of tasks left out) and the
    pairwise cosines of the last update. Every backward pass through a recorded forward
    adds to the captured output gradients, as ``.grad`` accumulates (``torch.autograd.grad``
    passes too, although they leave ``.grad`` alone: keep those off a recorded forward).
    """

    def __init__(self, nets: nn.Module | Mapping[str, nn.Module | SharedLayer],
                 enabled: bool = True, rule: str = PAPER_RULE, ema: float = 0.9,
                 threshold: float = 0.0, signed: bool = False):
        super().__init__(nets, enabled)
        if any(layer.rows is not None for layer in self.layers.values()):
            raise ValueError("grouped layers are read (TaskGradientCapture), not filtered")
        self.rule = rule_named(rule)
        self.ema, self.threshold, self.signed = ema, threshold, signed
        self._leaving: dict[str, tuple[int, ...]] = {}  # evidence rule: per layer, task ids
        self._refreshes = 0  # evidence rule: set_evidence calls so far
        self._average: dict[str, Tensor] = {}  # per layer, the averaged cosines
        self._frozen_steps: dict[str, int] = {}
        self._left_out: dict[str, int] = {}  # (task, step) pairs left out
        self._steps: dict[str, int] = {}
        self.last_gram: dict[str, Tensor] = {}
        """Per layer, the last ``[k, k]`` Gram matrix over ``layers[name].tasks``."""

    def set_evidence(self, evidence: Mapping[str, LayerEvidence]) -> None:
        """The ``evidence`` rule's statistics, per layer name (``capture_evidence`` of a
        backward over a large held-out batch through these nets), refreshed by the caller.

        Decisions only accumulate: a task shown in significant conflict on a module at one
        refresh leaves it for the rest of the search. The structure that tells tasks apart
        shows while the nets fit their data and fades once they have, so re-deciding from
        late evidence would undo the early decisions. So that one module's decisions over
        the whole search still hold at a family-wise 5% level, refresh r tests at
        ``5% · 6 / (π² r²)`` (the sum over r is 5%), Bonferroni over the tasks."""
        if not self.enabled:  # conflict-noticing off: no decisions
            return
        self._refreshes += 1
        level = 0.05 * 6 / (math.pi ** 2 * self._refreshes ** 2)
        for name, ev in evidence.items():
            if name in self.layers:
                new = ev.leaving(self.signed, z=ev.z(level))
                self._leaving[name] = tuple(sorted({*self._leaving.get(name, ()), *new}))

    def leaving(self) -> dict[str, tuple[int, ...]]:
        """Per layer, the task ids the evidence so far takes off it (the gate's input)."""
        return dict(self._leaving)

    def averaged(self, name: str, now: Tensor) -> Tensor:
        """The moving average (rate ``1 - ema``) of a layer's statistic, ``now`` added: the
        averaging rules' memory."""
        average = self._average.get(name)
        average = now if average is None else self.ema * average + (1 - self.ema) * now
        self._average[name] = average
        return average

    @torch.no_grad()
    def apply(self) -> dict[str, Tensor]:
        """After ``backward``: freeze the modules the rule says conflict, or (``consensus``)
        take the left-out tasks' gradients off them. Returns per layer a 0-d bool tensor,
        True where the module was frozen. A no-op (``{}``) when disabled."""
        if not self.enabled:
            return {}
        captured = self.captured()
        grams = {name: task_gram(a, d) for name, (a, d) in captured.items()}
        kept = {name: self.rule.kept(self, name, gram) for name, gram in grams.items()}
        if kept:  # one host sync for every module's decision
            decisions = torch.cat(list(kept.values())).tolist()
        offset = 0
        for name, mask in kept.items():
            flags, offset = decisions[offset:offset + len(mask)], offset + len(mask)
            module = self.layers[name].module
            if not any(flags):
                module.weight.grad = None
                if module.bias is not None:
                    module.bias.grad = None
            elif not all(flags):
                self._take_off(module, captured[name], ~mask)
            self.last_gram[name] = grams[name]
            self._frozen_steps[name] = self._frozen_steps.get(name, 0) + (not any(flags))
            self._left_out[name] = self._left_out.get(name, 0) + flags.count(False)
            self._steps[name] = self._steps.get(name, 0) + 1
        self.clear()
        return {name: ~mask.any() for name, mask in kept.items()}

    @staticmethod
    def _take_off(module: nn.Linear, captured: tuple[Tensor, Tensor], left_out: Tensor) -> None:
        """``.grad -= Σ_{t left out} g_t``, from the captured inputs and output gradients."""
        a, d = captured
        d = d * left_out.to(d.dtype)[:, None, None]
        if module.weight.grad is not None:
            module.weight.grad.sub_(d.flatten(0, 1).T @ a.flatten(0, 1))
        if module.bias is not None and module.bias.grad is not None:
            module.bias.grad.sub_(d.sum(dim=(0, 1)))

    def state_dict(self) -> dict:
        """What the rule carries from update to update (the averaged cosines of the
        averaging rules) and the counts behind :meth:`stats`: a resumed search decides and
        counts as the uninterrupted one."""
        return {"average": dict(self._average), "frozen_steps": dict(self._frozen_steps),
                "left_out": dict(self._left_out), "steps": dict(self._steps),
                "leaving": {k: list(v) for k, v in self._leaving.items()},
                "refreshes": self._refreshes}

    def load_state_dict(self, state: dict) -> None:
        # States from before the evidence rule have neither: no evidence yet.
        self._leaving = {k: tuple(v) for k, v in state.get("leaving", {}).items()}
        self._refreshes = int(state.get("refreshes", 0))
        self._average = dict(state["average"])
        self._frozen_steps = dict(state["frozen_steps"])
        self._left_out = dict(state["left_out"])
        self._steps = dict(state["steps"])

    def last_signs(self) -> dict[str, Tensor]:
        """Per layer, the sign pattern (-1/0/+1, int8 ``[k, k]``) of the last Gram matrix."""
        return {name: gram.sign().to(torch.int8) for name, gram in self.last_gram.items()}

    def last_cosines(self) -> dict[str, Tensor]:
        """Per layer, the pairwise cosines of the last update's task gradients (the
        ``k(k-1)/2`` values above the diagonal)."""
        out = {}
        for name, gram in self.last_gram.items():
            k = gram.shape[0]
            rows, cols = torch.triu_indices(k, k, 1, device=gram.device)
            out[name] = cosines(gram)[rows, cols]
        return out

    def stats(self) -> dict[str, dict[str, float]]:
        """Per layer: steps it was frozen, steps it was checked, the frozen fraction and
        (``consensus``) the fraction of (task, step) pairs left out of its update."""
        out = {}
        for name, layer in self.layers.items():
            frozen, steps = self._frozen_steps.get(name, 0), self._steps.get(name, 0)
            out[name] = {"frozen_steps": frozen, "steps": steps,
                         "frozen_fraction": frozen / max(steps, 1)}
            if self.rule.per_task:
                out[name]["left_out_fraction"] = (self._left_out.get(name, 0)
                                                  / max(steps * len(layer.tasks), 1))
        return out
