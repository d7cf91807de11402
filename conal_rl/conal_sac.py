"""CoNAL inside multi-task SAC: wiring between the method (supernet, conflict-noticing,
derivation) and the agent, which stays unaware of it.

* The actor and each twin critic are :class:`SuperNet` s; the two critics share one alpha
  (one critic architecture is derived), the actor has its own.
* Architecture step (before every SAC update, on its own replay sample, as the official
  search does on a held-out batch): alpha of the critic descends the critic's TD loss and
  alpha of the actor the actor's loss, each with ``backward(inputs=alpha)`` so no weight
  gradient is computed; one Adam over both (official: lr 5e-5, weight decay 1e-5).
* Conflict-noticing acts in the SAC weight steps through the agent's gradient-filter seam.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from agents import Batch, MultiTaskSAC, NetFactory
from conal_rl.conflict import ConflictNoticing
from conal_rl.draw import heatmap_figure
from conal_rl.supernet import SuperNet
from conal_rl.tree import TreeSpec


@dataclass(frozen=True)
class SearchSettings:
    hidden: tuple[int, ...]
    arch_lr: float = 5e-5  # official CoNAL search
    arch_weight_decay: float = 1e-5  # official CoNAL search
    gumbel: bool = False
    tau_start: float = 5.0  # Gumbel temperature, annealed linearly over the search
    tau_end: float = 0.5
    conflict_noticing: bool = True
    no_private: bool = False
    warmup_steps: int = 0
    """Env steps of weights-only training (no alpha step, no conflict-noticing) before the
    search proper: the official search starts from a pretrained backbone, ours from scratch,
    where every pair of tasks' gradient signs is random and the trunk would be frozen from
    the first step."""
    total_steps: int = 1  # env steps of the whole search phase (for the annealing schedule)


def supernet_factory(settings: SearchSettings, num_tasks: int) -> NetFactory:
    """A NetFactory of supernets; every net of one role after the first reuses that role's
    alpha (so the twin critics are searched as one architecture). Use one factory per
    agent: a second agent built from the same factory would share the first one's alphas."""
    alphas: dict[str, nn.Parameter] = {}

    def make_net(role: str, in_dim: int, out_dim: int) -> SuperNet:
        net = SuperNet(num_tasks, in_dim, out_dim, settings.hidden, gumbel=settings.gumbel,
                       tau=settings.tau_start, no_private=settings.no_private)
        if role in alphas:
            net.alpha = alphas[role]
        alphas.setdefault(role, net.alpha)
        return net

    return make_net


class ConalSearch:
    """The search state attached to a SAC agent built from :func:`supernet_factory`."""

    def __init__(self, agent: MultiTaskSAC, settings: SearchSettings, task_names: list[str]):
        self.agent, self.settings, self.task_names = agent, settings, list(task_names)
        self.nets = {"actor": agent.actor.net, "critic": agent.critic.q1}
        self.supernets = [agent.actor.net, agent.critic.q1, agent.critic.q2]
        self.alpha = {role: net.alpha for role, net in self.nets.items()}
        self.optim = torch.optim.Adam(list(self.alpha.values()), lr=settings.arch_lr,
                                      weight_decay=settings.arch_weight_decay)
        self.noticing = {
            "actor": ConflictNoticing(agent.actor.net, settings.conflict_noticing),
            "critic": ConflictNoticing({"q1": agent.critic.q1, "q2": agent.critic.q2},
                                       settings.conflict_noticing),
        }
        agent.gradient_filters = self.noticing

    def before_update(self, batch: Batch, env_steps: int) -> None:
        """Called before every SAC update: past the warm-up, one step on alpha (and
        conflict-noticing on, as configured); during it, weights only."""
        s = self.settings
        searching = env_steps >= s.warmup_steps
        for noticing in self.noticing.values():
            noticing.enabled = searching and s.conflict_noticing
        if searching:
            span = max(s.total_steps - s.warmup_steps, 1)
            self.arch_step(batch, (env_steps - s.warmup_steps) / span)

    def arch_step(self, batch: Batch, progress: float) -> None:
        """One step on alpha; ``progress`` in [0, 1] anneals the Gumbel temperature."""
        s = self.settings
        tau = s.tau_start + (s.tau_end - s.tau_start) * min(max(progress, 0.0), 1.0)
        for net in [*self.supernets, self.agent.critic_target.q1, self.agent.critic_target.q2]:
            net.tau = tau
        self.optim.zero_grad(set_to_none=True)
        self.agent.critic_losses(batch).mean().backward(inputs=[self.alpha["critic"]])
        actor_losses, _ = self.agent.actor_losses(batch.obs)
        actor_losses.mean().backward(inputs=[self.alpha["actor"]])
        self.optim.step()

    def derive(self) -> dict[str, TreeSpec]:
        return {role: net.derive(self.task_names) for role, net in self.nets.items()}

    def alpha_table(self) -> dict[str, dict[str, list[float]]]:
        """Per network, per task name, the final alpha row (for architecture.json)."""
        return {role: dict(zip(self.task_names, a.detach().cpu().tolist()))
                for role, a in self.alpha.items()}

    def inherited_trees(self) -> dict[str, dict]:
        """State dicts of the pruned trees with the searched weights (``--inherit-weights``),
        keyed like the agent's modules."""
        return {
            "actor.net": self.agent.actor.net.to_tree(True, self.task_names).state_dict(),
            "critic.q1": self.agent.critic.q1.to_tree(True, self.task_names).state_dict(),
            "critic.q2": self.agent.critic.q2.to_tree(True, self.task_names).state_dict(),
        }

    def log(self, writer: SummaryWriter, step: int, images: bool) -> None:
        """Scalars every call: how often each shared module was frozen. With ``images``:
        heatmaps of softmax(alpha) and of the last task-gradient sign pattern."""
        for role, noticing in self.noticing.items():
            for layer, stats in noticing.stats().items():
                writer.add_scalar(f"conflict/{role}/{layer}/frozen_fraction",
                                  stats["frozen_fraction"], step)
        if not images:
            return
        P = len(self.settings.hidden)
        for role, alpha in self.alpha.items():
            probs = torch.softmax(alpha.detach(), -1).cpu().numpy()
            fig = heatmap_figure(probs, self.task_names, [str(i) for i in range(P + 1)],
                                 f"{role}: softmax(alpha), branch point", vmin=0, vmax=1)
            writer.add_figure(f"alpha/{role}", fig, step)
        for role, noticing in self.noticing.items():
            for layer, signs in noticing.last_signs().items():
                tasks = [self.task_names[t] for t in noticing.layers[layer].tasks]
                fig = heatmap_figure(signs.cpu().numpy(), tasks, tasks,
                                     f"{role} {layer}: sign of task-gradient inner products",
                                     vmin=-1, vmax=1, cmap="coolwarm_r")
                writer.add_figure(f"conflict_signs/{role}/{layer}", fig, step)

    def state_dict(self) -> dict:
        return {"optim": self.optim.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optim.load_state_dict(state["optim"])
