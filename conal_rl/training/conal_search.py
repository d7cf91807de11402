"""CoNAL inside multi-task SAC: the search as a hook of the training loop, then derivation.

* The actor and each twin critic are :class:`SuperNet` s (:meth:`ConalSearch.make_net`);
  the two critics share one alpha (one critic architecture is derived), the actor has its
  own.
* Architecture step (before every SAC update, or every ``--arch-every``-th), on a batch of
  held-out transitions that the weights never train on (every k-th vector step,
  ``--arch-holdout``; the official search holds out 20% of its training set for alpha):
  alpha of the critic descends the critic's TD loss and alpha of the actor the actor's loss
  (:func:`~conal_rl.method.architecture_step`).
* With ``--gumbel``, one sample of every task's path per update and role, shared by the
  twin critics and their targets; only the sampled paths are computed.
* Conflict-noticing acts in the SAC weight steps: it is the agent's gradient filter
  (:meth:`ConalSearch.make_filter`), given to the agent when it is built.
The agent stays unaware of all of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from agents import Batch, MultiTaskReplay, MultiTaskSAC
from conal_rl.method import (
    ConflictNoticing,
    GroupTreeSpec,
    SearchSettings,
    SuperNet,
    TreeNet,
    TreeSpec,
    architecture_optimizer,
    architecture_step,
    num_parameters,
)
from conal_rl.method.progressive import StageNet
from conal_rl.training import checkpoint
from conal_rl.training import conflict_atlas as atlas
from conal_rl.training.config import TrainConfig
from conal_rl.training.rundir import RunDir, read_json
from conal_rl.training.trainer import Trainer
from envs import Benchmark

Heatmap = Callable[..., object]
"""``heatmap(values, row_labels, col_labels, title, vmin=, vmax=, cmap=)`` -> a matplotlib
figure for TensorBoard; given by the command so the runner does not draw."""


class ConalSearch:
    """The search state of one agent: its supernets' alphas, conflict-noticing, the alpha
    optimizer. Build the agent with :meth:`make_net` and :meth:`make_filter`, then pass
    this object to the trainer as its hook. One instance per agent."""

    name = "search"

    def __init__(self, settings: SearchSettings, task_names: list[str], batch_per_task: int,
                 heatmap: Heatmap | None = None):
        self.settings, self.task_names, self.heatmap = settings, list(task_names), heatmap
        self.batch_per_task = batch_per_task
        self.nets: dict[str, SuperNet] = {}  # per role, the net whose alpha it derives from
        self.alpha: dict[str, nn.Parameter] = {}
        self.noticing: dict[str, ConflictNoticing] = {}
        self._optim: torch.optim.Optimizer | None = None
        self._evidence_at: int | None = None  # env steps of the last refresh of the evidence
        self._gated = False  # the agent's nets carry the gate of the evidence so far
        self._logs = 0
        # Updates so far that could take an architecture step (past the warm-up, held-out
        # transitions there): the 1st, (K+1)-th, (2K+1)-th... do (K: settings.arch_every).
        # Saved in state_dict, so that a resumed search steps where it would have.
        self._arch_calls = 0
        self.evidence_episodes: int | None = None  # of the last evidence, for the logs

    # ---- building the agent ---------------------------------------------------------------
    def make_net(self, role: str, in_dim: int, out_dim: int) -> nn.Module:
        """The agent's NetFactory: searchable nets (:meth:`build_net`); every net of a role
        after the first reuses that role's alpha (so the twin critics are searched as one
        architecture)."""
        net = self.build_net(role, in_dim, out_dim)
        if role in self.alpha:
            net.alpha = self.alpha[role]
        else:
            self.nets[role], self.alpha[role] = net, net.alpha
        return net

    def build_net(self, role: str, in_dim: int, out_dim: int) -> SuperNet:
        s = self.settings
        return SuperNet(len(self.task_names), in_dim, out_dim, s.widths(role), gumbel=s.gumbel,
                        tau=s.tau_start, no_private=s.no_private, options=s.options,
                        task_id_input=s.task_id_input)

    def make_filter(self, role: str, nets) -> ConflictNoticing:
        """The agent's filter factory: conflict-noticing on the shared modules."""
        s = self.settings
        self.noticing[role] = ConflictNoticing(nets, s.conflict_noticing, s.conflict_rule,
                                               s.conflict_ema, s.conflict_threshold)
        return self.noticing[role]

    @property
    def optim(self) -> torch.optim.Optimizer:
        if self._optim is None:  # once the agent's nets exist
            self._optim = architecture_optimizer(self.alpha.values(), self.settings.arch_lr,
                                                 self.settings.arch_weight_decay)
        return self._optim

    # ---- the hook -------------------------------------------------------------------------
    def before_update(self, agent: MultiTaskSAC, replay: MultiTaskReplay,
                      env_steps: int) -> None:
        """Past the warm-up, one step on alpha on held-out transitions every
        ``settings.arch_every`` calls, from the first (and conflict-noticing on, as
        configured, at every call); during it, weights only. Gumbel samples: every call."""
        s = self.settings
        if s.decides_on_evidence:  # from the first update: the statistics test significance
            self.follow_evidence(agent, replay, env_steps)
        if s.gumbel:
            self.draw_samples(agent)
        searching = env_steps >= s.warmup_steps
        for noticing in self.noticing.values():
            noticing.enabled = s.conflict_noticing and (searching or s.decides_on_evidence)
        held_out = replay.holdout is None or replay.holdout.size > 0
        # Under the evidence rule the gate leaves every task one path: no step on alpha.
        if searching and held_out and not s.decides_on_evidence:
            due = self._arch_calls % s.arch_every == 0
            self._arch_calls += 1
            if due:
                self.arch_step(agent, replay.sample_holdout(self.batch_per_task), env_steps)

    def follow_evidence(self, agent: MultiTaskSAC, replay: MultiTaskReplay,
                        env_steps: int) -> None:
        """The evidence rule: every ``evidence_every`` env steps, the conflict statistics of
        the nets as they are, on a large sample of the replay (a generator of its own: the
        training's draws stay as they were), to conflict-noticing, and its decisions so far
        to the gate of every net of the role (online and target)."""
        s = self.settings
        due = self._evidence_at is None or env_steps - self._evidence_at >= s.evidence_every
        if due and replay.size:
            measured = atlas.measure_replay(agent, replay, s.evidence_samples, env_steps)
            if measured is None:
                return  # too few transitions yet for statistics
            for role, layers in measured.items():
                self.noticing[role].set_evidence(layers)
            self._evidence_at, self._gated = env_steps, False
            # how many episodes per task the last decisions rest on (0: not known)
            self.evidence_episodes = min((ev.episodes or 0 for layers in measured.values()
                                          for ev in layers.values()), default=None)
        if not self._gated:  # also after a resume: the gate is not in the checkpoint
            nets = {"actor": [agent.actor.net],
                    "critic": [agent.critic.q1, agent.critic.q2, agent.critic_target.q1,
                               agent.critic_target.q2]}
            for role, role_nets in nets.items():
                for net in role_nets:
                    net.gate(self.noticing[role].leaving())
            self._gated = True

    def draw_samples(self, agent: MultiTaskSAC) -> None:
        """One Gumbel sample of every task's path per role for this update, shared by the
        role's nets (the twin critics and their targets run one architecture)."""
        roles = {"actor": [agent.actor.net],
                 "critic": [agent.critic.q1, agent.critic.q2, agent.critic_target.q1,
                            agent.critic_target.q2]}
        for role, nets in roles.items():
            sample = self.nets[role].draw_sample()
            for net in nets:
                net.sample = sample

    def arch_step(self, agent: MultiTaskSAC, batch: Batch, env_steps: int) -> None:
        """One step on alpha, the Gumbel temperature annealed to ``env_steps``."""
        tau = self.settings.temperature(env_steps)
        for net in (agent.actor.net, agent.critic.q1, agent.critic.q2,
                    agent.critic_target.q1, agent.critic_target.q2):
            net.tau = tau
        critic_loss = agent.critic_losses(batch).mean()
        actor_loss = agent.actor_losses(batch.obs)[0].mean()
        architecture_step(self.optim, [(critic_loss, [self.alpha["critic"]]),
                                       (actor_loss, [self.alpha["actor"]])])

    def progress(self) -> dict[str, str]:
        return {}  # the search's own bar says how far it is

    def log(self, writer: SummaryWriter, step: int) -> None:
        """Every call: per shared module, how often it was frozen (and, with the consensus
        rule, the fraction of tasks left out) and a histogram of the last update's pairwise
        cosines of task gradients; with the evidence rule, how many episodes per task its
        last decisions rest on (``evidence/episodes``). Every fifth call, with a ``heatmap``:
        softmax(alpha) and the last task-gradient sign pattern."""
        for role, noticing in self.noticing.items():
            for layer, stats in noticing.stats().items():
                for key in ("frozen_fraction", "left_out_fraction"):
                    if key in stats:
                        writer.add_scalar(f"conflict/{role}/{layer}/{key}", stats[key], step)
            for layer, values in noticing.last_cosines().items():
                if values.numel():
                    writer.add_histogram(f"conflict_cosines/{role}/{layer}", values.cpu(), step)
        if self.settings.decides_on_evidence and self.evidence_episodes is not None:
            writer.add_scalar("evidence/episodes", self.evidence_episodes, step)
        if self.settings.decides_on_evidence:  # the tasks each module's evidence takes off
            for role, noticing in self.noticing.items():
                for layer, tasks in noticing.leaving().items():
                    writer.add_scalar(f"evidence/{role}/{layer}/leaving", len(tasks), step)
        self._logs += 1
        if self.heatmap is None or self._logs % 5:
            return
        for role, alpha in self.alpha.items():
            probs = torch.softmax(alpha.detach(), -1).cpu().numpy()
            fig = self.heatmap(probs, self.task_names, self.choices(),
                               f"{role}: softmax(alpha)", vmin=0, vmax=1)
            writer.add_figure(f"alpha/{role}", fig, step)
        for role, noticing in self.noticing.items():
            for layer, signs in noticing.last_signs().items():
                tasks = [self.task_names[t] for t in noticing.layers[layer].tasks]
                fig = self.heatmap(signs.cpu().numpy(), tasks, tasks,
                                   f"{role} {layer}: sign of task-gradient inner products",
                                   vmin=-1, vmax=1, cmap="coolwarm_r")
                writer.add_figure(f"conflict_signs/{role}/{layer}", fig, step)

    def choices(self) -> list[str]:
        """What alpha's columns choose between: the branch points 0..P."""
        return [f"branch at {i}" for i in range(len(self.settings.hidden) + 1)]

    def state_dict(self) -> dict:
        return {"optim": self.optim.state_dict(), "arch_calls": self._arch_calls,
                "noticing": {role: n.state_dict() for role, n in self.noticing.items()},
                "evidence_at": self._evidence_at}

    def load_state_dict(self, state: dict) -> None:
        self.optim.load_state_dict(state["optim"])
        # Checkpoints from before --arch-every: every call stepped (arch_every 1), any count
        # keeps that.
        self._arch_calls = int(state.get("arch_calls", 0))
        # Checkpoints from before the rules' state was saved: averages and counts restart.
        for role, noticing_state in state.get("noticing", {}).items():
            self.noticing[role].load_state_dict(noticing_state)
        self._evidence_at, self._gated = state.get("evidence_at"), False

    # ---- after the search -----------------------------------------------------------------
    def derive(self) -> dict[str, TreeSpec]:
        return {role: net.derive(self.task_names) for role, net in self.nets.items()}

    def alpha_table(self) -> dict[str, dict[str, list[float]]]:
        """Per network, per task name, the final alpha row (for architecture.json)."""
        return {role: dict(zip(self.task_names, a.detach().cpu().tolist()))
                for role, a in self.alpha.items()}

    def details(self) -> dict[str, dict]:
        """Per network, what architecture.json records beside the tree: the final alpha and
        the parameters of the supernet and of the pruned tree."""
        alphas = self.alpha_table()
        return {role: {"alpha": alphas[role], "parameters": {
                    "supernet": num_parameters(net),
                    "tree": num_parameters(TreeNet(spec, net.in_features, net.out_features))}}
                for (role, net), spec in zip(self.nets.items(), self.derive().values())}


def inherited_trees(agent: MultiTaskSAC, task_names: list[str]) -> dict[str, dict]:
    """State dicts of the pruned trees with the searched weights (``--inherit-weights``),
    keyed like the agent's modules."""
    trees = {key: net.to_tree(True, task_names).state_dict()
             for key, net in (("actor.net", agent.actor.net), ("critic.q1", agent.critic.q1),
                              ("critic.q2", agent.critic.q2))}
    if agent.obs_norm is not None:  # the statistics the searched weights were trained on
        trees["obs_norm"] = agent.obs_norm.state_dict()
    return trees


def search_architecture(config: TrainConfig, run_dir: Path, bench: Benchmark,
                        heatmap: Heatmap | None = None
                        ) -> tuple[dict[str, TreeSpec], dict[str, dict]]:
    """CoNAL's search phase in the run's search directory (resumable: a checkpoint there is
    continued). Returns the derived trees and their details for the architecture file; the
    searched weights are kept for ``--inherit-weights``."""
    run = RunDir(run_dir)
    search = ConalSearch(config.search(), bench.task_names, config.batch_per_task, heatmap)
    # no resets in a search: its supernets keep what they learned, their alphas read it
    search_config = replace(config, total_steps=config.search_steps, eval_every=0,
                            reset_every=0)
    trainer = Trainer(search_config, run.search.path, bench, search.make_net,
                      search.make_filter, hooks=[search], sac=config.sac(searching=True),
                      holdout_every=config.arch_holdout)
    print(f"search: {config.search_steps} env steps in {run.search}")
    trainer.run(final_eval=False)
    checkpoint.save_atomic({"trees": inherited_trees(trainer.agent, bench.task_names)},
                           run.inherited)
    specs, details = search.derive(), search.details()
    for role, spec in specs.items():
        params = details[role]["parameters"]
        print(f"{role}: branch points {dict(zip(bench.task_names, spec.branch_points))}; "
              f"parameters {params['supernet']:,} (supernet) -> {params['tree']:,} "
              "(pruned tree)")
    return specs, details


def search_conflict_logs(run_dir: Path) -> dict[str, dict[str, float]]:
    """What a run's search logged about conflict-noticing: ``RunDir.search_conflict_logs``
    (kept for the tests that read it through the search)."""
    return RunDir(run_dir).search_conflict_logs()


def search_seconds(run_dir: Path) -> float:
    """Training seconds the search spent: they count against the run's --minutes."""
    return RunDir(run_dir).search_timing()["train_wall"]


# ---- CoNAL-Pro ------------------------------------------------------------------------------
class ProStage(ConalSearch):
    """One stage of CoNAL-Pro's search as a hook: the agent's nets are
    :class:`~conal_rl.method.progressive.StageNet` s grown on the partitions decided so far
    (per role), each task choosing between staying on its group's module at this depth and
    leaving with the group's other leavers; conflict-noticing, the held-out architecture
    step and the twin critics' shared alpha as in CoNAL's search."""

    def __init__(self, settings: SearchSettings, task_names: list[str], batch_per_task: int,
                 decided: dict[str, tuple[tuple[int, ...], ...]], heatmap: Heatmap | None = None):
        super().__init__(settings, task_names, batch_per_task, heatmap)
        self.decided = decided

    def build_net(self, role: str, in_dim: int, out_dim: int) -> StageNet:
        return StageNet(self.decided[role], len(self.task_names), in_dim, out_dim,
                        self.settings.widths(role), self.settings.options,
                        self.settings.task_id_input)

    def choices(self) -> list[str]:
        return ["stay", "leave"]

    def derive(self) -> dict[str, tuple[int, ...]]:
        """Per role, the partition of the tasks at this stage's depth."""
        return {role: net.decide() for role, net in self.nets.items()}


def search_progressive(config: TrainConfig, run_dir: Path, bench: Benchmark,
                       heatmap: Heatmap | None = None
                       ) -> tuple[dict[str, GroupTreeSpec], dict[str, dict]]:
    """CoNAL-Pro's search: one stage per hidden module (each its own run directory in the
    run's search), each a fresh agent trained ``--stage-steps`` env steps (the first quarter
    weights only) and resumable like CoNAL's search; a stage's partitions, written last,
    mark it done. Returns the grown grouped trees and what the architecture file records
    beside them (the partitions by task name, per stage)."""
    run = RunDir(run_dir)
    decided: dict[str, tuple[tuple[int, ...], ...]] = {"actor": (), "critic": ()}
    settings = replace(config.search(), warmup_steps=config.stage_steps // 4,
                       total_steps=config.stage_steps)
    stage_config = replace(config, total_steps=config.stage_steps, eval_every=0,
                           reset_every=0)
    for stage in range(1, len(config.hidden) + 1):
        stage_dir = run.stage(stage)
        done = stage_dir.decided
        if not done.exists():
            hook = ProStage(settings, bench.task_names, config.batch_per_task, decided,
                            heatmap)
            trainer = Trainer(stage_config, stage_dir.path, bench, hook.make_net, hook.make_filter,
                              hooks=[hook], sac=config.sac(searching=True),
                              holdout_every=config.arch_holdout)
            print(f"CoNAL-Pro stage {stage}/{len(config.hidden)}: {config.stage_steps} env "
                  f"steps in {stage_dir}")
            trainer.run(final_eval=False)
            partitions = hook.derive()
            for role, groups in partitions.items():
                named = GroupTreeSpec(config.widths(role)[:stage], (*decided[role], groups),
                                      bench.task_names).groups_by_name()[-1]
                trainer.writer.add_text(f"conal_pro/{role}", f"stage {stage}: {named}")
            trainer.writer.close()
            stage_dir.write_json(done, {role: list(g) for role, g in partitions.items()})
        partitions = read_json(done)
        decided = {role: (*decided[role], tuple(partitions[role])) for role in decided}
    specs = {role: GroupTreeSpec(config.widths(role), groups, bench.task_names,
                                 task_id_input=config.task_id)
             for role, groups in decided.items()}
    for role, spec in specs.items():
        print(f"{role}: groups per depth {spec.groups_by_name()}")
    return specs, {role: {"stages": len(config.hidden)} for role in specs}
