"""The training loop: envs -> replay -> agent update -> logs, evaluations and checkpoints.

It knows nothing of the networks inside the agent or of an architecture search: a search
plugs in as a :class:`Hook` (called before every update, when logging and when saving),
the way SB3 keeps its algorithm, loop and callbacks apart.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from agents import FilterFactory, MultiTaskReplay, MultiTaskSAC, NetFactory, SACConfig
from conal_rl.common import StopSignal, keep_freed_memory, resolve_device
from conal_rl.training import checkpoint, guard
from conal_rl.training import conflict_atlas as atlas
from conal_rl.training.config import TrainConfig
from conal_rl.training.rundir import RunDir
from conal_rl.training.runs import Policy, format_eval, record_evaluation
from envs import Benchmark, EvalResult, make_eval_benchmark
from envs import evaluate as run_evaluation
from envs.video import VideoError, last_frame, record_videos


class Hook(Protocol):
    """What the loop calls besides the agent's update (e.g. CoNAL's search, a growing
    tree), in the order given. A new agent that ``before_update`` returns (a tree that grew
    a branch) is the loop's from then on. ``name`` keys its state in the checkpoint."""

    name: str

    def before_update(self, agent: MultiTaskSAC, replay: MultiTaskReplay,
                      env_steps: int) -> MultiTaskSAC | None: ...
    def log(self, writer: SummaryWriter, env_steps: int) -> None: ...
    def progress(self) -> dict[str, str]:
        """What the progress bar shows of it (e.g. a probe under way)."""
        ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


AtlasFigure = Callable[[atlas.Atlas, str, list], object]
"""``(atlas, net, task names) -> matplotlib Figure``: the live atlas's picture in
TensorBoard, drawn by the layer above (``conal_rl.analysis``)."""


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


@dataclass
class _Window:
    """What the loop carries between vector steps."""

    obs: np.ndarray
    ep_success: np.ndarray
    pending: list  # per-update metric tensors, synced at log time
    log_clock: tuple


class Trainer:
    """One training run in ``run_dir``; ``run()`` trains to the config's budget.

    The agent is built here, after seeding, from ``make_net`` (its networks),
    ``make_filter`` (gradient filters of its losses) and ``sac`` (default: the config's).
    ``hooks`` (e.g. CoNAL's search) are called, in order, before every update, when logging
    and when checkpointing; ``holdout_every`` = k > 0 keeps every k-th vector step (or
    episode: ``holdout_by``; with a ``holdout_window`` the newest only) out of the weights'
    replay, for the hooks (``replay.sample_holdout``, ``replay.holdout``). A checkpoint in
    ``run_dir`` is resumed.
    """

    def __init__(self, config: TrainConfig, run_dir: Path, bench: Benchmark,
                 make_net: NetFactory, make_filter: FilterFactory | None = None,
                 hooks: Sequence[Hook] = (), sac: SACConfig | None = None,
                 holdout_every: int = 0, atlas_figure: AtlasFigure | None = None,
                 holdout_by: str = "steps", holdout_window: int = 0):
        self.config, self.run_dir, self.bench = config, Path(run_dir), bench
        self.hooks = list(hooks)
        if len({h.name for h in self.hooks}) < len(self.hooks):
            raise ValueError(f"two hooks of one name: {[h.name for h in self.hooks]}")
        self.atlas_figure = atlas_figure
        self.files = RunDir(run_dir)
        self.device = resolve_device(config.device)
        torch.set_num_threads(config.torch_threads)
        keep_freed_memory()
        self.np_rng = seed_everything(config.seed)
        self.eval_bench: Benchmark | None = None  # both built on first use
        self.video_bench: Benchmark | None = None
        self.act_dim = int(np.prod(bench.action_space.shape))
        self.agent = MultiTaskSAC(make_net, bench.num_tasks, bench.obs_dim, self.act_dim,
                                  sac or config.sac(), make_filter).to(self.device)
        self.policy = Policy(self.agent, bench.action_space, self.device)
        T = bench.num_tasks
        self.replay = MultiTaskReplay(max(1, config.replay_size // T), T, bench.obs_dim,
                                      self.act_dim, self.device, seed=config.seed,
                                      holdout_every=holdout_every, holdout_by=holdout_by,
                                      holdout_window=holdout_window)
        self.env_steps = self.updates = 0
        self.last_eval: EvalResult | None = None
        self.last_eval_step: int | None = None
        self.timers: dict[str, float] = defaultdict(float)
        self._run_start: tuple | None = None  # training clock at the start of run()
        self.stopped_by = "steps"  # or "minutes": what ended the last run()
        self.spent_s = 0.0  # training seconds charged to the budget before this trainer
        self.speed: dict[str, str] = {}  # latest env-steps/s and updates/s, for the console
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.resumed = self.checkpoint_path.exists()
        self.saved_step: int | None = None  # env step of the last checkpoint written or read
        self._window: _Window | None = None  # the loop's, while run() runs
        if self.resumed:
            self._load_checkpoint()
            self.saved_step = self.env_steps
        config.save(self.files.config)
        self.writer = SummaryWriter(str(self.run_dir))

    @property
    def checkpoint_path(self) -> Path:
        return self.files.checkpoint

    # ---- the loop -------------------------------------------------------------------------
    def run(self, final_eval: bool = True, spent_s: float = 0.0) -> EvalResult | None:
        """Train until ``total_steps`` or the ``minutes`` budget, whichever comes first;
        ``spent_s``: training seconds already charged to that budget elsewhere (CoNAL's
        search)."""
        cfg = self.config
        self.spent_s = spent_s
        budget_s = cfg.minutes * 60 - spent_s if cfg.minutes else None
        # A resumed run starts fresh episodes from a seed derived from where it stands, so
        # resuming twice from the same checkpoint gives the same run.
        obs = self._fresh_episodes()
        stop = StopSignal()
        bar = tqdm(total=cfg.total_steps, initial=self.env_steps, unit="step",
                   dynamic_ncols=True, desc=f"{cfg.benchmark} {cfg.arch}",
                   mininterval=0.5 if sys.stderr.isatty() else 30)
        self._run_start = self._clock()
        window = self._window = _Window(obs, np.zeros(self.bench.num_tasks), [],
                                        self._run_start)
        self.stopped_by = "steps"
        if self.env_steps:
            tqdm.write(f"resumed {self.run_dir} at env step {self.env_steps}")
        try:
            try:
                while self.env_steps < cfg.total_steps and not stop.requested:
                    if budget_s is not None and self.train_seconds() >= budget_s:
                        self.stopped_by = "minutes"
                        break
                    try:
                        self._vector_step(window, bar)
                        self._periodic(window, bar)
                    except guard.ENV_FAILURES as e:  # an env worker process died
                        self._env_failed(e)
            finally:
                bar.close()
                self.timers["train_wall"] = self.train_seconds()
                self._run_start = None
            # Still under our handler: a second signal (a scheduler repeating its SIGTERM)
            # must not cut the checkpoint write short.
            self.save_checkpoint()
        finally:
            stop.restore()
        if stop.requested:
            tqdm.write(f"stopped by signal at env step {self.env_steps}; checkpoint saved, "
                       f"continue with --resume {self.run_dir}")
            raise SystemExit(128 + stop.signum)
        if final_eval and (self.last_eval is None or self.last_eval_step != self.env_steps):
            self.evaluate()
        self._write_timing()
        self.writer.close()
        return self.last_eval

    def _vector_step(self, window: _Window, bar: tqdm) -> None:
        """Act in every task's env once, update the agent meanwhile, store the step."""
        cfg, envs, T = self.config, self.bench.envs, self.bench.num_tasks
        t0 = time.perf_counter()
        if self.env_steps < cfg.warmup_steps:
            actions = self.np_rng.uniform(-1, 1, (T, self.act_dim))
        else:
            actions = self.policy.normalized(window.obs, deterministic=False)
        t1 = time.perf_counter()
        # Updates start once the buffer holds a warm-up's worth of transitions: after the
        # random warm-up, and again after a resume without --save-replay.
        updating = self.replay.added * T >= cfg.warmup_steps
        # An async vector env steps in its worker processes while this process updates
        # (the update does not need the transition in flight).
        overlap = updating and hasattr(envs, "step_async")
        if overlap:
            envs.step_async(self.policy.to_env(actions))
        else:
            step = envs.step(self.policy.to_env(actions))
        t2 = time.perf_counter()
        if updating:
            self._update(window)
        t3 = time.perf_counter()
        if overlap:
            step = envs.step_wait()
        t4 = time.perf_counter()
        self._store(step, actions, window)
        bar.update(T)
        t5 = time.perf_counter()
        # "env": time spent stepping or waiting for the envs (with overlap, the part of
        # their stepping the update did not hide).
        for k, dt in (("act", t1 - t0), ("env", t2 - t1 + t4 - t3), ("update", t3 - t2),
                      ("replay_add", t5 - t4)):
            self.timers[k] += dt

    def _update(self, window: _Window) -> None:
        batch_per_task = self.config.batch_per_task
        for _ in range(self.config.updates_per_step):
            for hook in self.hooks:
                grown = hook.before_update(self.agent, self.replay, self.env_steps)
                if grown is not None:
                    self.agent = grown
                    self.policy = Policy(grown, self.bench.action_space, self.device)
            window.pending.append(self.agent.update(self.replay.sample(batch_per_task)))
            self.updates += 1
            if self.config.reset_every and self.updates % self.config.reset_every == 0:
                self.agent.reset_networks()

    def _store(self, step: tuple, actions: np.ndarray, window: _Window) -> None:
        """Put a vector step's transitions in the replay (the true last observation where
        an episode ended) and log the episodes that ended."""
        next_obs, rewards, term, trunc, info = step
        done = term | trunc
        real_next = next_obs.copy()
        for i in np.flatnonzero(done):
            real_next[i] = info["final_obs"][i]
        self.replay.add(window.obs, actions, rewards, real_next, term, done)
        window.obs = next_obs
        self.env_steps += self.bench.num_tasks
        if "success" in info:
            window.ep_success = np.maximum(window.ep_success, info["success"])
        if done.any():
            self._log_episodes(info, done, window.ep_success)
            window.ep_success[done] = 0

    def _periodic(self, window: _Window, bar: tqdm) -> None:
        """Logs, evaluations, videos and checkpoints on the steps that cross their period."""
        cfg = self.config
        if self._crossed(cfg.log_every):
            window.log_clock = self._log_training(window.pending, window.log_clock, bar)
            window.pending = []
        if cfg.eval_every and self._crossed(cfg.eval_every):
            self.evaluate()
            self._show_progress(bar)
        if cfg.video_every and self._crossed(cfg.video_every):
            self.record_video()
        if cfg.atlas_every and self._crossed(cfg.atlas_every):
            self.record_atlas()
        if self._crossed(cfg.checkpoint_every):
            self.save_checkpoint()
            # Fresh episodes from a seed of the step count, as a run resumed from this
            # checkpoint starts (run()): with --save-replay, resumed and uninterrupted runs
            # are the same run. The presets' checkpoints fall on episode ends (500-step
            # Meta-World episodes), so no episode is cut there.
            window.obs = self._fresh_episodes()
            window.ep_success[:] = 0

    def _fresh_episodes(self) -> np.ndarray:
        """Reset every env, all its randomness from a seed of the step count, whatever the
        envs did before (an uninterrupted run) or did not (a resumed one). Returns the
        observations."""
        return self.bench.reset(self.config.seed + self.env_steps)

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
        result = run_evaluation(self.policy, self.eval_bench, self.config.eval_episodes)
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
        out = self.files.videos(self.env_steps)
        try:
            grid = record_videos(self.policy, self.video_bench, out, progress=False)[-1]
            self.writer.add_image("video/last_frames", last_frame(grid), self.env_steps,
                                  dataformats="HWC")
            tqdm.write(f"videos at env step {self.env_steps}: {out}")
        except VideoError as e:  # no headless OpenGL: say so once, keep training
            tqdm.write(f"no videos: {e}")
            self.config = replace(self.config, video_every=0)
        self.timers["video"] += time.perf_counter() - t0

    def record_atlas(self) -> None:
        """The conflict atlas of the nets as they are, on a large sample of the replay (a
        generator of its own: the training's draws stay as they were), into the run's atlas
        folder and TensorBoard."""
        t0 = time.perf_counter()
        measured = atlas.measure_replay(self.agent, self.replay, self.config.atlas_samples,
                                        self.env_steps)
        if measured:
            atlas.save_live(self.files, self.env_steps, measured, self.bench.task_names)
            for role, layers in measured.items():
                for name, ev in layers.items():
                    tag = f"atlas/{role}/{name}"
                    self.writer.add_scalar(f"{tag}/reliability", ev.reliability, self.env_steps)
                    self.writer.add_scalar(f"{tag}/conflicting", len(ev.conflicting()),
                                           self.env_steps)
            if self.atlas_figure is not None:
                for role in measured:
                    self.writer.add_figure(f"atlas/{role}", self.atlas_figure(
                        measured, role, self.bench.task_names), self.env_steps)
        self.timers["atlas"] += time.perf_counter() - t0

    # ---- logging --------------------------------------------------------------------------
    def _log_episodes(self, info: dict, done: np.ndarray, ep_success: np.ndarray) -> None:
        returns = info["final_info"]["episode"]["r"]
        for i in np.flatnonzero(done):
            task = self.bench.task_names[i]
            self.writer.add_scalar(f"train_return/{task}", float(returns[i]), self.env_steps)
            if self.bench.is_metaworld:
                self.writer.add_scalar(f"train_success/{task}", ep_success[i], self.env_steps)

    def train_seconds(self) -> float:
        """Training wall time summed over resumes: wall time less evaluation, checkpoints,
        videos and atlas measurements (what --minutes limits)."""
        running = self._clock()[0] - self._run_start[0] if self._run_start else 0.0
        return self.timers["train_wall"] + running

    def _clock(self) -> tuple[float, int, int]:
        """Training time so far (wall time less evaluation and checkpointing) and counters."""
        paused = sum(self.timers[k] for k in ("eval", "checkpoint", "video", "atlas"))
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
        # One host sync for the whole logging window.
        means = guard.window_means(pending)
        for k, per_task in means.items():  # the mean over tasks, then each task
            self.writer.add_scalar(f"train/{k}", per_task.mean().item(), step)
            for task, value in zip(self.bench.task_names, per_task.tolist()):
                self.writer.add_scalar(f"{k}/{task}", value, step)
        self.check_finite(means)
        for hook in self.hooks:
            hook.log(self.writer, step)
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
        for hook in self.hooks:
            postfix |= hook.progress()
        bar.set_postfix(postfix, refresh=False)

    def _write_timing(self) -> None:
        timing = dict(self.timers) | {"env_steps": self.env_steps, "updates": self.updates,
                                      "stopped_by": self.stopped_by}
        self.files.write_timing(timing)

    # ---- faults ---------------------------------------------------------------------------
    def check_finite(self, means: dict[str, torch.Tensor] | None = None) -> None:
        """Stop the run (NonFiniteError, exit status 3) on a NaN or inf in a loss or
        temperature of the window's updates or in a parameter, before it reaches a
        checkpoint. ``means``: the window's metrics already on the host (the log's), else
        the updates since the last log are synced here (a checkpoint syncs anyway)."""
        if means is None:
            means = guard.window_means(self._window.pending if self._window else [])
        bad = (guard.nonfinite_metrics(means, self.bench.task_names)
               + guard.nonfinite_parameters(self.agent))
        if not bad:
            return
        self.writer.flush()
        kept = (f"the last good checkpoint ({self.checkpoint_path}, env step "
                f"{self.saved_step}) is kept" if self.saved_step is not None
                else "no checkpoint had been written")
        raise guard.NonFiniteError(
            f"non-finite values at env step {self.env_steps} (update {self.updates}): "
            f"{guard.describe(bad)}; the run stopped without saving, {kept}")

    def _env_failed(self, error: BaseException) -> None:
        """An env worker process died: save a checkpoint, stop (EnvFailure, exit status 4);
        ``--resume`` continues with fresh env processes."""
        with contextlib.suppress(Exception):  # the other workers: do not wait for them
            self.bench.envs.close(terminate=True)
        self.save_checkpoint()
        self.writer.flush()
        raise guard.EnvFailure(
            f"an env worker process died at env step {self.env_steps} ({type(error).__name__}"
            f"{': ' + str(error) if str(error) else ''}); checkpoint saved, continue with "
            f"--resume {self.run_dir}") from error

    # ---- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Write ``checkpoints/latest.pt`` atomically, after checking that what it would hold
        is finite (NonFiniteError otherwise: the previous checkpoint is kept)."""
        self.check_finite()
        t0 = time.perf_counter()
        checkpoint.save_atomic({
            "config": asdict(self.config),
            "agent": self.agent.state_dict(),
            "optimizers": self.agent.optimizer_state(),
            "counters": {"env_steps": self.env_steps, "updates": self.updates},
            "sizes": {"obs_dim": self.bench.obs_dim, "act_dim": self.act_dim},
            "timers": dict(self.timers) | {"train_wall": self.train_seconds()},
            "rng": checkpoint.rng_state(self.np_rng),
            "replay": self.replay.state_dict() if self.config.save_replay else None,
            "hooks": {hook.name: hook.state_dict() for hook in self.hooks},
        }, self.checkpoint_path)
        self.saved_step = self.env_steps
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
        for hook in self.hooks:
            hook.load_state_dict(checkpoint.hook_state(state, hook.name))
