"""Multi-task soft actor-critic with task-major batches ``[T, B, ...]``.

The agent never builds its own networks: it receives ``make_net(role, in_dim, out_dim)``,
a factory that returns a module mapping ``[T, B, in_dim] -> [T, B, out_dim]`` (role is
"actor" or "critic"). Which architecture that is (MT-SAC, multi-head, a CoNAL tree or
supernet) is the factory's business. Every loss is computed per task (shape ``[T]``) and
only then combined (the mean, or random loss weights: ``reduce_task_losses``), so the
per-task losses stay available to an architecture search.

Algorithm: Haarnoja et al. 2018 (SAC with learned temperature), twin critics with Polyak
target networks (Fujimoto et al. 2018), one temperature per task as in Yu et al. 2019
(Meta-World's MT-SAC).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from agents.choices import LOSS_WEIGHTINGS, PRECISIONS
from agents.replay import Batch

NetFactory = Callable[[str, int, int], nn.Module]
StateConversion = Callable[[str, dict[str, Tensor]], dict[str, Tensor]]
"""``convert(role, tensors)``: one network's tensors keyed by parameter name, laid out for
another network of that role (:meth:`MultiTaskSAC.rebuilt`)."""
# The networks of an agent's state and their roles, by their key prefix in it.
_NETS = {"actor.net": "actor", "critic.q1": "critic", "critic.q2": "critic",
         "critic_target.q1": "critic", "critic_target.q2": "critic"}


class GradientFilter(Protocol):
    def record(self) -> AbstractContextManager: ...  # around the loss's forward
    def apply(self) -> object: ...  # after backward, before the optimizer step


FilterFactory = Callable[[str, "nn.Module | dict[str, nn.Module]"], GradientFilter]
"""``make_filter(role, nets)``: the gradient filter of one loss's networks: the actor's
trunk, or the twin critics as ``{"q1": ..., "q2": ...}`` (their losses are one loss)."""


class _NoFilter:
    def record(self) -> AbstractContextManager:
        return nullcontext()

    def apply(self) -> None:
        pass


NO_FILTER = _NoFilter()

# Log-std range of the Gaussian policy, squashed smoothly with tanh (CleanRL's
# sac_continuous_action.py).
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

@dataclass(frozen=True)
class SACConfig:
    gamma: float = 0.99  # discount (Meta-World MT-SAC, Yu et al. 2019; mtrl)
    tau: float = 0.005  # Polyak rate of target critics (Haarnoja et al. 2018)
    actor_lr: float = 3e-4  # Adam, all three (Haarnoja et al. 2018; metaworld-algorithms)
    critic_lr: float = 3e-4
    temperature_lr: float = 3e-4
    initial_temperature: float = 1.0  # mtrl's multi-task SAC default
    target_entropy: float | None = None  # None: -|A| (Haarnoja et al. 2018)
    max_grad_norm: float | None = None  # gradient-norm clip; None: no clipping
    loss_weighting: str = "mean"  # how the [T] task losses combine, see reduce_task_losses
    precision: str = "fp32"  # the update's matrix products, see agents.choices.PRECISIONS
    normalize_obs: bool = False  # observations standardized by their running statistics
    weight_decay: float = 0.0  # decoupled (AdamW) weight decay of the actor and the critics

    def __post_init__(self):
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"unknown loss weighting {self.loss_weighting!r}; valid: "
                             f"{', '.join(LOSS_WEIGHTINGS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; valid: "
                             f"{', '.join(PRECISIONS)}")


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy over a task-major trunk."""

    def __init__(self, net: nn.Module, act_dim: int):
        super().__init__()
        self.net, self.act_dim = net, act_dim

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        # .float(): under a bf16 update only the net's products are bf16, never the math on
        # its outputs (log-probabilities, TD targets)
        mean, log_std = self.net(obs).float().split(self.act_dim, dim=-1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        return mean, log_std

    def sample(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Reparameterised action in [-1, 1] and its log-probability ``[T, B, 1]``."""
        mean, log_std = self(obs)
        std = log_std.exp()
        u = mean + std * torch.randn_like(mean)
        action = torch.tanh(u)
        # Gaussian log-density minus the tanh Jacobian, in the numerically stable form
        # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)).
        log_prob = (-0.5 * ((u - mean) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
                    - 2 * (math.log(2) - u - nn.functional.softplus(-2 * u)))
        return action, log_prob.sum(-1, keepdim=True)

    def mode(self, obs: Tensor) -> Tensor:
        return torch.tanh(self(obs)[0])


class RunningNorm(nn.Module):
    """Observations standardized by the running mean and variance of every observation the
    updates have drawn (all tasks together, merged batch by batch as Chan et al.'s parallel
    algorithm does), clipped to ±``clip``. SimBa's input normalization (Lee et al. 2024)
    fed from the replay's batches, so the agent needs nothing from the loop."""

    def __init__(self, dim: int, clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.clip, self.eps = clip, eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        x = x.reshape(-1, x.shape[-1])
        n = x.shape[0]
        mean, var = x.mean(dim=0), x.var(dim=0, unbiased=False)
        total = self.count + n
        weight = (n / total).to(mean.dtype)  # of the new batch
        delta = mean - self.mean
        self.var.mul_(1 - weight).add_(var * weight + delta.square() * weight * (1 - weight))
        self.mean.add_(delta * weight)
        self.count.copy_(total)

    def forward(self, x: Tensor) -> Tensor:
        return ((x - self.mean) / (self.var + self.eps).sqrt()).clamp(-self.clip, self.clip)


class TwinCritic(nn.Module):
    def __init__(self, q1: nn.Module, q2: nn.Module):
        super().__init__()
        self.q1, self.q2 = q1, q2

    def forward(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        x = critic_input(obs, action)
        return self.q1(x).float(), self.q2(x).float()


def critic_input(obs: Tensor, action: Tensor) -> Tensor:
    """What each critic net reads: the observation (as the nets see it) and the action."""
    return torch.cat([obs, action], dim=-1)


class MultiTaskSAC(nn.Module):
    """Networks and temperatures (the module's state) plus their optimizers."""

    def __init__(self, make_net: NetFactory, num_tasks: int, obs_dim: int, act_dim: int,
                 config: SACConfig = SACConfig(), make_filter: FilterFactory | None = None):
        super().__init__()
        self.config, self.num_tasks, self.obs_dim, self.act_dim = (config, num_tasks, obs_dim,
                                                                   act_dim)
        self.make_net = make_net  # kept for reset_networks: fresh nets as the first were made
        self.actor = Actor(make_net("actor", obs_dim, 2 * act_dim), act_dim)
        self.critic = TwinCritic(make_net("critic", obs_dim + act_dim, 1),
                                 make_net("critic", obs_dim + act_dim, 1))
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        # Only when on: the state of an agent without it (and of old checkpoints) is as it was
        self.obs_norm = RunningNorm(obs_dim) if config.normalize_obs else None
        self.log_temperature = nn.Parameter(
            torch.full((num_tasks,), math.log(config.initial_temperature)))
        self.target_entropy = (
            -float(act_dim) if config.target_entropy is None else config.target_entropy)
        self.actor_optim = adam(weight_parameters(self.actor), config.actor_lr,
                                config.weight_decay)
        self.critic_optim = adam(weight_parameters(self.critic), config.critic_lr,
                                 config.weight_decay)
        self.temperature_optim = adam([self.log_temperature], config.temperature_lr)
        self.last_td: tuple[Batch, Tensor] | None = None  # the last update's batch, targets
        self.gradient_filters: dict[str, GradientFilter] = {} if make_filter is None else {
            "actor": make_filter("actor", self.actor.net),
            "critic": make_filter("critic", {"q1": self.critic.q1, "q2": self.critic.q2})}
        """Per network ("actor", "critic"), from ``make_filter``: something that watches the
        forward of that network's loss and then edits its gradients before the optimizer
        step (e.g. CoNAL's conflict-noticing, PCGrad). The agent only calls record() and
        apply()."""

    @property
    def temperature(self) -> Tensor:
        return self.log_temperature.exp()  # [T]

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """Actions in [-1, 1] for task-major observations ``[T, B, obs_dim]``."""
        obs = self.observed(obs)
        return self.actor.mode(obs) if deterministic else self.actor.sample(obs)[0]

    def observed(self, obs: Tensor) -> Tensor:
        """Observations as the nets see them: standardized with ``normalize_obs``."""
        return obs if self.obs_norm is None else self.obs_norm(obs)

    # ---- per-task losses, each of shape [T] -------------------------------------------
    @torch.no_grad()
    def td_targets(self, batch: Batch) -> Tensor:
        """The critics' soft TD targets ``[T, B, 1]`` (the target critics at the actor's
        next actions)."""
        next_obs = self.observed(batch.next_obs)
        next_action, next_log_prob = self.actor.sample(next_obs)
        q1_next, q2_next = self.critic_target(next_obs, next_action)
        soft_v = torch.min(q1_next, q2_next) - self.temperature[:, None, None] * next_log_prob
        return batch.rewards + self.config.gamma * (1 - batch.dones) * soft_v

    def critic_inputs(self, batch: Batch) -> Tensor:
        """What each critic net reads of ``batch``."""
        return critic_input(self.observed(batch.obs), batch.actions)

    def critic_losses(self, batch: Batch, target: Tensor | None = None) -> Tensor:
        target = self.td_targets(batch) if target is None else target
        q1, q2 = self.critic(self.observed(batch.obs), batch.actions)
        return ((q1 - target) ** 2).mean(dim=(1, 2)) + ((q2 - target) ** 2).mean(dim=(1, 2))

    def actor_losses(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Actor loss and policy log-probabilities (for the temperature step)."""
        obs = self.observed(obs)
        action, log_prob = self.actor.sample(obs)
        q1, q2 = self.critic(obs, action)
        temperature = self.temperature.detach()[:, None, None]
        return (temperature * log_prob - torch.min(q1, q2)).mean(dim=(1, 2)), log_prob

    def temperature_losses(self, log_prob: Tensor) -> Tensor:
        # Per task: log-alpha times the entropy error (SB3's form, on the log temperature).
        entropy_error = (log_prob.detach() + self.target_entropy).mean(dim=(1, 2))
        return -self.log_temperature * entropy_error

    def reduce_task_losses(self, losses: Tensor) -> Tensor:
        """``[T]`` task losses -> the scalar the critic and actor steps descend: their mean,
        or with ``loss_weighting="rlw"`` (Random Loss Weighting, Lin et al. 2022)
        ``Σ_t λ_t L_t`` with ``λ = softmax(z)``, ``z ~ N(0, I_T)`` drawn afresh on every
        call (weights that sum to 1, so the scale of the mean). The draw uses torch's RNG
        on the losses' device: no host sync, and reproducible from a checkpoint's RNG."""
        if self.config.loss_weighting == "mean":
            return losses.mean()
        z = torch.randn(losses.shape, dtype=losses.dtype, device=losses.device)
        return (torch.softmax(z, dim=0) * losses).sum()

    # ---- one gradient step of everything ------------------------------------------------
    def update(self, batch: Batch) -> dict[str, Tensor]:
        """One SAC update; returns detached per-task metrics (no host sync here)."""
        if self.obs_norm is not None:
            self.obs_norm.update(batch.obs)
        critic_filter = self.gradient_filters.get("critic", NO_FILTER)
        with critic_filter.record(), self._precision(batch.obs.device):
            target = self.td_targets(batch)
            critic_losses = self.critic_losses(batch, target)
        # For what trains beside the critic on its data (a growing tree's probes).
        self.last_td = (batch, target)
        self._step(self.critic_optim, self.reduce_task_losses(critic_losses), self.critic,
                   critic_filter)

        # The critic is only a function to differentiate through in the actor step.
        self.critic.requires_grad_(False)
        actor_filter = self.gradient_filters.get("actor", NO_FILTER)
        with actor_filter.record(), self._precision(batch.obs.device):
            actor_losses, log_prob = self.actor_losses(batch.obs)
        self.critic.requires_grad_(True)
        self._step(self.actor_optim, self.reduce_task_losses(actor_losses), self.actor,
                   actor_filter)

        temperature_losses = self.temperature_losses(log_prob)
        self._step(self.temperature_optim, temperature_losses.sum(), None)

        with torch.no_grad():
            target, online = self.critic_target.parameters(), self.critic.parameters()
            torch._foreach_lerp_(list(target), list(online), self.config.tau)
        return {
            "critic_loss": critic_losses.detach(),
            "actor_loss": actor_losses.detach(),
            "temperature_loss": temperature_losses.detach(),
            "temperature": self.temperature.detach(),
            "entropy": -log_prob.detach().mean(dim=(1, 2)),
        }

    def _precision(self, device: torch.device) -> AbstractContextManager:
        """The forward passes of a loss as ``config.precision`` says: autocast to bf16 (the
        nets' matrix products; their outputs come back as fp32), or as they are."""
        if self.config.precision == "fp32":
            return nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def _step(self, optim: torch.optim.Optimizer, loss: Tensor, module: nn.Module | None,
              gradient_filter: GradientFilter | None = None):
        optim.zero_grad(set_to_none=True)
        loss.backward()
        if gradient_filter is not None:
            gradient_filter.apply()
        if module is not None and self.config.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(weight_parameters(module), self.config.max_grad_norm)
        optim.step()

    @torch.no_grad()
    def reset_networks(self) -> None:
        """The actor's and the critics' weights drawn afresh from the net factory (the
        targets copy the critics) and their Adam moments cleared: BRO's periodic resets
        (Nauman et al. 2024). The temperatures, the observation statistics and the replay
        stay. The modules stay the same objects, so gradient filters keep watching them."""
        for net, role, (d_in, d_out) in (
                (self.actor.net, "actor", (self.obs_dim, 2 * self.act_dim)),
                (self.critic.q1, "critic", (self.obs_dim + self.act_dim, 1)),
                (self.critic.q2, "critic", (self.obs_dim + self.act_dim, 1))):
            fresh = self.make_net(role, d_in, d_out).to(self.log_temperature.device)
            net.load_state_dict(fresh.state_dict())
        self.critic_target.load_state_dict(self.critic.state_dict())
        for optim in (self.actor_optim, self.critic_optim):
            optim.state.clear()

    def load_networks(self, state: dict[str, dict]) -> None:
        """Start from given network weights (keys "actor.net", "critic.q1", "critic.q2", and
        "obs_norm" where observations are normalized); the target critics copy the critics."""
        modules = {"actor.net": self.actor.net, "critic.q1": self.critic.q1,
                   "critic.q2": self.critic.q2, "obs_norm": self.obs_norm}
        for key, weights in state.items():
            modules[key].load_state_dict(weights)
        self.critic_target.load_state_dict(self.critic.state_dict())

    def rebuilt(self, make_net: NetFactory, convert: StateConversion,
                make_filter: FilterFactory | None = None) -> MultiTaskSAC:
        """A new agent whose networks come from ``make_net``, holding this agent's state:
        the networks' weights (targets too) and the Adam moments of the actor's and the
        critics' optimizers, each network's given through ``convert(role, tensors)``
        (tensors keyed by parameter name, e.g. a tree that grew a branch), and the
        temperatures with their optimizer as they are. A parameter new to a network
        continues the step count of its network's others."""
        new = MultiTaskSAC(make_net, self.num_tasks, self.obs_dim, self.act_dim, self.config,
                           make_filter).to(self.log_temperature.device)
        state = self.state_dict()
        for prefix, role in _NETS.items():
            ours = prefix + "."
            mine = {k[len(ours):]: v for k, v in state.items() if k.startswith(ours)}
            state = {k: v for k, v in state.items() if not k.startswith(ours)} | {
                ours + k: v for k, v in convert(role, mine).items()}
        new.load_state_dict(state)
        for old_optim, new_optim, old_module, new_module, nets in (
                (self.actor_optim, new.actor_optim, self.actor, new.actor, {"net": "actor"}),
                (self.critic_optim, new.critic_optim, self.critic, new.critic,
                 {"q1": "critic", "q2": "critic"})):
            new_optim.load_state_dict(_converted_moments(old_optim, old_module, new_module,
                                                          nets, convert))
        new.temperature_optim.load_state_dict(self.temperature_optim.state_dict())
        return new

    # ---- checkpoint state ----------------------------------------------------------------
    def optimizer_state(self) -> dict:
        return {"actor": self.actor_optim.state_dict(), "critic": self.critic_optim.state_dict(),
                "temperature": self.temperature_optim.state_dict()}

    def load_optimizer_state(self, state: dict) -> None:
        for key, optim in (("actor", self.actor_optim), ("critic", self.critic_optim),
                           ("temperature", self.temperature_optim)):
            optim.load_state_dict(state[key])
            # A saved state brings its implementation flags along (checkpoints written
            # before the fused step have fused=None); the numbers are the same either way.
            for group in optim.param_groups:
                group["fused"] = True


def _converted_moments(optim: torch.optim.Optimizer, module: nn.Module, new_module: nn.Module,
                       nets: dict[str, str], convert: StateConversion) -> dict:
    """``optim``'s state (over ``module``'s weights) for an optimizer over ``new_module``'s:
    the moments of each of the module's networks (``nets``: name in the module -> role)
    through ``convert``; step counts by name, a new parameter the highest there."""
    old, names, new_names = optim.state_dict(), _weight_names(module), _weight_names(new_module)
    groups = [{k: v for k, v in old["param_groups"][0].items() if k != "params"}
              | {"params": list(range(len(new_names)))}]
    if not old["state"]:  # no step taken yet: nothing to carry
        return {"state": {}, "param_groups": groups}
    by_name = {names[i]: s for i, s in old["state"].items()}
    moments: dict[str, dict[str, Tensor]] = {"exp_avg": {}, "exp_avg_sq": {}}
    for key, laid in moments.items():
        for net, role in nets.items():
            mine = {n[len(net) + 1:]: s[key] for n, s in by_name.items()
                    if n.startswith(net + ".")}
            laid |= {f"{net}.{k}": v for k, v in convert(role, mine).items()}
    top = max((s["step"] for s in by_name.values()), key=float)
    state = {j: {"step": (by_name[n]["step"] if n in by_name else top).clone(),
                 "exp_avg": moments["exp_avg"][n], "exp_avg_sq": moments["exp_avg_sq"][n]}
             for j, n in enumerate(new_names)}
    return {"state": state, "param_groups": groups}


def _weight_names(module: nn.Module) -> list[str]:
    """Names of ``weight_parameters(module)``, in its order (an optimizer's indices)."""
    weights = {id(p) for p in weight_parameters(module)}
    return [n for n, p in module.named_parameters() if id(p) in weights]


def adam(params: list[nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam as one fused kernel per parameter instead of a chain of small per-tensor ops,
    with equal results (tests/test_agents_sac.py); ``weight_decay`` decoupled from the
    moments, as AdamW. Parameters without a gradient (e.g. a module frozen by
    conflict-noticing) are skipped, moments and decay included."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay,
                            decoupled_weight_decay=True, fused=True)


def weight_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Trainable weights, excluding architecture parameters that a searchable trunk
    declares through an ``arch_parameters()`` method (those have their own optimizer)."""
    arch = {id(p) for m in module.modules() if hasattr(m, "arch_parameters")
            for p in m.arch_parameters()}
    return [p for p in module.parameters() if id(p) not in arch]
