"""Pictures of tree architectures (PNG): where each task leaves the shared trunk."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402

from conal_rl.method.tree import TreeSpec  # noqa: E402


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
    ax.set_xticks(range(P + 2), ["input", *[f"L{i}" for i in range(1, P + 1)], "head"])
    ax.set_yticks([])
    ax.set_xlim(-0.3, P + 3.8)
    ax.set_ylim(-T - 0.8, 0.8)
    ax.set_title(title)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)


def save_tree_pictures(path: str | Path, specs: dict[str, TreeSpec]) -> Path:
    """One PNG with a panel per network (e.g. actor and critic)."""
    T = max(s.num_tasks for s in specs.values())
    fig, axes = plt.subplots(1, len(specs), figsize=(6.5 * len(specs), 1.2 + 0.35 * T),
                             squeeze=False)
    for ax, (role, spec) in zip(axes[0], specs.items()):
        draw_tree(ax, spec, f"{role}: shared modules ■, private ●, heads ▶")
    fig.tight_layout()
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
