"""From the ``--arch`` flag to the agent's networks: tree specs, their factories and files,
and the gradient filters of the trained networks (``--grad-surgery``)."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from agents import GradientFilter, NetFactory
from conal_rl.common import write_atomic
from conal_rl.method import PCGrad, TreeNet, TreeSpec

ARCHS = ("mtsac", "mhsac", "tree")
GRAD_SURGERY = ("none", "pcgrad")


def tree_specs(arch: str, hidden: tuple[int, ...], task_names: list[str],
               architecture_file: str | Path | None = None) -> dict[str, TreeSpec]:
    """The actor's and the critic's tree for a fixed (non-searched) architecture."""
    T = len(task_names)
    if arch == "mtsac":
        spec = TreeSpec.mtsac(hidden, T, task_names)
        return {"actor": spec, "critic": spec}
    if arch == "mhsac":
        spec = TreeSpec.mhsac(hidden, T, task_names)
        return {"actor": spec, "critic": spec}
    if arch == "tree":
        if architecture_file is None:
            raise ValueError("--arch tree needs --architecture FILE.json")
        specs = load_specs(architecture_file)
        for role, spec in specs.items():
            if spec.task_names and list(spec.task_names) != list(task_names):
                raise ValueError(
                    f"{architecture_file}: {role} tree is for tasks {list(spec.task_names)}, "
                    f"not this benchmark's {task_names}")
            if spec.num_tasks != T:
                raise ValueError(f"{architecture_file}: {role} tree has {spec.num_tasks} "
                                 f"tasks, the benchmark {T}")
        return specs
    raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHS)}")


def tree_factory(specs: dict[str, TreeSpec]) -> NetFactory:
    """A NetFactory building TreeNets: role ("actor"/"critic") selects the spec."""
    def make_net(role: str, in_dim: int, out_dim: int) -> TreeNet:
        return TreeNet(specs[role], in_dim, out_dim)
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
    raise ValueError(f"unknown gradient surgery {method!r}; valid: {', '.join(GRAD_SURGERY)}")


# ---- architecture.json -------------------------------------------------------------------
def save_specs(path: str | Path, specs: dict[str, TreeSpec],
               details: dict[str, dict] | None = None) -> None:
    """Write named tree specs (e.g. ``{"actor": ..., "critic": ...}``) as one JSON file,
    each with its branch point per task name and any ``details[name]`` (e.g. the final
    alpha, parameter counts): informational keys that :meth:`TreeSpec.from_dict` skips."""
    payload = {}
    for name, spec in specs.items():
        entry = spec.to_dict()
        if spec.task_names:
            entry["branch_point_by_task"] = dict(zip(spec.task_names, spec.branch_points))
        payload[name] = entry | (details or {}).get(name, {})
    write_atomic(path, lambda f: f.write(json.dumps(payload, indent=2).encode()))


def load_specs(path: str | Path, names=("actor", "critic")) -> dict[str, TreeSpec]:
    data = json.loads(Path(path).read_text())
    missing = [n for n in names if n not in data]
    if missing:
        raise ValueError(f"{path}: no architecture for {', '.join(missing)}")
    return {n: TreeSpec.from_dict(data[n]) for n in names}
