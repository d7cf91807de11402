"""Trees that grow while they train (``--branch-every N``): a hook of the training loop that
gives a task its own copies of a shared module when its decision (``--branch-rule``, one
class each in ``BRANCH_RULES``) says so. Two decisions:

* ``lasting-cluster``: every N env steps the conflict atlas of the trees; a task the
  evidence has put outside a shared module's main cluster twice running leaves it.
* ``gain``: probes (:class:`~conal_rl.method.probe.ModuleProbe`) give tasks private copies
  of a shared module on one twin critic, trained beside the critic on its own batches and
  TD targets for N env steps; a task leaves the module where its probe lowered its TD error
  on held-out whole episodes (never trained on) by more than ``--gain-price`` beyond the
  error of that measurement. Capacity goes where it measurably pays, not where gradients
  disagree: tasks that agree get nothing, and a task refused now is probed again later
  (private capacity may pay only late in training).

Why twice running: the conflicts the atlas finds late in training mostly do not last. On
MT10 a task flagged at one measurement is flagged at the next no more often than chance
says, and the twin critics, measured on the same transitions, mostly name different tasks
(``python -m benchmarks.studies.conflict_persistence``). A branch is permanent, so it follows
only evidence that repeats. Why every net of the role: the twin critics share one tree, and
both must show the task apart. Sign-blind evidence only (``LayerEvidence.main_cluster``):
where tasks have heads of their own, the signs of trunk gradients follow the heads.

A branch keeps the function: the task's new copies start as the shared modules (and its own
head as the shared head, in a tree whose tasks on the whole trunk share one), and Adam's
moments come along (:func:`~conal_rl.method.tree.grown_state`,
:meth:`~agents.MultiTaskSAC.rebuilt`). The grown trees are in the checkpoint (this hook's
state), which is what a resume and ``load_run`` build the nets from.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from agents import FilterFactory, MultiTaskReplay, MultiTaskSAC
from agents.sac import adam
from conal_rl.method import (
    PLAIN,
    GroupTreeNet,
    GroupTreeSpec,
    NetOptions,
    TreeNet,
    TreeSpec,
    grown_group_state,
    grown_state,
)
from conal_rl.method.evidence import MIN_EPISODES
from conal_rl.method.probe import ModuleProbe, one_sided_z, paired_gain
from conal_rl.training import conflict_atlas as atlas
from conal_rl.training.config import GrowthSettings
from conal_rl.training.nets import tree_factory, trees_in

Outside = dict[str, dict[int, set[int]]]  # role -> shared module (1..P) -> task ids

PROBE_SHARE = 0.25  # of the tasks, probed in one round at most
MAX_SHARE = 0.04  # of the wall time, the probes may take before a new round waits
Specs = dict[str, TreeSpec | GroupTreeSpec]


class Branching:
    """The trees of one agent as they grow. Build the agent with :meth:`make_net`, pass
    this object to the trainer as its hook; ``before_update`` returns the grown agent when
    a branch opened."""

    name = "branching"

    def __init__(self, specs: Specs, settings: GrowthSettings, task_names: list[str],
                 make_filter: FilterFactory | None = None, options: NetOptions = PLAIN):
        grouped = any(isinstance(s, GroupTreeSpec) for s in specs.values())
        if grouped and settings.rule != "gain":
            raise ValueError(f"--branch-rule {settings.rule} needs trees with one shared "
                             "trunk; grouped trees (CoNAL-Pro's) grow by --branch-rule gain")
        self.specs = dict(specs)
        self.task_names, self.make_filter = list(task_names), make_filter
        self.options = options
        self.branches: list[dict] = []  # what opened: env steps, net, task, module, why
        self.rule = BRANCH_RULES[settings.rule](settings)

    def make_net(self, role: str, in_dim: int, out_dim: int) -> nn.Module:
        return tree_factory(self.specs, self.options)(role, in_dim, out_dim)

    # ---- the hook -------------------------------------------------------------------------
    def before_update(self, agent: MultiTaskSAC, replay: MultiTaskReplay,
                      env_steps: int) -> MultiTaskSAC | None:
        leaving = self.rule.leaving(agent, replay, env_steps, self.specs)
        if not leaving:
            return None
        grown = {role: self.specs[role].branched(leaving.get(role, {})) for role in self.specs}
        if grown == self.specs:
            return None
        for role, spec in grown.items():
            chosen = set().union(*leaving.get(role, {}).values())
            for t, (a, b) in enumerate(zip(self.specs[role].branch_points, spec.branch_points)):
                if b < a:  # chosen, or the last of a group whose other tasks left it
                    self.branches.append({"env_steps": env_steps, "net": role,
                                          "task": self.task_names[t], "module": b + 1}
                                         | (self.rule.why(role, t) if t in chosen
                                            else {"left_alone": True}))
        old, self.specs = self.specs, grown

        def laid_out(role: str, tensors: dict) -> dict:
            grow = grown_group_state if isinstance(old[role], GroupTreeSpec) else grown_state
            return grow(old[role], grown[role], tensors)
        return agent.rebuilt(self.make_net, laid_out, self.make_filter)

    def log(self, writer: SummaryWriter, env_steps: int) -> None:
        for role, spec in self.specs.items():
            private = sum(spec.depth - b for b in spec.branch_points)
            writer.add_scalar(f"branching/{role}/private_modules", private, env_steps)
        self.rule.log(writer, env_steps, self.task_names)

    def progress(self) -> dict[str, str]:
        """Branches opened so far and the rule's own (e.g. the probe under way)."""
        return ({"branches": str(len(self.branches))} if self.branches else {}) \
            | self.rule.progress()

    def state_dict(self) -> dict:
        return {"trees": {role: spec.to_dict() for role, spec in self.specs.items()},
                "branches": list(self.branches)} | self.rule.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.specs = trees_in(state) or self.specs
        self.branches = list(state.get("branches", []))
        self.rule.load_state_dict(state)


class LastingOutsideCluster:
    """The branching decision: a task leaves a shared module once two measurements running
    (every ``every`` env steps, ``samples`` transitions per task) put it outside the
    module's main cluster in every net of its role. Carries the last measurement's verdict
    (its state, saved with the hook's)."""

    def __init__(self, settings: GrowthSettings):
        self.every, self.samples = settings.every, settings.samples
        self.measured: list[dict] = []  # verdicts with numbers: none (the atlas files have them)
        self.last: Outside = {}
        self._measured_at: int | None = None

    def leaving(self, agent: MultiTaskSAC, replay: MultiTaskReplay, env_steps: int,
                specs: Specs) -> Outside | None:
        due = self._measured_at is None or env_steps - self._measured_at >= self.every
        if not due:
            return None
        measured = atlas.measure_replay(agent, replay, self.samples, env_steps)
        if not measured:  # too few transitions yet, or nothing shared
            return None
        self._measured_at = env_steps
        return self.decide(measured)

    def why(self, role: str, task: int) -> dict:
        return {}

    def log(self, writer: SummaryWriter, env_steps: int, task_names: list[str]) -> None:
        pass

    def progress(self) -> dict[str, str]:
        return {}

    def decide(self, measured: atlas.Atlas) -> Outside:
        """Per role and shared module (1..P), the tasks that leave it now."""
        now = outside(measured)
        lasting = {role: {layer: tasks & self.last.get(role, {}).get(layer, set())
                          for layer, tasks in layers.items()} for role, layers in now.items()}
        self.last = now
        return lasting

    def state_dict(self) -> dict:
        return {"outside": {role: {str(k): sorted(v) for k, v in layers.items()}
                            for role, layers in self.last.items()},
                "measured_at": self._measured_at}

    def load_state_dict(self, state: dict) -> None:
        self.last = {role: {int(k): set(v) for k, v in layers.items()}
                     for role, layers in state.get("outside", {}).items()}
        self._measured_at = state.get("measured_at")


class MeasuredGain:
    """The branching decision by measured gain, on the critic (where capacity pays, MT10's
    tables say). In rounds of ``every`` env steps: a probe gives tasks whose deepest shared
    module is module m a private copy of it (from m on, on the first twin critic), trained
    on each update's batch and TD targets; a quarter of the tasks per round at most, those
    probed longest ago first (what a probe costs grows with its tasks: a copy of a module
    for every task would cost about a tenth of the update). At the round's end each task's
    relative drop of TD error on every held-out transition (whole episodes, the replay's
    held-out buffer) is compared with ``price``: a task whose drop clears it by one-sided z
    standard errors (Bonferroni over the round's tasks, errors by episode) leaves module m,
    the largest gains first while the twin critics stay within ``budget`` parameters.
    Rounds go from the last module to the first and round again: a task that left module m
    is probed at m-1 later, one refused is probed again. A new round waits while the probes
    have taken more than MAX_SHARE of the wall time since the first (small nets, whose
    update a probe lengthens most, get fewer rounds; the run's cost stays bounded). While
    the held-out buffer has fewer than MIN_EPISODES episodes of a task, no round starts
    (every verdict rests on one round of training and enough episodes); a round resumed
    without its replay waits for them before its verdict."""

    def __init__(self, settings: GrowthSettings):
        self.every, self.price, self.budget = settings.every, settings.price, settings.budget
        self.module: int | None = None  # the round's module; None: no round yet
        self.tasks: list[int] = []  # the round's tasks
        self.started = 0  # env steps at the round's start
        self.probed_at: dict[int, int] = {}  # task -> env steps its last round started
        self.probe: ModuleProbe | None = None
        self.optim: torch.optim.Optimizer | None = None
        self.measured: list[dict] = []  # every task's verdict: env steps, module, gain...
        self.seconds = 0.0  # spent training and measuring probes (the decision's cost)
        self._saved_probe: dict | None = None  # a resumed round's probe, until rebuilt
        self.wall = 0.0  # wall seconds since the first call, summed over resumes
        self._since: float | None = None  # this process's first call
        self._look_at = 0  # env steps: the next look at the held-out buffer

    def leaving(self, agent: MultiTaskSAC, replay: MultiTaskReplay, env_steps: int,
                specs: Specs) -> Outside | None:
        start = time.perf_counter()
        self._since = self._since or start
        try:
            q1 = agent.critic.q1
            if self.probe is None or self.probe.net[0] is not q1:
                if self._saved_probe is None and not self._may_start(replay, env_steps, start):
                    return None
                if not self._start(q1, specs["critic"], env_steps, agent):
                    return None
            self._train(agent)
            if env_steps < max(self.started + self.every, self._look_at):
                return None
            if _fewest_episodes(replay.holdout) < MIN_EPISODES:  # resumed without its replay
                self._look_at = env_steps + max(1, self.every // 10)
                return None
            return self._decide(agent, replay, env_steps)
        finally:
            self.seconds += time.perf_counter() - start

    def _wall(self, now: float) -> float:
        return self.wall + now - self._since

    def _may_start(self, replay: MultiTaskReplay, env_steps: int, now: float) -> bool:
        """A new round starts once the probes' share of the time allows it and the held-out
        buffer holds enough episodes for its verdict (looked at every tenth of a round)."""
        if self.seconds > MAX_SHARE * self._wall(now) or env_steps < self._look_at:
            return False
        self._look_at = env_steps + max(1, self.every // 10)
        return _fewest_episodes(replay.holdout) >= MIN_EPISODES

    def _start(self, q1: TreeNet | GroupTreeNet, spec: TreeSpec | GroupTreeSpec, env_steps: int,
               agent: MultiTaskSAC) -> bool:
        """A probe for the round (or the resumed round's); False: nothing left to probe."""
        resumed, self._saved_probe = self._saved_probe, None
        if resumed is None:
            candidates = sorted({b for b in spec.branch_points if b > 0}, reverse=True)
            if not candidates:
                return False
            after = [m for m in candidates if self.module is None or m < self.module]
            self.module, self.started = (after or candidates)[0], env_steps
            at_module = [t for t, b in enumerate(spec.branch_points) if b == self.module]
            at_module.sort(key=lambda t: (self.probed_at.get(t, -1), t))
            self.tasks = at_module[:math.ceil(PROBE_SHARE * spec.num_tasks)]
            self.probed_at.update({t: env_steps for t in self.tasks})
        self.probe = ModuleProbe(q1, self.tasks, self.module)
        self.optim = adam(list(self.probe.parameters()), agent.config.critic_lr,
                          agent.config.weight_decay)
        if resumed is not None:
            self.probe.load_state_dict(resumed["weights"])
            self.optim.load_state_dict(resumed["optim"])
        return True

    def _train(self, agent: MultiTaskSAC) -> None:
        if agent.last_td is None:
            return
        batch, target = agent.last_td
        tasks = self.probe.tasks
        loss = (self.probe(agent.critic_inputs(batch)) - target[tasks]).square()
        self.optim.zero_grad(set_to_none=True)
        loss.mean(dim=(1, 2)).sum().backward()
        self.optim.step()

    @torch.no_grad()
    def _decide(self, agent: MultiTaskSAC, replay: MultiTaskReplay,
                env_steps: int) -> Outside | None:
        held_out = replay.holdout
        generator = torch.Generator(held_out.device).manual_seed(env_steps)
        batch, episodes = held_out.sample_distinct(held_out.size, generator)  # all of it
        tasks = self.probe.tasks
        cuda = [batch.obs.device.index or 0] if batch.obs.is_cuda else []
        with torch.random.fork_rng(devices=cuda):  # the training's draws stay as they were
            target = agent.td_targets(batch)[tasks]
        x = agent.critic_inputs(batch)
        net_loss = (agent.critic.q1(x)[tasks] - target).square()[..., 0]
        probe_loss = (self.probe(x) - target).square()[..., 0]
        gains = paired_gain(net_loss, probe_loss, episodes[tasks])
        z = one_sided_z(len(gains))
        verdicts = [{"env_steps": env_steps, "module": self.module, "task": int(t),
                     "price": self.price, "z": round(z, 3), "opened": g.pays(self.price, z)}
                    | g.to_dict() for t, g in zip(tasks.tolist(), gains)]
        if self.budget:
            self._within_budget(verdicts, agent)
        self.measured += verdicts
        self.probe = self.optim = None  # the next round starts at the next update
        opened = {v["task"] for v in verdicts if v["opened"]}
        return {"critic": {self.module: opened}} if opened else None

    def _within_budget(self, verdicts: list[dict], agent: MultiTaskSAC) -> None:
        """Refuse, the smallest gains first, the copies that would take the twin critics
        past the budget (their verdicts say so)."""
        critic = sum(p.numel() for p in agent.critic.parameters())
        copy = 2 * self.probe.parameters_per_task()  # one task, both twins
        for v in sorted((v for v in verdicts if v["opened"]), key=lambda v: -v["gain"]):
            if critic + copy > self.budget:
                v["opened"], v["over_budget"] = False, True
            else:
                critic += copy

    def why(self, role: str, task: int) -> dict:
        """The verdict that opened ``task``'s branch (the last one measured)."""
        found = [v for v in self.measured if v["task"] == task and v["opened"]]
        return {k: found[-1][k] for k in ("gain", "se", "episodes", "price")} if found else {}

    def log(self, writer: SummaryWriter, env_steps: int, task_names: list[str]) -> None:
        writer.add_scalar("branching/probe_seconds", self.seconds, env_steps)
        last = {}
        for v in self.measured:
            last[v["task"]] = v
        for t, v in last.items():
            writer.add_scalar(f"branching/gain/{task_names[t]}", v["gain"], env_steps)

    def progress(self) -> dict[str, str]:
        """The round under way (its module, how many tasks) and the verdicts so far."""
        out = {"probing": f"module {self.module} x{len(self.tasks)}"} if self.probe else {}
        return out | ({"verdicts": str(len(self.measured))} if self.measured else {})

    def state_dict(self) -> dict:
        probe = None if self.probe is None else {"weights": self.probe.state_dict(),
                                                 "optim": self.optim.state_dict()}
        return {"gain": {"module": self.module, "tasks": list(self.tasks),
                         "started": self.started, "probe": probe,
                         "probed_at": {str(t): s for t, s in self.probed_at.items()},
                         "measured": list(self.measured), "seconds": self.seconds,
                         "wall": self._wall(time.perf_counter()) if self._since else self.wall}}

    def load_state_dict(self, state: dict) -> None:
        mine = state.get("gain") or {}
        self.module, self.started = mine.get("module"), mine.get("started", 0)
        self.tasks = list(mine.get("tasks", []))
        self.probed_at = {int(t): s for t, s in mine.get("probed_at", {}).items()}
        self.measured = list(mine.get("measured", []))
        self.seconds, self.wall = mine.get("seconds", 0.0), mine.get("wall", 0.0)
        self._since = None
        self._saved_probe, self.probe = mine.get("probe"), None


def _fewest_episodes(held_out: MultiTaskReplay | None) -> int:
    """How many episodes the held-out buffer holds of its least-held task."""
    if held_out is None or not held_out.size:
        return 0
    return min(len(torch.unique(column)) for column in held_out.episode[:held_out.size].T)


BRANCH_RULES = {"lasting-cluster": LastingOutsideCluster, "gain": MeasuredGain}
"""How a growing tree decides that a task leaves a shared module, by name (one class and
one entry each; ``TrainConfig.branch_rule`` offers these names)."""


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
