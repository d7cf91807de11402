"""Per-task layers computed for all tasks in one batched product.

Every multi-task network in conal-rl works on batches laid out ``[T, B, features]``: the
leading axis is the task, so task t's samples are ``x[t]``. A shared layer is an ordinary
``nn.Linear`` (it broadcasts over the task axis); a task-private layer is a
:class:`TaskLinear`, whose weights for all tasks are stacked ``[T, in, out]`` and applied
with one ``torch.baddbmm`` instead of a Python loop over tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conal_rl.method.weight_inits import WEIGHT_INITS


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


@dataclass(frozen=True)
class NetOptions:
    """How every net of the method is built, whatever its tree: the learner's levers that
    live in the network. The defaults build the plain ReLU MLP of SAC."""

    layer_norm: bool = False
    """LayerNorm without affine parameters on every hidden module's output, before ReLU."""
    residual: bool = False
    """Add a hidden module's input to its output where the two widths agree."""
    init: str = "torch"
    """One of WEIGHT_INITS."""

    def __post_init__(self):
        if self.init not in WEIGHT_INITS:
            raise ValueError(f"unknown weight init {self.init!r}; valid: "
                             f"{', '.join(WEIGHT_INITS)}")

    def activation(self) -> HiddenActivation:
        return HiddenActivation(self.layer_norm, self.residual)

    @torch.no_grad()
    def initialise(self, net: nn.Module) -> None:
        """Draw the linear maps of ``net`` as ``init`` says (torch's: as they were made)."""
        if self.init == "torch":
            return
        for module in net.modules():
            weight = getattr(module, "weight", None)
            if not isinstance(weight, nn.Parameter):
                continue
            fan_in = weight.shape[1]  # nn.Linear's [out, in], TaskLinear's [n, in, out]
            bound = math.sqrt(6.0 / fan_in)
            nn.init.uniform_(weight, -bound, bound)
            nn.init.zeros_(module.bias)


PLAIN = NetOptions()
"""The plain ReLU MLP's options: every net's default."""


class HiddenActivation(nn.Module):
    """What follows every hidden module's linear map: ReLU, after a LayerNorm without affine
    parameters with ``layer_norm``, plus the module's input with ``residual`` (where the
    widths agree). Parameter-free on purpose: a task's private copy of a module normalises
    as the shared one does, so a tree that grows a branch computes what it computed."""

    def __init__(self, layer_norm: bool = False, residual: bool = False):
        super().__init__()
        self.layer_norm, self.residual = layer_norm, residual

    def forward(self, z: Tensor, skip: Tensor | None = None) -> Tensor:
        if self.layer_norm:
            z = F.layer_norm(z, z.shape[-1:])
        h = F.relu(z)
        if self.residual and skip is not None and skip.shape == h.shape:
            h = h + skip
        return h

    def extra_repr(self) -> str:
        return f"layer_norm={self.layer_norm}, residual={self.residual}"
