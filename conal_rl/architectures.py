"""From an architecture name (the ``--arch`` flag) to the network factory the agent uses."""

from __future__ import annotations

from pathlib import Path

from conal_rl.tree import TreeNet, TreeSpec, load_specs

ARCHS = ("mtsac", "mhsac", "tree")


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


def tree_factory(specs: dict[str, TreeSpec]):
    """A NetFactory building TreeNets: role ("actor"/"critic") selects the spec."""
    def make_net(role: str, in_dim: int, out_dim: int) -> TreeNet:
        return TreeNet(specs[role], in_dim, out_dim)
    return make_net
