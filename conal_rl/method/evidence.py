"""Conflict statistics with power and uncertainty, from one backward over a large batch.

One minibatch's gradient signs say nothing at T >= 10 (``conflict.py``'s ``any-pair``): a
decision needs estimates with an error. Here they come from the captures of ONE backward
over a large batch (>= 1000 samples per task: the replay, a held-out buffer), per shared
linear layer (inputs ``a [k, N, in]``, output gradients ``δ [k, N, out]``).

Each task's N samples are cut into K contiguous chunks and each chunk's gradient of each
task is formed (one batched product, the bias as an input column of ones):
``g[t, c] = δ_tcᵀ [a_tc, 1]``. Their ``[k·K, k·K]`` Gram matrix holds every signed
statistic: the full Gram (block sums), the leave-one-chunk-out Grams of the jackknife and
the two halves of the split-half reliability. The sign-blind affinity ("reads": the cosine
of the input-side second moments ``G_tᵀG_t``, which input directions a task's gradient
reads whatever its signs and hidden units) needs the leave-one-chunk-out gradients
themselves, one more batched product.

The jackknife over chunks treats a chunk's samples as one draw: it stays honest where the
samples within a chunk are correlated (consecutive transitions) as long as chunks are
roughly independent. Its standard errors have K - 1 degrees of freedom, which the default
significance threshold accounts for (:func:`significance_z`).

Decisions (:meth:`LayerEvidence.leaving`): a task leaves a shared module only where the
evidence shows significant conflict. With a head per task, signs follow the heads, so only
the sign-blind affinity counts: tasks outside the module's main significant cluster
(:meth:`LayerEvidence.main_cluster`) leave. With a head shared by all tasks (MT-SAC),
signed conflict counts too: a task whose gradient points significantly against the sum of
the others' (:meth:`LayerEvidence.conflicting`) leaves as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from conal_rl.method.task_gradients import TaskGradientCapture, consensus_cosines, cosines


def significance_z(k: int, chunks: int, level: float = 0.05) -> float:
    """The one-sided threshold of a test repeated over k tasks at family-wise ``level``
    (Bonferroni: each at ``level / k``), as a Student-t quantile with ``chunks - 1``
    degrees of freedom (the jackknife's), by the Cornish-Fisher expansion of the normal
    quantile."""
    z = float(torch.special.ndtri(torch.tensor(1.0 - level / max(k, 1), dtype=torch.float64)))
    df = max(chunks - 1, 1)
    return (z + (z ** 3 + z) / (4 * df)
            + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2))


def jackknife_se(replicates: Tensor) -> Tensor:
    """``[K, ...]`` leave-one-chunk-out values of a statistic -> its standard error."""
    K = replicates.shape[0]
    return ((K - 1) / K * (replicates - replicates.mean(dim=0)).square().sum(dim=0)).sqrt()


_TENSORS = ("cosine", "cosine_se", "affinity", "affinity_se", "consensus", "consensus_se",
            "affinity_replicates")


@dataclass(frozen=True)
class LayerEvidence:
    """One shared layer's conflict statistics over its k tasks (see the module doc)."""

    tasks: tuple[int, ...]
    """Task ids on the layer's leading axis."""
    samples: int
    """Samples per task it was measured on."""
    cosine: Tensor
    """``[k, k]`` signed cosines of the task gradients (all samples)."""
    cosine_se: Tensor
    """``[k, k]`` their jackknife standard errors."""
    affinity: Tensor
    """``[k, k]`` sign-blind similarity in [0, 1]: the cosine of the tasks' input-side
    second moments ``G_tᵀG_t`` (the input directions their gradients read)."""
    affinity_se: Tensor
    reliability: float
    """Split-half reliability: Pearson r between the k(k-1)/2 off-diagonal cosines of the
    two halves of the chunks (NaN below 3 tasks)."""
    consensus: Tensor
    """``[k]`` cosine of each task's gradient with the sum of the others'."""
    consensus_se: Tensor
    chunks: int = 8
    """The jackknife's K."""
    episodes: int | None = None
    """The fewest episodes any task's samples came from (None: not known). From
    ``MIN_EPISODES`` on, each episode is in one chunk only; below (or not known) the chunks
    are runs of samples, and where one episode's samples fall in several chunks the
    errors and the reliability come out too small: reports warn."""
    affinity_replicates: Tensor | None = None
    """``[K, k, k]`` the leave-one-chunk-out affinities, for the standard error of any
    statistic of the affinity (:meth:`main_cluster`)."""

    def z(self, level: float = 0.05) -> float:
        """The default threshold: :func:`significance_z` over the k tasks at ``level``."""
        return significance_z(len(self.tasks), self.chunks, level)

    def conflicting(self, z: float | None = None) -> tuple[int, ...]:
        """Task ids whose consensus cosine is significantly below 0 (``consensus + z·se <
        0``); ``z`` defaults to a one-sided 5% family-wise test over the k tasks
        (Bonferroni, Student-t with K - 1 degrees of freedom: :func:`significance_z`).
        Evidence of conflict only where the tasks share a head (signs follow the heads)."""
        z = self.z() if z is None else z
        flags = (self.consensus + z * self.consensus_se < 0).tolist()
        return tuple(t for t, f in zip(self.tasks, flags) if f)

    def main_cluster(self, z: float | None = None, share: float = 0.5) -> tuple[int, ...]:
        """Task ids of the layer's main significant cluster by affinity.

        Starting from all tasks: split them in two by the sign of the second eigenvector of
        the normalised affinity (spectral bisection); the larger part (ties: the denser) is
        the main one. The other part leaves only as a cluster of its own: its tasks' mean
        affinity with each other must be significantly above their mean affinity with the
        main part divided by ``share`` (one test), and then each of its tasks leaves if its
        mean affinity to the main part is significantly below ``share`` times the main
        part's mean internal affinity (a test per task). Significant: the difference >
        z·se (jackknife se, ``z`` as in :meth:`conflicting`). Repeat on what is left until
        no task leaves. Without significant structure every task stays.

        Why a ``share`` and not a plain difference: distinct tasks always differ somewhat in
        what they read, so with enough samples any split of them differs significantly; a
        task that reads far less in common with the cluster than its members do with each
        other is evidence of another family. Why the other part must be a cluster: tasks
        that merely read less in common with everyone (one feature where the others read
        three) are not a family apart; a lone task never leaves this way."""
        if self.affinity_replicates is None:
            raise ValueError("main_cluster needs the affinity replicates (layer_evidence "
                             "keeps them)")
        z = self.z() if z is None else z
        stack = torch.cat([self.affinity[None], self.affinity_replicates])  # [1 + K, k, k]

        def pairs(rows, cols=None):  # [1 + K]: mean over distinct pairs of rows (x cols)
            if cols is not None:
                return stack[:, rows][:, :, cols].mean(dim=2)  # [1 + K, len(rows)]
            block, m = stack[:, rows][:, :, rows], len(rows)
            return (block.sum(dim=(1, 2)) - block.diagonal(dim1=1, dim2=2).sum(-1)) / (m * m - m)

        def significant(gap):  # gap[0] the estimate, gap[1:] its jackknife replicates
            return gap[0] > z * jackknife_se(gap[1:])

        members = list(range(len(self.tasks)))
        while len(members) >= 4:
            main, others = _bisect(self.affinity[members][:, members])
            main, others = [members[i] for i in main], [members[i] for i in others]
            if len(others) < 2:
                break
            to_main = pairs(others, main)  # [1 + K, o]
            if not significant(share * pairs(others) - to_main.mean(dim=1)):
                break
            leave = significant(share * pairs(main)[:, None] - to_main).tolist()
            if not any(leave):
                break
            gone = {o for o, f in zip(others, leave) if f}
            members = [t for t in members if t not in gone]
        return tuple(self.tasks[i] for i in members)

    def leaving(self, signed: bool = False, z: float | None = None,
                share: float = 0.5) -> tuple[int, ...]:
        """Task ids that leave this module: outside its main significant cluster and, where
        the tasks share a head (``signed``), also those significantly :meth:`conflicting`."""
        stay = set(self.main_cluster(z, share))
        if signed:
            stay -= set(self.conflicting(z))
        return tuple(t for t in self.tasks if t not in stay)

    def to_dict(self) -> dict:
        """JSON-able: lists of floats (NaN as None)."""
        out = {"tasks": list(self.tasks), "samples": self.samples, "chunks": self.chunks,
               "episodes": self.episodes,
               "reliability": None if math.isnan(self.reliability) else self.reliability}
        for name in _TENSORS:
            value = getattr(self, name)
            out[name] = None if value is None else value.double().cpu().tolist()
        return out

    @classmethod
    def from_dict(cls, d: dict) -> LayerEvidence:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        for name in _TENSORS:
            if values.get(name) is not None:
                values[name] = torch.tensor(values[name], dtype=torch.float64)
        reliability = values.get("reliability")
        values["reliability"] = float("nan") if reliability is None else float(reliability)
        values["tasks"] = tuple(values["tasks"])
        return cls(**values)


def _bisect(affinity: Tensor) -> tuple[list[int], list[int]]:
    """Spectral bisection of ``[m, m]`` affinities: (main part, other part) as indices."""
    degree = affinity.sum(dim=1).clamp(min=torch.finfo(affinity.dtype).tiny).rsqrt()
    normalised = degree[:, None] * affinity * degree[None]
    side = (torch.linalg.eigh(normalised).eigenvectors[:, -2] >= 0).tolist()
    parts = [[i for i, s in enumerate(side) if s == flag] for flag in (True, False)]
    if not parts[1]:
        return parts[0], []

    def key(part):  # larger first; then denser
        block = affinity[part][:, part]
        return (len(part), float(block.mean()))
    parts.sort(key=key, reverse=True)
    return parts[0], parts[1]


MIN_EPISODES = 4  # per task: each half of the split-half reliability two episodes at least


def episode_chunks(episodes: Tensor, chunks: int) -> tuple[Tensor | None, int, int]:
    """``[k, N]`` episode ids -> (``[k, N]`` the chunk of every sample, K, the fewest
    episodes of a task): each task's episodes dealt in turn to K = min(chunks, that fewest)
    chunks, so no episode is in two chunks. Below ``MIN_EPISODES`` episodes of a task: no
    chunks (None) and K = ``chunks``, the caller's runs of samples."""
    found = [torch.unique(row, return_inverse=True) for row in episodes]
    fewest = min(int(ids.numel()) for ids, _ in found)
    if fewest < MIN_EPISODES:
        return None, chunks, fewest
    K = min(chunks, fewest)
    return torch.stack([inverse % K for _, inverse in found]), K, fewest


def _chunk_gradients(inputs: Tensor, grad_outputs: Tensor, chunks: int,
                     chunk_of: Tensor | None = None) -> Tensor:
    """``[k, N, in], [k, N, out]`` -> ``[k, K, out, in + 1]``: each task's gradient over each
    of K chunks of its samples, the bias's as the last column (its input is 1). The chunks:
    ``chunk_of [k, N]`` (each sample's), else K contiguous runs (sizes differ by at most
    one)."""
    if chunk_of is not None:
        a = F.pad(inputs, (0, 1), value=1.0)
        member = F.one_hot(chunk_of, chunks).to(a.dtype).transpose(1, 2)  # [k, K, N]
        return (member[..., None] * grad_outputs[:, None]).transpose(-1, -2) @ a[:, None]
    N = inputs.shape[1]
    size = -(-N // chunks)
    bounds = torch.arange(chunks + 1) * N // chunks
    positions = bounds[:-1, None] + torch.arange(size)  # [K, size]
    index = torch.where(positions < bounds[1:, None], positions, N).to(inputs.device)
    a = F.pad(F.pad(inputs, (0, 1), value=1.0), (0, 0, 0, 1))  # sample N: all zeros
    d = F.pad(grad_outputs, (0, 0, 0, 1))
    return torch.matmul(d[:, index].transpose(-1, -2), a[:, index])


def _pearson(x: Tensor, y: Tensor) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = float((x.square().sum() * y.square().sum()).sqrt())
    return float((x * y).sum()) / denominator if denominator > 0 else float("nan")


@torch.no_grad()
def layer_evidence(inputs: Tensor, grad_outputs: Tensor, tasks: tuple[int, ...],
                   chunks: int = 8, episodes: Tensor | None = None) -> LayerEvidence:
    """The :class:`LayerEvidence` of one linear layer from its captures ``a [k, N, in]``,
    ``δ [k, N, out]`` (task t's gradient: ``δ_tᵀa_t``, bias ``Σ_n δ_t``). With
    ``episodes [k, N]`` (each sample's episode) the chunks share no episode
    (:func:`episode_chunks`)."""
    k, N = inputs.shape[:2]
    if k < 2:
        raise ValueError(f"conflict evidence needs at least 2 tasks on a layer, got {k}")
    if len(tasks) != k:
        raise ValueError(f"{len(tasks)} task ids for {k} tasks on the leading axis")
    if chunks < 2 or N < 2 * chunks:
        raise ValueError(f"conflict evidence needs at least 2 chunks of at least 2 samples: "
                         f"{N} samples per task, {chunks} chunks (need N >= {2 * chunks})")
    chunk_of, K, fewest = (None, chunks, None) if episodes is None else episode_chunks(
        episodes, chunks)
    g = _chunk_gradients(inputs, grad_outputs, K, chunk_of)  # [k, K, out, in + 1]
    flat = g.reshape(k * K, -1)
    m = (flat @ flat.T).double().view(k, K, k, K)  # m[s, c, t, d] = <g[s, c], g[t, d]>
    full = m.sum(dim=(1, 3))
    rows = m.sum(dim=3)  # [s, c, t]: chunk c of s with all of t
    # Without chunk c: full - (c of s with all of t) - (all of s with c of t) + (c with c).
    loo = (full - rows.permute(1, 0, 2) - rows.permute(1, 2, 0)
           + m.diagonal(dim1=1, dim2=3).permute(2, 0, 1))  # [K, k, k]
    half = K // 2
    halves = [cosines(m[:, :half, :, :half].sum(dim=(1, 3))),
              cosines(m[:, half:, :, half:].sum(dim=(1, 3)))]
    upper = torch.triu_indices(k, k, 1)
    reliability = (_pearson(*(h[upper[0], upper[1]] for h in halves)) if k >= 3
                   else float("nan"))

    # Affinity: the leave-one-chunk-out gradients' input-side second moments.
    whole = g.sum(dim=1, keepdim=True)  # [k, 1, out, in + 1]
    reads = torch.cat([whole, whole - g], dim=1)  # [k, 1 + K, out, in + 1]
    reads = (reads.transpose(-1, -2) @ reads).transpose(0, 1).reshape(1 + K, k, -1)
    affinity = cosines((reads @ reads.transpose(1, 2)).double()).clamp(0, 1)  # [1 + K, k, k]

    return LayerEvidence(
        tasks=tuple(int(t) for t in tasks), samples=N,
        cosine=cosines(full), cosine_se=jackknife_se(cosines(loo)),
        affinity=affinity[0], affinity_se=jackknife_se(affinity[1:]),
        reliability=reliability,
        consensus=consensus_cosines(full), consensus_se=jackknife_se(consensus_cosines(loo)),
        chunks=K, episodes=fewest, affinity_replicates=affinity[1:])


def capture_evidence(capture: TaskGradientCapture, chunks: int = 8,
                     episodes: Tensor | None = None) -> dict[str, LayerEvidence]:
    """Per layer captured by the last backward inside ``capture.record()``, its evidence
    (layers with fewer than 2 tasks are skipped); ``episodes [T, N]``: the samples'
    episodes, by task id (the chunks then share none). Clears the captures."""
    out = {name: layer_evidence(a, d, capture.layers[name].tasks, chunks,
                                None if episodes is None
                                else episodes[list(capture.layers[name].tasks)])
           for name, (a, d) in capture.captured().items()
           if len(capture.layers[name].tasks) >= 2}
    capture.clear()
    return out
