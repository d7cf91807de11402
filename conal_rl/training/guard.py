"""Faults a long run must stop on rather than train through: non-finite values (a NaN or an
inf in a loss, a temperature or a parameter) and env worker processes that died.

The non-finite check costs no host sync of its own per update: the trainer runs it where it
syncs already, on the window of per-update metrics it averages for its logs, and before
every checkpoint (so a checkpoint never holds a diverged state and the last good one is
kept).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from conal_rl.common import RunFault

ENV_FAILURES = (EOFError, ConnectionError)
"""What a gymnasium AsyncVectorEnv raises when a worker process is gone (a pipe closed:
EOFError, BrokenPipeError, ConnectionResetError)."""


class NonFiniteError(RunFault):
    """A NaN or inf in a loss, a temperature or a parameter: the run stops without writing
    a checkpoint (the last one, of finite values, is kept). Exit status 3."""

    exit_status = 3


class EnvFailure(RunFault):
    """An env worker process died (``--vector-strategy async``): a checkpoint is written,
    the run stops and ``--resume`` continues it with fresh env processes. Exit status 4."""

    exit_status = 4


def window_means(pending: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Per metric, the mean over a window of updates' per-task values ``[T]``, on the host
    (one sync for the whole window; a NaN or inf anywhere in it stays in the mean)."""
    if not pending:
        return {}
    return {k: torch.stack([m[k] for m in pending]).mean(0).cpu() for k in pending[0]}


def nonfinite_metrics(means: dict[str, Tensor], task_names: list[str]) -> list[str]:
    """``"critic_loss of task reach-v3"`` (``"of tasks a, b and 7 more"``) for every
    per-task metric whose mean is not finite."""
    bad = []
    for name, per_task in means.items():
        values = per_task.reshape(-1)
        idx = torch.nonzero(~torch.isfinite(values)).flatten().tolist()
        if idx:
            tasks = [task_names[i] if len(values) == len(task_names) else str(i) for i in idx]
            bad.append(f"{name} of task{'s' * (len(tasks) > 1)} {_some(tasks)}")
    return bad


def nonfinite_parameters(module: nn.Module) -> list[str]:
    """``["parameter actor.net.shared.1.weight"]`` (``"parameters a, b and 3 more"``) when
    parameters hold a NaN or an inf (one host sync for all of them)."""
    named = [(n, p) for n, p in module.named_parameters()]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in named]).cpu()
    names = [named[i][0] for i in torch.nonzero(~finite).flatten().tolist()]
    return [f"parameter{'s' * (len(names) > 1)} {_some(names)}"] if names else []


def _some(names: list[str], shown: int = 3) -> str:
    if len(names) <= shown:
        return ", ".join(names)
    return ", ".join(names[:shown]) + f" and {len(names) - shown} more"


def describe(bad: list[str]) -> str:
    return "; ".join(bad)
