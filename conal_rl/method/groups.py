"""Trees whose branches are shared by groups of tasks (CoNAL-Pro's architectures).

A grouped tree has P hidden modules; at depth j the tasks are partitioned into groups, each
group running its own copy of module j, and the partition at depth j refines the one at j-1
(two tasks that share module j shared every module before it). All tasks in one group is a
shared module, one task per group a purely-specific one, so CoNAL's trees (a trunk with each
task leaving at its branch point), MH-SAC and independent nets are special cases
(:meth:`GroupTreeSpec.from_branch_points`).

The groups' weights are stacked ``[G, in, out]``. The net keeps its tasks' rows in an order
where every depth's groups are consecutive (sorted by their groups from the first depth on:
the partitions refine each other, so one order serves every depth), so a group of several
tasks is one matrix product on its rows, as a shared module is in a
:class:`~conal_rl.method.tree.TreeNet`, and the tasks alone in their groups next to each
other are one batched product, their weights gathered: a depth costs one call per group of
several tasks and per run of lone tasks, never one per task.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from conal_rl.method.layers import PLAIN, NetOptions, TaskLinear
from conal_rl.method.task_gradients import SharedLayer
from conal_rl.method.tree import input_width, task_id_appended


def canonical(groups) -> tuple[int, ...]:
    """Group labels renumbered 0, 1, ... in the order of their first task."""
    first: dict[int, int] = {}
    return tuple(first.setdefault(g, len(first)) for g in groups)


@dataclass(frozen=True)
class GroupTreeSpec:
    hidden: tuple[int, ...]
    """Widths of the P hidden modules."""
    groups: tuple[tuple[int, ...], ...]
    """Per depth 1..P, the group of every task (canonical labels 0, 1, ...)."""
    task_names: tuple[str, ...] = field(default=())
    task_id_input: bool = False
    """Append a one-hot task id to the input (``--task-id``)."""
    shared_head: bool = False
    """The tasks of one group at the last depth (they share every module) share one output
    layer too (``--shared-head``, MT-SAC's); a task alone there has its own."""

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "groups", tuple(canonical(g) for g in self.groups))
        object.__setattr__(self, "task_names", tuple(self.task_names))
        if len(self.groups) != len(self.hidden):
            raise ValueError(f"need a partition per hidden module ({len(self.hidden)}), got "
                             f"{len(self.groups)}")
        if len({len(g) for g in self.groups}) != 1 or not self.groups[0]:
            raise ValueError("every depth must give a group to each task")
        for j in range(1, len(self.groups)):
            pairs = set(zip(self.groups[j], self.groups[j - 1]))
            if len({g for g, _ in pairs}) != len(pairs):  # a group with two parents
                raise ValueError(f"depth {j + 1} does not refine depth {j}: a group there "
                                 "holds tasks of two groups above it")
        if self.task_names and len(self.task_names) != self.num_tasks:
            raise ValueError("task_names and groups differ in length")

    @property
    def num_tasks(self) -> int:
        return len(self.groups[0])

    @property
    def depth(self) -> int:
        return len(self.hidden)

    @property
    def branch_points(self) -> tuple[int, ...]:
        """Per task, how many leading modules it shares with another task (0..P): below
        them it runs modules of its own, as in a :class:`~conal_rl.method.tree.TreeSpec`."""
        sizes = [{g: labels.count(g) for g in labels} for labels in self.groups]
        return tuple(sum(size[labels[t]] > 1 for size, labels in zip(sizes, self.groups))
                     for t in range(self.num_tasks))

    def branched(self, leaving: Mapping[int, set[int] | tuple[int, ...]]) -> GroupTreeSpec:
        """This tree with tasks taken out of their groups: ``leaving[layer]`` (1..P) are
        tasks that leave their group at module ``layer``; each runs its own copies from there
        on (as :meth:`TreeSpec.branched <conal_rl.method.tree.TreeSpec.branched>`)."""
        groups = [list(labels) for labels in self.groups]
        for layer, tasks in leaving.items():
            for t in tasks:
                for depth in range(int(layer) - 1, self.depth):
                    groups[depth][t] = ("own", t)  # a label no group has; canonical renumbers
        return replace(self, groups=tuple(tuple(labels) for labels in groups))

    @classmethod
    def from_branch_points(cls, hidden, branch_points, task_names=()) -> GroupTreeSpec:
        """A CoNAL tree: task t shares modules 1..b_t with the tasks that reach them."""
        T = len(branch_points)
        return cls(hidden, tuple(tuple(0 if b >= j else T + t for t, b in enumerate(branch_points))
                                 for j in range(1, len(hidden) + 1)), task_names)

    def shared_modules(self) -> list[list[int]]:
        """``[T][T]``: how many modules each two tasks share (the depths where they are in
        one group)."""
        T = self.num_tasks
        return [[sum(g[s] == g[t] for g in self.groups) for t in range(T)] for s in range(T)]

    def groups_by_name(self) -> list[list[list[str]]]:
        """Per depth, the groups as lists of task names (or indices)."""
        names = self.task_names or tuple(str(t) for t in range(self.num_tasks))
        out = []
        for labels in self.groups:
            blocks: dict[int, list[str]] = {}
            for name, g in zip(names, labels):
                blocks.setdefault(g, []).append(name)
            out.append(list(blocks.values()))
        return out

    def to_dict(self) -> dict:
        return {"hidden": list(self.hidden), "groups": [list(g) for g in self.groups],
                "task_names": list(self.task_names), "task_id_input": self.task_id_input,
                "shared_head": self.shared_head, "groups_by_task_name": self.groups_by_name()}

    @classmethod
    def from_dict(cls, d: dict) -> GroupTreeSpec:
        return cls(tuple(d["hidden"]), tuple(tuple(g) for g in d["groups"]),
                   tuple(d.get("task_names", ())), bool(d.get("task_id_input", False)),
                   bool(d.get("shared_head", False)))


def grown_group_state(old: GroupTreeSpec, new: GroupTreeSpec,
                      state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A :class:`GroupTreeNet` state of tree ``old`` laid out for ``new``, whose groups split
    ``old``'s (:meth:`GroupTreeSpec.branched`): every new group starts as the group it came
    from, so the net computes what it computed. Any tensors keyed and shaped like the
    parameters go through alike (an optimizer's moments)."""
    if old.hidden != new.hidden or old.num_tasks != new.num_tasks or (
            old.shared_head != new.shared_head):
        raise ValueError("the new tree must have the old one's modules, tasks and heads")
    out = dict(state)
    for depth, (was, now) in enumerate(zip(old.groups, new.groups)):
        came_from = {}
        for g_old, g_new in zip(was, now):
            if came_from.setdefault(g_new, g_old) != g_old:
                raise ValueError(f"the new tree's groups at depth {depth + 1} must split the "
                                 "old ones, not join them")
        index = torch.tensor([came_from[g] for g in range(len(came_from))])
        keys = [f"layers.{depth}.{part}" for part in ("weight", "bias")]
        if new.shared_head and depth == new.depth - 1:  # the head: grouped as the last module
            keys += ["head.weight", "head.bias"]
        for key in keys:
            out[key] = state[key][index.to(state[key].device)].contiguous()
    return out


class GroupLinear(nn.Module):
    """``G`` linear layers, task t using layer ``index[t]``: ``[T, B, in] -> [T, B, out]``,
    the input's rows being the tasks ``row_tasks`` (default: in task order)."""

    def __init__(self, index: Tensor, in_features: int, out_features: int,
                 row_tasks: Sequence[int] | None = None):
        super().__init__()
        G = int(index.max()) + 1
        self.register_buffer("index", index.long(), persistent=False)
        self.weight = nn.Parameter(torch.empty(G, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(G, 1, out_features))
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default, per group
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)
        row_groups = [int(index[t]) for t in (range(len(index)) if row_tasks is None
                                              else row_tasks)]
        # (start, stop, group): consecutive rows of one group, computed as one product;
        # (start, stop, None): consecutive rows each alone in its group, one batched product.
        self.segments: list[tuple[int, int, int | None]] = []
        for start, stop in _runs(row_groups):
            alone = stop - start == 1 and row_groups.count(row_groups[start]) == 1
            if alone and self.segments and self.segments[-1][2] is None:
                start = self.segments.pop()[0]
            self.segments.append((start, stop, None if alone else row_groups[start]))
        self.register_buffer("row_groups", torch.tensor(row_groups), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        weights, biases = self.weight.unbind(), self.bias.unbind()
        out = []
        for start, stop, group in self.segments:
            rows = x[start:stop]
            if group is None:
                groups = self.row_groups[start:stop]
                out.append(torch.baddbmm(self.bias[groups], rows, self.weight[groups]))
            else:
                n, batch, d_in = rows.shape
                out.append(torch.addmm(biases[group], rows.reshape(n * batch, d_in),
                                       weights[group]).view(n, batch, -1))
        return out[0] if len(out) == 1 else torch.cat(out)


def _runs(labels: Sequence[int]) -> list[tuple[int, int]]:
    """``(start, stop)`` of each run of equal consecutive labels."""
    starts = [i for i in range(len(labels)) if i == 0 or labels[i] != labels[i - 1]]
    return list(zip(starts, [*starts[1:], len(labels)]))


class GroupTreeNet(nn.Module):
    """The network of a :class:`GroupTreeSpec`: ``[T, B, in] -> [T, B, out]``, one head per
    task (with ``shared_head``, one per group of the last depth)."""

    def __init__(self, spec: GroupTreeSpec, in_features: int, out_features: int,
                 options: NetOptions = PLAIN):
        super().__init__()
        self.spec, self.options = spec, options
        widths = [input_width(in_features, spec.num_tasks, spec.task_id_input), *spec.hidden]
        # The rows' order: by the tasks' groups at depth 1, 2, ..., so each depth's groups
        # are consecutive (module docstring); the per-task heads read them in task order.
        order = sorted(range(spec.num_tasks), key=lambda t: [g[t] for g in spec.groups])
        self.row_tasks = order
        changed = order != sorted(order)
        self.register_buffer("order", torch.tensor(order) if changed else None, persistent=False)
        self.register_buffer("unsort", torch.tensor(order).argsort() if changed else None,
                             persistent=False)
        self.layers = nn.ModuleList(
            GroupLinear(torch.tensor(spec.groups[j]), widths[j], widths[j + 1], order)
            for j in range(spec.depth))
        self.head = (GroupLinear(torch.tensor(spec.groups[-1]), widths[-1], out_features, order)
                     if spec.shared_head else TaskLinear(spec.num_tasks, widths[-1], out_features))
        self.act = options.activation()
        options.initialise(self)

    def inputs(self, x: Tensor) -> Tensor:
        """``x`` as the first module reads it: with the one-hot task id appended where the
        tree takes it."""
        return task_id_appended(x) if self.spec.task_id_input else x

    def task_weights(self, layer: int, tasks: Sequence[int]) -> tuple[Tensor, Tensor]:
        """The weights ``[n, in, out]`` and biases ``[n, 1, out]`` tasks compute module
        ``layer`` (1..P) with: their groups' (as
        :meth:`TreeNet.task_weights <conal_rl.method.tree.TreeNet.task_weights>`)."""
        module = self.layers[layer - 1]
        groups = module.index[torch.as_tensor(list(tasks), device=module.index.device)]
        return module.weight[groups], module.bias[groups]

    def head_weights(self, tasks: Sequence[int]) -> tuple[Tensor, Tensor]:
        """The weights ``[n, in, out]`` and biases ``[n, 1, out]`` of tasks' heads (their
        groups' with a shared head)."""
        index = torch.as_tensor(list(tasks), device=self.head.weight.device)
        if self.spec.shared_head:
            index = self.head.index[index]
        return self.head.weight[index], self.head.bias[index]

    def forward(self, x: Tensor) -> Tensor:
        x = self.inputs(x)
        if self.order is not None:
            x = x.index_select(0, self.order)
        for layer in self.layers:
            x = self.act(layer(x), x)
        if self.unsort is None:
            return self.head(x)
        if self.spec.shared_head:  # the head's rows are the layers' too
            return self.head(x).index_select(0, self.unsort)
        return self.head(x.index_select(0, self.unsort))

    def shared_layers(self) -> dict[str, SharedLayer]:
        """Each depth's groups of two tasks or more, as ``"group.{depth}.{g}"``: the rows of
        the depth's layer that share group g's weights (for reading their
        per-task gradients, e.g. the conflict atlas); with a shared head, the last depth's
        groups' heads too, as ``"head.{g}"``."""
        out = {}
        last = len(self.spec.groups)
        for j, groups in enumerate(self.spec.groups, 1):
            for g in sorted(set(groups)):
                tasks = tuple(t for t, group in enumerate(groups) if group == g)
                if len(tasks) > 1:
                    rows = tuple(self.row_tasks.index(t) for t in tasks)
                    out[f"group.{j}.{g}"] = SharedLayer(self.layers[j - 1], tasks, rows)
                    if j == last and self.spec.shared_head:
                        out[f"head.{g}"] = SharedLayer(self.head, tasks, rows)
        return out
