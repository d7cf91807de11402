"""One agent update measured: its thread CPU time and its matrix-product FLOPs (what the
speed benchmarks of the learner's options and of a table's rows read)."""

from __future__ import annotations

import statistics
import time

from torch.utils.flop_counter import FlopCounterMode

from agents import Batch, MultiTaskSAC


def median_update_ms(agent: MultiTaskSAC, batch: Batch, repeats: int) -> float:
    """The median of ``repeats`` updates' thread CPU time, ms (a background load on the
    other core barely moves it)."""
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        agent.update(batch)
        times.append(time.thread_time() - t0)
    return 1e3 * statistics.median(times)


def update_flops(agent: MultiTaskSAC, batch: Batch) -> float:
    """The matrix-product FLOPs of one update (forward and backward of every net it runs)."""
    with FlopCounterMode(display=False) as counter:
        agent.update(batch)
    return float(counter.get_total_flops())


def turns(agents: dict, repeats: int, rounds: int) -> dict:
    """Per key, the median over ``rounds`` of :func:`median_update_ms`, the agents taking
    turns in every round (a load that comes and goes slows all alike); ``agents``: key ->
    (agent, batch). Two untimed updates each first (first kernels, allocations)."""
    for agent, batch in agents.values():
        median_update_ms(agent, batch, 2)
    times: dict = {key: [] for key in agents}
    for _ in range(rounds):
        for key, (agent, batch) in agents.items():
            times[key].append(median_update_ms(agent, batch, repeats))
    return {key: statistics.median(t) for key, t in times.items()}
