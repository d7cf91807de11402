"""How much do the task gradients on CoNAL's shared modules say about the task families, and
when? A diagnostic on the synthetic problem of ``benchmarks.studies.conflict_rules``.

    python -m benchmarks.studies.gradient_signal [--seeds 3] [--out
        benchmarks/results/gradient-signal]

Every conflict rule decides from the per-task gradients of a shared module. This measures
whether those gradients carry the known family structure at all: the supernet is trained
weights-only at the uniform mix (the search's warm-up, same data, learning rate and split as
the study), and at chosen steps, per shared module, three pairwise similarities of the task
gradients are averaged within a family and across families:

* ``cos``: the cosine (what ``any-pair``, ``ema-pair`` and ``consensus`` read, by its sign);
* ``cos²``: the squared cosine (what ``affinity`` reads, sign-free);
* ``reads``: the cosine between the tasks' input-side second moments ``G_tᵀ G_t`` (which
  input features the gradient reads, whatever the signs and whichever hidden units): two
  tasks of one family read the same features of the input even when their heads differ.

A similarity carries the families where within exceeds across. On the agreeing problem (one
family; the split into "families" is arbitrary) the gap should be ~0: the control. Train and
held-out losses show how far the nets have fitted by each step.

Writes ``<out>.json`` and ``<out>.md`` with the command and the machine.
"""

from __future__ import annotations

import statistics

import torch

from benchmarks.studies.conflict_rules import (
    ACROSS,
    HIDDEN,
    IN,
    WITHIN,
    T,
    make_problem,
    mse,
    seeded_main,
    split,
)
from conal_rl.method import SuperNet, search_optimizers, search_step
from conal_rl.method.task_gradients import TaskGradientCapture, cosines, task_gradients

STEPS = (0, 25, 50, 100, 200, 300, 600)  # the study's warm-up is 300, its search 600 more
MEASURES = ("cos", "cos²", "reads")


def similarities(inputs: torch.Tensor, grad_outputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """``[T, N, in], [T, N, out]`` of one linear layer -> each measure's ``[T, T]``."""
    weights, biases = task_gradients(inputs, grad_outputs)
    flat = torch.cat([weights, biases], dim=1)
    cos = cosines(flat @ flat.T)
    per_task = weights.view(inputs.shape[0], grad_outputs.shape[-1], inputs.shape[-1])
    reads = (per_task.transpose(1, 2) @ per_task).flatten(1)  # [T, in*in]
    return {"cos": cos, "cos²": cos.square(), "reads": cosines(reads @ reads.T)}


def gap(matrix: torch.Tensor) -> tuple[float, float]:
    """Mean over the pairs within a family and across families."""
    return (statistics.mean(float(matrix[s, t]) for s, t in WITHIN),
            statistics.mean(float(matrix[s, t]) for s, t in ACROSS))


def trace(seed: int, agreeing: bool, steps=STEPS, lr: float = 3e-3) -> list[dict]:
    """Weights-only training of the supernet; at each of ``steps`` the similarities of the
    per-task gradients of that step, per shared module, and the losses."""
    problem = make_problem(seed, agreeing)
    torch.manual_seed(seed)
    net = SuperNet(T, IN, 1, HIDDEN)
    _, weight_opt = search_optimizers(net, weight_lr=lr)
    capture = TaskGradientCapture(net)
    (x_w, y_w), (x_a, y_a) = split(problem)
    out = []
    for step in range(max(steps) + 1):
        if step not in steps:
            search_step(net, None, lambda: mse(net, x_w, y_w), None, weight_opt)
            continue
        with capture.record():  # the same weight step, its per-task gradients captured
            _, loss = search_step(net, None, lambda: mse(net, x_w, y_w), None, weight_opt)
        layers = {name: {m: gap(s) for m, s in similarities(a, d).items()}
                  for name, (a, d) in sorted(capture.captured().items())}
        capture.clear()
        with torch.no_grad():
            held_out = float(mse(net, x_a, y_a))
        out.append({"step": step, "train_loss": loss.item(), "held_out_loss": held_out,
                    "layers": layers})
    return out


def study(seeds: int, steps=STEPS, progress=print) -> dict:
    runs = []
    for seed in range(seeds):
        for agreeing in (False, True):
            runs.append({"seed": seed, "agreeing": agreeing,
                         "trace": trace(seed, agreeing, steps)})
        progress(f"seed {seed} done")
    return {"runs": runs, "summary": summarize(runs)}


def summarize(runs: list[dict]) -> dict:
    """Per problem, step, layer and measure: within and across, mean over seeds."""
    summary = {}
    for problem in ("families", "agreeing"):
        chosen = [r["trace"] for r in runs if r["agreeing"] == (problem == "agreeing")]
        rows = []
        for points in zip(*chosen):
            row = {"step": points[0]["step"],
                   "train_loss": statistics.mean(p["train_loss"] for p in points),
                   "held_out_loss": statistics.mean(p["held_out_loss"] for p in points),
                   "layers": {}}
            for layer in points[0]["layers"]:
                row["layers"][layer] = {
                    m: [statistics.mean(p["layers"][layer][m][i] for p in points)
                        for i in (0, 1)] for m in MEASURES}
            rows.append(row)
        summary[problem] = rows
    return summary


def markdown(payload: dict) -> str:
    m, s = payload["machine"], payload["summary"]
    seeds = len({r["seed"] for r in payload["runs"]})
    layers = list(s["families"][0]["layers"])
    lines = [f"# Family signal in the task gradients ({seeds} seeds)", "",
             f"Command: `{payload['command']}`  ", f"Machine: {m['platform']}, "
             f"{m['cpu_count']} CPUs, torch {m['torch']}; {payload['seconds']:.0f} s", "",
             "The supernet of `benchmarks.studies.conflict_rules` trained weights-only at the "
             "uniform mix; per shared module, each similarity of two tasks' gradients on that "
             "step's batch as `within / across` (mean over the pairs of tasks within a family and "
             "across the two families, then over seeds). The families carry a signal where "
             "within exceeds across; on the agreeing problem (control) the two should match. "
             "Losses: mean squared error on the weights' part of the training set (train) "
             "and on alpha's held-out part.", ""]
    for problem, rows in s.items():
        lines += [f"## {problem}", "",
                  "| step | train | held out | " + " | ".join(
                      f"{layer} {m}" for layer in layers for m in MEASURES) + " |",
                  "|---" * (3 + len(layers) * len(MEASURES)) + "|"]
        for row in rows:
            cells = [f"{row['layers'][layer][m][0]:.2f} / {row['layers'][layer][m][1]:.2f}"
                     for layer in layers for m in MEASURES]
            lines.append(f"| {row['step']} | {row['train_loss']:.3f} | "
                         f"{row['held_out_loss']:.3f} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    return seeded_main("python -m benchmarks.studies.gradient_signal", __doc__,
                       "benchmarks/results/gradient-signal", study, markdown, argv)


if __name__ == "__main__":
    main()
