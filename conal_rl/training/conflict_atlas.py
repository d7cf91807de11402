"""The conflict atlas of a run: per net and shared layer, how the tasks' gradients agree,
measured with power on a large sample (:class:`~conal_rl.method.evidence.LayerEvidence`).

The gradients are those of the run's own losses on its own data: the critic's TD loss and
the actor's loss of each task, per task summed over ``samples`` transitions, captured in
one backward (no backward per task). The measurement leaves the run as it was: no
parameter moves, no gradient stays, the RNG streams of torch and of the replay are the
ones it found. Used by ``conal_rl.atlas`` (after the fact) and by training
(``--atlas-every``: the same measurement live, on the replay, into the run's atlas folder).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from agents import Batch, MultiTaskReplay, MultiTaskSAC
from conal_rl.method import TaskGradientCapture
from conal_rl.method.evidence import LayerEvidence, capture_evidence
from conal_rl.training.config import ATLAS_MIN_SAMPLES
from conal_rl.training.rundir import RunDir, read_json
from envs import Benchmark

if TYPE_CHECKING:  # only an annotation here
    from conal_rl.training.runs import Policy

Atlas = dict[str, dict[str, LayerEvidence]]  # net ("critic", "actor") -> layer -> evidence


def shared_layer_count(agent: MultiTaskSAC) -> int:
    """How many shared layers the atlas can measure in the agent's nets (0: nothing
    shared, e.g. independent networks)."""
    return (len(TaskGradientCapture(agent.actor.net).layers)
            + len(TaskGradientCapture({"q1": agent.critic.q1}).layers))


@torch.no_grad()
def _restore(params: list[torch.nn.Parameter], grads: list) -> None:
    for p, g in zip(params, grads):
        p.grad = g


def measure(agent: MultiTaskSAC, batch: Batch, episodes: torch.Tensor | None = None,
            chunks: int = 8) -> Atlas:
    """Per net with shared layers, per shared layer, the evidence of ``batch`` (task-major
    ``[T, N, ...]``); ``episodes [T, N]``: each sample's episode (-1 or None: not known),
    so that the jackknife's chunks and the reliability's halves share no episode."""
    if episodes is not None and bool((episodes < 0).any()):
        episodes = None  # a replay saved before episodes were counted
    if batch.obs.shape[1] < max(ATLAS_MIN_SAMPLES, 2 * chunks):
        raise ValueError(f"the atlas needs at least {max(ATLAS_MIN_SAMPLES, 2 * chunks)} samples "
                         f"per task, got {batch.obs.shape[1]}")
    out: Atlas = {}
    cuda = [batch.obs.device.index or 0] if batch.obs.is_cuda else []
    with torch.random.fork_rng(devices=cuda):
        critic = TaskGradientCapture({"q1": agent.critic.q1, "q2": agent.critic.q2})
        out["critic"] = _evidence(critic, lambda: agent.critic_losses(batch),
                                  list(agent.critic.parameters()), chunks, episodes)
        actor = TaskGradientCapture(agent.actor.net)
        agent.critic.requires_grad_(False)  # the actor's loss only reads the critic
        try:
            out["actor"] = _evidence(actor, lambda: agent.actor_losses(batch.obs)[0],
                                     list(agent.actor.parameters()), chunks, episodes)
        finally:
            agent.critic.requires_grad_(True)
    return {role: layers for role, layers in out.items() if layers}  # nets sharing nothing: out


def measure_replay(agent: MultiTaskSAC, replay: MultiTaskReplay, samples: int,
                   env_steps: int) -> Atlas | None:
    """:func:`measure` on ``samples`` distinct transitions per task of the replay (fewer
    where it holds fewer), drawn with a generator of its own seeded by ``env_steps``: the
    training's draws stay as they were. None where the nets share nothing or the replay
    holds too few for statistics."""
    if not replay.size or not shared_layer_count(agent):
        return None
    generator = torch.Generator(replay.device).manual_seed(env_steps)
    batch, episodes = replay.sample_distinct(samples, generator)
    if batch.obs.shape[1] < ATLAS_MIN_SAMPLES:
        return None
    return measure(agent, batch, episodes)


def _evidence(capture: TaskGradientCapture, task_losses, params, chunks: int,
              episodes: torch.Tensor | None) -> dict[str, LayerEvidence]:
    """One backward of the summed task losses (the Gram of the ∇L_t themselves) with the
    shared layers captured; the parameters' ``.grad`` as they were before."""
    grads = [p.grad for p in params]
    try:
        with capture.record():
            losses = task_losses()
        losses.sum().backward(inputs=params)
        return capture_evidence(capture, chunks, episodes)
    finally:
        capture.clear()
        _restore(params, grads)


# ---- files ------------------------------------------------------------------------------
def to_json(atlas: Atlas, task_names: list[str], **about) -> dict:
    """The atlas as JSON: per net and layer the evidence, and by task name what it decides
    (conflicting: pointing significantly against the others; leaving: outside the layer's
    main significant cluster, or conflicting where the net's head is shared)."""
    nets = {}
    for role, layers in atlas.items():
        nets[role] = {}
        for name, ev in layers.items():
            named = [task_names[t] for t in ev.tasks]
            nets[role][name] = _rounded(ev.to_dict()) | {
                "task_names": named,
                "conflicting": [task_names[t] for t in ev.conflicting()],
                "main_cluster": [task_names[t] for t in ev.main_cluster()],
            }
    return about | {"task_names": list(task_names), "nets": nets}


def layer_summary(ev: LayerEvidence, task_names: list[str]) -> dict:
    """A layer's evidence in a few numbers: the split-half reliability, the mean pairwise
    cosine and the share of negative ones, by name the tasks against the others (signed:
    evidence where the tasks share a head) and those outside the main cluster by the
    sign-blind affinity (evidence also where every task has its own head)."""
    k = len(ev.tasks)
    rows, cols = torch.triu_indices(k, k, 1)
    pairs = ev.cosine.double()[rows, cols]
    cluster = set(ev.main_cluster()) if ev.affinity_replicates is not None else set(ev.tasks)
    return _rounded({"reliability": None if ev.reliability != ev.reliability
                     else float(ev.reliability),
                     "episodes": ev.episodes,
                     "mean_cosine": float(pairs.mean()),
                     "negative_share": float((pairs < 0).double().mean()),
                     "conflicting": [task_names[t] for t in ev.conflicting()],
                     "outside_main_cluster": [task_names[t] for t in ev.tasks
                                              if t not in cluster]})


def history(measurements: list[tuple[int, Atlas]], task_names: list[str]) -> list[dict]:
    """Per measurement (env steps), per net and layer, :func:`layer_summary`."""
    return [{"env_steps": step, "nets": {
                role: {name: layer_summary(ev, task_names) for name, ev in layers.items()}
                for role, layers in measured.items()}}
            for step, measured in measurements]


def _rounded(value, digits: int = 4):
    """Floats to ``digits`` decimals, in nested lists and dicts (a readable file; the
    standard errors are far above that precision)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, list):
        return [_rounded(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    return value


def from_json(payload: dict) -> Atlas:
    return {role: {name: LayerEvidence.from_dict(d) for name, d in layers.items()}
            for role, layers in payload["nets"].items()}


def save_live(run: RunDir, env_steps: int, atlas: Atlas, task_names: list[str]) -> None:
    """One live measurement (``--atlas-every``) into the run's atlas folder."""
    run.write_json(run.atlas_measurement(env_steps),
                   to_json(atlas, task_names, env_steps=env_steps, source="replay"))


def live_measurements(run: RunDir) -> list[dict]:
    """The run's live measurements, in the order of env steps."""
    found = [read_json(p) for p in run.atlas_measurements()]
    return sorted((m for m in found if m), key=lambda m: m["env_steps"])


# ---- data -------------------------------------------------------------------------------
def saved_replay(checkpoint_state: dict, num_tasks: int, obs_dim: int, act_dim: int,
                 device) -> MultiTaskReplay | None:
    """The replay a run saved in its checkpoint (``--save-replay``), None without one."""
    state = checkpoint_state.get("replay")
    if not state or not state.get("size"):
        return None
    replay = MultiTaskReplay(state["size"], num_tasks, obs_dim, act_dim, device)
    replay.load_state_dict(state | {"holdout": None})
    return replay


def rollout_replay(policy: Policy, bench: Benchmark, steps_per_task: int, seed: int,
                   progress: bool = True) -> MultiTaskReplay:
    """Fresh transitions of the run's stochastic policy (as training collects them: the
    true last observation where an episode ended), ``steps_per_task`` of every task."""
    T = bench.num_tasks
    replay = MultiTaskReplay(steps_per_task, T, bench.obs_dim, bench.action_space.shape[0],
                             policy.device)
    obs = bench.reset(seed)
    for _ in tqdm(range(steps_per_task), desc="rollouts", unit="step", disable=not progress,
                  unit_scale=T):
        actions = policy.normalized(obs, deterministic=False)
        next_obs, rewards, term, trunc, info = bench.envs.step(policy.to_env(actions))
        real_next = next_obs.copy()
        for i in np.flatnonzero(term | trunc):
            real_next[i] = info["final_obs"][i]
        replay.add(obs, actions, rewards, real_next, term, term | trunc)
        obs = next_obs
    return replay
