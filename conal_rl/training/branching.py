"""Trees that follow lasting conflicts (``--branch-every N``): a hook of the training loop
that measures the conflict atlas of the agent's trees every N env steps and gives a task
its own copies of a shared module once the evidence has put it outside that module's main
cluster twice running.

Why twice running: the conflicts the atlas finds late in training mostly do not last. On
MT10 a task flagged at one measurement is flagged at the next no more often than chance
says, and the twin critics, measured on the same transitions, mostly name different tasks
(``python -m benchmarks.studies.conflict_persistence``). A branch is permanent, so it follows
only evidence that repeats. Why every net of the role: the twin critics share one tree, and
both must show the task apart. Sign-blind evidence only (``LayerEvidence.main_cluster``):
these trees have a head per task, so the signs of trunk gradients follow the heads.

A branch keeps the function: the task's new copies start as the shared modules, and Adam's
moments come along (:func:`~conal_rl.method.tree.grown_state`,
:meth:`~agents.MultiTaskSAC.rebuilt`). The grown trees are in the checkpoint (this hook's
state), which is what a resume and ``load_run`` build the nets from.
"""

from __future__ import annotations

from torch import nn
from torch.utils.tensorboard import SummaryWriter

from agents import FilterFactory, MultiTaskReplay, MultiTaskSAC
from conal_rl.method import PLAIN, NetOptions, TreeNet, TreeSpec, grown_state
from conal_rl.training import conflict_atlas as atlas
from conal_rl.training.nets import trees_in

Outside = dict[str, dict[int, set[int]]]  # role -> shared module (1..P) -> task ids


class Branching:
    """The trees of one agent as they grow. Build the agent with :meth:`make_net`, pass
    this object to the trainer as its hook; ``before_update`` returns the grown agent when
    a branch opened."""

    name = "branching"

    def __init__(self, specs: dict[str, TreeSpec], every: int, samples: int,
                 task_names: list[str], make_filter: FilterFactory | None = None,
                 options: NetOptions = PLAIN):
        shared_heads = [role for role, spec in specs.items() if spec.shared_head]
        if shared_heads or not all(isinstance(s, TreeSpec) for s in specs.values()):
            raise ValueError("branching needs trees with a head per task (not MT-SAC's shared "
                             "head, not CoNAL-Pro's grouped trees)")
        self.specs, self.every, self.samples = dict(specs), every, samples
        self.task_names, self.make_filter = list(task_names), make_filter
        self.options = options
        self.branches: list[dict] = []  # what opened: env steps, net, task, module
        self.rule = BRANCH_RULES[DEFAULT_BRANCH_RULE]()
        self._measured_at: int | None = None

    def make_net(self, role: str, in_dim: int, out_dim: int) -> nn.Module:
        return TreeNet(self.specs[role], in_dim, out_dim, self.options)

    # ---- the hook -------------------------------------------------------------------------
    def before_update(self, agent: MultiTaskSAC, replay: MultiTaskReplay,
                      env_steps: int) -> MultiTaskSAC | None:
        due = self._measured_at is None or env_steps - self._measured_at >= self.every
        if not due:
            return None
        measured = atlas.measure_replay(agent, replay, self.samples, env_steps)
        if not measured:  # too few transitions yet, or nothing shared
            return None
        leaving, self._measured_at = self.rule.decide(measured), env_steps
        grown = {role: self.specs[role].branched(leaving.get(role, {})) for role in self.specs}
        if grown == self.specs:
            return None
        for role, spec in grown.items():
            for t, (a, b) in enumerate(zip(self.specs[role].branch_points, spec.branch_points)):
                if b < a:
                    self.branches.append({"env_steps": env_steps, "net": role,
                                          "task": self.task_names[t], "module": b + 1})
        old, self.specs = self.specs, grown
        return agent.rebuilt(self.make_net, lambda role, tensors: grown_state(
            old[role], grown[role], tensors), self.make_filter)

    def log(self, writer: SummaryWriter, env_steps: int) -> None:
        for role, spec in self.specs.items():
            private = sum(spec.depth - b for b in spec.branch_points)
            writer.add_scalar(f"branching/{role}/private_modules", private, env_steps)

    def state_dict(self) -> dict:
        return {"trees": {role: spec.to_dict() for role, spec in self.specs.items()},
                "branches": list(self.branches), "measured_at": self._measured_at
                } | self.rule.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.specs = trees_in(state) or self.specs
        self.branches = list(state.get("branches", []))
        self._measured_at = state.get("measured_at")
        self.rule.load_state_dict(state)


class LastingOutsideCluster:
    """The branching decision: a task leaves a shared module once two measurements running
    put it outside the module's main cluster in every net of its role. Carries the last
    measurement's verdict (its state, saved with the hook's)."""

    def __init__(self):
        self.last: Outside = {}

    def decide(self, measured: atlas.Atlas) -> Outside:
        """Per role and shared module (1..P), the tasks that leave it now."""
        now = outside(measured)
        lasting = {role: {layer: tasks & self.last.get(role, {}).get(layer, set())
                          for layer, tasks in layers.items()} for role, layers in now.items()}
        self.last = now
        return lasting

    def state_dict(self) -> dict:
        return {"outside": {role: {str(k): sorted(v) for k, v in layers.items()}
                            for role, layers in self.last.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.last = {role: {int(k): set(v) for k, v in layers.items()}
                     for role, layers in state.get("outside", {}).items()}


BRANCH_RULES = {"lasting-cluster": LastingOutsideCluster}
"""How a growing tree decides that a task leaves a shared module, by name (one table: a
new decision is one class and one entry)."""
DEFAULT_BRANCH_RULE = "lasting-cluster"


def outside(measured: atlas.Atlas) -> Outside:
    """Per role and shared module, the tasks outside its main cluster in every net of the
    role (the critic: both twins)."""
    found: Outside = {}
    for role, layers in measured.items():
        for name, ev in layers.items():
            if not name.rsplit("/", 1)[-1].startswith("shared."):
                continue
            layer = int(name.rsplit(".", 1)[1])
            out = set(ev.tasks) - set(ev.main_cluster())
            per_role = found.setdefault(role, {})
            per_role[layer] = per_role[layer] & out if layer in per_role else out
    return found
