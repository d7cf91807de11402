"""CoNAL's search space: a supernet in which every task mixes all of its branch points.

With P hidden modules, task t "branches at point i" (i = 0..P) when it uses the shared
modules 1..i and then its own private copies of modules i+1..P. During the search, task t's
output is ``head_t(sum_i w[t, i] * path_i(x_t))`` with ``w[t] = softmax(alpha[t])`` (or a
hard straight-through Gumbel-softmax sample). After the search, each task keeps its argmax
path and the network becomes a :class:`~conal_rl.method.tree.TreeNet`.

Mixing happens *before* the head, as in the official code (the decoders are applied to the
mixed feature): each task has one head, shared by all of its paths, so the derived tree
inherits exactly one head per task and no path owns an unused head.

Speed: there is no Python loop over tasks or paths. The shared module j runs once on the
shared activation ``[T, B, d]``; the private module j is one :class:`TaskLinear` call on the
inputs of all j paths that reach it, concatenated along the batch axis (``[T, j*B, d]``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conal_rl.method.layers import PLAIN, NetOptions, TaskLinear
from conal_rl.method.tree import TreeNet, TreeSpec, input_width, task_id_appended


def _tasks_of(leaving: Mapping[str, Collection[int]], layer: str) -> set[int]:
    """The task ids ``leaving`` gives for ``layer``, under its name alone or any net's
    prefix (``"q1/shared.1"``)."""
    return {t for name, tasks in leaving.items()
            if name == layer or name.endswith("/" + layer) for t in tasks}


class SuperNet(nn.Module):
    """All P+1 branch points of every task in one network. ``[T, B, in] -> [T, B, out]``.

    ``no_private=True`` is the ablation *without purely-specific modules* (an LTB-style
    space): the modules after a branch point are not owned by a task but by the branch
    point. For each i < P there is one branch ``i`` made of nn.Linear copies of modules
    i+1..P, and every task that leaves the trunk at i runs through that same branch, so
    conflicting tasks that leave at the same point still share parameters; only the heads
    are task-specific. (In LTB proper a child node may pick any parent; restricting the
    parents to "the trunk at depth i" keeps the same alpha ``[T, P+1]`` and the same
    derivation, so the two spaces differ only in purely-specific modules.) Its branch
    modules are shared by all tasks, so they are listed by :meth:`shared_layers` and
    conflict-noticing, when on, applies to them too.
    """

    def __init__(self, num_tasks: int, in_features: int, out_features: int,
                 hidden: tuple[int, ...], gumbel: bool = False, tau: float = 1.0,
                 no_private: bool = False, options: NetOptions = PLAIN,
                 task_id_input: bool = False):
        super().__init__()
        if not hidden:
            raise ValueError("a supernet needs at least one hidden module")
        self.num_tasks, self.in_features, self.out_features = num_tasks, in_features, out_features
        self.hidden = tuple(int(h) for h in hidden)
        self.gumbel, self.no_private, self.options = gumbel, no_private, options
        self.task_id_input = task_id_input  # every path reads the one-hot task id too
        self.tau = tau  # Gumbel-softmax temperature: anneal it by assigning to it
        self.sample: tuple[Tensor, Tensor] | None = None
        """With ``gumbel``: the Gumbel noise ``[T, P+1]`` and the path it picks per task
        ``[T]`` (:meth:`draw_sample`), used by every forward until the next draw, so the nets
        of one update (twin critics, their targets) run one architecture."""
        P = len(self.hidden)
        widths = [input_width(in_features, num_tasks, task_id_input), *self.hidden]
        self.shared = nn.ModuleDict(
            {str(j): nn.Linear(widths[j - 1], widths[j]) for j in range(1, P + 1)})
        if no_private:
            # branch[f"{i}_{j}"]: module j of the branch leaving the trunk at point i.
            self.branch = nn.ModuleDict({
                f"{i}_{j}": nn.Linear(widths[j - 1], widths[j])
                for j in range(1, P + 1) for i in range(j)})
        else:
            # private[str(j)]: every task's own copy of module j, stacked [T, in, out].
            self.private = nn.ModuleDict(
                {str(j): TaskLinear(num_tasks, widths[j - 1], widths[j])
                 for j in range(1, P + 1)})
        self.head = TaskLinear(num_tasks, widths[-1], out_features)
        # Ones, as the official code: a uniform mix at the start.
        self.alpha = nn.Parameter(torch.ones(num_tasks, P + 1))
        # The branch points each task may take (all: the paper's search; see gate()). Not
        # in the state dict: the gate is rebuilt from the evidence (the search's state).
        self.register_buffer("allowed", torch.ones(num_tasks, P + 1, dtype=torch.bool),
                             persistent=False)
        self.act = options.activation()
        options.initialise(self)

    @property
    def depth(self) -> int:
        return len(self.hidden)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name != "alpha"]

    def shared_layers(self) -> dict[str, nn.Linear]:
        """Every module that several tasks' gradients reach, for conflict-noticing."""
        layers = {f"shared.{k}": m for k, m in self.shared.items()}
        if self.no_private:
            layers |= {f"branch.{k}": m for k, m in self.branch.items()}
        return layers

    def gate(self, leaving: Mapping[str, Collection[int]] | None = None) -> None:
        """The architecture read from the evidence: a task leaves the trunk only where its
        conflict is significant, and there it leaves. ``leaving["shared.{j}"]``: the task
        ids in significant conflict on module j (``ConflictNoticing.leaving()`` under the
        ``evidence`` rule; names with a net's prefix, ``"q1/shared.1"``, count for every
        net that shares this alpha, as the twin critics do); a task in it takes branch
        point j - 1 for its first such j, any other task the trunk (branch point P).
        ``{}``, no evidence: every task on the trunk, a private path must earn its
        parameters. ``None``: every branch point open, alpha chooses (the paper's
        search). Closed branch points weigh 0 in the mix, so their private modules get no
        gradient and alpha there neither moves nor wins the argmax.

        Why the evidence and not alpha decides: alpha descends each task's own held-out
        loss, and a task whose features crowd a narrow trunk may still do better on it
        than alone while the others pay for it; and without conflict, alpha's small
        held-out gradients on a fitted supernet wander off the trunk."""
        self.allowed.fill_(leaving is None)
        if leaving is None:
            return
        first = torch.full((self.num_tasks,), self.depth)  # branch point: the trunk
        for j in range(self.depth, 0, -1):  # the first conflicting module wins
            for t in _tasks_of(leaving, f"shared.{j}"):
                first[t] = j - 1
        self.allowed[torch.arange(self.num_tasks), first.to(self.allowed.device)] = True

    def _logits(self) -> Tensor:
        """alpha with the branch points the gate closes at -inf."""
        return self.alpha.masked_fill(~self.allowed, float("-inf"))

    def draw_sample(self) -> tuple[Tensor, Tensor]:
        """A Gumbel sample of every task's path: ``(noise [T, P+1], choice [T])``; give it
        to the nets that should share it by assigning their ``sample``."""
        noise = -torch.empty_like(self.alpha).exponential_().log()
        return noise, (self._logits().detach() + noise).argmax(dim=-1)

    def path_weights(self) -> Tensor:
        """``[T, P+1]``: softmax(alpha), or with ``gumbel`` a hard Gumbel-softmax sample
        (one-hot values, straight-through gradients): ``sample``'s, else a fresh one;
        branch points the gate closes weigh 0."""
        logits = self._logits()
        if not self.gumbel:
            return torch.softmax(logits, dim=-1)
        if self.sample is None:
            return F.gumbel_softmax(logits, tau=self.tau, hard=True, dim=-1)
        noise, choice = self.sample
        soft = torch.softmax((logits + noise) / self.tau, dim=-1)
        hard = F.one_hot(choice, soft.shape[-1]).to(soft.dtype)
        return hard - soft.detach() + soft

    def forward(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        """``x [T, B, in] -> [T, B, out]``; ``weights [T, P+1]`` defaults to
        :meth:`path_weights` (pass a fixed one to evaluate a chosen mix)."""
        T, B = x.shape[0], x.shape[1]
        if T != self.num_tasks:
            raise ValueError(f"expected {self.num_tasks} tasks on the leading axis, "
                             f"got shape {tuple(x.shape)}")
        if self.task_id_input:
            x = task_id_appended(x)
        if weights is None and self.sample is not None and self.gumbel and not self.no_private:
            return self._sampled_path(x)
        w = self.path_weights() if weights is None else weights
        paths = self._branch_paths(x) if self.no_private else self._private_paths(x)
        # paths [T, (P+1)*B, d], path i in rows i*B..(i+1)*B: one batched weighted sum.
        paths = paths.view(T, self.depth + 1, B * paths.shape[-1])
        mixed = torch.bmm(w.unsqueeze(1).to(paths.dtype), paths).view(T, B, -1)
        return self.head(mixed)

    def _sampled_path(self, x: Tensor) -> Tensor:
        """Each task through the path ``sample`` picked for it, not the mix of all P+1: at
        depth j a task takes the shared module if its branch point is j or later, else its
        private one (each module runs once, on all tasks, so conflict-noticing sees every
        task on the shared modules; a task off a module sends it no gradient). The picked
        path's weight (1 in value) carries alpha's straight-through gradient, as in GDAS
        (Dong & Yang 2019): only the picked entry of each row gets a gradient."""
        choice = self.sample[1]
        h = x
        for j in range(1, self.depth + 1):
            on_trunk = (choice >= j)[:, None, None]
            key = str(j)
            h = torch.where(on_trunk, self.act(self.shared[key](h), h),
                            self.act(self.private[key](h), h))
        picked = self.path_weights().gather(1, choice[:, None])[:, :, None]  # [T, 1, 1]
        return self.head(h * picked.to(h.dtype))

    def _private_paths(self, x: Tensor) -> Tensor:
        """``[T, B, in] -> [T, (P+1)*B, d_P]``, paths 0..P in order along the batch axis."""
        trunk, stacked = x, None  # stacked: paths 0..j-2 after module j-1
        for j in range(1, self.depth + 1):
            key = str(j)
            # Path j-1 leaves the trunk here: it joins the paths already in private modules.
            inputs = trunk if stacked is None else torch.cat([stacked, trunk], dim=1)
            stacked = self.act(self.private[key](inputs), inputs)
            trunk = self.act(self.shared[key](trunk), trunk)
        return torch.cat([stacked, trunk], dim=1)

    def _branch_paths(self, x: Tensor) -> Tensor:
        """The ``no_private`` space: branch i is an nn.Linear chain run on all tasks at
        once (a loop over the P(P+1)/2 branch modules, never over tasks)."""
        trunk, branches = x, []
        for j in range(1, self.depth + 1):
            inputs = [*branches, trunk]  # branch j-1 starts from the trunk
            branches = [self.act(self.branch[f"{i}_{j}"](h), h) for i, h in enumerate(inputs)]
            trunk = self.act(self.shared[str(j)](trunk), trunk)
        return torch.cat([*branches, trunk], dim=1)

    # ---- derivation -------------------------------------------------------------------

    def branch_points(self) -> tuple[int, ...]:
        """Per task, the argmax of alpha over the branch points the gate leaves open: the
        branch point it keeps (ties: the lowest)."""
        return tuple(int(b) for b in self._logits().detach().argmax(dim=-1).tolist())

    def derive(self, task_names=()) -> TreeSpec:
        return TreeSpec(self.hidden, self.branch_points(), tuple(task_names),
                        task_id_input=self.task_id_input)

    def to_tree(self, inherit_weights: bool = False, task_names=()) -> TreeNet:
        """The pruned tree of the derived architecture (on this net's device and dtype).

        With ``inherit_weights`` the tree computes exactly what this supernet computes with
        one-hot path weights at the argmax. In the ``no_private`` space each task's private
        copy starts from its branch's weights (the tree then trains them per task; the
        TreeSpec records only branch points).
        """
        spec = self.derive(task_names)
        ref = self.alpha
        tree = TreeNet(spec, self.in_features, self.out_features, self.options).to(
            ref.device, ref.dtype)
        if inherit_weights:
            self._copy_weights_into(tree)
        return tree

    @torch.no_grad()
    def _copy_weights_into(self, tree: TreeNet) -> None:
        b = torch.tensor(tree.spec.branch_points)
        for key, module in tree.shared.items():
            module.load_state_dict(self.shared[key].state_dict())
        for key, module in tree.private.items():
            tasks = (b < int(key)).nonzero().flatten()  # TreeNet's order: increasing task
            if self.no_private:
                chains = [self.branch[f"{int(b[t])}_{key}"] for t in tasks]
                module.weight.copy_(torch.stack([c.weight.T for c in chains]))
                module.bias.copy_(torch.stack([c.bias[None] for c in chains]))
            else:
                module.weight.copy_(self.private[key].weight[tasks])
                module.bias.copy_(self.private[key].bias[tasks])
        tree.head.load_state_dict(self.head.state_dict())

