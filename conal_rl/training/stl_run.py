"""The single-task learning (STL) run: one stable-baselines3 SAC per task of a benchmark.

Every task gets its own ``SAC("MlpPolicy")`` trained on that task's own env, with the run's
preset read per task: hidden widths, batch = batch per task, warm-up (``learning_starts``),
replay, lr, gamma, tau, automatic entropy (SB3's target -|A|), one gradient step per env
step, and budget = total steps / T (and --minutes / T of training time per task).

Each task trains on sub-env i of the benchmark's own vector env (``make_benchmark``), so
it sees the same task set (Meta-World's goal variations drawn from the seed) as a
multi-task run of that seed; the Meta-World time limit (500 steps, truncation) is the
env's own. Tasks train round-robin in chunks of eval_every / T steps, so after every
chunk all tasks stand at the same per-task step; then every task is evaluated with the
shared protocol (``envs.evaluation.evaluate`` on ``make_eval_benchmark``), each task's
observation through its own model (deterministic). Evaluations are logged at per-task
step x T, the x axis of the multi-task runs.

The run directory holds what a training run writes (:class:`RunDir`: evaluations, the
latest evaluation, TensorBoard ``eval_success/<task>`` and ``eval/mean_success``, timing
with ``train_wall``, ``env_steps``, ``stopped_by``), so the success comparison and
``read_curves`` read it like any run. Its config is not a training config (``--arch`` has
no ``stl`` choice): the STL description (``RunDir.stl_config``) holds the resolved
TrainConfig, the SB3 hyperparameters and the parameter counts instead. Resumable: every
task's model is saved atomically after each chunk; a resume without ``--save-replay``
refills a warm-up's worth of random-action data before updates start again (SB3's
``learning_starts``).
"""

from __future__ import annotations

import json
import sys
import time
import zipfile
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

from agents.single_task import PerTaskPolicy, chunk_callback, chunk_targets
from conal_rl.common import StopSignal, UserError, one_line, write_atomic
from conal_rl.training.config import TrainConfig
from conal_rl.training.rundir import RunDir, read_json
from conal_rl.training.runs import format_eval, record_evaluation
from envs import evaluate, make_benchmark, make_eval_benchmark


def minutes_of(config: TrainConfig) -> float | None:
    """The wall-clock budget in minutes, None without one (also where training lacks it)."""
    minutes = getattr(config, "minutes", None)
    return minutes or None


# ---- the run ---------------------------------------------------------------------------------
class STLRun:
    """One SB3 SAC per task in ``run_dir``; ``run()`` trains all of them to the per-task
    budget, resuming from ``run_dir/checkpoints`` where a previous call stopped."""

    def __init__(self, config: TrainConfig, run_dir: Path, given: dict):
        # No architecture choice applies: "stl" names the agent in stl.json and the console.
        # SB3's SAC as it comes: no LayerNorm, one gradient step per env step, whatever the
        # preset's learner (the config says so in stl.json).
        self.config = replace(config, arch="stl", layer_norm=False, updates_per_step=1)
        self.run_dir = run_dir
        torch.set_num_threads(config.torch_threads)
        self.bench = make_benchmark(config.benchmark, config.seed)  # sync: sub-envs are envs
        self.T = self.bench.num_tasks
        self.tasks = self.bench.task_names
        self.per_task = {
            "total_steps": config.total_steps // self.T,
            "eval_every": config.eval_every // self.T,
            "checkpoint_every": config.checkpoint_every // self.T,
            "warmup_steps": config.warmup_steps // self.T,
            "replay_size": max(1, config.replay_size // self.T),
        }
        minutes = minutes_of(config)
        self.budget_s = minutes * 60 / self.T if minutes else None
        self.device = config.device
        self.files.checkpoints.mkdir(parents=True, exist_ok=True)
        self.progress = self._load_progress()
        self.models = [self._model(i) for i in range(self.T)]
        self.sb3_kwargs = self._sb3_kwargs()
        self._write_description(given)
        self.eval_bench = None
        self.writer = None
        self.timers = {"eval": 0.0, "checkpoint": 0.0}

    @property
    def files(self) -> RunDir:
        return RunDir(self.run_dir)

    # ---- models -------------------------------------------------------------------------
    def _sb3_kwargs(self) -> dict:
        c = self.config
        return dict(learning_rate=c.lr, buffer_size=self.per_task["replay_size"],
                    learning_starts=self.per_task["warmup_steps"],
                    batch_size=c.batch_per_task, tau=c.tau, gamma=c.gamma, train_freq=1,
                    gradient_steps=1, ent_coef="auto", target_entropy="auto",
                    policy_kwargs={"net_arch": list(c.hidden)})

    def _model_path(self, i: int) -> Path:
        return self.files.stl_model(i, self.tasks[i])

    def _replay_path(self, i: int) -> Path:
        return self._model_path(i).with_suffix(".replay.pkl")

    def _model(self, i: int):
        from stable_baselines3 import SAC

        env = self.bench.envs.envs[i]
        path = self._model_path(i)
        if path.exists():
            model = SAC.load(path, env=env, device=self.device)
            if self._replay_path(i).exists():
                model.load_replay_buffer(self._replay_path(i))
            else:  # an empty buffer: refill a warm-up's worth before updating again
                model.learning_starts = model.num_timesteps + self.per_task["warmup_steps"]
            return model
        return SAC("MlpPolicy", env, seed=self.config.seed * 1000 + i, device=self.device,
                   verbose=0, **self._sb3_kwargs())

    def parameters(self) -> dict[str, int]:
        """Actor and critic (both Q-nets, no targets) parameters, summed over the tasks."""
        def count(module) -> int:
            return sum(p.numel() for p in module.parameters())
        return {"actor": sum(count(m.actor) for m in self.models),
                "critic": sum(count(m.critic) for m in self.models)}

    def _write_description(self, given: dict) -> None:
        import stable_baselines3

        description = {
            "agent": "stl", "method": "one stable-baselines3 SAC('MlpPolicy') per task",
            "benchmark": self.config.benchmark, "seed": self.config.seed,
            "tasks": self.tasks, "per_task": self.per_task,
            "minutes_per_task": self.budget_s and self.budget_s / 60,
            "sb3": {"version": stable_baselines3.__version__, **self.sb3_kwargs},
            "parameters": self.parameters(), "config": asdict(self.config),
            "given": _jsonable(given),
        }
        self.files.write_json(self.files.stl_config, description)

    # ---- progress ---------------------------------------------------------------------------
    def _load_progress(self) -> dict:
        if self.files.stl_progress.exists():
            return json.loads(self.files.stl_progress.read_text())
        return {"train_s": [0.0] * self.T, "stopped_by_time": [False] * self.T,
                "last_eval_step": None, "last_eval_target": 0}

    def _save_progress(self) -> None:
        t0 = time.perf_counter()
        self.files.write_json(self.files.stl_progress, self.progress)
        self.timers["checkpoint"] += time.perf_counter() - t0

    def _save_model(self, i: int) -> None:
        t0 = time.perf_counter()
        write_atomic(self._model_path(i), self.models[i].save)
        if self.config.save_replay:
            write_atomic(self._replay_path(i), self.models[i].save_replay_buffer)
        self.timers["checkpoint"] += time.perf_counter() - t0

    @property
    def env_steps(self) -> int:
        return sum(int(m.num_timesteps) for m in self.models)

    def _time_left(self, i: int) -> float | None:
        if self.budget_s is None:
            return None
        return self.budget_s - self.progress["train_s"][i]

    def _done(self, i: int) -> bool:
        if self.models[i].num_timesteps >= self.per_task["total_steps"]:
            return True
        left = self._time_left(i)
        return left is not None and left <= 0

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> dict:
        from torch.utils.tensorboard import SummaryWriter

        self.files.forget_finished()  # a continued run is finished again at its end
        self.writer = SummaryWriter(str(self.run_dir))
        total = self.per_task["total_steps"] * self.T
        if self.env_steps:
            tqdm.write(f"resumed {self.run_dir} at env step {self.env_steps}")
        bar = tqdm(total=total, initial=self.env_steps, unit="step", dynamic_ncols=True,
                   desc=f"{self.config.benchmark} stl",
                   mininterval=0.5 if sys.stderr.isatty() else 30)
        stop = self.stop = StopSignal()
        try:
            for target in chunk_targets(self.per_task["total_steps"],
                                        self.per_task["eval_every"],
                                        self.per_task["checkpoint_every"]):
                for i in range(self.T):
                    if not stop.requested:
                        self._train_task(i, target, bar)
                if stop.requested:
                    break
                final = all(self._done(i) for i in range(self.T))
                every = self.per_task["eval_every"]
                # Once per target: a resumed run does not evaluate again where it did.
                if ((final or (every and target % every == 0))
                        and target > self.progress.get("last_eval_target", 0)):
                    self._evaluate(bar)
                    self.progress["last_eval_target"] = target
                    self._save_progress()
                if final:
                    break
        finally:
            bar.close()
            stop.restore()
        if stop.requested:
            tqdm.write(f"stopped by signal at env step {self.env_steps}; models saved, "
                       f"continue with --resume {self.run_dir}")
            self.writer.close()
            raise SystemExit(128 + stop.signum)
        if self.progress["last_eval_step"] != self.env_steps:
            self._evaluate(bar)
        timing = self._write_timing()
        self.writer.close()
        return timing

    def _train_task(self, i: int, target: int, bar: tqdm) -> None:
        model = self.models[i]
        steps = target - int(model.num_timesteps)
        left = self._time_left(i)
        if steps <= 0 or (left is not None and left <= 0):
            return
        bar.set_postfix(task=self.tasks[i], refresh=False)
        start = time.perf_counter()
        callback = chunk_callback(bar, None if left is None else start + left, self.stop)
        model.learn(total_timesteps=steps, reset_num_timesteps=False, callback=callback,
                    progress_bar=False)
        self.progress["train_s"][i] += time.perf_counter() - start
        self.progress["stopped_by_time"][i] = bool(callback.stopped_by_time)
        self._save_model(i)
        self._save_progress()

    def _evaluate(self, bar: tqdm) -> None:
        t0 = time.perf_counter()
        if self.eval_bench is None:
            self.eval_bench = make_eval_benchmark(self.config.benchmark, self.config.seed)
            assert self.eval_bench.task_names == self.tasks
        result = evaluate(PerTaskPolicy(self.models), self.eval_bench,
                          self.config.eval_episodes)
        self.timers["eval"] += time.perf_counter() - t0
        step = self.env_steps
        record_evaluation(self.run_dir, result, step, sum(self.progress["train_s"]) / 60,
                          self.writer)
        self.writer.flush()
        self.progress["last_eval_step"] = step
        self._save_progress()
        tqdm.write(format_eval(result, step))
        key = "success" if self.bench.is_metaworld else "return"
        value = result.mean_success if self.bench.is_metaworld else result.mean_return
        bar.set_postfix({key: f"{value:.2f}"}, refresh=False)

    def _write_timing(self) -> dict:
        reached = all(m.num_timesteps >= self.per_task["total_steps"] for m in self.models)
        timing = {
            "train_wall": float(sum(self.progress["train_s"])),
            "env_steps": self.env_steps,
            "updates": sum(int(m._n_updates) for m in self.models),
            "stopped_by": "steps" if reached else "minutes",
            **self.timers,
            "per_task": {task: {"env_steps": int(m.num_timesteps), "train_wall": s,
                                "stopped_by_time": stopped}
                         for task, m, s, stopped in zip(self.tasks, self.models,
                                                        self.progress["train_s"],
                                                        self.progress["stopped_by_time"])},
        }
        self.files.write_timing(timing)
        return timing


def _jsonable(values: dict) -> dict:
    return json.loads(json.dumps(values))


SB3_MEMBERS = {"data", "policy.pth"}  # what every SB3 model .zip holds


def check_stl_files(run_dir: Path) -> None:
    """A resumed STL run's progress and SB3 model files, checked before any env is built:
    UserError, one line, for one that is empty, truncated or not SB3's. (The files are
    still loaded by SB3, which unpickles parts of them: see README.md, "Sharing runs".)"""
    files = RunDir(run_dir)
    progress = files.stl_progress
    if progress.exists():
        try:
            data = json.loads(progress.read_text())
            if not isinstance(data, dict) or not {"train_s", "stopped_by_time"} <= data.keys():
                raise ValueError("not a progress record")
        except (OSError, ValueError) as e:
            raise UserError(f"{progress} is not an STL progress file ({one_line(e)})") from None
    for path in files.stl_models():
        try:
            with zipfile.ZipFile(path) as z:
                members = set(z.namelist())
                bad = z.testzip()
        except (OSError, zipfile.BadZipFile) as e:
            raise UserError(f"{path} is not a readable SB3 model (truncated or another "
                            f"kind of file? {type(e).__name__})") from None
        if not SB3_MEMBERS <= members or bad is not None:
            raise UserError(f"{path} is not an SB3 model file (it lacks "
                            f"{', '.join(sorted(SB3_MEMBERS - members)) or 'intact ' + bad})")


def given_of_run(run_dir: Path) -> dict:
    """The flags an STL run was made with (its description keeps them)."""
    return read_json(RunDir(run_dir).stl_config)["given"]
