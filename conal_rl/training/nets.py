"""From tree specs to the agent's networks: their factories and files (``architecture.json``),
and the gradient filters of the trained networks (``--grad-surgery``)."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from agents import GradientFilter, NetFactory
from conal_rl.common import UserError, write_atomic
from conal_rl.method import (
    PLAIN,
    GroupTreeNet,
    GroupTreeSpec,
    NetOptions,
    PCGrad,
    TreeNet,
    TreeSpec,
)
from conal_rl.training.architectures import MAX_WIDTH, architecture, configured
from conal_rl.training.config import GRAD_SURGERIES, TrainConfig


def fixed_trees(config: TrainConfig, task_names: list[str],
                sizes: tuple[int, int] | None = None) -> dict[str, TreeSpec | GroupTreeSpec]:
    """The actor's and the critic's trees of a fixed (not searched) architecture: made from
    the config, or read from ``--architecture`` (ArchitectureError, one line, for a file
    that is not trees for these tasks). ``sizes``: (obs_dim, act_dim), where known."""
    arch = architecture(config.arch)
    if arch.needs_file:  # the config checked that the file is given
        specs = load_specs(config.architecture)
        check_fits(specs, task_names, config.architecture)
    elif not arch.fixed:
        raise ValueError(f"--arch {config.arch} has no fixed trees (searched, or not trained "
                         "by conal_rl.train)")
    else:
        specs = arch.trees(config, task_names, sizes)
    return configured(specs, config)


def tree_factory(specs: dict[str, TreeSpec | GroupTreeSpec],
                 options: NetOptions = PLAIN) -> NetFactory:
    """A NetFactory building TreeNets (GroupTreeNets for grouped trees) as ``options`` say:
    role ("actor"/"critic") selects the spec."""
    def make_net(role: str, in_dim: int, out_dim: int) -> nn.Module:
        spec = specs[role]
        net = GroupTreeNet if isinstance(spec, GroupTreeSpec) else TreeNet
        return net(spec, in_dim, out_dim, options)
    return make_net


def surgery_filter(method: str):
    """The agent's filter factory for ``--grad-surgery``: PCGrad on the shared modules of
    the actor and of both critics (the twin critics' losses are one loss, so one filter),
    or None for no surgery."""
    if method == "none":
        return None
    if method == "pcgrad":
        def make_filter(role: str, nets: nn.Module | dict[str, nn.Module]) -> GradientFilter:
            return PCGrad(nets)
        return make_filter
    raise ValueError(f"unknown gradient surgery {method!r}; valid: {', '.join(GRAD_SURGERIES)}")


# ---- architecture.json -------------------------------------------------------------------
def save_specs(path: str | Path, specs: dict[str, TreeSpec],
               details: dict[str, dict] | None = None) -> None:
    """Write named tree specs (e.g. ``{"actor": ..., "critic": ...}``) as one JSON file,
    each with its branch point per task name and any ``details[name]`` (e.g. the final
    alpha, parameter counts): informational keys that :meth:`TreeSpec.from_dict` skips."""
    payload = {}
    for name, spec in specs.items():
        entry = spec.to_dict()
        if isinstance(spec, TreeSpec) and spec.task_names:
            entry["branch_point_by_task"] = dict(zip(spec.task_names, spec.branch_points))
        payload[name] = entry | (details or {}).get(name, {})
    write_atomic(path, lambda f: f.write(json.dumps(payload, indent=2).encode()))


class ArchitectureError(UserError, ValueError):
    """An architecture file that is missing, unreadable, not an architecture or not one
    for this benchmark: one line, exit status 2."""




def load_specs(path: str | Path, names=("actor", "critic")) -> dict[str, TreeSpec]:
    """The named trees of an architecture file (``architecture.json``); ArchitectureError,
    one line, for a file that is missing, empty, truncated, not JSON or not trees."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ArchitectureError(f"{path}: no such architecture file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ArchitectureError(f"{path}: cannot read the architecture file "
                                f"({type(e).__name__}: {e})") from None
    if not text.strip():
        raise ArchitectureError(f"{path}: the architecture file is empty")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ArchitectureError(f"{path}: not JSON (truncated or another kind of file? {e})"
                                ) from None
    if not isinstance(data, dict):
        raise ArchitectureError(f"{path}: not an architecture file (a JSON object with "
                                f"{' and '.join(names)} trees expected)")
    missing = [n for n in names if n not in data]
    if missing:
        raise ArchitectureError(f"{path}: no architecture for {', '.join(missing)} (a JSON "
                                f"object with {' and '.join(names)} trees expected)")
    return {n: _spec_of(data[n], f"{path}: {n} tree") for n in names}


def _spec_of(entry: object, where: str) -> TreeSpec | GroupTreeSpec:
    if not isinstance(entry, dict):
        raise ArchitectureError(f"{where} is not a JSON object")
    if "groups" in entry:  # a grouped tree (CoNAL-Pro)
        groups = entry["groups"]
        if not isinstance(groups, list) or not all(
                isinstance(g, list) and all(isinstance(v, int) for v in g) for g in groups):
            raise ArchitectureError(f"{where}: groups must be a list of lists of integers")
        try:
            return GroupTreeSpec.from_dict(entry)
        except (ValueError, TypeError, KeyError) as e:
            raise ArchitectureError(f"{where}: {e}") from None
    for key in ("hidden", "branch_points"):
        value = entry.get(key)
        if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ArchitectureError(f"{where}: {key} must be a list of integers, got "
                                    f"{value!r}")
    if any(w > MAX_WIDTH for w in entry["hidden"]):
        raise ArchitectureError(f"{where}: hidden widths above {MAX_WIDTH:,} "
                                f"({entry['hidden']})")
    names = entry.get("task_names", [])
    if not isinstance(names, list) or not all(isinstance(t, str) for t in names):
        raise ArchitectureError(f"{where}: task_names must be a list of strings")
    try:
        return TreeSpec.from_dict(entry)
    except (ValueError, TypeError) as e:
        raise ArchitectureError(f"{where}: {e}") from None


def check_fits(specs: dict[str, TreeSpec], task_names: list[str], where: str | Path) -> None:
    """ArchitectureError unless every tree is one for exactly these tasks (in this order)."""
    for role, spec in specs.items():
        if spec.task_names and list(spec.task_names) != list(task_names):
            raise ArchitectureError(
                f"{where}: {role} tree is for tasks {list(spec.task_names)}, "
                f"not this benchmark's {task_names}")
        if spec.num_tasks != len(task_names):
            raise ArchitectureError(f"{where}: {role} tree has {spec.num_tasks} tasks, the "
                                    f"benchmark {len(task_names)}")


def trees_in(hook_state: dict | None) -> dict[str, TreeSpec | GroupTreeSpec] | None:
    """The grown trees a checkpoint's hook state holds (None: not a growing run's)."""
    trees = (hook_state or {}).get("trees")
    return specs_of(trees) if trees else None


def specs_of(trees: dict[str, dict]) -> dict[str, TreeSpec | GroupTreeSpec]:
    """Trees from their dicts (``to_dict``), grouped ones included."""
    return {role: (GroupTreeSpec if "groups" in d else TreeSpec).from_dict(d)
            for role, d in trees.items()}
