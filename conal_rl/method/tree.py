"""Tree-shaped multi-task MLPs: the one network type behind CoNAL and the baselines.

A tree has P hidden modules. Task t uses the shared modules 1..b_t and then its own private
copies of modules b_t+1..P, then its own output head (``b_t`` is its *branch point*,
0..P). All tasks at P is multi-head SAC; all at 0 is independent networks trained together;
CoNAL's derived architecture is anything in between. MT-SAC (one shared network, one-hot
task id appended to the input, one head) is the same tree with ``task_id_input`` and
``shared_head`` set; with ``shared_head`` the tasks that share every module share the head
too, and a task that branches earlier has its own (so MT-SAC's tree can grow).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace

import torch
from torch import Tensor, nn

from conal_rl.method.layers import PLAIN, NetOptions, TaskLinear


@dataclass(frozen=True)
class TreeSpec:
    """Architecture of one tree network; serialisable to and from JSON."""

    hidden: tuple[int, ...]
    """Widths of the P hidden modules."""
    branch_points: tuple[int, ...]
    """Per task, how many leading modules it shares (0..P)."""
    task_names: tuple[str, ...] = field(default=())
    """Optional task names, in task-index order (for reports and architecture.json)."""
    task_id_input: bool = False
    """Append a one-hot task id to the input (MT-SAC)."""
    shared_head: bool = False
    """The tasks that share every module (branch point P) share one output layer too, as
    MT-SAC's do; a task that branches earlier has its own."""

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "branch_points", tuple(int(b) for b in self.branch_points))
        object.__setattr__(self, "task_names", tuple(self.task_names))
        P = len(self.hidden)
        if not self.branch_points:
            raise ValueError("a tree needs at least one task")
        if any(h <= 0 for h in self.hidden):
            raise ValueError(f"hidden widths must be positive, got {self.hidden}")
        bad = [b for b in self.branch_points if not 0 <= b <= P]
        if bad:
            raise ValueError(f"branch points must lie in 0..{P}, got {bad}")
        if self.task_names and len(self.task_names) != len(self.branch_points):
            raise ValueError("task_names and branch_points differ in length")

    @property
    def num_tasks(self) -> int:
        return len(self.branch_points)

    @property
    def depth(self) -> int:
        return len(self.hidden)

    def head_tasks(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The tasks that read the shared head and those with a head of their own (both in
        increasing order): with ``shared_head`` the tasks on the whole trunk share it."""
        shared = tuple(t for t, b in enumerate(self.branch_points)
                       if self.shared_head and b == self.depth)
        return shared, tuple(t for t in range(self.num_tasks) if t not in shared)

    @classmethod
    def mtsac(cls, hidden, num_tasks: int, task_names=()) -> TreeSpec:
        """MT-SAC: one shared MLP with a one-hot task id appended to its input."""
        return cls(tuple(hidden), (len(hidden),) * num_tasks, task_names, True, True)

    @classmethod
    def mhsac(cls, hidden, num_tasks: int, task_names=()) -> TreeSpec:
        """Multi-head SAC: one shared trunk, one output head per task."""
        return cls(tuple(hidden), (len(hidden),) * num_tasks, task_names)

    @classmethod
    def independent(cls, hidden, num_tasks: int, task_names=()) -> TreeSpec:
        """Single-task learning in one net: every task its own modules from the input on
        (branch point 0), computed for all tasks in one batched product per layer."""
        return cls(tuple(hidden), (0,) * num_tasks, task_names)

    def branched(self, leaving: Mapping[int, set[int] | tuple[int, ...]]) -> TreeSpec:
        """This tree with tasks taken off shared modules: ``leaving[layer]`` (1..P) are
        tasks that leave shared module ``layer``; each gets its own copies from the first
        module it leaves on (its branch point drops below it)."""
        points = list(self.branch_points)
        for layer, tasks in leaving.items():
            for t in tasks:
                points[t] = min(points[t], int(layer) - 1)
        return replace(self, branch_points=tuple(points))

    def widened(self, factor: int) -> TreeSpec:
        """This tree with every hidden module ``factor`` times as wide (:func:`widened_state`
        lays a net's weights out for it)."""
        if factor < 1:
            raise ValueError(f"a tree widens by a whole factor of at least 1, got {factor}")
        return replace(self, hidden=tuple(h * factor for h in self.hidden))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TreeSpec:
        """Build from a dict; keys that are not fields (e.g. a search's final alpha) are
        informational and ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class TreeNet(nn.Module):
    """A pruned tree: holds only the shared modules some task uses and the private copies
    each task needs. Input ``[T, B, in]`` (task-major), output ``[T, B, out]``."""

    def __init__(self, spec: TreeSpec, in_features: int, out_features: int,
                 options: NetOptions = PLAIN):
        super().__init__()
        self.spec, self.options = spec, options
        T, P = spec.num_tasks, spec.depth
        b = spec.branch_points
        widths = [input_width(in_features, T, spec.task_id_input), *spec.hidden]
        self.shared = nn.ModuleDict()
        self.private = nn.ModuleDict()
        # Each module's rows: its shared tasks, then its private ones (each in increasing
        # task order, as their modules hold them), so a module some tasks share and others
        # have of their own is two slices and one concatenation. The rows move from one
        # module's order to the next's by one gather where the order changes (a task leaves
        # the trunk), and back to task order by one at the output.
        self.on_trunk: list[int] = []  # per module, then the head: how many rows are shared
        order = list(range(T))
        for layer in range(1, P + 1):
            d_in, d_out = widths[layer - 1], widths[layer]
            shared_tasks = [t for t in range(T) if b[t] >= layer]
            private_tasks = [t for t in range(T) if b[t] < layer]
            if shared_tasks:
                self.shared[str(layer)] = nn.Linear(d_in, d_out)
            if private_tasks:
                self.private[str(layer)] = TaskLinear(len(private_tasks), d_in, d_out)
            order = self._rows(f"rows_{layer}", order, shared_tasks + private_tasks)
            self.on_trunk.append(len(shared_tasks))
        # The shared head (if some task reads it) is ``head``; the per-task heads are
        # ``head`` too where no task shares one, else ``private_head``.
        shared_heads, private_heads = spec.head_tasks()
        self.head = (nn.Linear(widths[-1], out_features) if shared_heads
                     else TaskLinear(T, widths[-1], out_features))
        if shared_heads and private_heads:
            self.private_head = TaskLinear(len(private_heads), widths[-1], out_features)
        order = self._rows("rows_head", order, [*shared_heads, *private_heads])
        self.on_trunk.append(len(shared_heads))
        self._rows("rows_out", order, list(range(T)))
        self.act = options.activation()
        options.initialise(self)

    def inputs(self, x: Tensor) -> Tensor:
        """``x [T, B, in]`` as the first module reads it: with the one-hot task id appended
        where the tree takes it (MT-SAC)."""
        return task_id_appended(x) if self.spec.task_id_input else x

    def task_weights(self, layer: int, tasks: Sequence[int]) -> tuple[Tensor, Tensor]:
        """The weights ``[n, in, out]`` and biases ``[n, 1, out]`` tasks compute module
        ``layer`` with, as they are now (:func:`task_rows`)."""
        key = str(layer)
        tensors = {f"{kind}.{key}.{part}": getattr(modules[key], part)
                   for kind, modules in (("shared", self.shared), ("private", self.private))
                   if key in modules for part in ("weight", "bias")}
        return task_rows(self.spec, tensors, layer, tasks)

    def head_weights(self, tasks: Sequence[int]) -> tuple[Tensor, Tensor]:
        """The weights ``[n, in, out]`` and biases ``[n, 1, out]`` of the heads tasks
        compute their output with (:func:`head_rows`)."""
        return head_rows(self.spec, dict(self.named_parameters()), tasks)

    def _rows(self, name: str, rows: list[int], wanted: list[int]) -> list[int]:
        """Register the gather (buffer ``name``) that takes rows in order ``rows`` to order
        ``wanted``, or None where they are in it already; returns ``wanted``."""
        index = None if rows == wanted else torch.tensor([rows.index(t) for t in wanted])
        self.register_buffer(name, index, persistent=False)
        return wanted

    def _module(self, shared: nn.Module | None, private: nn.Module | None, h: Tensor,
                on_trunk: int, rows: Tensor | None) -> tuple[Tensor, Tensor]:
        """A module's rows put in its order (see ``__init__``), and its output."""
        if rows is not None:
            h = h.index_select(0, rows)
        if private is None:
            return h, shared(h)
        if shared is None:
            return h, private(h)
        trunk, off = h.split([on_trunk, h.shape[0] - on_trunk])
        return h, torch.cat([shared(trunk), private(off)])

    def forward(self, x: Tensor) -> Tensor:
        T = self.spec.num_tasks
        if x.shape[0] != T:
            raise ValueError(f"expected {T} tasks on the leading axis, got shape {tuple(x.shape)}")
        h = self.inputs(x)
        for layer in range(1, self.spec.depth + 1):
            key = str(layer)
            skip, h = self._module(self.shared[key] if key in self.shared else None,
                                   self.private[key] if key in self.private else None, h,
                                   self.on_trunk[layer - 1], getattr(self, f"rows_{layer}"))
            h = self.act(h, skip)
        private_head = getattr(self, "private_head", None)
        if private_head is None and self.on_trunk[-1] == 0:  # a head per task, no shared one
            private_head, shared_head = self.head, None
        else:
            shared_head = self.head
        _, out = self._module(shared_head, private_head, h, self.on_trunk[-1], self.rows_head)
        return out if self.rows_out is None else out.index_select(0, self.rows_out)


def input_width(in_features: int, num_tasks: int, task_id_input: bool) -> int:
    """What a net's first module reads: ``in_features``, and with ``task_id_input`` the
    one-hot task id's ``num_tasks`` more (:func:`task_id_appended`)."""
    return in_features + (num_tasks if task_id_input else 0)


def task_id_appended(x: Tensor) -> Tensor:
    """Task-major ``x [T, B, in]`` with each task's one-hot id appended: ``[T, B, in + T]``."""
    T = x.shape[0]
    one_hot = torch.eye(T, dtype=x.dtype, device=x.device)[:, None, :]
    return torch.cat([x, one_hot.expand(T, x.shape[1], T)], dim=-1)


def grown_state(old: TreeSpec, new: TreeSpec, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A :class:`TreeNet` state of tree ``old`` laid out for ``new``, where tasks branch no
    later than in ``old`` (:meth:`TreeSpec.branched`): a task's new private copy of a module
    starts as the shared module, so the net computes what it computed. Any tensors keyed and
    shaped like the parameters go through alike (an optimizer's moments)."""
    if old.depth != new.depth or old.num_tasks != new.num_tasks or any(
            b > a for a, b in zip(old.branch_points, new.branch_points)) or (
            old.shared_head != new.shared_head):
        raise ValueError("the new tree must have the old one's modules, tasks and heads, each "
                         "task branching no later")
    out = {k: v for k, v in state.items()
           if not k.startswith(("shared.", "private.", "head.", "private_head."))}
    for layer in range(1, old.depth + 1):
        if any(b >= layer for b in new.branch_points):  # some task still shares it
            for part in ("weight", "bias"):
                out[f"shared.{layer}.{part}"] = state[f"shared.{layer}.{part}"]
        now_private = [t for t, b in enumerate(new.branch_points) if b < layer]
        if now_private:
            weight, bias = task_rows(old, state, layer, now_private)
            out[f"private.{layer}.weight"] = weight.contiguous()
            out[f"private.{layer}.bias"] = bias.contiguous()
    shared, private = new.head_tasks()
    if shared:
        out["head.weight"], out["head.bias"] = state["head.weight"], state["head.bias"]
    if private:
        weight, bias = head_rows(old, state, private)
        key = "private_head" if shared else "head"
        out[f"{key}.weight"], out[f"{key}.bias"] = weight.contiguous(), bias.contiguous()
    return out


def widened_state(state: Mapping[str, Tensor], factor: int, noise: float = 0.0,
                  generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """A :class:`TreeNet`'s weights laid out for its tree :meth:`~TreeSpec.widened` by
    ``factor``, computing what it computed: every unit of every hidden module (shared or a
    task's copy) is there ``factor`` times, and what reads a module (the next module, the
    heads) reads each copy with a ``factor``-th of the weight. A LayerNorm over copied units
    normalizes as before (the same mean and variance), so the function stays with
    ``--layer-norm`` and residual connections too (where no input is as wide as a module).

    Copies that start equal would stay equal (the same gradients), so ``noise`` > 0 parts
    them without changing the function: the weights reading the copies of a unit get
    noise of ``noise`` times the weights' spread that sums to zero over the copies (the
    copies' outputs are equal, so the noise cancels), and the copies then see different
    gradients. Tensors not of the tree's modules pass through."""
    if factor < 1:
        raise ValueError(f"a tree widens by a whole factor of at least 1, got {factor}")
    out = dict(state)
    for key, tensor in state.items():
        if not key.startswith(("shared.", "private.", "head.", "private_head.")):
            continue
        linear = tensor.dim() < 3  # nn.Linear's [out, in] and [out]; else TaskLinear's
        if not key.startswith(("head.", "private_head.")):  # a hidden module: units copied
            tensor = torch.cat([tensor] * factor, dim=0 if linear else -1)
        if reads_hidden_units(key):  # reads copied units
            copies = tensor.expand(factor, *tensor.shape) / factor
            if noise:
                jitter = torch.randn(copies.shape, generator=generator, dtype=tensor.dtype,
                                     device=tensor.device) * (noise * float(copies[0].std()))
                copies = copies + (jitter - jitter.mean(dim=0, keepdim=True))
            tensor = torch.cat(list(copies), dim=1 if linear else -2)
        out[key] = tensor.contiguous()
    return out


def reads_hidden_units(key: str) -> bool:
    """Whether a :class:`TreeNet` tensor (its state's key) is a weight that reads a hidden
    module's units: a module's after the first, a head's."""
    name, part = key.rsplit(".", 1)
    return part == "weight" and (name in ("head", "private_head") or int(name.split(".")[1]) > 1)


def head_rows(spec: TreeSpec, tensors: Mapping[str, Tensor],
              tasks: Sequence[int]) -> tuple[Tensor, Tensor]:
    """What tasks ``tasks`` compute their output with, as :func:`task_rows` for the
    modules: the shared head's for a task that reads it, the task's own head otherwise."""
    if not spec.head_tasks()[0]:  # a head per task: one TaskLinear
        index = list(tasks)
        return tensors["head.weight"][index], tensors["head.bias"][index]
    # the tasks that read the shared head are those that share module P
    return task_rows(spec, tensors, spec.depth, tasks, keys=("head", "private_head"))


def task_rows(spec: TreeSpec, tensors: Mapping[str, Tensor], layer: int,
              tasks: Sequence[int], keys: tuple[str, str] | None = None
              ) -> tuple[Tensor, Tensor]:
    """What tasks ``tasks`` compute module ``layer`` (1..P) with, in the layout of
    :class:`TaskLinear`: weights ``[n, in, out]`` and biases ``[n, 1, out]``, from a
    :class:`TreeNet`'s tensors (its parameters, its state, or anything keyed and shaped
    alike, e.g. an optimizer's moments): the shared module's for a task that shares it, the
    task's private row otherwise. ``keys``: the shared and the private tensors' names
    (default ``shared.{layer}``, ``private.{layer}``; the head's: :func:`head_rows`)."""
    shared_key, private_key = keys or (f"shared.{layer}", f"private.{layer}")
    shared_w, shared_b = tensors.get(f"{shared_key}.weight"), tensors.get(f"{shared_key}.bias")
    if all(spec.branch_points[t] >= layer for t in tasks):  # one module for all: no copies
        n = len(tasks)
        return shared_w.T.expand(n, -1, -1), shared_b[None, None].expand(n, 1, -1)
    private = [t for t, b in enumerate(spec.branch_points) if b < layer]
    weights, biases = [], []
    for t in tasks:
        if t in private:
            k = private.index(t)
            weights.append(tensors[f"{private_key}.weight"][k])
            biases.append(tensors[f"{private_key}.bias"][k])
        else:  # nn.Linear's [out, in] as TaskLinear's [in, out]
            weights.append(shared_w.T)
            biases.append(shared_b[None])
    return torch.stack(weights), torch.stack(biases)


def tree_parameters(spec: TreeSpec, in_features: int, out_features: int) -> int:
    """The parameters of ``TreeNet(spec, in_features, out_features)``, counted from the spec
    (no net is built: a size can be chosen by it)."""
    T = spec.num_tasks
    widths = [input_width(in_features, T, spec.task_id_input), *spec.hidden]
    total = 0
    for layer in range(1, spec.depth + 1):
        private = sum(b < layer for b in spec.branch_points)
        copies = private + (private < T)  # the private copies, and the shared module if used
        total += copies * (widths[layer - 1] + 1) * widths[layer]
    shared, private = spec.head_tasks()
    return total + (len(private) + bool(shared)) * (widths[-1] + 1) * out_features


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

