"""Conflict statistics with uncertainty (conal_rl/method/evidence.py): exact against per-task
autograd gradients, standard errors that match the spread over repeated samples, a
reliability that tells structure from noise, and the evidence rule's decisions."""

import json
import math

import pytest
import torch

from conal_rl.method import ConflictNoticing, SuperNet, TaskGradientCapture
from conal_rl.method.evidence import (
    LayerEvidence,
    capture_evidence,
    jackknife_se,
    layer_evidence,
    significance_z,
)


def _reference(a, d, chunks):
    """Loops: per task and chunk, the layer's gradient by autograd; every statistic by
    its definition, the jackknife by leaving each chunk out in turn."""
    k, N, d_in = a.shape
    layer = torch.nn.Linear(d_in, d.shape[-1]).double()
    bounds = [c * N // chunks for c in range(chunks + 1)]
    g = torch.zeros(k, chunks, layer.weight.numel() + layer.bias.numel(), dtype=torch.float64)
    for t in range(k):
        for c in range(chunks):
            rows = slice(bounds[c], bounds[c + 1])
            layer.zero_grad()
            out = layer(a[t, rows])
            (out * d[t, rows]).sum().backward()  # the output gradient is d
            g[t, c] = torch.cat([layer.weight.grad.flatten(), layer.bias.grad])

    def stats(keep):
        total = g[:, keep].sum(dim=1)  # [k, params]
        unit = torch.nn.functional.normalize(total, dim=1)
        cos = unit @ unit.T
        others = total.sum(dim=0, keepdim=True) - total
        consensus = torch.nn.functional.cosine_similarity(total, others, dim=1)
        w = total[:, :layer.weight.numel()].view(k, *layer.weight.shape)
        b = total[:, layer.weight.numel():]
        full = torch.cat([w, b[:, :, None]], dim=2)  # bias as an input column of ones
        reads = torch.nn.functional.normalize((full.transpose(1, 2) @ full).flatten(1), dim=1)
        return cos, consensus, (reads @ reads.T).clamp(0, 1)

    every = list(range(chunks))
    out = dict(zip(("cosine", "consensus", "affinity"), stats(every)))
    loo = [stats([c for c in every if c != drop]) for drop in every]
    for i, name in enumerate(("cosine", "consensus", "affinity")):
        reps = torch.stack([r[i] for r in loo])
        out[name + "_se"] = ((chunks - 1) / chunks
                             * (reps - reps.mean(0)).square().sum(0)).sqrt()
    half = chunks // 2
    upper = torch.triu_indices(k, k, 1)
    x, y = (stats(part)[0][upper[0], upper[1]] for part in (every[:half], every[half:]))
    out["reliability"] = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
    return out


@pytest.mark.parametrize("N, chunks", [(40, 4), (37, 6)])  # 37: chunks of unequal sizes
def test_layer_evidence_matches_per_task_autograd_gradients(N, chunks):
    torch.manual_seed(0)
    k = 4
    a, d = torch.randn(k, N, 5, dtype=torch.float64), torch.randn(k, N, 3, dtype=torch.float64)
    d[1] += 0.5 * d[0]  # some structure, so that the statistics are not all ~0
    ev = layer_evidence(a, d, (2, 3, 5, 7), chunks=chunks)
    ref = _reference(a, d, chunks)
    assert ev.tasks == (2, 3, 5, 7) and ev.samples == N and ev.chunks == chunks
    for name in ("cosine", "cosine_se", "consensus", "consensus_se", "affinity",
                 "affinity_se"):
        torch.testing.assert_close(getattr(ev, name), ref[name], msg=name)
    assert ev.reliability == pytest.approx(ref["reliability"])
    assert ev.affinity_replicates.shape == (chunks, k, k)
    torch.testing.assert_close(jackknife_se(ev.affinity_replicates), ev.affinity_se)


def _structured(k, N, g, noise=1.0):
    """Task t's output gradient is ``W_t a + noise``: its mean gradient ``W_t Σ`` differs
    from task to task, the pattern of cosines is fixed (``W`` from a fixed seed)."""
    W = torch.randn(k, 6, 8, generator=torch.Generator().manual_seed(123))
    a = torch.randn(k, N, 8, generator=g)
    d = torch.einsum("koi,kni->kno", W, a) * 0.3 + noise * torch.randn(k, N, 6, generator=g)
    return a, d


def test_reliability_is_high_for_structured_gradients_and_near_zero_for_noise():
    g = torch.Generator().manual_seed(0)
    structured = layer_evidence(*_structured(8, 1000, g), tuple(range(8)))
    assert structured.reliability > 0.9
    noise = [layer_evidence(torch.randn(8, 1000, 8, generator=g),
                            torch.randn(8, 1000, 6, generator=g), tuple(range(8))).reliability
             for _ in range(20)]
    assert abs(sum(noise) / len(noise)) < 0.1, noise


def test_standard_errors_match_the_spread_over_independent_samples():
    g = torch.Generator().manual_seed(1)
    runs = [layer_evidence(*_structured(5, 1000, g), tuple(range(5))) for _ in range(60)]
    upper = torch.triu_indices(5, 5, 1)
    for value, se in (("cosine", "cosine_se"), ("affinity", "affinity_se"),
                      ("consensus", "consensus_se")):
        values = torch.stack([getattr(r, value) for r in runs])
        ses = torch.stack([getattr(r, se) for r in runs]).mean(dim=0)
        if values.dim() == 3:
            values, ses = values[:, upper[0], upper[1]], ses[upper[0], upper[1]]
        ratio = float((ses / values.std(dim=0)).mean())
        assert 1 / 1.5 < ratio < 1.5, (value, ratio)


def test_too_few_samples_or_tasks_are_refused():
    with pytest.raises(ValueError, match="at least 2 chunks"):
        layer_evidence(torch.randn(3, 15, 4), torch.randn(3, 15, 2), (0, 1, 2), chunks=8)
    with pytest.raises(ValueError, match="at least 2 tasks"):
        layer_evidence(torch.randn(1, 64, 4), torch.randn(1, 64, 2), (0,))


def test_evidence_round_trips_through_json():
    g = torch.Generator().manual_seed(2)
    ev = layer_evidence(*_structured(4, 200, g), (0, 1, 2, 3))
    again = LayerEvidence.from_dict(json.loads(json.dumps(ev.to_dict())))
    assert again.tasks == ev.tasks and again.reliability == pytest.approx(ev.reliability)
    torch.testing.assert_close(again.affinity_replicates, ev.affinity_replicates)
    two = layer_evidence(*_structured(2, 200, g), (0, 1))  # one pair: no reliability
    assert math.isnan(LayerEvidence.from_dict(json.loads(json.dumps(two.to_dict()))).reliability)


def test_the_threshold_is_a_bonferroni_t_quantile():
    assert significance_z(1, 10**6) == pytest.approx(1.645, abs=1e-3)  # one test, normal
    assert significance_z(10, 8) == pytest.approx(3.499, abs=0.05)  # t(7) at 0.995
    assert significance_z(10, 8) > significance_z(2, 8)


def _families(g, N=1000, agreeing=False):
    """8 tasks of one layer: two families reading orthogonal inputs (or all the same),
    each task with its own read-out and sign, so signs say nothing."""
    a = torch.randn(8, N, 8, generator=g)
    readout = torch.randn(8, 6, 4, generator=g)
    family = [0] * 8 if agreeing else [0] * 4 + [1] * 4
    d = torch.stack([readout[t] @ a[t, :, 4 * family[t]:4 * family[t] + 4].T
                     for t in range(8)]).transpose(1, 2)
    return a, d + 0.5 * torch.randn(8, N, 6, generator=g)


def test_the_main_cluster_separates_families_and_keeps_agreeing_tasks_together():
    g = torch.Generator().manual_seed(3)
    ev = layer_evidence(*_families(g), tuple(range(10, 18)))
    assert set(ev.main_cluster()) in ({10, 11, 12, 13}, {14, 15, 16, 17})
    assert set(ev.leaving()) == set(range(10, 18)) - set(ev.main_cluster())
    together = layer_evidence(*_families(g, agreeing=True), tuple(range(8)))
    assert together.main_cluster() == tuple(range(8)) and together.leaving() == ()


def test_conflicting_flags_a_task_against_the_others_only_when_significant():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(4, 1000, 5, generator=g)
    common = torch.randn(5, 3, generator=g)
    signs = torch.tensor([1.0, 1.0, 1.0, -1.0])[:, None, None]
    d = signs * (a @ common) * 0.2 + torch.randn(4, 1000, 3, generator=g)
    assert layer_evidence(a, d, (0, 1, 2, 3)).conflicting() == (3,)
    noise = layer_evidence(a, torch.randn(4, 1000, 3, generator=g), (0, 1, 2, 3))
    assert noise.conflicting() == ()


def test_capture_evidence_reads_one_backward_and_the_rule_gates_the_supernet():
    torch.manual_seed(0)
    net = SuperNet(8, 8, 1, (6, 6))
    capture = TaskGradientCapture(net)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 512, 8, generator=g)
    with capture.record():
        out = net(x)
    target = torch.cat([x[:4, :, :1], x[4:, :, 4:5]])  # two families of inputs
    (out - target).square().sum().backward()
    a, d = capture.captured()["shared.1"]
    evidence = capture_evidence(capture)
    assert set(evidence) == {"shared.1", "shared.2"} and not capture.captured()
    torch.testing.assert_close(evidence["shared.1"].cosine,
                               layer_evidence(a, d, tuple(range(8))).cosine)

    noticing = ConflictNoticing(net, rule="evidence")
    fake = LayerEvidence.from_dict(evidence["shared.1"].to_dict())
    noticing.set_evidence({"shared.1": fake})
    leaving = noticing.leaving()["shared.1"]
    assert set(leaving) in ({0, 1, 2, 3}, {4, 5, 6, 7})  # one family leaves the trunk
    net.gate(noticing.leaving())
    # leavers branch at 0 (before the conflicting module), the others keep the trunk
    assert net.branch_points() == tuple(0 if t in leaving else 2 for t in range(8))
    net.gate({"q1/shared.2": (3,), "q2/shared.2": (5,)})  # twin critics: one alpha
    assert net.branch_points() == (2, 2, 2, 1, 2, 1, 2, 2)
    net.gate({})
    assert net.branch_points() == (2,) * 8
    net.gate(None)  # the paper's search: every branch point open
    assert net.allowed.all()
    restored = ConflictNoticing(net, rule="evidence")
    restored.load_state_dict(noticing.state_dict())
    assert restored.leaving() == noticing.leaving()


def test_the_evidence_rule_takes_only_the_leaving_tasks_off_a_module():
    torch.manual_seed(0)
    net = SuperNet(3, 4, 1, (5,))
    x = torch.randn(3, 16, 4)
    per_task = []
    for t in range(3):
        net.zero_grad(set_to_none=True)
        net(x)[t].sum().backward()
        per_task.append(net.shared["1"].weight.grad.clone())
    noticing = ConflictNoticing(net, rule="evidence")
    noticing._leaving = {"shared.1": (1,)}  # as set_evidence would leave it
    net.zero_grad(set_to_none=True)
    with noticing.record():
        out = net(x)
    out.sum().backward()
    noticing.apply()
    torch.testing.assert_close(net.shared["1"].weight.grad, per_task[0] + per_task[2])


def _episodic(k=3, episodes=8, per_episode=64, seed=0):
    """Captures whose gradients are one direction per episode (every sample of an episode
    alike), samples shuffled: what a replay sample of a few episodes looks like."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(episodes).repeat_interleave(per_episode)
    a = torch.randn(k, episodes, 1, 6, generator=g, dtype=torch.float64).expand(
        k, episodes, per_episode, 6).reshape(k, -1, 6)
    d = torch.randn(k, episodes, 1, 2, generator=g, dtype=torch.float64).expand(
        k, episodes, per_episode, 2).reshape(k, -1, 2)
    order = torch.randperm(ids.numel(), generator=g)
    return a[:, order], d[:, order], ids[order].expand(k, -1)


def test_chunks_by_episode_hold_whole_episodes_and_sum_to_the_gradient():
    from conal_rl.method.evidence import _chunk_gradients, episode_chunks

    a, d, ids = _episodic()
    chunk_of, K, fewest = episode_chunks(ids, 8)
    assert fewest == 8
    assert K == 8
    for t in range(3):  # every episode in one chunk
        assert all(len(set(chunk_of[t][ids[t] == e].tolist())) == 1 for e in range(8))
    g = _chunk_gradients(a, d, K, chunk_of)
    for c in range(K):
        rows = chunk_of[0] == c
        manual = d[0, rows].T @ torch.nn.functional.pad(a[0, rows], (0, 1), value=1.0)
        torch.testing.assert_close(g[0, c], manual)


def test_splits_that_share_episodes_overstate_the_precision():
    """The same samples: chunks of the shuffled samples each hold parts of every episode,
    so they agree and the jackknife sees almost no spread; chunks of whole episodes show the
    spread between episodes, which is the real uncertainty."""
    a, d, ids = _episodic()
    shared = layer_evidence(a, d, (0, 1, 2), chunks=8)
    honest = layer_evidence(a, d, (0, 1, 2), chunks=8, episodes=ids)
    assert (shared.episodes, honest.episodes) == (None, 8)
    torch.testing.assert_close(honest.cosine, shared.cosine)  # the estimate is the same
    upper = torch.triu_indices(3, 3, 1)
    assert (honest.cosine_se[upper[0], upper[1]]
            > 3 * shared.cosine_se[upper[0], upper[1]]).all()


def test_too_few_episodes_fall_back_to_runs_of_samples_and_say_so():
    a, d, ids = _episodic(episodes=3)
    ev = layer_evidence(a, d, (0, 1, 2), chunks=8, episodes=ids)
    assert ev.episodes == 3 and ev.chunks == 8  # fewer than MIN_EPISODES: runs of samples
    assert LayerEvidence.from_dict(json.loads(json.dumps(ev.to_dict()))).episodes == 3
