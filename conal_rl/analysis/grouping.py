"""Which runs aggregate, and what tables and plots call them.

Runs that share every setting but the seed (and the settings in ``NOT_CONFIGURATION``,
which only change where or how fast a run goes) are seeds of one configuration; their
scores aggregate (stats.py). A comparison puts configurations side by side, each named by
its architecture (``arch_label``) and, where two share that name, by the settings that
tell them apart (e.g. "MT-SAC (preset=laptop)" and "MT-SAC (preset=quick)").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, fields, replace

from conal_rl.common import UserError
from conal_rl.training.architectures import architecture
from conal_rl.training.config import PRESET, TrainConfig

# Config fields that may differ between runs of one configuration: they change where or
# how fast a run goes, or (seed) are what the runs of a configuration are drawn over.
NOT_CONFIGURATION = {"seed", "run_dir", "device", "torch_threads", "vector_strategy",
                     "log_every", "checkpoint_every", "save_replay", "eval_every",
                     "eval_episodes"}

ABLATIONS = {"gumbel": "gumbel", "no_conflict_noticing": "w/o conflict-noticing",
             "no_private": "w/o private modules", "inherit_weights": "inherited weights"}
# Methods added to an architecture, named "<arch> + <method>" (e.g. "MT-SAC + PCGrad"):
# field -> (its default, the label of each other choice).
METHOD_ABLATIONS = {"loss_weighting": ("mean", {"rlw": "RLW"}),
                    "grad_surgery": ("none", {"pcgrad": "PCGrad"})}
# Fields whose default comes from the preset (their value follows --preset unless given).
PRESET_VALUED = tuple(f.name for f in fields(TrainConfig) if f.default is PRESET)


class AggregateError(UserError):
    """Runs that cannot be put in one table (other benchmark, other configuration)."""


def arch_label(config: TrainConfig) -> str:
    """The architecture as tables and plots name it, ablation switches and added methods
    included (e.g. "CoNAL (gumbel) + PCGrad")."""
    arch = architecture(config.arch)
    name = arch.label
    if arch.needs_file and config.architecture:
        name += f" ({config.architecture.rsplit('/', 1)[-1].removesuffix('.json')})"
    switches = [text for flag, text in ABLATIONS.items() if getattr(config, flag)]
    if switches:
        name += f" ({', '.join(switches)})"
    for flag, (default, labels) in METHOD_ABLATIONS.items():
        value = getattr(config, flag)
        if value != default:
            name += f" + {labels.get(value, value)}"
    return name


def group_runs(configs: Sequence[TrainConfig], compare: bool) -> dict[str, list[int]]:
    """Indices of ``configs`` grouped into aggregates (seeds of one configuration each, in
    the order of their first run), keyed by the configuration's label.

    All runs must share a benchmark. Without ``compare`` they must all be one
    configuration, labelled by its architecture; with it, each configuration is a group,
    labelled as ``configuration_labels`` says. Raises AggregateError: for runs of several
    configurations without ``compare``, naming the first field that differs."""
    benchmarks = sorted({c.benchmark for c in configs})
    if len(benchmarks) > 1:
        raise AggregateError(f"runs of different benchmarks ({', '.join(benchmarks)}) cannot "
                             "be aggregated; give runs of one benchmark")
    groups: list[list[int]] = []
    settings: list[dict] = []
    for i, config in enumerate(configs):
        setting = configuration(config)
        if setting in settings:
            groups[settings.index(setting)].append(i)
        else:
            groups.append([i])
            settings.append(setting)
    if compare:
        return dict(zip(configuration_labels([configs[g[0]] for g in groups]), groups))
    if len(groups) > 1:
        first, other = settings[0], settings[1]
        key = next(k for k in first if first[k] != other[k])
        raise AggregateError(f"runs differ in {key} ({first[key]} vs {other[key]}), so they "
                             "are not seeds of one configuration; use --compare to put "
                             "configurations side by side")
    return {arch_label(configs[0]): groups[0]}


def configuration(config: TrainConfig) -> dict:
    """The settings that make a configuration: all but ``NOT_CONFIGURATION``."""
    return {k: v for k, v in asdict(config).items() if k not in NOT_CONFIGURATION}


def configuration_labels(configs: Sequence[TrainConfig]) -> list[str]:
    """A label for each of ``configs`` (distinct configurations): its architecture, and
    where several share that, ``field=value`` for each setting they do not all share. A
    value that follows the preset counts as the preset's, so two presets differ in
    ``preset`` alone unless a run overrode one of the values the presets set."""
    labels = [arch_label(c) for c in configs]
    for label in dict.fromkeys(labels):
        same = [i for i, other in enumerate(labels) if other == label]
        if len(same) < 2:
            continue
        given = [_as_given(configs[i]) for i in same]
        differ = [k for k in given[0] if any(g[k] != given[0][k] for g in given[1:])]
        for i in same:
            settings = ", ".join(f"{k}={_text(getattr(configs[i], k))}" for k in differ)
            labels[i] = f"{label} ({settings})"
    return labels


def _as_given(config: TrainConfig) -> dict:
    """``configuration(config)`` with every preset-valued setting that holds its preset's
    value replaced by the ``PRESET`` marker: the settings a user chose."""
    setting = configuration(config)
    for name in PRESET_VALUED:
        if name in setting and _follows_preset(config, name):
            setting[name] = PRESET
    return setting


def _follows_preset(config: TrainConfig, name: str) -> bool:
    try:  # the config again with this one field left to its preset
        return getattr(replace(config, **{name: PRESET}), name) == getattr(config, name)
    except ValueError:  # the preset's value does not go with the others: not that value
        return False


def _text(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)
