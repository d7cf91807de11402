"""Would a probe see what a wider critic buys? Offline, on a run's saved replay: the held-out
TD error of the critic as it is, of the critic made wider, and of the private copies the
gain rule probes, each trained the same number of steps on the same batches.

    python -m benchmarks.studies.width_gain RUN_DIR ... [--updates N] [--seeds 0,1] [--out STEM]

Why: on MT10 at 1M env steps the one row beyond noise above MT-SAC is MT-SAC with every
module twice as wide, and the gain rule's probes found a task's private copy of a module
mostly no better on held-out episodes than the shared module. A tree that grows in width
where width pays needs a probe that sees the gain within one round of training; this study
asks whether a probe can, before any such rule is built.

Per run (its last checkpoint, with the replay ``--save-replay`` keeps): the replay's whole
episodes split, every ``--holdout``-th held out (never trained on); nets then train side by
side for ``--updates`` steps on batches of the run's ``batch_per_task`` and their TD targets
(the run's actor and target critics, held as they are):

* ``same``: a copy of the first twin critic, the comparison;
* ``wide``: that critic ``--factor`` times as wide, computing what it computed at the start
  (``widened_state``; its unit copies parted by zero-sum noise), at the run's learning rate;
* ``wide-slow``: the same, its weights that read the copied units at a ``--factor``-th of
  it: Adam moves each weight about the rate a step, so the ``--factor`` copies of a weight
  move what they compute together ``--factor`` times as far as the critic's one does;
* ``private``: every task at the deepest shared module its own copy of it and of what
  follows (``ModuleProbe``, what ``--branch-rule gain`` trains), reading ``same`` before it;
* ``null``: another copy of the critic, trained on batches of its own: what the gain of a
  net that is the same as ``same`` looks like when only the draws differ.

``same``, the wide ones and ``private`` see the same batches. Each net starts a fresh Adam. At
``--looks`` points the held-out transitions (targets drawn once) give each task's relative
drop of TD error against ``same`` with its error by episode (``paired_gain``), and the drop
over all tasks at once. The error by episode covers which transitions were held out, not
which batches the nets were trained on; ``null`` shows how far the draws alone move a
gain. With two or more ``--seeds`` each run is studied again on other draws (batches, targets,
parting noise; the same held-out episodes), and the report says how far each gain moved
between seeds in units of its standard error, and whether the rule's verdicts agree. Offline
the data do not follow the critic as they do in training: the figures say what
a probe round would measure, not what widening would have bought the run.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.report_files import command, header, now, save
from conal_rl.common import CommandParser, UserError
from conal_rl.training.config import GrowthSettings

PROG = "python -m benchmarks.studies.width_gain"
CANDIDATES = ("wide", "wide-slow", "private", "null")


def study_run(run_dir: Path, seeds: list[int], args) -> Iterator[dict]:
    """A row per seed: the run (its checkpoint and replay read and split once) studied on
    that seed's draws."""
    from conal_rl.method import TreeSpec
    from conal_rl.training import checkpoint
    from conal_rl.training import conflict_atlas as atlas
    from conal_rl.training.rundir import RunDir
    from conal_rl.training.runs import load_checked

    run = load_checked(run_dir, "cpu")
    spec, agent = run.specs["critic"], run.agent
    if not isinstance(spec, TreeSpec):
        raise UserError(f"{run_dir}: its critic is a grouped tree ({run.config.arch}); the "
                        "study widens plain trees")
    state = checkpoint.load(RunDir(run_dir).checkpoint, mmap=True)
    replay = atlas.saved_replay(state, agent.num_tasks, agent.obs_dim, agent.act_dim, "cpu")
    if replay is None:
        raise UserError(f"{run_dir}: its checkpoint holds no replay (trained without "
                        "--save-replay)")
    train, held = replay.split_episodes(args.holdout)
    for seed in seeds:
        yield _study_seed(run, train, held, seed, args)


def _study_seed(run, train, held, seed: int, args) -> dict:
    """The run's looks on the draws of ``seed``: per look and candidate, the gains over all
    tasks and per task."""
    import torch

    from agents.sac import adam
    from conal_rl.method import ModuleProbe, TreeNet, paired_gain, widened_state
    from conal_rl.method.probe import one_sided_z
    from conal_rl.method.tree import reads_hidden_units

    run_dir, spec, agent = run.run_dir, run.specs["critic"], run.agent
    torch.manual_seed(seed)
    base = 3 * seed  # three streams a seed, none shared with another seed's
    generator = torch.Generator().manual_seed(base)
    q1 = agent.critic.q1
    same = copy.deepcopy(q1)
    parting = torch.Generator().manual_seed(base + 2)  # the batches stay as they are
    widened = widened_state(q1.state_dict(), args.factor, args.noise, parting)
    nets = {"same": same}
    for name in ("wide", "wide-slow"):
        nets[name] = TreeNet(spec.widened(args.factor), agent.obs_dim + agent.act_dim, 1,
                             run.config.net_options())
        nets[name].load_state_dict(widened)
    deepest = max(spec.branch_points)
    if deepest > 0:  # some module is shared: the rule's probe of it
        nets["private"] = ModuleProbe(same, [t for t, b in enumerate(spec.branch_points)
                                             if b == deepest], deepest)
    nets["null"] = copy.deepcopy(q1)
    streams = {"null": torch.Generator().manual_seed(base + 1)}  # the others: generator
    lr = agent.config.critic_lr
    optims = {name: adam(list(net.parameters()), lr, agent.config.weight_decay)
              for name, net in nets.items() if name != "wide-slow"}
    # Adam moves every weight about lr a step, so the copies of a unit's weights move the
    # sum that reads the unit factor times as far: wide-slow's steps are the critic's own
    slow = [p for k, p in nets["wide-slow"].named_parameters() if reads_hidden_units(k)]
    rest = [p for k, p in nets["wide-slow"].named_parameters() if not reads_hidden_units(k)]
    optims["wide-slow"] = adam([{"params": slow, "lr": lr / args.factor}, {"params": rest}],
                               lr, agent.config.weight_decay)

    batch, episodes = held.sample_distinct(held.size, generator)  # every held-out transition
    with torch.no_grad():
        target, x = agent.td_targets(batch), agent.critic_inputs(batch)

    def look(updates: int) -> dict:
        with torch.no_grad():
            losses = {name: (net(x) - target[_tasks(net, x)]).square()[..., 0]
                      for name, net in nets.items()}
        out = {"updates": updates}
        for name in CANDIDATES:
            if name not in nets:
                continue
            tasks = _tasks(nets[name], x)
            ref, loss, ep = losses["same"][tasks], losses[name], episodes[tasks]
            per_task = paired_gain(ref, loss, ep)
            offset = (ep.max() + 1) * torch.arange(len(ep))[:, None]  # a task's own episodes
            pooled = paired_gain(ref.reshape(1, -1), loss.reshape(1, -1),
                                 (ep + offset).reshape(1, -1))[0]
            names = [spec.task_names[t] if spec.task_names else str(t) for t in tasks.tolist()]
            z = one_sided_z(len(per_task))  # the gain rule's bar, as its rounds set it
            out[name] = {"all": pooled.to_dict(),
                         "median": round(statistics.median(g.gain for g in per_task), 4),
                         "tasks": {n: g.to_dict() for n, g in zip(names, per_task)},
                         "pass": [n for n, g in zip(names, per_task) if g.pays(args.price, z)]}
        return out

    def draw(stream: torch.Generator):
        sample = train.sample(run.config.batch_per_task, stream)
        with torch.no_grad():
            return agent.td_targets(sample), agent.critic_inputs(sample)

    looks, seconds = [look(0)], dict.fromkeys(nets, 0.0)
    marks = {round(args.updates * (i + 1) / args.looks) for i in range(args.looks)}
    for update in range(1, args.updates + 1):
        drawn = {None: draw(generator)} | {name: draw(g) for name, g in streams.items()}
        for name, net in nets.items():
            target_t, x_t = drawn[name if name in streams else None]
            start = time.perf_counter()
            loss = (net(x_t) - target_t[_tasks(net, x_t)]).square().mean()
            optims[name].zero_grad(set_to_none=True)
            loss.backward()
            optims[name].step()
            seconds[name] += time.perf_counter() - start
        if update in marks:
            looks.append(look(update))
            print(f"{run_dir.name}: {update:,} updates, gain over all tasks " + ", ".join(
                f"{n} {looks[-1][n]['all']['gain']:+.3f}" for n in CANDIDATES
                if n in looks[-1]), flush=True)
    return {"run": str(run_dir), "seed": seed, "arch": run.config.arch,
            "env_steps": run.env_steps,
            "critic": list(spec.hidden), "probed_module": deepest or None,
            "held_out": {"transitions_per_task": int(held.size),
                         "episodes_per_task": int(len(torch.unique(episodes[0])))},
            "ms_per_update": {n: round(1000 * s / args.updates, 2) for n, s in seconds.items()},
            "looks": looks}


def replication(rows: list[dict]) -> dict:
    """Per run studied on two or more seeds, per candidate, over every look after the first
    and every task: how far a gain moves between seeds against its standard error (the
    spread of the gains over the root mean square of their errors; the median over looks
    and tasks: about 1 or less where the error covers what the draws do), and the verdicts:
    how many (look, task) pairs cleared the rule's bar on some seed, and how many on all."""
    by_run: dict[str, list[dict]] = {}
    for row in rows:
        by_run.setdefault(row["run"], []).append(row)
    out = {}
    for run, seeds in by_run.items():
        if len(seeds) < 2:
            continue
        out[run] = {}
        for name in CANDIDATES:
            if name not in seeds[0]["looks"][0]:
                continue
            ratios, some, every = [], 0, 0
            for looks in zip(*(row["looks"][1:] for row in seeds)):
                for task in looks[0][name]["tasks"]:
                    gains = [look[name]["tasks"][task] for look in looks]
                    rms = statistics.fmean(g["se"] ** 2 for g in gains) ** 0.5
                    if 0 < rms < float("inf"):
                        ratios.append(statistics.stdev(g["gain"] for g in gains) / rms)
                    passed = [task in look[name]["pass"] for look in looks]
                    some, every = some + any(passed), every + all(passed)
            out[run][name] = {"spread_over_se": round(statistics.median(ratios), 3)
                              if ratios else None, "passed_on_some": some,
                              "passed_on_all": every}
    return out


def overall(rows: list[dict], between: dict) -> dict:
    """Per candidate over every row and look after the first: the looks whose gain over all
    tasks was positive and its median; the (look, task) verdicts and how many cleared the
    rule's bar; summed over the runs of ``between``, those on some seed and on all."""
    out = {}
    for name in CANDIDATES:
        looks = [look[name] for row in rows for look in row["looks"][1:] if name in look]
        if not looks:
            continue
        pooled = [look["all"]["gain"] for look in looks]
        runs = [r[name] for r in between.values() if name in r]
        out[name] = {"looks": len(looks), "gain_positive": sum(g > 0 for g in pooled),
                     "gain_median": round(statistics.median(pooled), 4),
                     "verdicts": sum(len(look["tasks"]) for look in looks),
                     "passed": sum(len(look["pass"]) for look in looks),
                     "passed_on_some": sum(r["passed_on_some"] for r in runs),
                     "passed_on_all": sum(r["passed_on_all"] for r in runs)}
    return out


def picture(payload: dict, path: Path) -> None:
    """Per run a panel: each candidate's drop over all tasks against updates, a line per
    seed (the null in grey: what the draws alone do); drops below ``-1`` drawn at its edge."""
    from matplotlib.figure import Figure

    runs = list(dict.fromkeys(row["run"] for row in payload["rows"]))
    fig = Figure(figsize=(3.2 * len(runs), 3.4), layout="constrained")
    axes = fig.subplots(1, len(runs), sharey=True, squeeze=False)[0]
    colors = {"wide": "tab:red", "wide-slow": "tab:blue", "private": "tab:green",
              "null": "grey"}
    for ax, run in zip(axes, runs):
        rows = [row for row in payload["rows"] if row["run"] == run]
        for row, style in zip(rows, ("-", "--", ":", "-.") * len(rows)):
            for name in CANDIDATES:
                if name in row["looks"][0]:
                    ax.plot([look["updates"] for look in row["looks"]],
                            [max(look[name]["all"]["gain"], -1) for look in row["looks"]],
                            style, color=colors[name], marker=".",
                            label=f"{name}, seed {row['seed']}")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_title(f"{Path(run).name} ({rows[0]['env_steps']:,} env steps)", fontsize=9)
        ax.set_xlabel("updates")
    axes[0].set_ylabel("drop of held-out TD error, all tasks")
    axes[0].set_ylim(-1.05, 1)
    axes[-1].legend(fontsize=6, loc="lower left")
    fig.savefig(path, dpi=110)


def _tasks(net, x):
    """The task rows a net answers for: all, or a probe's."""
    import torch

    return getattr(net, "tasks", torch.arange(x.shape[0]))


def markdown(payload: dict) -> str:
    lines = header("Would a probe see what a wider critic buys?", payload["command"],
                   payload["machine"], payload["date"])
    lines += ["", "Relative drop of held-out TD error against the critic as it is, trained "
              "alike (positive: better); ± one standard error by episode. `rule's bar`: tasks "
              f"whose drop clears the gain rule's (price {payload['settings']['price']}, "
              "one-sided z Bonferroni over the tasks measured), of those measured.", ""]
    lines += ["## Over all runs", "", "Per candidate over every run, seed and look after "
              "the first: looks whose drop over all tasks was positive, and its median; "
              "(look, task) verdicts and those clearing the rule's bar; of the (look, task) "
              "pairs of runs studied on several seeds, those clearing it on some seed and on "
              "all.", "", "| candidate | looks | drop > 0 | median drop | verdicts | bar | "
              "bar on some seed | on all |", "|---|---|---|---|---|---|---|---|"]
    for name, o in payload["overall"].items():
        lines.append(f"| {name} | {o['looks']} | {o['gain_positive']} | "
                     f"{o['gain_median']:+.3f} | {o['verdicts']} | {o['passed']} | "
                     f"{o['passed_on_some']} | {o['passed_on_all']} |")
    lines.append("")
    if payload["replication"]:
        lines += ["## Between seeds", "", "Per run studied on several seeds, per candidate, "
                  "over the looks after the first and the tasks: `spread / SE`, the median "
                  "of a gain's spread over seeds divided by the root mean square of its "
                  "standard errors (about 1 or less where the error covers the draws); "
                  "`bar on some seed`, `on all`: (look, task) pairs clearing the rule's bar.",
                  "", "| run | candidate | spread / SE | bar on some seed | on all |",
                  "|---|---|---|---|---|"]
        for run, candidates in payload["replication"].items():
            for name, r in candidates.items():
                spread = "-" if r["spread_over_se"] is None else f"{r['spread_over_se']:.2f}"
                lines.append(f"| {Path(run).name} | {name} | {spread} | "
                             f"{r['passed_on_some']} | {r['passed_on_all']} |")
        lines.append("")
    for row in payload["rows"]:
        held = row["held_out"]
        lines += [f"## {Path(row['run']).name}, seed {row['seed']} ({row['arch']}, "
                  f"{row['env_steps']:,} env steps, critic {'x'.join(map(str, row['critic']))})",
                  "",
                  f"Held out: {held['transitions_per_task']:,} transitions, "
                  f"{held['episodes_per_task']} episodes per task. Update ms: " + ", ".join(
                      f"{k} {v}" for k, v in row["ms_per_update"].items()) + ".", "",
                  "| candidate | updates | all tasks | rule's bar | median task |",
                  "|---|---|---|---|---|"]
        for look in row["looks"]:  # the first at 0 updates: each computes what the critic does
            for name in CANDIDATES:
                if name not in look:
                    continue
                pooled, above = look[name]["all"], len(look[name]["pass"])
                lines.append(f"| {name} | {look['updates']:,} | {pooled['gain']:+.3f} ± "
                             f"{pooled['se']:.3f} | {above}/{len(look[name]['tasks'])} | "
                             f"{look[name]['median']:+.3f} |")
        last = row["looks"][-1]
        lines += ["", "Per task at the last look (gain ± SE): " + "; ".join(
            f"{name} " + ", ".join(f"{t} {g['gain']:+.2f}±{g['se']:.2f}"
                                   for t, g in last[name]["tasks"].items())
            for name in CANDIDATES if name in last), ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = CommandParser(prog=PROG, description=__doc__)
    parser.add_argument("runs", nargs="+", help="run directories trained with --save-replay")
    parser.add_argument("--updates", type=int, default=10_000,
                        help="training steps of each net (default: %(default)s, about one "
                             "probe round of the laptop preset on MT10)")
    parser.add_argument("--factor", type=int, default=2,
                        help="how many times wider the wide critic is (default: %(default)s)")
    parser.add_argument("--noise", type=float, default=0.5,
                        help="the zero-sum noise that parts the wide critic's unit copies, "
                             "relative to the weights' spread (default: %(default)s)")
    parser.add_argument("--holdout", type=int, default=10,
                        help="every k-th episode held out (default: %(default)s)")
    parser.add_argument("--looks", type=int, default=4,
                        help="held-out measurements over the updates (default: %(default)s)")
    parser.add_argument("--price", type=float, default=GrowthSettings.price,
                        help="the gain a task's drop must clear, as --gain-price (default: "
                             "%(default)s)")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated seeds of the draws (batches, targets, parting "
                             "noise), each run studied once per seed; two or more show how "
                             "far a gain moves with the draws alone (default: %(default)s)")
    parser.add_argument("--out", default="benchmarks/results/width-gain",
                        help="output stem: STEM.json, STEM.md and the picture STEM.png "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    for name, low in (("updates", 1), ("factor", 2), ("holdout", 2), ("looks", 1)):
        if getattr(args, name) < low:
            parser.error(f"--{name} must be at least {low}, got {getattr(args, name)}")
    for name in ("noise", "price"):
        if not getattr(args, name) >= 0:  # NaN too
            parser.error(f"--{name} must not be negative, got {getattr(args, name)}")
    try:
        seeds = [int(v) for v in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds takes comma-separated whole numbers, got {args.seeds!r}")
    if len(set(seeds)) < len(seeds):
        parser.error(f"--seeds: a seed named twice in {args.seeds!r}")
    missing = [r for r in args.runs if not Path(r).is_dir()]
    if missing:
        parser.error(f"no such run directory: {', '.join(missing)}")
    import torch

    from conal_rl.common import machine

    torch.set_num_threads(1)
    payload = {"command": command(PROG, argv), "machine": machine(), "date": now(),
               "settings": {k: getattr(args, k) for k in
                            ("updates", "factor", "noise", "holdout", "looks", "price")}
               | {"seeds": seeds},
               "rows": [], "replication": {}, "overall": {}}
    for run in args.runs:  # written after every row: a long study stopped keeps what it has
        try:
            for row in study_run(Path(run), seeds, args):
                payload["rows"].append(row)
                payload["date"], payload["replication"] = now(), replication(payload["rows"])
                payload["overall"] = overall(payload["rows"], payload["replication"])
                save(Path(args.out), payload, markdown(payload))
                picture(payload, Path(args.out).with_suffix(".png"))
        except UserError as e:
            parser.error(str(e))
    return payload


if __name__ == "__main__":
    main()
