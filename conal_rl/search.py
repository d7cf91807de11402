"""One alternating CoNAL search step, independent of what the losses are.

The official search: first an architecture step on a held-out batch (alpha only, its own
Adam, lr 5e-5, weight decay 1e-5), then a weight step on a training batch (Adam, lr 1e-4,
weight decay 1e-5, gradient-norm clip 5). Conflict-noticing acts on the weight step.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import Tensor

from conal_rl.conflict import ConflictNoticing
from conal_rl.supernet import SuperNet


def search_optimizers(net: SuperNet, arch_lr: float = 5e-5, weight_lr: float = 1e-4,
                      weight_decay: float = 1e-5
                      ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """The official pair (defaults from the official search script): ``(arch, weight)``.
    ``foreach``: one batched update for all tensors (torch's default on CUDA only; on the
    CPU it makes a small net's step ~25% faster, with identical numbers)."""
    arch = torch.optim.Adam(net.arch_parameters(), lr=arch_lr, weight_decay=weight_decay,
                            foreach=True)
    weight = torch.optim.Adam(net.weight_parameters(), lr=weight_lr, weight_decay=weight_decay,
                              foreach=True)
    return arch, weight


def search_step(net: SuperNet, arch_loss_fn: Callable[[], Tensor] | None,
                weight_loss_fn: Callable[[], Tensor], arch_opt: torch.optim.Optimizer | None,
                weight_opt: torch.optim.Optimizer, noticing: ConflictNoticing | None = None,
                max_grad_norm: float | None = 5.0) -> tuple[Tensor | None, Tensor]:
    """One architecture step, then one weight step. Each loss function runs its own forward
    and returns a scalar (e.g. the mean of the task losses). Returns both losses, detached.

    The architecture step back-propagates to alpha only (``inputs=``), so it spends no time
    on weight gradients; the weight step leaves alpha's gradient alone. With
    ``arch_loss_fn=None`` only the weights move: a warm-up at a fixed (uniform) mix.
    """
    weight_params = net.weight_parameters()
    arch_loss = None
    if arch_loss_fn is not None:
        arch_opt.zero_grad(set_to_none=True)
        arch_loss = arch_loss_fn()
        arch_loss.backward(inputs=net.arch_parameters())
        arch_opt.step()
        arch_loss = arch_loss.detach()

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
