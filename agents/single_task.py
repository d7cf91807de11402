"""Single-task learning (STL): one stable-baselines3 SAC per task, the baseline agent.

The pieces of the agent: :class:`PerTaskPolicy` (each task's observation through its own
model), the round-robin schedule (:func:`chunk_targets`) and the SB3 callback that ends a
chunk. The run (envs, evaluations, checkpoints) is the runner's
(``conal_rl/training/stl_run.py``), its command line ``python -m conal_rl.stl``.
"""

from __future__ import annotations

import time

import numpy as np


# ---- the policy the evaluation protocol calls ----------------------------------------------
class PerTaskPolicy:
    """Observations ``[T, obs]`` (row i = task i) to actions ``[T, act]``: row i through
    model i (anything with SB3's ``predict(obs, deterministic=True)``), deterministic."""

    def __init__(self, models):
        self.models = list(models)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs)
        if obs.shape[0] != len(self.models):
            raise ValueError(f"expected observations of {len(self.models)} tasks, got "
                             f"{obs.shape[0]}")
        return np.stack([np.asarray(model.predict(o, deterministic=True)[0])
                         for model, o in zip(self.models, obs)])


# ---- the schedule ----------------------------------------------------------------------------
def chunk_targets(per_task_total: int, eval_every: int, checkpoint_every: int) -> list[int]:
    """Per-task steps after which all tasks stop, save, and (at multiples of ``eval_every``
    and at the end) are evaluated: every multiple of either cadence, then the total."""
    marks = {per_task_total}
    for every in (eval_every, checkpoint_every):
        if every > 0:
            marks.update(range(every, per_task_total, every))
    return sorted(marks)


def chunk_callback(bar, deadline: float | None, stop):
    """An SB3 callback: counts steps into ``bar`` (a tqdm) and ends ``learn`` when the
    task's training-time budget is spent (``deadline``, perf_counter seconds) or
    ``stop.requested`` is set (SB3 imported on use)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Chunk(BaseCallback):
        stopped_by_time = False

        def _on_step(self) -> bool:
            bar.update(1)
            if deadline is not None and time.perf_counter() >= deadline:
                self.stopped_by_time = True
                return False
            return not stop.requested

    return Chunk()

