"""Per-task layers computed for all tasks in one batched product.

Every multi-task network in conal-rl works on batches laid out ``[T, B, features]``: the
leading axis is the task, so task t's samples are ``x[t]``. A shared layer is an ordinary
``nn.Linear`` (it broadcasts over the task axis); a task-private layer is a
:class:`TaskLinear`, whose weights for all tasks are stacked ``[T, in, out]`` and applied
with one ``torch.baddbmm`` instead of a Python loop over tasks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class TaskLinear(nn.Module):
    """``n`` independent linear layers: ``[n, B, in] -> [n, B, out]`` in one batched call."""

    def __init__(self, n: int, in_features: int, out_features: int):
        super().__init__()
        self.n, self.in_features, self.out_features = n, in_features, out_features
        self.weight = nn.Parameter(torch.empty(n, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n, 1, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The same distribution as nn.Linear's default, drawn independently per task.
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)

    def extra_repr(self) -> str:
        return f"n={self.n}, in_features={self.in_features}, out_features={self.out_features}"
