"""Per-task gradients of shared modules from ONE ordinary backward pass, and their Gram
matrices: what conflict-noticing, the evidence, the atlas and PCGrad read.

A shared ``nn.Linear`` sees a task-major input ``a [T, N, in]`` and receives the output
gradient ``δ [T, N, out]``; the rows of task t only depend on task t's loss (every layer in
these networks is row-wise per task), so task t's share of the weight gradient is exactly
``δ_tᵀ a_t`` and of the bias ``Σ_n δ_t``. We capture ``a`` with a forward hook and ``δ``
with a hook on the output tensor, which fires (once per backward pass) with the *total*
output gradient, summed over every later use of that activation (in the supernet, the trunk
activation feeds the next shared module, a private module and the mix); a module called
several times in one forward contributes all its calls, concatenated along the sample
axis. What the Gram matrix holds is each task's contribution to the backpropagated loss:
with ``loss = Σ_t L_t`` it is the Gram of the ∇L_t themselves.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


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
    a shared head (MT-SAC's output layer, read by the tasks on the whole trunk) is, as
    ``"head"``.
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
    shared_head, _ = spec.head_tasks()
    if shared_head:
        layers["head"] = SharedLayer(net.head, shared_head)
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
