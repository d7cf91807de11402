"""CoNAL-Pro: the tree grown stage by stage, groups of tasks sharing branches.

How groups form and split (our reading of the paper's Figure 1(c), decided here):

* Before stage s the modules 1..s-1 are decided: at each depth a partition of the tasks into
  groups (:class:`~conal_rl.method.groups.GroupTreeSpec`); before stage 1 all tasks form one
  group.
* At stage s every task t of a group g chooses between two candidates for module s, with
  architecture weights ``softmax(alpha[t])`` over (stay, leave): *stay* is g's module s,
  shared by the tasks of g that stay; *leave* is one new module s shared by the tasks of g
  that leave. Modules s+1..P are each task's own during the stage (purely specific, as in
  CoNAL's search space), so the two candidates differ at depth s only. Conflict-noticing
  (any rule of :class:`~conal_rl.method.conflict.ConflictNoticing`) acts on both candidate
  modules of every group, over the group's tasks.
* After the stage each task keeps its argmax: g splits into its stayers and its leavers, two
  groups that share their modules from s on, and each can split again at a later stage.
  At the last stage (s = P) leaving means a purely-specific module.
* So a group never merges with another: the partitions refine depth by depth.

Cost: a stage computes two candidates per task at one depth, against CoNAL's P+1 paths at
every depth; its parameters are two modules per group at depth s plus per-task modules
below it, so memory and step time grow with T like CoNAL's private modules, with a smaller
factor (2 candidates instead of P+1 paths).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import torch
from torch import Tensor, nn

from conal_rl.method.conflict import ConflictNoticing
from conal_rl.method.groups import GroupLinear, GroupTreeSpec, canonical
from conal_rl.method.layers import PLAIN, NetOptions, TaskLinear
from conal_rl.method.search import search_optimizers, search_step
from conal_rl.method.supernet import _tasks_of
from conal_rl.method.task_gradients import SharedLayer
from conal_rl.method.tree import input_width, task_id_appended


class StageNet(nn.Module):
    """Stage s of the search, ``[T, B, in] -> [T, B, out]``; ``decided`` holds the
    partitions of depths 1..s-1 (s = len(decided) + 1)."""

    def __init__(self, decided: tuple[tuple[int, ...], ...], num_tasks: int, in_features: int,
                 out_features: int, hidden: tuple[int, ...], options: NetOptions = PLAIN,
                 task_id_input: bool = False):
        super().__init__()
        T, s, P = num_tasks, len(decided) + 1, len(hidden)
        self.task_id_input = task_id_input  # the one-hot task id appended to the input
        widths = [input_width(in_features, T, task_id_input), *hidden]
        self.stage, self.last, self.num_tasks = s, s == P, T
        self.parents = decided[-1] if decided else (0,) * T
        self.decided = nn.ModuleList(GroupLinear(torch.tensor(groups), widths[j], widths[j + 1])
                                     for j, groups in enumerate(decided))
        labels = sorted(set(self.parents))
        self.group_tasks = [tuple(t for t in range(T) if self.parents[t] == g) for g in labels]
        order = torch.tensor([t for tasks in self.group_tasks for t in tasks])
        self.register_buffer("unsort", order.argsort(), persistent=False)
        self.stay = nn.ModuleList(nn.Linear(widths[s - 1], widths[s]) for _ in labels)
        self.leave = (TaskLinear(T, widths[s - 1], widths[s]) if self.last else
                      nn.ModuleList(nn.Linear(widths[s - 1], widths[s]) for _ in labels))
        self.below = nn.ModuleList(TaskLinear(T, widths[j - 1], widths[j])
                                   for j in range(s + 1, P + 1))
        self.head = TaskLinear(T, widths[-1], out_features)
        self.alpha = nn.Parameter(torch.ones(T, 2))  # (stay, leave), uniform at the start
        # Which of (stay, leave) each task may take (both: the paper's; see gate()).
        self.register_buffer("allowed", torch.ones(T, 2, dtype=torch.bool), persistent=False)
        self.act = options.activation()
        options.initialise(self)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name != "alpha"]

    def shared_layers(self) -> dict[str, SharedLayer]:
        """The stage's candidate modules shared by a group's tasks (for conflict-noticing)."""
        layers = {f"stay.{g}": SharedLayer(m, tasks)
                  for g, (m, tasks) in enumerate(zip(self.stay, self.group_tasks))}
        if not self.last:
            layers |= {f"leave.{g}": SharedLayer(m, tasks)
                       for g, (m, tasks) in enumerate(zip(self.leave, self.group_tasks))}
        return layers

    def gate(self, leaving: Mapping[str, Collection[int]] | None = None) -> None:
        """As ``SuperNet.gate``: a task leaves its group's module only where its conflict
        there is significant (``leaving["stay.{g}"]`` holds it), and there it leaves, so
        the groups split along the significant clusters; ``{}``: every task stays;
        ``None``: alpha chooses (the paper's)."""
        self.allowed.fill_(leaving is None)
        if leaving is None:
            return
        self.allowed[:, 0] = True
        for g, tasks in enumerate(self.group_tasks):
            for t in _tasks_of(leaving, f"stay.{g}") & set(tasks):
                self.allowed[t, 0], self.allowed[t, 1] = False, True

    def _logits(self) -> Tensor:
        return self.alpha.masked_fill(~self.allowed, float("-inf"))

    def forward(self, x: Tensor) -> Tensor:
        h = task_id_appended(x) if self.task_id_input else x
        for layer in self.decided:
            h = self.act(layer(h), h)
        w = torch.softmax(self._logits(), dim=-1)
        stay = torch.cat([m(h[list(t)]) for m, t in zip(self.stay, self.group_tasks)])
        if self.last:
            leave = self.leave(h)
        else:
            leave = torch.cat([m(h[list(t)]) for m, t in zip(self.leave, self.group_tasks)])
            leave = leave[self.unsort]
        h = (w[:, :1, None] * self.act(stay[self.unsort], h)
             + w[:, 1:, None] * self.act(leave, h))
        for layer in self.below:
            h = self.act(layer(h), h)
        return self.head(h)

    def decide(self) -> tuple[int, ...]:
        """The partition at depth s: each group split into stayers and leavers (at the last
        stage, each leaver alone)."""
        leaves = self._logits().detach().argmax(dim=-1).tolist()
        parents = self.parents
        return canonical((parents[t], t if self.last and leaves[t] else -1 if leaves[t] else -2)
                         for t in range(self.num_tasks))


def progressive_search(num_tasks: int, in_features: int, out_features: int,
                       hidden: tuple[int, ...], weight_loss: Callable[[nn.Module], Tensor],
                       arch_loss: Callable[[nn.Module], Tensor], warmup: int, steps: int,
                       arch_lr: float = 5e-5, weight_lr: float = 1e-4,
                       noticing: dict | None = None,
                       on_stage: Callable[[int, StageNet, ConflictNoticing], None] | None = None,
                       refresh: Callable[[StageNet, ConflictNoticing], None] | None = None,
                       refresh_every: int = 100,
                       options: NetOptions = PLAIN) -> GroupTreeSpec:
    """All P stages, each a fresh :class:`StageNet` trained ``warmup`` weight-only steps,
    then ``steps`` alternating search steps (an architecture step on ``arch_loss``, a weight
    step on ``weight_loss`` with conflict-noticing configured by ``noticing``: keyword
    arguments of :class:`ConflictNoticing`, ``{"enabled": False}`` for none). With
    ``refresh`` (the ``evidence`` rule's measurement: it gives the noticing its evidence
    and the stage its gate), each stage starts gated with every task staying and calls it
    before its first step and every ``refresh_every`` steps; ``options`` build the nets.
    Returns the grown tree."""
    decided: tuple[tuple[int, ...], ...] = ()
    for _ in hidden:
        net = StageNet(decided, num_tasks, in_features, out_features, hidden, options)
        arch_opt, weight_opt = search_optimizers(net, arch_lr=arch_lr, weight_lr=weight_lr)
        notice = ConflictNoticing(net.shared_layers(), **(noticing or {}))
        def train(net=net):
            return weight_loss(net)

        def held_out(net=net):
            return arch_loss(net)

        if refresh is not None:
            net.gate({})
        for step in range(warmup + steps):
            if refresh is not None and step % refresh_every == 0:
                refresh(net, notice)
            if step < warmup:
                search_step(net, None, train, None, weight_opt)
            else:
                search_step(net, held_out, train, arch_opt, weight_opt, notice)
        if on_stage is not None:
            on_stage(net.stage, net, notice)
        decided = (*decided, net.decide())
    return GroupTreeSpec(hidden, decided)
