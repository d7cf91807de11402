"""Train multi-task SAC on a benchmark: ``python -m conal_rl.train --benchmark MT10``.

Wires the three layers together: envs (vector env, evaluation) -> replay -> agent update
(networks from the architecture factory), with TensorBoard logs, periodic evaluation and
checkpoints that resume (``--resume RUN_DIR``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from agents import MultiTaskReplay, MultiTaskSAC, NetFactory, SACConfig
from conal_rl import checkpoint
from conal_rl.architectures import tree_factory, tree_specs
from conal_rl.conal_sac import ConalSearch, SearchSettings, supernet_factory
from conal_rl.config import TrainConfig, add_config_arguments, given_arguments
from conal_rl.draw import save_tree_pictures
from conal_rl.pcgrad import gradient_surgery_filters
from conal_rl.runs import Policy, record_evaluation
from conal_rl.tree import TreeNet, TreeSpec, load_specs, num_parameters, save_specs
from envs import (
    Benchmark,
    EvalResult,
    UnknownBenchmark,
    check_benchmark_name,
    evaluate,
    make_benchmark,
    make_eval_benchmark,
)

# Imported at start-up, before metaworld imports mujoco: it picks the headless GL backend.
from envs.video import VideoError, last_frame, record_videos

# Flags that may change when a run is resumed; all others must match the saved config.
RESUMABLE_OVERRIDES = {"total_steps", "minutes", "device", "eval_every", "eval_episodes",
                       "checkpoint_every", "save_replay", "log_every", "video_every"}


class UserError(Exception):
    """A mistake on the command line: reported as one line, exit status 2."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available on this machine "
                        f"(torch {torch.__version__}); use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


class Trainer:
    """One training run in ``run_dir``; ``run()`` trains to ``config.total_steps``.

    ``make_net`` builds the actor's and critics' networks; with ``search`` settings those
    are supernets and every update is preceded by a CoNAL architecture step. A checkpoint
    in ``run_dir`` is resumed.
    """

    def __init__(self, config: TrainConfig, run_dir: Path, bench: Benchmark,
                 make_net: NetFactory, search: SearchSettings | None = None):
        self.config, self.run_dir, self.bench = config, run_dir, bench
        self.device = resolve_device(config.device)
        torch.set_num_threads(config.torch_threads)
        self.np_rng = seed_everything(config.seed)
        self.eval_bench: Benchmark | None = None  # both built on first use
        self.video_bench: Benchmark | None = None
        T, obs_dim = self.bench.num_tasks, self.bench.obs_dim
        space = self.bench.action_space
        self.act_dim = int(np.prod(space.shape))

        # --loss-weighting and --grad-surgery act on the trained networks; CoNAL's search
        # (supernets, conflict-noticing) runs without them.
        sac_config = SACConfig(gamma=config.gamma, tau=config.tau, actor_lr=config.lr,
                               critic_lr=config.lr, temperature_lr=config.lr,
                               loss_weighting="mean" if search else config.loss_weighting)
        self.agent = MultiTaskSAC(make_net, T, obs_dim, self.act_dim, sac_config).to(self.device)
        self.policy = Policy(self.agent, space, self.device)
        self.search = ConalSearch(self.agent, search, bench.task_names) if search else None
        if search is None:
            self.agent.gradient_filters = gradient_surgery_filters(self.agent,
                                                                   config.grad_surgery)
        self.replay = MultiTaskReplay(max(1, config.replay_size // T), T, obs_dim,
                                      self.act_dim, self.device, seed=config.seed)
        self.env_steps = self.updates = 0
        self.last_eval: EvalResult | None = None
        self.timers: dict[str, float] = defaultdict(float)
        self._run_start: tuple | None = None  # training clock at the start of run()
        self.stopped_by = "steps"  # or "minutes": what ended the last run()
        self.spent_s = 0.0  # training seconds charged to the budget before this trainer
        self.speed: dict[str, str] = {}  # latest env-steps/s and updates/s, for the console
        run_dir.mkdir(parents=True, exist_ok=True)
        self.resumed = self.checkpoint_path.exists()
        if self.resumed:
            self._load_checkpoint()
        config.save(run_dir / "config.json")
        self.writer = SummaryWriter(str(run_dir))

    # ---- paths ----------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "latest.pt"

    # ---- the loop -------------------------------------------------------------------------
    def run(self, final_eval: bool = True, spent_s: float = 0.0) -> EvalResult | None:
        """Train until ``total_steps`` or the ``minutes`` budget, whichever comes first;
        ``spent_s``: training seconds already charged to that budget elsewhere (CoNAL's
        search)."""
        cfg, T = self.config, self.bench.num_tasks
        self.spent_s = spent_s
        budget_s = cfg.minutes * 60 - spent_s if cfg.minutes else None
        envs = self.bench.envs
        # A resumed run starts fresh episodes from a seed derived from where it stands, so
        # resuming twice from the same checkpoint gives the same run.
        obs, _ = envs.reset(seed=cfg.seed + self.env_steps)
        ep_success = np.zeros(T)
        stop = checkpoint.StopSignal()
        bar = tqdm(total=cfg.total_steps, initial=self.env_steps, unit="step",
                   dynamic_ncols=True, desc=f"{cfg.benchmark} {cfg.arch}",
                   mininterval=0.5 if sys.stderr.isatty() else 30)
        pending: list[dict] = []  # per-update metric tensors, synced at log time
        log_clock = self._run_start = self._clock()
        self.stopped_by = "steps"
        if self.env_steps:
            tqdm.write(f"resumed {self.run_dir} at env step {self.env_steps}")
        try:
            while self.env_steps < cfg.total_steps and not stop.requested:
                if budget_s is not None and self.train_seconds() >= budget_s:
                    self.stopped_by = "minutes"
                    break
                t0 = time.perf_counter()
                if self.env_steps < cfg.warmup_steps:
                    actions = self.np_rng.uniform(-1, 1, (T, self.act_dim))
                else:
                    actions = self.policy.normalized(obs, deterministic=False)
                t1 = time.perf_counter()
                # Updates start once the buffer holds a warm-up's worth of transitions: after
                # the random warm-up, and again after a resume without --save-replay.
                updating = self.replay.size * T >= cfg.warmup_steps
                # An async vector env steps in its worker processes while this process
                # updates (the update does not need the transition in flight).
                overlap = updating and hasattr(envs, "step_async")
                if overlap:
                    envs.step_async(self.policy.to_env(actions))
                else:
                    step = envs.step(self.policy.to_env(actions))
                t2 = time.perf_counter()
                if updating:
                    for _ in range(cfg.updates_per_step):
                        if self.search is not None:
                            self.search.before_update(self.replay.sample(cfg.batch_per_task),
                                                      self.env_steps)
                        pending.append(self.agent.update(self.replay.sample(cfg.batch_per_task)))
                        self.updates += 1
                t3 = time.perf_counter()
                if overlap:
                    step = envs.step_wait()
                t4 = time.perf_counter()
                next_obs, rewards, term, trunc, info = step
                done = term | trunc
                real_next = next_obs.copy()
                for i in np.flatnonzero(done):
                    real_next[i] = info["final_obs"][i]
                self.replay.add(obs, actions, rewards, real_next, term)
                obs = next_obs
                self.env_steps += T
                bar.update(T)
                if "success" in info:
                    ep_success = np.maximum(ep_success, info["success"])
                if done.any():
                    self._log_episodes(info, done, ep_success)
                    ep_success[done] = 0
                t5 = time.perf_counter()
                # "env": time spent stepping or waiting for the envs (with overlap, the part
                # of their stepping the update did not hide).
                for k, dt in (("act", t1 - t0), ("env", t2 - t1 + t4 - t3),
                              ("update", t3 - t2), ("replay_add", t5 - t4)):
                    self.timers[k] += dt

                if self._crossed(cfg.log_every):
                    log_clock = self._log_training(pending, log_clock, bar)
                    pending = []
                if cfg.eval_every and self._crossed(cfg.eval_every):
                    self.evaluate()
                    self._show_progress(bar)
                if cfg.video_every and self._crossed(cfg.video_every):
                    self.record_video()
                if self._crossed(cfg.checkpoint_every):
                    self.save_checkpoint()
        finally:
            bar.close()
            self.timers["train_wall"] = self.train_seconds()
            self._run_start = None
        self.save_checkpoint()
        if stop.requested:
            tqdm.write(f"stopped by signal at env step {self.env_steps}; checkpoint saved, "
                       f"continue with --resume {self.run_dir}")
            raise SystemExit(128 + stop.signum)
        if final_eval and (self.last_eval is None or self.last_eval_step != self.env_steps):
            self.evaluate()
        self._write_timing()
        self.writer.close()
        return self.last_eval

    def _crossed(self, every: int) -> bool:
        """True on the vector step that crosses a multiple of ``every`` env steps."""
        T = self.bench.num_tasks
        return every > 0 and self.env_steps // every != (self.env_steps - T) // every

    # ---- evaluation -----------------------------------------------------------------------
    def evaluate(self) -> EvalResult:
        t0 = time.perf_counter()
        if self.eval_bench is None:
            self.eval_bench = make_eval_benchmark(self.config.benchmark, self.config.seed,
                                                  self.config.vector_strategy)
        result = evaluate(self.policy, self.eval_bench, self.config.eval_episodes)
        self.timers["eval"] += time.perf_counter() - t0
        self.last_eval, self.last_eval_step = result, self.env_steps
        step = self.env_steps
        # train_minutes on the budget's clock: a CoNAL tree's evaluations count its search.
        record_evaluation(self.run_dir, result, step, (self.spent_s + self.train_seconds()) / 60,
                          self.writer)
        tqdm.write(format_eval(result, step))
        return result

    def record_video(self) -> None:
        """One episode of every task, as mp4s; the grid's last frame goes to TensorBoard."""
        t0 = time.perf_counter()
        if self.video_bench is None:
            self.video_bench = make_eval_benchmark(self.config.benchmark, self.config.seed + 1)
        out = self.run_dir / "videos" / f"step_{self.env_steps}"
        try:
            grid = record_videos(self.policy, self.video_bench, out, progress=False)[-1]
            self.writer.add_image("video/last_frames", last_frame(grid), self.env_steps,
                                  dataformats="HWC")
            tqdm.write(f"videos at env step {self.env_steps}: {out}")
        except VideoError as e:  # no headless OpenGL: say so once, keep training
            tqdm.write(f"no videos: {e}")
            self.config = replace(self.config, video_every=0)
        self.timers["video"] += time.perf_counter() - t0

    # ---- logging --------------------------------------------------------------------------
    def _log_episodes(self, info: dict, done: np.ndarray, ep_success: np.ndarray) -> None:
        returns = info["final_info"]["episode"]["r"]
        for i in np.flatnonzero(done):
            task = self.bench.task_names[i]
            self.writer.add_scalar(f"train_return/{task}", float(returns[i]), self.env_steps)
            if self.bench.is_metaworld:
                self.writer.add_scalar(f"train_success/{task}", ep_success[i], self.env_steps)

    def train_seconds(self) -> float:
        """Training wall time summed over resumes: wall time less evaluation, checkpoints
        and videos (what --minutes limits)."""
        running = self._clock()[0] - self._run_start[0] if self._run_start else 0.0
        return self.timers["train_wall"] + running

    def _clock(self) -> tuple[float, int, int]:
        """Training time so far (wall time less evaluation and checkpointing) and counters."""
        paused = self.timers["eval"] + self.timers["checkpoint"] + self.timers["video"]
        return time.perf_counter() - paused, self.env_steps, self.updates

    def _log_training(self, pending: list[dict], clock: tuple, bar: tqdm) -> tuple:
        now = self._clock()
        t_prev, steps_prev, updates_prev = clock
        dt = max(now[0] - t_prev, 1e-9)
        sps = (self.env_steps - steps_prev) / dt
        ups = (self.updates - updates_prev) / dt
        step = self.env_steps
        self.writer.add_scalar("speed/env_steps_per_s", sps, step)
        self.writer.add_scalar("speed/updates_per_s", ups, step)
        if pending:
            # One host sync for the whole logging window.
            means = {k: torch.stack([m[k] for m in pending]).mean(0).cpu() for k in pending[0]}
            for k, per_task in means.items():  # the mean over tasks, then each task
                self.writer.add_scalar(f"train/{k}", per_task.mean().item(), step)
                for task, value in zip(self.bench.task_names, per_task.tolist()):
                    self.writer.add_scalar(f"{k}/{task}", value, step)
        if self.search is not None:
            self.search.log(self.writer, step, images=self._crossed(self.config.log_every * 5))
        self.speed = {"sps": f"{sps:.0f}", "ups": f"{ups:.0f}"}
        self._show_progress(bar)
        return now

    def _show_progress(self, bar: tqdm) -> None:
        postfix = dict(self.speed)
        if self.config.minutes:  # the budget that will stop the run, in its own units
            spent_min = (self.spent_s + self.train_seconds()) / 60  # CoNAL: search included
            postfix["min"] = f"{spent_min:.1f}/{self.config.minutes:g}"
        if self.last_eval is not None:
            if self.bench.is_metaworld:
                postfix["success"] = f"{self.last_eval.mean_success:.2f}"
            else:
                postfix["return"] = f"{self.last_eval.mean_return:.1f}"
        bar.set_postfix(postfix, refresh=False)

    def _write_timing(self) -> None:
        timing = dict(self.timers) | {"env_steps": self.env_steps, "updates": self.updates,
                                      "stopped_by": self.stopped_by}
        (self.run_dir / "timing.json").write_text(json.dumps(timing, indent=2))

    # ---- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        t0 = time.perf_counter()
        checkpoint.save_atomic({
            "config": asdict(self.config),
            "agent": self.agent.state_dict(),
            "optimizers": self.agent.optimizer_state(),
            "counters": {"env_steps": self.env_steps, "updates": self.updates},
            "timers": dict(self.timers) | {"train_wall": self.train_seconds()},
            "rng": checkpoint.rng_state(self.np_rng),
            "replay": self.replay.state_dict() if self.config.save_replay else None,
            "search": self.search.state_dict() if self.search else None,
        }, self.checkpoint_path)
        self.timers["checkpoint"] += time.perf_counter() - t0

    def _load_checkpoint(self) -> None:
        state = checkpoint.load(self.checkpoint_path, map_location=self.device)
        checkpoint.check_trained_on(state, self.config.benchmark, self.config.arch,
                                    self.run_dir)
        self.agent.load_state_dict(state["agent"])
        self.agent.load_optimizer_state(state["optimizers"])
        self.env_steps = state["counters"]["env_steps"]
        self.updates = state["counters"]["updates"]
        self.timers.update(state.get("timers", {}))
        checkpoint.restore_rng(state["rng"], self.np_rng)
        if state["replay"] is not None:
            self.replay.load_state_dict(state["replay"])
        if self.search is not None:
            self.search.load_state_dict(state["search"])


def format_eval(result: EvalResult, step: int) -> str:
    lines = [f"evaluation at env step {step} ({result.episodes} episodes per task):"]
    for row in result.rows():
        lines.append(f"  {row['task']:<28} success {row['success']:.2f}   "
                     f"return {row['return']:9.1f}")
    lines.append(f"  {'mean':<28} success {result.mean_success:.2f}   "
                 f"return {result.mean_return:9.1f}")
    return "\n".join(lines)


# ---- command line ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m conal_rl.train", description=__doc__.split("\n\n")[0],
    )
    add_config_arguments(parser)
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue the run in RUN_DIR from its last checkpoint (its "
                        "config.json is used; --total-steps etc. may extend it)")
    return parser


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, Path]:
    given = given_arguments(args)
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.json").is_file():
            raise UserError(f"--resume {run_dir}: no config.json there (not a run directory)")
        saved = TrainConfig.load(run_dir / "config.json")
        clash = {k for k, v in given.items()
                 if k not in RESUMABLE_OVERRIDES and v != getattr(saved, k)}
        if clash:
            raise UserError(f"--resume cannot change {', '.join(sorted(clash))} "
                            f"(only {', '.join(sorted(RESUMABLE_OVERRIDES))})")
        config = replace(saved, **{k: v for k, v in given.items() if k in RESUMABLE_OVERRIDES})
    else:
        config = TrainConfig(**given)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = config.benchmark.replace(":", "-")
        run_dir = Path(config.run_dir or f"runs/{name}-{config.arch}-s{config.seed}-{stamp}")
        if (run_dir / "config.json").exists():
            raise UserError(f"{run_dir} already holds a run; use --resume {run_dir} or "
                            "another --run-dir")
    try:
        check_benchmark_name(config.benchmark)
        config = config.resolved(_num_tasks(config.benchmark))
        config.validate()
    except (UnknownBenchmark, ValueError) as e:
        raise UserError(str(e)) from None
    resolve_device(config.device)  # fail before any env is built
    return config, run_dir


def search_architecture(config: TrainConfig, run_dir: Path, bench: Benchmark
                        ) -> tuple[dict[str, TreeSpec], dict | None]:
    """CoNAL's search phase in ``run_dir/search`` (resumable), then derivation and pruning.
    Returns the derived trees and, with ``--inherit-weights``, their searched weights.
    ``architecture.json`` is written last: its presence means the search is done."""
    arch_file = run_dir / "architecture.json"
    inherited_file = run_dir / "search" / "inherited.pt"
    if not arch_file.exists():
        settings = SearchSettings(
            hidden=config.hidden, arch_lr=config.arch_lr, gumbel=config.gumbel,
            conflict_noticing=not config.no_conflict_noticing, no_private=config.no_private,
            warmup_steps=config.search_warmup_steps, total_steps=config.search_steps)
        search_config = replace(config, total_steps=config.search_steps, eval_every=0)
        searcher = Trainer(search_config, run_dir / "search", bench,
                           supernet_factory(settings, bench.num_tasks), search=settings)
        print(f"search: {config.search_steps} env steps in {run_dir / 'search'}")
        searcher.run(final_eval=False)
        specs = searcher.search.derive()
        trees = searcher.search.inherited_trees()
        checkpoint.save_atomic({"trees": trees}, inherited_file)
        details = {}
        for role, spec in specs.items():
            supernet = searcher.search.nets[role]
            details[role] = {
                "alpha": searcher.search.alpha_table()[role],
                "parameters": {"supernet": num_parameters(supernet),
                               "tree": num_parameters(TreeNet(spec, supernet.in_features,
                                                              supernet.out_features))}}
            print(f"{role}: branch points {dict(zip(bench.task_names, spec.branch_points))}; "
                  f"parameters {details[role]['parameters']['supernet']:,} (supernet) -> "
                  f"{details[role]['parameters']['tree']:,} (pruned tree)")
        save_tree_pictures(run_dir / "architecture.png", specs)
        save_specs(arch_file, specs, details)
    specs = load_specs(arch_file)
    inherited = checkpoint.load(inherited_file)["trees"] if config.inherit_weights else None
    return specs, inherited


def main(argv: list[str] | None = None) -> EvalResult:
    args = build_parser().parse_args(argv)
    try:
        config, run_dir = config_from_args(args)
        print("config:", json.dumps(asdict(config)))
        bench = make_benchmark(config.benchmark, config.seed, config.vector_strategy)
        if config.arch == "conal":
            specs, inherited = search_architecture(config, run_dir, bench)
        else:
            specs = tree_specs(config.arch, config.hidden, bench.task_names, config.architecture)
            inherited = None
            if not (run_dir / "architecture.json").exists():
                run_dir.mkdir(parents=True, exist_ok=True)
                save_specs(run_dir / "architecture.json", specs)
                save_tree_pictures(run_dir / "architecture.png", specs)
        trainer = Trainer(config, run_dir, bench, tree_factory(specs))
    except (UserError, checkpoint.CheckpointError, ValueError) as e:
        print(f"conal_rl.train: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if inherited is not None and not trainer.resumed:
        trainer.agent.load_networks(inherited)
        print("training the pruned trees from the searched weights (--inherit-weights)")
    print(f"run directory: {run_dir}")
    for role in ("actor", "critic"):
        net = getattr(trainer.agent, role)
        print(f"{role}: {num_parameters(net):,} parameters ({config.arch})")
    return trainer.run(spent_s=search_seconds(run_dir))


def search_seconds(run_dir: Path) -> float:
    """Training seconds CoNAL's search spent in ``run_dir/search`` (0 without a search):
    they count against the run's --minutes."""
    timing = run_dir / "search" / "timing.json"
    return json.loads(timing.read_text())["train_wall"] if timing.exists() else 0.0


def _num_tasks(benchmark: str) -> int:
    return {"MT10": 10, "MT50": 50}.get(benchmark, 1)


if __name__ == "__main__":
    main()
