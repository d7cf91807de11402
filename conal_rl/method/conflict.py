"""Conflict-noticing: freeze a shared module for a step when two tasks' gradients on it
point in opposing directions.

The rule (official ``NOCLGrad``): for every shared module, compare the per-task gradients
pairwise (weight and bias flattened together); if any pair has a negative inner product the
module's gradient is zeroed for this step, otherwise it keeps the ordinary gradient. The
official code takes the mean of the task gradients; we keep whatever ``loss.backward()``
produced, which is that mean when the loss is the mean of the task losses (with a sum it is
T times the mean; the decision depends on signs only, so it is unaffected).

Per-task gradients come from ONE ordinary backward pass. A shared ``nn.Linear`` sees a
task-major input ``a [T, N, in]`` and receives the output gradient ``δ [T, N, out]``; the
rows of task t only depend on task t's loss (every layer in these networks is row-wise per
task), so task t's share of the weight gradient is exactly ``δ_tᵀ a_t`` and of the bias
``Σ_n δ_t``. We capture ``a`` with a forward hook and ``δ`` with a hook on the output tensor,
which fires (once per backward pass) with the *total* output gradient, summed over every
later use of that activation (in the supernet, the trunk activation feeds the next shared
module, a private module and the mix); a module called several times in one forward
contributes all its calls, concatenated along the sample axis. What the Gram matrix holds
is each task's contribution to the backpropagated loss: with ``loss = Σ_t L_t`` it is the
Gram of the ∇L_t themselves.

That capture machinery is :class:`TaskGradientCapture`; ``conal_rl/method/pcgrad.py`` (PCGrad on
the trained trees' shared modules) builds on it too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from conal_rl.method.options import CONFLICT_RULES, PAPER_RULE

if TYPE_CHECKING:  # evidence.py builds on this module
    from conal_rl.method.evidence import LayerEvidence


@dataclass
class SharedLayer:
    """A shared nn.Linear and the tasks on its input's leading axis, in order; or (``rows``)
    a module run on more tasks than share it, of whose leading axis these tasks' rows are
    the shared part (a grouped tree's layer runs every task, each group's weights shared by
    its own tasks). Such a layer is read (its per-task gradients), never filtered."""

    module: nn.Module
    tasks: tuple[int, ...]
    rows: tuple[int, ...] | None = None


def shared_layers(net: nn.Module) -> dict[str, SharedLayer]:
    """The shared modules of a :class:`SuperNet`, a :class:`TreeNet`, a CoNAL-Pro stage or a
    grouped tree.

    A TreeNet runs shared module j on the tasks that branch at j or later only, so its
    leading axis is that subset (increasing task order). Per-task heads are not included;
    a shared head (MT-SAC's one output layer for all tasks) is, as ``"head"``.
    """
    if hasattr(net, "shared_layers"):  # a SuperNet (every task passes every shared module),
        # a CoNAL-Pro stage or a grouped tree (their layers say their tasks)
        return {k: m if isinstance(m, SharedLayer) else SharedLayer(m, tuple(range(net.num_tasks)))
                for k, m in net.shared_layers().items()}
    spec = net.spec
    layers = {
        f"shared.{key}": SharedLayer(
            module, tuple(t for t, b in enumerate(spec.branch_points) if b >= int(key)))
        for key, module in net.shared.items()
    }
    if spec.shared_head:
        layers["head"] = SharedLayer(net.head, tuple(range(spec.num_tasks)))
    return layers


def task_gram(inputs: Tensor, grad_outputs: Tensor, method: str = "auto") -> Tensor:
    """``[T, N, in], [T, N, out] -> [T, T]``: inner products of the per-task gradients of a
    linear layer (weight and bias together), without a backward pass per task.

    Two exact formulas; the cheaper one for the shapes is used:
    * materialise ``G_t = δ_tᵀ a_t`` (``[T, out, in]``, one bmm) and multiply the flattened
      G's: about ``2·T·N·in·out + 2·T²·in·out`` flops and ``T·in·out`` memory;
    * kernel blocks ``<G_s, G_t> = Σ_{n,m} (δ_s[n]·δ_t[m]) (a_s[n]·a_t[m])``: about
      ``2·(T·N)²·(in+out)`` flops and ``(T·N)²`` memory.
    For the SAC sizes (N=128 per task, width 400) materialising is ~6x cheaper; the
    kernel form wins when N is small next to the widths. ``method`` forces one
    (``"materialise"`` or ``"kernel"``); ``"auto"`` picks by the flop counts above.
    """
    T, N, d_in = inputs.shape
    d_out = grad_outputs.shape[-1]
    if method == "auto":
        method = gram_method(T, N, d_in, d_out)
    elif method not in ("materialise", "kernel"):
        raise ValueError(f"unknown Gram method {method!r}")
    if method == "materialise":
        per_task, bias_sums = task_gradients(inputs, grad_outputs)
        return bias_sums @ bias_sums.T + per_task @ per_task.T
    bias_sums = grad_outputs.sum(dim=1)  # [T, out]: per-task bias gradients
    gram = bias_sums @ bias_sums.T
    a, d = inputs.reshape(T * N, d_in), grad_outputs.reshape(T * N, d_out)
    blocks = (a @ a.T) * (d @ d.T)
    return gram + blocks.view(T, N, T, N).sum(dim=(1, 3))


def gram_method(T: int, N: int, d_in: int, d_out: int) -> str:
    """The cheaper of :func:`task_gram`'s two exact formulas for these shapes."""
    materialise_flops = 2 * T * N * d_in * d_out + 2 * T * T * d_in * d_out
    kernel_flops = 2 * (T * N) ** 2 * (d_in + d_out)
    return "materialise" if materialise_flops <= kernel_flops else "kernel"


def task_gradients(inputs: Tensor, grad_outputs: Tensor) -> tuple[Tensor, Tensor]:
    """``[T, N, in], [T, N, out]`` -> the per-task gradients of a linear layer: weights
    ``δ_tᵀ a_t`` flattened ``[T, out·in]`` (rows of nn.Linear's ``[out, in]``) and biases
    ``Σ_n δ_t`` ``[T, out]``."""
    weights = torch.bmm(grad_outputs.transpose(1, 2), inputs).reshape(inputs.shape[0], -1)
    return weights, grad_outputs.sum(dim=1)


def _samples_of_all_calls(tensors: list[Tensor], k: int) -> Tensor:
    """``[k, ..., d]`` per call -> ``[k, N, d]``: the calls' samples side by side (the
    per-task gradient of a module used several times is the sum over its calls)."""
    flat = [x.reshape(k, -1, x.shape[-1]) for x in tensors]
    return flat[0] if len(flat) == 1 else torch.cat(flat, dim=1)


@dataclass
class _Capture:
    inputs: list[Tensor] = field(default_factory=list)
    grad_outputs: dict[int, Tensor] = field(default_factory=dict)


class TaskGradientCapture:
    """Per-task gradients of the shared modules of SuperNets/TreeNets from one backward.

    The capture machinery behind :class:`ConflictNoticing` and ``conal_rl.method.pcgrad.PCGrad``
    (the gradient filters of the agent's record()/apply() seam): ``record()`` hooks every
    shared nn.Linear for the forwards run inside it, and after the backward
    :meth:`captured` gives per layer its inputs ``a [k, N, in]`` and output gradients
    ``δ [k, N, out]`` over the layer's k tasks, from which task t's gradient is
    ``δ_tᵀ a_t`` (weight) and ``Σ_n δ_t`` (bias). Subclasses implement ``apply``.
    """

    def __init__(self, nets: nn.Module | Mapping[str, nn.Module | SharedLayer],
                 enabled: bool = True):
        """``nets``: one SuperNet/TreeNet, or named nets (e.g. ``{"q1": ..., "q2": ...}``,
        their layers then named ``"q1/shared.1"``...), or named :class:`SharedLayer` s."""
        self.layers: dict[str, SharedLayer] = {}
        for prefix, item in (nets.items() if isinstance(nets, Mapping) else [("", nets)]):
            if isinstance(item, SharedLayer):
                self.layers[prefix] = item
            else:
                sep = "/" if prefix else ""
                self.layers |= {prefix + sep + k: v for k, v in shared_layers(item).items()}
        self.enabled = enabled
        self._captures: dict[str, _Capture] = {}

    @contextmanager
    def record(self) -> Iterator[None]:
        """Capture layer inputs and output gradients of the forwards run inside."""
        self.clear()
        if not self.enabled:
            yield
            return
        handles = [layer.module.register_forward_hook(self._hook(name))
                   for name, layer in self.layers.items()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, name: str):
        rows = self.layers[name].rows

        def capture(module: nn.Module, args: tuple, output: Tensor) -> None:
            if not output.requires_grad:
                return
            tasks = len(self.layers[name].tasks)
            if rows is None and output.shape[0] != tasks:
                raise ValueError(f"{name}: expected its {tasks} tasks on the leading axis of "
                                 f"its input, got shape {tuple(args[0].shape)}")
            cap = self._captures.setdefault(name, _Capture())
            call = len(cap.inputs)
            x = args[0].detach()  # autograd saves it anyway for the weight grad
            cap.inputs.append(x if rows is None else x[list(rows)])

            def store(grad: Tensor) -> None:
                if rows is not None:
                    grad = grad[list(rows)]
                # Summed over backward passes through this graph, like .grad (δ ↦ δᵀa is
                # linear, so the per-task gradients stay exact).
                previous = cap.grad_outputs.get(call)
                cap.grad_outputs[call] = grad.detach() if previous is None else previous + grad
            output.register_hook(store)
        return capture

    def clear(self) -> None:
        """Drop captured tensors (``apply`` does it; ``record`` starts with it)."""
        self._captures = {}

    def captured(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Per layer reached by the last backward (all its calls), ``(a [k, N, in],
        δ [k, N, out])`` over its k tasks, the calls' samples side by side."""
        out = {}
        for name, cap in self._captures.items():
            if len(cap.grad_outputs) != len(cap.inputs):
                continue  # the backward did not reach (all calls of) this layer
            k = len(self.layers[name].tasks)
            a = _samples_of_all_calls(cap.inputs, k)
            d = _samples_of_all_calls([cap.grad_outputs[i] for i in range(len(cap.inputs))], k)
            out[name] = (a, d)
        return out

    def grams(self) -> dict[str, Tensor]:
        """Per layer reached by the last backward, the ``[k, k]`` Gram matrix of the
        per-task gradients computed from the captures."""
        return {name: task_gram(a, d) for name, (a, d) in self.captured().items()}

    def apply(self) -> object:
        raise NotImplementedError


"""How conflict-noticing decides, per shared module and update (see :class:`ConflictNoticing`)."""


def cosines(gram: Tensor) -> Tensor:
    """``[..., k, k]`` Gram matrices of task gradients -> their pairwise cosines (0 where a
    gradient is zero)."""
    norms = gram.diagonal(dim1=-2, dim2=-1).clamp(min=0).sqrt()
    return gram / (norms[..., :, None] * norms[..., None, :]).clamp(
        min=torch.finfo(gram.dtype).tiny)


def consensus_cosines(gram: Tensor) -> Tensor:
    """``[..., k]``: for each task t, the cosine between its gradient and the sum of the
    other tasks' gradients (the module's consensus without t), from the Gram matrix alone."""
    row, own = gram.sum(dim=-1), gram.diagonal(dim1=-2, dim2=-1)
    total = gram.sum(dim=(-2, -1))[..., None]
    others = (total - 2 * row + own).clamp(min=0)  # |sum_{s != t} g_s|^2
    tiny = torch.finfo(gram.dtype).tiny
    return (row - own) / (own.clamp(min=0).sqrt() * others.sqrt()).clamp(min=tiny)


def main_group(affinity: Tensor, share: float = 0.5) -> Tensor:
    """``[k, k]`` task affinities -> ``[k]`` bool: the tasks of the module's main group, whose
    weight in the leading eigenvector of the affinity matrix is at least ``share`` of the
    largest weight (for block-diagonal affinities, one block)."""
    weights = torch.linalg.eigh(affinity).eigenvectors[:, -1].abs()
    return weights >= share * weights.max()


class ConflictNoticing(TaskGradientCapture):
    """Conflict-noticing for the shared modules of a SuperNet or TreeNet.

    Usage in a training step::

        noticing = ConflictNoticing(net)           # enabled=False makes every call a no-op
        with noticing.record():                    # hooks live only inside this block
            loss = loss_fn(net(x))                 # net input task-major [T, B, in]
        loss.backward()
        noticing.apply()                           # freeze conflicting modules
        optimizer.step()

    Rules (``rule``), per shared module:

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
        if rule not in CONFLICT_RULES:
            raise ValueError(f"unknown conflict rule {rule!r}; valid: {', '.join(CONFLICT_RULES)}")
        self.rule, self.ema, self.threshold, self.signed = rule, ema, threshold, signed
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

    def _kept(self, name: str, gram: Tensor) -> Tensor:
        """``[k]`` bool: the tasks whose gradients this module's update keeps."""
        k = gram.shape[0]
        if self.rule == "evidence":
            leaving = set(self._leaving.get(name, ()))
            return torch.tensor([t not in leaving for t in self.layers[name].tasks],
                                device=gram.device)
        off_diagonal = ~torch.eye(k, dtype=torch.bool, device=gram.device)
        if self.rule == "any-pair":
            conflict = ((gram < 0) & off_diagonal).any()
            return (~conflict).expand(k)
        now = {"ema-pair": cosines, "consensus": consensus_cosines,
               "affinity": lambda g: cosines(g).square()}[self.rule](gram)
        average = self._average.get(name)
        average = now if average is None else self.ema * average + (1 - self.ema) * now
        self._average[name] = average
        if self.rule == "ema-pair":
            return (~((average < -self.threshold) & off_diagonal).any()).expand(k)
        if self.rule == "affinity":
            return main_group(average)
        return average >= -self.threshold

    @torch.no_grad()
    def apply(self) -> dict[str, Tensor]:
        """After ``backward``: freeze the modules the rule says conflict, or (``consensus``)
        take the left-out tasks' gradients off them. Returns per layer a 0-d bool tensor,
        True where the module was frozen. A no-op (``{}``) when disabled."""
        if not self.enabled:
            return {}
        captured = self.captured()
        grams = {name: task_gram(a, d) for name, (a, d) in captured.items()}
        kept = {name: self._kept(name, gram) for name, gram in grams.items()}
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
            if self.rule in ("consensus", "affinity", "evidence"):
                out[name]["left_out_fraction"] = (self._left_out.get(name, 0)
                                                  / max(steps * len(layer.tasks), 1))
        return out
