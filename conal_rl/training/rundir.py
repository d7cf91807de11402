"""A run's directory: every file a run writes, named here and nowhere else.

    RUN_DIR/
      config.json            the resolved TrainConfig (an STL run: stl.json instead)
      architecture.json/.png the trees trained (a search writes it last: its presence means
                             the search is done)
      checkpoints/latest.pt  (an STL run: one SB3 model per task and progress.json)
      evaluations.csv        a row per task and evaluation; eval_latest.json the last one
      timing.json            written when training ends normally: the run is finished
      eval.json, eval.csv    what ``conal_rl.evaluate`` found (its --episodes, --seed)
      videos/                what ``conal_rl.render`` recorded; videos/step_<n>/ those
                             recorded during training (``--video-every``)
      atlas/                 the conflict atlas: step_<n>.json measured live during training
                             (``--atlas-every``), atlas.json and pictures by
                             ``python -m conal_rl.atlas``
      train.log              the console of a run that benchmarks.experiments.success started
      search/                CoNAL's search: a run directory itself, plus inherited.pt
      search/stage<s>/       CoNAL-Pro's stages: run directories, plus decided.json

Only this module spells those names; everyone else asks a :class:`RunDir`. It imports
nothing heavy, so a command can check a run's files before torch is loaded.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from conal_rl.common import write_json_atomic


def read_json(path: Path) -> dict | None:
    """A JSON file's content, None where it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


class RunDir:
    """One run directory (or CoNAL's search, or a CoNAL-Pro stage, which are run
    directories of their own inside it)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    # ---- the files ------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def architecture(self) -> Path:
        return self.path / "architecture.json"

    @property
    def architecture_picture(self) -> Path:
        return self.path / "architecture.png"

    @property
    def grown(self) -> Path:
        """The trees as they grew while training (``--branch-every``), in the format of
        ``architecture.json``, with the branches that opened; ``grown.png`` draws them."""
        return self.path / "grown.json"

    @property
    def grown_picture(self) -> Path:
        return self.path / "grown.png"

    @property
    def gains_picture(self) -> Path:
        """``--branch-rule gain``: every probe's measured gain per task, with its error and
        the price it had to clear."""
        return self.path / "gains.png"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def checkpoint(self) -> Path:
        return self.checkpoints / "latest.pt"

    @property
    def evaluations(self) -> Path:
        return self.path / "evaluations.csv"

    @property
    def eval_latest(self) -> Path:
        return self.path / "eval_latest.json"

    @property
    def timing_file(self) -> Path:
        return self.path / "timing.json"

    @property
    def videos_folder(self) -> Path:
        """Where ``conal_rl.render`` writes by default."""
        return self.path / "videos"

    def videos(self, env_steps: int) -> Path:
        """The folder of the videos recorded at an evaluation during training."""
        return self.videos_folder / f"step_{env_steps}"

    @property
    def evaluation_summary(self) -> Path:
        """``conal_rl.evaluate``'s result (everything, for tools)."""
        return self.path / "eval.json"

    @property
    def evaluation_table(self) -> Path:
        """``conal_rl.evaluate``'s result per task."""
        return self.path / "eval.csv"

    @property
    def atlas(self) -> Path:
        return self.path / "atlas"

    def atlas_measurement(self, env_steps: int) -> Path:
        """A live measurement of the atlas (``--atlas-every``)."""
        return self.atlas / f"step_{env_steps}.json"

    def atlas_measurements(self) -> list[Path]:
        return sorted(self.atlas.glob("step_*.json"))

    @property
    def atlas_summary(self) -> Path:
        """What ``conal_rl.atlas`` measured (its pictures lie beside it)."""
        return self.atlas / "atlas.json"

    @property
    def train_log(self) -> Path:
        return self.path / "train.log"

    @property
    def inherited(self) -> Path:
        """The searched weights of the pruned trees (``--inherit-weights``)."""
        return self.search.path / "inherited.pt"

    @property
    def decided(self) -> Path:
        """A CoNAL-Pro stage's partitions (its directory's)."""
        return self.path / "decided.json"

    def event_files(self, recursive: bool = False) -> list[Path]:
        """The TensorBoard event files here (``recursive``: also in the search's folders)."""
        pattern = "events.out.tfevents.*"
        found = self.path.rglob(pattern) if recursive else self.path.glob(pattern)
        return sorted(found, key=_written_order)

    # ---- the STL run's files --------------------------------------------------------------
    @property
    def stl_config(self) -> Path:
        return self.path / "stl.json"

    @property
    def stl_progress(self) -> Path:
        return self.checkpoints / "progress.json"

    def stl_model(self, index: int, task: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in task)
        return self.checkpoints / f"task{index:03d}-{safe}.zip"

    def stl_models(self) -> list[Path]:
        return sorted(self.checkpoints.glob("task*.zip"))

    # ---- the search's run directories -------------------------------------------------------
    @property
    def search(self) -> RunDir:
        return RunDir(self.path / "search")

    def stage(self, stage: int) -> RunDir:
        """CoNAL-Pro's stage ``stage`` (1-based)."""
        return RunDir(self.path / "search" / f"stage{stage}")

    def stages(self) -> list[RunDir]:
        """CoNAL-Pro's stage directories that exist, in stage order."""
        found = [p for p in self.search.path.glob("stage*")
                 if p.is_dir() and p.name[len("stage"):].isdigit()]
        return [RunDir(p) for p in sorted(found, key=lambda p: int(p.name[len("stage"):]))]

    def search_dirs(self) -> list[RunDir]:
        """Every run directory of the search that exists: CoNAL's, then CoNAL-Pro's stages."""
        return [d for d in (self.search, *self.stages()) if d.path.is_dir()]

    def label_in_search(self, search_dir: RunDir) -> str:
        """``""`` for CoNAL's search, ``"stage<s>/"`` for a CoNAL-Pro stage (a prefix of the
        names of what it logged)."""
        return "" if search_dir == self.search else search_dir.path.name + "/"

    # ---- reading ----------------------------------------------------------------------------
    def read_config(self) -> dict | None:
        return read_json(self.config)

    def timing(self) -> dict | None:
        return read_json(self.timing_file)

    def latest_evaluation(self) -> dict | None:
        return read_json(self.eval_latest)

    def read_architecture(self) -> dict | None:
        return read_json(self.architecture)

    def read_stl_config(self) -> dict | None:
        """An STL run's stl.json (its config, the flags given, its parameter counts)."""
        return read_json(self.stl_config)

    def search_timing(self) -> dict:
        """Env steps and training seconds of the search: CoNAL's one phase or the sum of
        CoNAL-Pro's stages; zeros without a search."""
        timings = [t for d in (self.search, *self.stages()) if (t := d.timing()) is not None]
        return {"env_steps": sum(t["env_steps"] for t in timings),
                "train_wall": sum(t["train_wall"] for t in timings)}

    def search_conflict_logs(self) -> dict[str, dict[str, float]]:
        """What the search logged about conflict-noticing (``ConalSearch.log``), per shared
        module (``actor/shared.1``, ``critic/q1/shared.1``...; CoNAL-Pro's prefixed
        ``stage<s>/``):

        * ``"frozen_fraction"``: the fraction of the search's conflict-checked updates on
          which the module was frozen, the last value logged (the counts run from the
          search's start, resumes included where the checkpoint holds the rule's state); 0
          with conflict-noticing off;
        * ``"negative_cosines"``: the share of the logged pairwise cosines of task gradients
          that were negative, over all logged updates (read from the histograms' buckets,
          whose edges are fine around 0; a stopped search's updates after its last
          checkpoint count too, though its resume does them again): near 0.5, the signs
          are coin flips and the paper's rule, which freezes on any negative pair of
          T(T-1)/2, freezes on nearly every update.

        Both ``{}`` without a search. TensorBoard is imported here, only when needed."""
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        frozen, below, total = {}, Counter(), Counter()
        for search_dir in self.search_dirs():
            stage = self.label_in_search(search_dir)
            # File by file in the order written: TensorBoard's reader of a folder takes its
            # files in the order of their names, which is not always the order written.
            for file in search_dir.event_files():
                events = EventAccumulator(str(file), size_guidance={
                    "scalars": 0, "histograms": 0, "images": 1, "tensors": 1, "audio": 1})
                events.Reload()
                for tag in events.Tags()["scalars"]:
                    if tag.startswith("conflict/") and tag.endswith("/frozen_fraction"):
                        module = tag[len("conflict/"):-len("/frozen_fraction")]
                        frozen[stage + module] = float(events.Scalars(tag)[-1].value)
                for tag in events.Tags()["histograms"]:
                    if tag.startswith("conflict_cosines/"):
                        module = stage + tag[len("conflict_cosines/"):]
                        for h in events.Histograms(tag):
                            v = h.histogram_value
                            below[module] += sum(count for limit, count
                                                 in zip(v.bucket_limit, v.bucket) if limit <= 0)
                            total[module] += v.num
        negative = {m: float(below[m] / n) for m, n in total.items() if n}
        return {"frozen_fraction": frozen, "negative_cosines": negative}

    def checkpoints_written(self) -> list[Path]:
        """Every checkpoint of the run: its own, its search's, its CoNAL-Pro stages', an
        STL run's progress."""
        candidates = [self.checkpoint, self.stl_progress,
                      *(d.checkpoint for d in (self.search, *self.stages()))]
        return [p for p in candidates if p.exists()]

    def state(self) -> str:
        """``"finished"`` (training ended normally: timing.json), ``"stopped"`` (a
        checkpoint to continue from) or ``"fresh"`` (nothing to continue)."""
        if self.timing_file.exists():
            return "finished"
        return "stopped" if self.checkpoints_written() else "fresh"

    # ---- writing ----------------------------------------------------------------------------
    def write_json(self, path: Path, payload: object) -> Path:
        """Write one of this run's JSON files atomically (a crash leaves the old one)."""
        return write_json_atomic(path, payload)

    def write_timing(self, timing: dict) -> None:
        self.write_json(self.timing_file, timing)

    def forget_finished(self) -> None:
        """Drop timing.json: a continued run must not look finished until it ends."""
        self.timing_file.unlink(missing_ok=True)


def _written_order(path: Path) -> tuple:
    """An event file's place in the order they were written: per folder, by the fields of
    its name (``events.out.tfevents.<time>.<host>.<pid>.<n>``) with the numbers compared as
    numbers, since ``<n>``, the writer's count in its process, is not zero-padded (a
    process's 10th writer sorts after its 9th)."""
    fields = [(0, int(f), "") if f.isdigit() else (1, 0, f) for f in path.name.split(".")]
    return path.parent, fields
