"""What a private module would gain a task, measured rather than inferred.

A :class:`ModuleProbe` gives each of its tasks its own copy of one shared module of a tree
(plain or grouped) and of everything the task computes after it (its deeper modules, its
head), starting as the net's weights: at its start it computes what the net computes. It
trains on what the net trains on (the same samples, the same targets), reading the net's
shared modules before it without training them. After a while, the probe's loss and the
net's on data neither trained on say what the private copy would have bought each task over
those steps: :func:`paired_gain`.

Why not from gradients: a first-order reading (how far a task's gradient points from the
shared step) hands out copies where tasks agree as readily as where they do not, because
with a head per task the trunk's per-task gradients differ anyway; whether a shared module
*can* serve every task shows only by training. Why the held-out data must be whole
episodes: steps of one episode are near copies of each other, and a probe with more capacity
fits the training steps of an episode better, which its held-out neighbours would then
reward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import torch
from torch import Tensor, nn

from conal_rl.method.groups import GroupTreeNet
from conal_rl.method.layers import TaskLinear
from conal_rl.method.tree import TreeNet


class ModuleProbe(nn.Module):
    """Tasks ``tasks``' private copies of shared module ``module`` (1..P) of ``net`` (a
    :class:`~conal_rl.method.tree.TreeNet`, or a grouped tree's
    :class:`~conal_rl.method.groups.GroupTreeNet`, where the module is shared by the task's
    group) and of their modules after it and heads. Every task must have ``module`` as its
    deepest shared module (its branch point). ``forward`` reads the net's modules before
    ``module`` as they are now (no gradient into them); the net itself is not a submodule
    of the probe."""

    def __init__(self, net: TreeNet | GroupTreeNet, tasks: Sequence[int], module: int):
        super().__init__()
        spec = net.spec
        if not tasks or any(spec.branch_points[t] != module for t in tasks):
            raise ValueError(f"every probed task must branch after module {module}, got the "
                             f"branch points {[spec.branch_points[t] for t in tasks]}")
        self.net, self.module = [net], module  # in a list: not registered, not in state_dict
        self.task_list = [int(t) for t in tasks]
        device = net.head.weight.device
        self.register_buffer("tasks", torch.tensor(list(tasks), device=device), persistent=False)
        self.copies = nn.ModuleDict()
        with torch.no_grad():
            for layer in range(module, spec.depth + 1):
                self.copies[str(layer)] = _task_linear(*net.task_weights(layer, tasks))
            self.head = _task_linear(*net.head_weights(tasks))

    def forward(self, x: Tensor) -> Tensor:
        """``x [T, B, in]`` (the net's input) -> ``[len(tasks), B, out]``."""
        net, tasks = self.net[0], self.task_list
        h = net.inputs(x)[self.tasks]
        with torch.no_grad():
            for layer in range(1, self.module):
                weight, bias = net.task_weights(layer, tasks)
                h = net.act(torch.baddbmm(bias, h, weight), h)
        for layer in range(self.module, net.spec.depth + 1):
            h = net.act(self.copies[str(layer)](h), h)
        return self.head(h)

    def parameters_per_task(self) -> int:
        """What one task's copy of the probed module costs in parameters (not counting the
        deeper modules it already had of its own, nor its head)."""
        return sum(p[0].numel() for p in self.copies[str(self.module)].parameters())


def _task_linear(weight: Tensor, bias: Tensor) -> TaskLinear:
    n, d_in, d_out = weight.shape
    layer = TaskLinear(n, d_in, d_out).to(weight.device)
    layer.weight.copy_(weight)
    layer.bias.copy_(bias)
    return layer


@dataclass(frozen=True)
class Gain:
    """One task's measured gain: the relative drop of its held-out loss with the probe
    (``1 - probe loss / net loss``), its standard error by episodes, and how many held-out
    episodes it rests on. The error covers which episodes were held out, not which batches
    probe and net trained on: a second copy of the net trained on other draws has a gain
    too (``python -m benchmarks.studies.width_gain`` measures it, its ``null``)."""

    gain: float
    se: float
    episodes: int

    def pays(self, price: float, z: float) -> bool:
        """Above ``price`` by more than ``z`` standard errors."""
        return self.gain - z * self.se > price

    def to_dict(self) -> dict:
        return {"gain": round(self.gain, 4), "se": round(self.se, 4), "episodes": self.episodes}


def paired_gain(net_loss: Tensor, probe_loss: Tensor, episodes: Tensor) -> list[Gain]:
    """Per task, from per-sample losses ``[k, N]`` of the net and the probe on the same
    held-out samples and each sample's episode ``[k, N]``: the ratio estimate of the relative
    drop and its leave-one-episode-out jackknife error (samples of one episode are not
    independent; the episodes are). Fewer than 2 episodes: an infinite error."""
    out = []
    for net_t, probe_t, ep_t in zip(net_loss.double(), probe_loss.double(), episodes):
        ids, of = torch.unique(ep_t, return_inverse=True)
        drop = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, of, net_t - probe_t)
        base = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, of, net_t)
        gain = float(drop.sum() / base.sum())
        E = len(ids)
        if E < 2:
            out.append(Gain(gain, math.inf, E))
            continue
        leave_one = (drop.sum() - drop) / (base.sum() - base)
        se = math.sqrt((E - 1) / E * float(((leave_one - leave_one.mean()) ** 2).sum()))
        out.append(Gain(gain, se, E))
    return out


def one_sided_z(tests: int, level: float = 0.05) -> float:
    """The z a gain must clear, one-sided at ``level`` with Bonferroni over ``tests``."""
    return NormalDist().inv_cdf(1 - level / max(tests, 1))
