"""The alternating CoNAL search step, independent of what the losses are.

The official search: first an architecture step on a held-out batch (alpha only, its own
Adam, lr 5e-5, weight decay 1e-5), then a weight step on a training batch (Adam, lr 1e-4,
weight decay 1e-5, gradient-norm clip 5). Conflict-noticing acts on the weight step.
:func:`architecture_step` is the first half on its own, for a learner (such as SAC) whose
weight step is its own update.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from conal_rl.method.conflict import ConflictNoticing
from conal_rl.method.layers import NetOptions
from conal_rl.method.rules import PAPER_RULE, rule_named
from conal_rl.method.supernet import SuperNet


@dataclass(frozen=True)
class SearchSettings:
    """A search's settings; steps count whatever the caller counts (an RL loop: env steps)."""

    hidden: tuple[int, ...]
    critic_hidden: tuple[int, ...] | None = None
    """The critics' widths (None: ``hidden``); as many as ``hidden``."""
    arch_lr: float = 5e-5  # official CoNAL search
    arch_weight_decay: float = 1e-5  # official CoNAL search
    gumbel: bool = False
    tau_start: float = 5.0  # Gumbel temperature, annealed linearly over the search
    tau_end: float = 0.5
    conflict_noticing: bool = True
    conflict_rule: str = PAPER_RULE  # the official search's; see rules.RULES
    conflict_ema: float = 0.9  # averaging of the ema-pair and consensus rules
    conflict_threshold: float = 0.0  # cosine margin of the ema-pair and consensus rules
    no_private: bool = False
    warmup_steps: int = 0
    """Steps of weights-only training (no alpha step, no conflict-noticing) before the
    search proper: the official search starts from a pretrained backbone, ours from scratch,
    where every pair of tasks' gradient signs is random and the trunk would be frozen from
    the first step."""
    total_steps: int = 1  # steps of the whole search (for the annealing schedule)
    arch_every: int = 1  # one architecture step every this many weight steps (1: official)
    evidence_every: int = 1
    """The ``evidence`` rule: steps between refreshes of its statistics (from the first)."""
    evidence_samples: int = 1024
    """The ``evidence`` rule: samples per task each refresh measures on."""
    options: NetOptions = NetOptions()
    """How the searched nets are built (LayerNorm, residual connections, init)."""
    task_id_input: bool = False
    """The searched nets read the one-hot task id (``--task-id``), as the trees they derive."""

    def widths(self, role: str) -> tuple[int, ...]:
        """The hidden widths of the actor's or the critics' searched nets."""
        return tuple(self.critic_hidden) if role == "critic" and self.critic_hidden else \
            tuple(self.hidden)

    @property
    def decides_on_evidence(self) -> bool:
        """The architecture comes from the evidence (gated nets), not from alpha."""
        return self.conflict_noticing and rule_named(self.conflict_rule).from_evidence

    def temperature(self, step: int) -> float:
        """The Gumbel temperature at ``step``: annealed linearly after the warm-up."""
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min(max((step - self.warmup_steps) / span, 0.0), 1.0)
        return self.tau_start + (self.tau_end - self.tau_start) * progress


def architecture_optimizer(alphas: Iterable[nn.Parameter], lr: float = 5e-5,
                           weight_decay: float = 1e-5) -> torch.optim.Optimizer:
    """Adam over the architecture weights (defaults: the official search script).
    ``foreach``: one batched update for all tensors (torch's default on CUDA only; on the
    CPU ~25% faster for small tensors, identical numbers)."""
    return torch.optim.Adam(list(alphas), lr=lr, weight_decay=weight_decay, foreach=True)


def search_optimizers(net: SuperNet, arch_lr: float = 5e-5, weight_lr: float = 1e-4,
                      weight_decay: float = 1e-5
                      ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """The official pair for one supernet: ``(arch, weight)``."""
    arch = architecture_optimizer(net.arch_parameters(), arch_lr, weight_decay)
    weight = torch.optim.Adam(net.weight_parameters(), lr=weight_lr, weight_decay=weight_decay,
                              foreach=True)
    return arch, weight


def architecture_step(optimizer: torch.optim.Optimizer,
                      losses: Sequence[tuple[Tensor, Sequence[nn.Parameter]]]) -> None:
    """One step on alpha: each ``(loss, alphas)`` back-propagates to its architecture
    parameters only (``inputs=``), so no time goes to weight gradients and the weights'
    ``.grad`` is left alone."""
    optimizer.zero_grad(set_to_none=True)
    for loss, alphas in losses:
        loss.backward(inputs=list(alphas))
    optimizer.step()


def search_step(net: SuperNet, arch_loss_fn: Callable[[], Tensor] | None,
                weight_loss_fn: Callable[[], Tensor], arch_opt: torch.optim.Optimizer | None,
                weight_opt: torch.optim.Optimizer, noticing: ConflictNoticing | None = None,
                max_grad_norm: float | None = 5.0) -> tuple[Tensor | None, Tensor]:
    """One architecture step, then one weight step. Each loss function runs its own forward
    and returns a scalar (e.g. the mean of the task losses). Returns both losses, detached.
    With ``arch_loss_fn=None`` only the weights move: a warm-up at a fixed (uniform) mix.
    """
    arch_loss = None
    if arch_loss_fn is not None:
        arch_loss = arch_loss_fn()
        architecture_step(arch_opt, [(arch_loss, net.arch_parameters())])
        arch_loss = arch_loss.detach()

    weight_params = net.weight_parameters()
    weight_opt.zero_grad(set_to_none=True)
    with noticing.record() if noticing is not None else nullcontext():
        weight_loss = weight_loss_fn()
    weight_loss.backward(inputs=weight_params)
    if noticing is not None:
        noticing.apply()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(weight_params, max_grad_norm, foreach=True)
    weight_opt.step()
    return arch_loss, weight_loss.detach()
