"""PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning") on the shared modules
of the trained actor and critics, as a gradient filter of the agent (record()/apply()).

The rule, per shared ``nn.Linear`` (weight and bias flattened together) and per update: take
the per-task gradients ``g_t`` of the module's tasks; for each task i, in a random order of
the other tasks j, if ``g_i'·g_j < 0`` then ``g_i' -= (g_i'·g_j / |g_j|²) g_j``, projecting
against the *original* ``g_j`` as in the paper; the module's gradient becomes the sum of the
projected ``g_i'``. Choices made here:

* **Granularity**: per shared module, as CoNAL's conflict-noticing (the paper projects the
  whole shared parameter vector at once; for MT-SAC that would be the Gram matrices of all
  layers summed).
* **Tasks**: those on the module's leading axis (:class:`SharedLayer` ``.tasks``): all T for
  MT-SAC/MH-SAC, and for a TreeNet's shared module j the tasks that branch at j or later. A
  module with one task is left alone.
* **Scale**: ``g_t`` is task t's share of the backpropagated loss, so plain backward leaves
  ``.grad = Σ_{t∈S} g_t`` and with the agent's mean loss ``g_t = ∇L_t / T`` (T: *all*
  tasks). PCGrad replaces it with ``Σ_{t∈S} g_t'``, the same 1/T factor: the paper's mean
  of the projected gradients when every task shares the module, and for a subset S the
  scale plain training gives it (a module of 3 of 10 tasks is not boosted 10/3 times).
* **With RLW** (``--loss-weighting rlw``): the per-task gradients are those of the weighted
  loss, ``g_t = λ_t ∇L_t``. A projection against ``g_j`` depends only on its direction and
  on the sign of ``g_i'·g_j``, neither changed by ``λ > 0``, so the result is
  ``Σ_t λ_t (∇L_t)'``: project the task gradients, then weight them; the two commute.
* **MT-SAC**: the whole network is shared, its one head included (``shared_layers`` lists
  it as ``"head"``), so PCGrad covers every layer, as the paper's MT-SAC + PCGrad does.
  Per-task heads and private modules keep their ordinary gradients.
* **Order**: per module and update, each task gets its own uniformly random order of the
  others, drawn with torch's RNG on the gradients' device (checkpointed RNG: reproducible).

Computation, without a per-task backward and without materialising per-task gradients:
every ``g_i'`` is a combination ``Σ_j C_ij g_j`` of the originals, and
``g_i'·g_j = (C K)_ij`` with K the ``[k, k]`` Gram matrix that ``conflict.task_gram`` gets
from the captured ``a``, ``δ``. So the projections run on C (k-1 steps, batched over tasks
and over the modules with the same k), and the new gradient is ``Σ_j w_j g_j`` with
``w = 1ᵀC``. Where the Gram matrix comes from materialised per-task gradients (the cheaper
formula at the SAC sizes) that sum reuses them; else it is one product ``(w·δ)ᵀ a``. The
per-task gradients of one filter's modules live until its projections are done (e.g.
MT10, 3x400 critics: about 50 MB). No host sync.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from conal_rl.method.task_gradients import (
    SharedLayer,
    TaskGradientCapture,
    gram_method,
    task_gradients,
    task_gram,
)


def random_orders(shape: tuple[int, ...], k: int, device: torch.device | str | None = None
                  ) -> Tensor:
    """``[*shape, k, k-1]`` long: row i a uniformly random order of ``{0..k-1} \\ {i}``
    (argsort of uniform noise with task i itself pushed last); torch's default RNG."""
    noise = torch.rand(*shape, k, k, device=device)
    noise.diagonal(dim1=-2, dim2=-1).fill_(2.0)
    return noise.argsort(dim=-1)[..., :-1]


def pcgrad_coefficients(gram: Tensor, order: Tensor) -> Tensor:
    """``gram [..., k, k]`` of the task gradients ``g``, ``order [..., k, k-1]`` (row i: the
    order in which task i projects) -> ``C [..., k, k]`` with ``g_i' = Σ_j C_ij g_j``
    (the identity where no pair conflicts). The module's gradient ``Σ_i g_i'`` is then
    ``Σ_j w_j g_j`` with ``w = C.sum(-2)``."""
    k = gram.shape[-1]
    coef = torch.eye(k, dtype=gram.dtype, device=gram.device).expand_as(gram).clone()
    sq_norms = gram.diagonal(dim1=-2, dim2=-1)  # [..., k]
    tiny = torch.finfo(gram.dtype).tiny
    for step in range(k - 1):
        j = order[..., step]  # [..., k]: task i projects against task j[i] now
        gram_rows = gram.gather(-2, j.unsqueeze(-1).expand(*j.shape, k))  # K[j_i, :]
        dot = (coef * gram_rows).sum(-1)  # g_i' · g_{j_i}
        # A zero g_j gives dot = 0 exactly: no projection, and no 0/0.
        scale = dot.clamp(max=0) / sq_norms.gather(-1, j).clamp(min=tiny)
        coef.scatter_add_(-1, j.unsqueeze(-1), -scale.unsqueeze(-1))
    return coef


class PCGrad(TaskGradientCapture):
    """PCGrad for the shared modules of TreeNets (or SuperNets). Usage as
    :class:`ConflictNoticing`: ``record()`` around the loss's forward, ``backward``, then
    ``apply()`` rewrites the shared modules' ``.grad``. ``.grad`` is edited by adding
    ``Σ_j (w_j - 1) g_j``, so earlier accumulated gradient is kept and modules without a
    conflict keep their gradient bit for bit."""

    def __init__(self, nets: nn.Module | Mapping[str, nn.Module | SharedLayer],
                 enabled: bool = True):
        super().__init__(nets, enabled)
        self.last_order: dict[str, Tensor] = {}
        """Per layer, the ``[k, k-1]`` projection orders of the last apply."""

    @torch.no_grad()
    def apply(self) -> dict[str, Tensor]:
        """After ``backward``: project. Returns per layer (with at least two tasks) the
        weights ``w [k]`` of its task gradients; ``{}`` when disabled."""
        if not self.enabled:
            return {}
        captured = {name: ad for name, ad in self.captured().items() if ad[0].shape[0] > 1}
        groups: dict[tuple, list[str]] = {}
        for name, (a, d) in captured.items():
            groups.setdefault((a.shape[0], d.device, d.dtype), []).append(name)
        weights: dict[str, Tensor] = {}
        for (k, device, _), names in groups.items():
            grams, per_task = [], {}
            for name in names:
                a, d = captured[name]
                if gram_method(*a.shape, d.shape[-1]) == "materialise":
                    # The per-task gradients, kept for the weighted sum below.
                    weight, bias = per_task[name] = task_gradients(a, d)
                    grams.append(bias @ bias.T + weight @ weight.T)
                else:
                    grams.append(task_gram(a, d, "kernel"))
            orders = random_orders((len(names),), k, device)
            all_weights = pcgrad_coefficients(torch.stack(grams), orders).sum(dim=-2)
            for name, w, order in zip(names, all_weights, orders):
                weights[name], self.last_order[name] = w, order
                self._add(self.layers[name].module, w - 1, captured[name], per_task.get(name))
        self.clear()
        return weights

    @staticmethod
    def _add(module: nn.Linear, c: Tensor, captured: tuple[Tensor, Tensor],
             per_task: tuple[Tensor, Tensor] | None) -> None:
        """``.grad += Σ_j c_j g_j``: from the per-task gradients, or from ``δ`` and ``a``."""
        if per_task is not None:
            c = c.to(per_task[0].dtype)
            weight, bias = c @ per_task[0], c @ per_task[1]
        else:
            a, d = captured
            d = d * c.to(d.dtype)[:, None, None]
            weight, bias = d.flatten(0, 1).T @ a.flatten(0, 1), d.sum(dim=(0, 1))
        if module.weight.grad is not None:
            module.weight.grad.add_(weight.view_as(module.weight.grad))
        if module.bias is not None and module.bias.grad is not None:
            module.bias.grad.add_(bias)

