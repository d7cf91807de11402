"""A task-balanced replay buffer stored as preallocated tensors.

Transitions are stored ``[capacity, T, dim]``: every vector-env step writes one row (one
transition per task), and a batch draws the same number of samples from every task,
returned task-major ``[T, B, dim]`` (the layout the multi-task networks consume).
Layout as in rainx0r/metaworld-algorithms' multi-task buffer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Batch(NamedTuple):
    obs: Tensor  # [T, B, obs_dim]
    actions: Tensor  # [T, B, act_dim]
    rewards: Tensor  # [T, B, 1]
    next_obs: Tensor  # [T, B, obs_dim]
    dones: Tensor  # [T, B, 1]  1.0 where the episode terminated (no bootstrap)


def random_batch(num_tasks: int, batch_per_task: int, obs_dim: int, act_dim: int,
                 seed: int = 0) -> Batch:
    """A batch of random transitions (no terminations), for tests and speed benchmarks."""
    g = torch.Generator().manual_seed(seed)
    T, B = num_tasks, batch_per_task
    return Batch(torch.randn(T, B, obs_dim, generator=g),
                 torch.rand(T, B, act_dim, generator=g) * 2 - 1,
                 torch.randn(T, B, 1, generator=g), torch.randn(T, B, obs_dim, generator=g),
                 torch.zeros(T, B, 1))


class MultiTaskReplay:
    FIELDS = Batch._fields

    @staticmethod
    def storage_bytes(transitions: int, obs_dim: int, act_dim: int) -> int:
        """The memory ``transitions`` (over all tasks) take in the storage (float32 obs,
        actions, reward, next obs, done), held-out buffer included: known before a run
        allocates it."""
        return transitions * ((2 * obs_dim + act_dim + 2) * 4 + 8)  # + the episode's id

    def __init__(self, capacity: int, num_tasks: int, obs_dim: int, act_dim: int,
                 device: torch.device | str = "cpu", seed: int = 0, holdout_every: int = 0,
                 holdout_by: str = "steps", holdout_window: int = 0):
        """``capacity``: transitions kept per task (a ring buffer). ``holdout_every`` = k > 0:
        every k-th vector step (``holdout_by="steps"``) or every k-th episode
        (``"episodes"``: the vector steps of every k-th episode of task 0, whole episodes
        of every task where all tasks' episodes end together, as Meta-World's do) goes to a
        held-out buffer instead (capacity / k), which :meth:`sample` never draws from and
        :meth:`sample_holdout` does: data for an objective the weights do not train on
        (e.g. CoNAL's architecture step; a probe's gain, which whole episodes keep
        honest). ``holdout_window`` > 0: the held-out buffer keeps that many transitions per
        task, and the oldest it lets go go to training, so only the newest are withheld."""
        if capacity < 1:
            raise ValueError("replay capacity must be at least 1 per task")
        if holdout_every < 0 or holdout_every == 1:
            raise ValueError("holdout_every must be 0 (none) or at least 2")
        if holdout_by not in ("steps", "episodes"):
            raise ValueError(f"holdout_by must be steps or episodes, got {holdout_by!r}")
        self.capacity, self.num_tasks, self.device = capacity, num_tasks, torch.device(device)
        dims = {"obs": obs_dim, "actions": act_dim, "rewards": 1, "next_obs": obs_dim, "dones": 1}
        self.storage = {
            k: torch.zeros(capacity, num_tasks, d, device=self.device) for k, d in dims.items()
        }
        # Which episode of its task each transition is from (-1: not known, a replay saved
        # before episodes were counted): splits of a measurement that share no episode.
        self.episode = torch.full((capacity, num_tasks), -1, dtype=torch.long,
                                  device=self.device)
        self.episodes_started = torch.zeros(num_tasks, dtype=torch.long, device=self.device)
        self.pos = 0  # next row to write
        self.size = 0  # rows filled
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self._task_axis = torch.arange(num_tasks, device=self.device)
        self.holdout_every, self.added = holdout_every, 0  # vector steps offered to add()
        self.holdout_by = holdout_by
        self.holdout_window = holdout_window
        self.holdout = None if not holdout_every else MultiTaskReplay(
            holdout_window or max(1, capacity // holdout_every), num_tasks, obs_dim, act_dim,
            device, seed + 1)

    def add(self, obs, actions, rewards, next_obs, dones, ended=None,
            episode: Tensor | None = None) -> None:
        """One vector step: every argument has a leading task axis ``[T, ...]``. ``ended``
        ``[T]``: where the step ended its task's episode (terminated or truncated; default:
        ``dones``), so that the next transition counts as the next episode's. ``episode``
        ``[T]``: the transitions' episodes where another buffer counts them (held-out
        steps)."""
        self.added += 1
        ended = torch.as_tensor(dones if ended is None else ended, device=self.device
                                ).reshape(self.num_tasks).bool()
        row = {"obs": obs, "actions": actions, "rewards": rewards, "next_obs": next_obs,
               "dones": dones}
        if self.holdout is not None and self._held_out():
            held = self.holdout
            if self.holdout_window and held.size == held.capacity:  # its oldest: to training
                self._write({k: v[held.pos] for k, v in held.storage.items()},
                            held.episode[held.pos])
            held.add(*row.values(), ended, episode=self.episodes_started)
            self.episodes_started += ended  # the held-out steps belong to the same episodes
            return
        self._write(row, self.episodes_started if episode is None else episode)
        self.episodes_started += ended

    def _write(self, row: dict, episode: Tensor) -> None:
        self.episode[self.pos] = episode
        for k, v in row.items():
            v = torch.as_tensor(v, dtype=torch.float32, device=self.device)
            self.storage[k][self.pos] = v.reshape(self.num_tasks, -1)
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def _held_out(self) -> bool:
        if self.holdout_by == "steps":
            return self.added % self.holdout_every == 0
        return int(self.episodes_started[0]) % self.holdout_every == self.holdout_every - 1

    def sample(self, batch_per_task: int, generator: torch.Generator | None = None) -> Batch:
        """``batch_per_task`` transitions of every task, drawn independently per task (with
        ``generator``, say for a measurement, the training's draws stay as they were)."""
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        rows = torch.randint(0, self.size, (self.num_tasks, batch_per_task),
                             device=self.device, generator=generator or self.generator)
        tasks = self._task_axis[:, None].expand_as(rows)
        return Batch(*(self.storage[k][rows, tasks] for k in self.FIELDS))

    def sample_distinct(self, batch_per_task: int, generator: torch.Generator | None = None
                        ) -> tuple[Batch, Tensor]:
        """Up to ``batch_per_task`` transitions of every task without repeats (all there
        are, where fewer): a measurement's sample, whose statistics would take a repeated
        transition for independent evidence. Also their episodes ``[T, N]`` (-1: not
        known), for splits that share none."""
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        rows = torch.randperm(self.size, device=self.device,
                              generator=generator or self.generator)[:batch_per_task]
        batch = Batch(*(self.storage[k][rows].transpose(0, 1) for k in self.FIELDS))
        return batch, self.episode[rows].T

    def sample_holdout(self, batch_per_task: int) -> Batch:
        """A batch from the held-out steps (``holdout_every``); from the training data
        when there is no held-out buffer."""
        if self.holdout is None:
            return self.sample(batch_per_task)
        return self.holdout.sample(batch_per_task)

    def split_episodes(self, every: int) -> tuple[MultiTaskReplay, MultiTaskReplay]:
        """The stored transitions in two replays that share no episode: every ``every``-th
        episode (by task 0's count: Meta-World's episodes of all tasks end together) in the
        second, the rest in the first: held-out whole episodes for an offline measurement
        from a replay saved without a held-out buffer."""
        if every < 2:
            raise ValueError(f"every must be at least 2, got {every}")
        known = self.episode[:self.size, 0]
        if bool((known < 0).any()):
            raise ValueError("the replay does not know its transitions' episodes (saved "
                             "before episodes were counted)")
        held = known % every == every - 1
        return self._rows(~held), self._rows(held)

    def _rows(self, mask: Tensor) -> MultiTaskReplay:
        n = int(mask.sum())
        if not n:
            raise ValueError("no transitions on one side of the split: too few episodes")
        part = MultiTaskReplay(n, self.num_tasks, self.storage["obs"].shape[-1],
                               self.storage["actions"].shape[-1], self.device)
        for k, v in self.storage.items():
            part.storage[k].copy_(v[:self.size][mask])
        part.episode.copy_(self.episode[:self.size][mask])
        part.size, part.added = n, n
        return part

    def state_dict(self) -> dict:
        n = self.size
        return {"storage": {k: v[:n].cpu() for k, v in self.storage.items()}, "pos": self.pos,
                "episode": self.episode[:n].cpu(), "episodes_started": self.episodes_started.cpu(),
                "size": n, "generator": self.generator.get_state(), "added": self.added,
                "holdout": None if self.holdout is None else self.holdout.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        n = state["size"]
        for k, v in state["storage"].items():
            self.storage[k][:n] = v.to(self.device)
        self.pos, self.size = state["pos"], n
        if "episode" in state:  # replays saved before episodes were counted: not known
            self.episode[:n] = state["episode"].to(self.device)
            self.episodes_started.copy_(state["episodes_started"])
        self.generator.set_state(state["generator"])
        self.added = state.get("added", n)  # checkpoints before held-out buffers: no count
        if self.holdout is not None and state.get("holdout") is not None:
            self.holdout.load_state_dict(state["holdout"])
