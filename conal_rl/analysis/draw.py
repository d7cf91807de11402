"""Pictures of tree architectures (PNG): where each task leaves the shared trunk."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402

from conal_rl.method import GroupTreeSpec, TreeSpec  # noqa: E402


def _frame(ax, P: int, T: int, title: str, top: float) -> None:
    """Module columns (input, L1..LP, head), a row per task, no y axis."""
    ax.set_xticks(range(P + 2), ["input", *[f"L{i}" for i in range(1, P + 1)], "head"])
    ax.set_yticks([])
    ax.set_xlim(-0.3, P + 3.8)
    ax.set_ylim(-T - 0.8, top)
    ax.set_title(title)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)


def draw_tree(ax, spec: TreeSpec, title: str) -> None:
    """Shared trunk on top (x = module index), one row per task below it: task t runs along
    the trunk up to its branch point, drops to its own row there, and continues through
    its private modules to its head."""
    P, T = spec.depth, spec.num_tasks
    names = spec.task_names or tuple(f"task {t}" for t in range(T))
    trunk_end = max(spec.branch_points)
    ax.plot([0, trunk_end], [0, 0], color="black", lw=4, solid_capstyle="round")
    for layer in range(1, trunk_end + 1):
        ax.plot(layer, 0, "s", color="black", ms=10)
    colors = plt.get_cmap("tab10" if T <= 10 else "viridis")
    for t, b in enumerate(spec.branch_points):
        y, c = -(t + 1), colors(t % 10 if T <= 10 else t / max(T - 1, 1))
        ax.plot([b, b, P + 1], [0, y, y], color=c, lw=1.5)
        for layer in range(b + 1, P + 1):
            ax.plot(layer, y, "o", color=c, ms=6)
        ax.plot(P + 1, y, ">", color=c, ms=7)
        ax.text(P + 1.25, y, f"{names[t]} (b={b})", va="center", fontsize=8)
    _frame(ax, P, T, title, top=0.8)


def draw_groups(ax, spec: GroupTreeSpec, title: str) -> None:
    """A grouped tree: one row per task (ordered so groups sit together), one column per
    module; the tasks of a group at a depth are joined by a bar, so a shared trunk is a
    full-height bar and a task's own module a dot."""
    T, P = spec.num_tasks, spec.depth
    names = spec.task_names or tuple(f"task {t}" for t in range(T))
    order = sorted(range(T), key=lambda t: tuple(g[t] for g in spec.groups))
    row = {t: -(i + 1) for i, t in enumerate(order)}
    colors = plt.get_cmap("tab10" if T <= 10 else "viridis")
    for j, labels in enumerate(spec.groups, start=1):
        for g in sorted(set(labels)):
            rows = [row[t] for t in range(T) if labels[t] == g]
            if len(rows) > 1:
                ax.plot([j, j], [min(rows), max(rows)], color="black", lw=6, alpha=0.6,
                        solid_capstyle="round")
            else:
                ax.plot(j, rows[0], "o", color="black", ms=6)
    for t in range(T):
        c = colors(t % 10 if T <= 10 else t / max(T - 1, 1))
        ax.plot([0, P + 1], [row[t], row[t]], color=c, lw=1)
        ax.plot(P + 1, row[t], ">", color=c, ms=7)
        ax.text(P + 1.25, row[t], names[t], va="center", fontsize=8)
    _frame(ax, P, T, title, top=0.2)


def save_tree_pictures(path: str | Path, specs: dict[str, TreeSpec | GroupTreeSpec]) -> Path:
    """One PNG with a panel per network (e.g. actor and critic)."""
    T = max(s.num_tasks for s in specs.values())
    fig, axes = plt.subplots(1, len(specs), figsize=(6.5 * len(specs), 1.2 + 0.35 * T),
                             squeeze=False)
    for ax, (role, spec) in zip(axes[0], specs.items()):
        if isinstance(spec, GroupTreeSpec):
            draw_groups(ax, spec, f"{role}: modules shared by a group ▮, own modules ●")
        else:
            draw_tree(ax, spec, f"{role}: shared modules ■, private ●, heads ▶")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def save_gain_picture(path: str | Path, probes: list[dict]) -> Path:
    """A growing tree's probes (``grown.json``'s): per task, each measured gain against env
    steps with its z-error bar, filled where the branch opened; a panel per module, the
    price as a dashed line. Gains below -1 (a probe far worse than the net) sit on the
    bottom edge."""
    modules = sorted({p["module"] for p in probes}, reverse=True)
    tasks = list(dict.fromkeys(p["task"] for p in probes))
    fig, axes = plt.subplots(1, len(modules), figsize=(6 * len(modules), 4.2), squeeze=False,
                             sharey=True)
    colors = plt.get_cmap("tab10" if len(tasks) <= 10 else "tab20")
    low = -1.0
    for ax, module in zip(axes[0], modules):
        for i, task in enumerate(tasks):
            for p in (p for p in probes if p["module"] == module and p["task"] == task):
                color = colors(i % colors.N)
                ax.errorbar(p["env_steps"], max(p["gain"], low), yerr=p["z"] * p["se"],
                            fmt="o", color=color, capsize=2,
                            mfc=color if p["opened"] else "white")
        for price in sorted({p["price"] for p in probes if p["module"] == module}):
            ax.axhline(price, color="grey", linestyle="--", linewidth=1)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_title(f"module {module}: a private copy's drop of held-out TD error")
        ax.set_xlabel("env steps")
        ax.xaxis.set_major_formatter(lambda v, _: f"{v / 1e3:.0f}k")
    top = max(1.0, *(p["gain"] + p["z"] * p["se"] for p in probes if p["se"] < float("inf")))
    axes[0][0].set_ylim(low - 0.05, min(top, 2.0) + 0.05)
    axes[0][0].set_ylabel("gain (filled: the branch opened)")
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colors(i % colors.N))
               for i in range(len(tasks))]
    fig.legend(handles, tasks, fontsize=7, loc="center right")
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def heatmap_figure(values, row_labels, col_labels, title: str, vmin=None, vmax=None,
                   cmap: str = "viridis"):
    """A labelled heatmap (for TensorBoard images: alpha per task, gradient sign patterns)."""
    rows, cols = len(row_labels), len(col_labels)
    fig, ax = plt.subplots(figsize=(1.6 + 0.45 * cols + 1.8, 1.0 + 0.3 * rows))
    im = ax.imshow(values, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    ax.set_xticks(range(cols), col_labels, fontsize=7, rotation=90 if cols > 6 else 0)
    ax.set_yticks(range(rows), row_labels, fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    return fig
