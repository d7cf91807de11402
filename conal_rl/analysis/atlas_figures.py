"""Pictures of the conflict atlas: per net, a heat map of the tasks' gradient cosines for
every shared layer (task names on the axes, cells whose sign is significant marked), the
tasks clustered (a dendrogram of 1 - cosine), and the first layer's matrix over training.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from scipy.cluster.hierarchy import dendrogram, leaves_list, linkage
from scipy.spatial.distance import squareform

from conal_rl.training.conflict_atlas import Atlas

CMAP = "RdBu_r"  # red: agree, blue: conflict


def task_order(cosine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average-linkage clustering of the tasks on 1 - cosine: (the linkage, the leaf
    order), so that tasks that agree sit side by side."""
    distance = np.clip(1.0 - cosine, 0.0, 2.0)
    np.fill_diagonal(distance, 0.0)
    tree = linkage(squareform((distance + distance.T) / 2, checks=False), method="average")
    return tree, leaves_list(tree)


def _heat_map(ax, ev, names: list[str], order: np.ndarray, title: str) -> object:
    cos, se = ev.cosine.double().numpy(), ev.cosine_se.double().numpy()
    cos, se = cos[np.ix_(order, order)], se[np.ix_(order, order)]
    image = ax.imshow(cos, cmap=CMAP, vmin=-1, vmax=1)
    z = ev.z()
    for i, j in zip(*np.nonzero(np.abs(cos) > z * se)):  # sign significant (same z as decisions)
        if i != j:
            ax.plot(j, i, marker=".", color="black", markersize=3)
    labels = [names[k] for k in order]
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
    ax.set_title(title, fontsize=8)
    return image


def _caption(ev, names: list[str]) -> str:
    conflicting = [names[k] for k, t in enumerate(ev.tasks) if t in set(ev.conflicting())]
    return (f"r_split-half {ev.reliability:.2f}, {ev.samples} samples/task\n"
            f"against the others: {', '.join(conflicting) or 'none'}")


def atlas_figure(atlas: Atlas, role: str, task_names: list[str]) -> Figure:
    """One net's atlas: a row per sub-net (the twin critics' q1 and q2), a column per shared
    layer with its cosine matrix, the tasks in the order of the clustering of the row's
    first layer, whose dendrogram ends the row."""
    rows: dict[str, dict] = {}
    for name, ev in atlas[role].items():
        sub, _, layer = name.rpartition("/")
        rows.setdefault(sub, {})[layer] = ev
    columns = max(len(layers) for layers in rows.values()) + 1
    fig = Figure(figsize=(3.0 * columns, 3.6 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), columns, squeeze=False)
    image = None
    for row, (sub, layers) in enumerate(rows.items()):
        first = next(iter(layers.values()))
        names = [task_names[t] for t in first.tasks]
        tree, order = task_order(first.cosine.double().numpy())
        for col, (layer, ev) in enumerate(layers.items()):
            layer_names = [task_names[t] for t in ev.tasks]
            layer_order = order if ev.tasks == first.tasks else np.arange(len(ev.tasks))
            image = _heat_map(axes[row, col], ev, layer_names, layer_order,
                              f"{role} {sub + '/' if sub else ''}{layer}\n"
                              f"{_caption(ev, layer_names)}")
        for ax in axes[row, len(layers):-1]:
            ax.axis("off")
        dendrogram(tree, ax=axes[row, -1], labels=names, orientation="right",
                   leaf_font_size=6, color_threshold=0)
        axes[row, -1].invert_yaxis()  # top to bottom, as the rows of the heat maps
        axes[row, -1].set_xlabel("1 - cosine (first layer)", fontsize=7)
    fig.colorbar(image, ax=axes[:, :-1].ravel().tolist(), shrink=0.6,
                 label="cosine of task gradients")
    fig.suptitle(f"{role}: do the tasks' gradients agree? (dots: sign significant)",
                 fontsize=9)
    return fig


def over_training_figure(measurements: list[tuple[int, Atlas]], role: str, layer: str,
                         task_names: list[str]) -> Figure:
    """One layer's cosine matrix at every measurement (env steps), the tasks in the order
    of the last one's clustering: how the structure changes over training."""
    shown = [(step, a[role][layer]) for step, a in measurements if layer in a.get(role, {})]
    fig = Figure(figsize=(2.8 * len(shown) + 1, 3.4), layout="constrained")
    axes = fig.subplots(1, len(shown), squeeze=False)[0]
    names = [task_names[t] for t in shown[-1][1].tasks]
    _, order = task_order(shown[-1][1].cosine.double().numpy())
    image = None
    for ax, (step, ev) in zip(axes, shown):
        image = _heat_map(ax, ev, names, order,
                          f"env step {step:,}\nr_split-half {ev.reliability:.2f}")
    fig.colorbar(image, ax=list(axes), shrink=0.7, label="cosine")
    fig.suptitle(f"{role} {layer} over training", fontsize=9)
    return fig
