"""Loop references for the batched method code: the same functions written the
straightforward way, one task (and one path) at a time. Slow on purpose: tests check the
fast code against them and benchmarks time the fast code against them."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from conal_rl.method.supernet import SuperNet
from conal_rl.method.task_gradients import SharedLayer


def reference_forward(net: SuperNet, x: Tensor, weights: Tensor) -> Tensor:
    """The same function as ``net(x, weights)`` written the straightforward way: a Python
    loop over tasks and paths, every path recomputed from the input. Slow; it exists to
    check and to time the batched forward (tests, benchmarks)."""
    P, relu = net.depth, torch.relu
    outputs = []
    for t in range(net.num_tasks):
        mixed = 0
        for i in range(P + 1):
            h = x[t]
            for j in range(1, P + 1):
                if j <= i:
                    h = relu(net.shared[str(j)](h))
                elif net.no_private:
                    h = relu(net.branch[f"{i}_{j}"](h))
                else:
                    private = net.private[str(j)]
                    h = relu(h @ private.weight[t] + private.bias[t])
            mixed = mixed + weights[t, i] * h
        outputs.append(mixed @ net.head.weight[t] + net.head.bias[t])
    return torch.stack(outputs)


def gram_by_separate_backwards(task_losses: Tensor, layers: Mapping[str, SharedLayer]
                               ) -> dict[str, Tensor]:
    """Reference: T backward passes (as the official code), one per task loss ``[T]``;
    returns per layer the ``[k, k]`` Gram matrix over the layer's tasks. Run it on a forward
    that :meth:`ConflictNoticing.record` did not watch (its passes would add to the
    captures)."""
    params = [p for layer in layers.values() for p in (layer.module.weight, layer.module.bias)]
    per_task = []
    for t in range(task_losses.shape[0]):
        grads = torch.autograd.grad(task_losses[t], params, retain_graph=True,
                                    allow_unused=True)
        per_task.append([torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)])
    grams = {}
    for i, (name, layer) in enumerate(layers.items()):
        flat = torch.stack([torch.cat([per_task[t][2 * i].flatten(),
                                       per_task[t][2 * i + 1].flatten()])
                            for t in layer.tasks])
        grams[name] = flat @ flat.T
    return grams
