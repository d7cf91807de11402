"""Statistics over several runs (seeds) of one configuration, and which runs form one.

Scores are ``[runs, tasks]`` matrices (e.g. success rates). Per task and overall we report
the mean over runs with its standard error; the interquartile mean (IQM) over all
run-task scores comes with a stratified-bootstrap 95% interval, as in Agarwal et al. 2021,
"Deep RL at the edge of the statistical precipice" (the ``rliable`` package). No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from conal_rl.common import UserError
from conal_rl.training.config import TrainConfig

# Config fields that may differ between runs of one configuration: they change where or
# how fast a run goes, or (seed) are what the runs of a configuration are drawn over.
NOT_CONFIGURATION = {"seed", "run_dir", "device", "torch_threads", "vector_strategy",
                     "log_every", "checkpoint_every", "save_replay", "eval_every",
                     "eval_episodes"}

ARCH_NAMES = {"mtsac": "MT-SAC", "mhsac": "MH-SAC", "conal": "CoNAL", "tree": "tree"}
ABLATIONS = {"gumbel": "gumbel", "no_conflict_noticing": "w/o conflict-noticing",
             "no_private": "w/o private modules", "inherit_weights": "inherited weights"}
# Methods added to an architecture, named "<arch> + <method>" (e.g. "MT-SAC + PCGrad"):
# field -> (its default, the label of each other choice).
METHOD_ABLATIONS = {"loss_weighting": ("mean", {"rlw": "RLW"}),
                    "grad_surgery": ("none", {"pcgrad": "PCGrad"})}

IQM_RESAMPLES = 10_000


class AggregateError(UserError):
    """Runs that cannot be put in one table (other benchmark, other configuration)."""


# ---- which runs aggregate ------------------------------------------------------------------
def arch_label(config: TrainConfig) -> str:
    """The architecture as tables and plots name it, ablation switches and added methods
    included (e.g. "CoNAL (gumbel) + PCGrad")."""
    name = ARCH_NAMES.get(config.arch, config.arch)
    if config.arch == "tree" and config.architecture:
        name += f" ({config.architecture.rsplit('/', 1)[-1].removesuffix('.json')})"
    switches = [text for flag, text in ABLATIONS.items() if getattr(config, flag)]
    if switches:
        name += f" ({', '.join(switches)})"
    for flag, (default, labels) in METHOD_ABLATIONS.items():
        value = getattr(config, flag)
        if value != default:
            name += f" + {labels.get(value, value)}"
    return name


def group_runs(configs: Sequence[TrainConfig], by_arch: bool) -> dict[str, list[int]]:
    """Indices of ``configs`` grouped into aggregates, keyed by architecture label.

    All runs must share a benchmark. Without ``by_arch`` they must all be one
    configuration (seeds of it); with it, each architecture label must be one
    configuration. Raises AggregateError naming the first field that differs."""
    benchmarks = sorted({c.benchmark for c in configs})
    if len(benchmarks) > 1:
        raise AggregateError(f"runs of different benchmarks ({', '.join(benchmarks)}) cannot "
                             "be aggregated; give runs of one benchmark")
    groups: dict[str, list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(arch_label(config) if by_arch else "", []).append(i)
    for indices in groups.values():
        _check_one_configuration([configs[i] for i in indices], by_arch)
    if not by_arch:
        return {arch_label(configs[0]): groups[""]}
    return groups


def _check_one_configuration(configs: Sequence[TrainConfig], by_arch: bool) -> None:
    first = _configuration(configs[0])
    for config in configs[1:]:
        for key, value in _configuration(config).items():
            if value != first[key]:
                hint = ("; use --compare to put architectures side by side"
                        if key == "arch" and not by_arch else "")
                raise AggregateError(f"runs differ in {key} ({first[key]} vs {value}), so they "
                                     f"are not seeds of one configuration{hint}")


def _configuration(config: TrainConfig) -> dict:
    return {k: v for k, v in asdict(config).items() if k not in NOT_CONFIGURATION}


# ---- statistics ------------------------------------------------------------------------
def mean_se(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error of the mean (sample std / sqrt(n)) along ``axis``; the
    standard error is NaN with fewer than two values."""
    values = np.asarray(values, dtype=float)
    n = values.shape[axis]
    mean = values.mean(axis=axis)
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    return mean, values.std(axis=axis, ddof=1) / np.sqrt(n)


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of all scores: the mean of the middle 50% (25% cut each end)."""
    return float(stats.trim_mean(np.asarray(scores, dtype=float), 0.25, axis=None))


def iqm_interval(scores: np.ndarray, confidence: float = 0.95,
                 resamples: int = IQM_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the IQM of ``scores [runs, tasks]``, stratified by
    task (runs are resampled within each task, as rliable does). NaN with one run."""
    scores = np.asarray(scores, dtype=float)
    if scores.shape[0] < 2:
        return float("nan"), float("nan")

    def statistic(*per_task: np.ndarray, axis: int) -> np.ndarray:
        return stats.trim_mean(np.concatenate(per_task, axis=axis), 0.25, axis=axis)

    # Each task's column is one bootstrap sample: scipy resamples them independently.
    result = stats.bootstrap(tuple(scores.T), statistic, n_resamples=resamples,
                             confidence_level=confidence, method="percentile",
                             vectorized=True, axis=-1, rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return float(low), float(high)


@dataclass
class Summary:
    """One aggregate: a metric over ``num_runs`` runs of one configuration."""

    task_names: list[str]
    task_mean: np.ndarray  # [tasks]
    task_se: np.ndarray  # [tasks]; NaN for one run
    mean: float  # the mean over tasks, averaged over runs
    se: float  # its standard error over runs
    iqm: float
    iqm_ci: tuple[float, float]
    num_runs: int


def summarize(scores: np.ndarray, task_names: Sequence[str]) -> Summary:
    """Summary of ``scores [runs, tasks]``; tasks in the order of ``task_names``."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or scores.shape[1] != len(task_names):
        raise ValueError(f"expected scores [runs, {len(task_names)}], got {scores.shape}")
    task_mean, task_se = mean_se(scores)
    mean, se = mean_se(scores.mean(axis=1))
    return Summary(list(task_names), task_mean, task_se, float(mean), float(se),
                   iqm(scores), iqm_interval(scores), scores.shape[0])
