"""The run directory: the files of one training run, their names, and reading them back.

``<train.run_dir>/<recipe>/<timestamp>/`` holds the resolved recipe, the data
description, the record of the splits (``splits.csv``), the runtime, the data caches'
modes, the history CSV, TensorBoard logs, curves, checkpoints and the resume marker, the
trained inference model and, written last, the final metrics (which mark the run
finished). Training writes it; export and evaluation read it.

One process writes a run directory at a time: it holds an advisory lock
(``fcntl.flock``) on ``writer.lock`` there, which the operating system releases when the
process ends, however it ends.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from tftoolkit.data import DataInfo
from tftoolkit.data.record import SPLITS_FILE
from tftoolkit.errors import RecipeError, RunDirError, TftoolkitError
from tftoolkit.recipe import Recipe, recipe_from_dict
from tftoolkit.tempfiles import replace_atomically


@dataclass(frozen=True)
class Progress:
    """Where an unfinished run stands: the stage under way, the next epoch to train (a
    global epoch number) and the state file of the last completed epoch."""

    stage: int
    next_epoch: int
    state: str | None = None


class RunDir:
    """One run directory; file names are its class attributes."""

    RECIPE = "recipe.json"
    DATA_INFO = "data_info.json"
    SPLITS = SPLITS_FILE           # each example's split, source and sha256
    RUNTIME = "runtime.json"
    HISTORY = "history.csv"
    CURVES = "curves.png"
    LOGS = "logs"
    CHECKPOINTS = "checkpoints"
    PROGRESS = "progress.json"
    LR_FIND = "lr_find.json"        # train.learning_rate=auto: the sweep and suggestion
    LR_FIND_PLOT = "lr_find.png"
    MODEL = "model.keras"
    PARITY_INPUTS = "parity_inputs.npy"
    SKIPPED_FILES = "skipped_files.txt"
    THRESHOLDS = "thresholds.json"  # multi-label: per class, chosen on validation
    BASELINES = "baselines.json"    # classification: the cheap baselines on validation
    AUTO = "auto.json"              # model.mode=auto: the modes tried and the choice
    REFIT = "refit.json"            # train.refit_head: validation trained the final head
    METRICS = "metrics.json"       # written last: marks the run finished
    EVAL = "eval"
    LOCK = "writer.lock"           # flock-ed by the process writing the run

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    @classmethod
    def create(cls, root: str | Path, recipe_name: str) -> "RunDir":
        """A fresh ``<root>/<recipe_name>/<timestamp>`` directory with its checkpoints/."""
        parent = Path(root) / recipe_name
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        for i in range(1000):
            path = parent / (stamp if i == 0 else f"{stamp}-{i}")
            try:
                path.mkdir(parents=True)
            except FileExistsError:
                continue
            (path / cls.CHECKPOINTS).mkdir()
            return cls(path)
        raise RecipeError(f"cannot create a run directory under {parent}")

    @classmethod
    def scratch(cls, recipe_name: str) -> "RunDir":
        """A temporary directory for a process that must not write the real one."""
        path = Path(tempfile.mkdtemp(prefix=f"tftoolkit-{recipe_name}-worker-"))
        (path / cls.CHECKPOINTS).mkdir()
        return cls(path)

    @classmethod
    def find_resumable(cls, root: str | Path, recipe: Recipe) -> "RunDir | None":
        """The latest unfinished run of this very resolved recipe under ``root/<name>``."""
        parent = Path(root) / recipe.name
        if not parent.is_dir():
            return None
        wanted = _plain(recipe.to_dict())
        for path in sorted((p for p in parent.iterdir() if p.is_dir()), reverse=True):
            run = cls(path)
            if run.finished or run.progress() is None:
                continue
            try:
                saved = run.read_json(cls.RECIPE)
            except (OSError, json.JSONDecodeError):
                continue
            if saved == wanted:
                return run
        return None

    def lock(self) -> None:
        """Become the one process writing this run directory, until :meth:`release` or
        the end of the process; raises RunDirError naming the live run otherwise."""
        key = self.path.resolve()
        if key in _HELD:
            return
        handle = open(self.path / self.LOCK, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunDirError(
                f"run directory {self.path} is being written by a live run ({holder}); "
                "wait for it to finish (then the same command resumes it if it stopped), "
                "or --set train.resume=false to train a new run beside it") from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        _HELD[key] = handle

    def release(self) -> None:
        """Let another process write this run directory."""
        handle = _HELD.pop(self.path.resolve(), None)
        if handle is not None:
            handle.close()

    def stage_weights(self, stage: int) -> Path:
        """The inference model's weights as stage ``stage`` (0-based) left them."""
        return self.path / self.CHECKPOINTS / f"stage-{stage}.npz"

    def best_record(self, stage: int) -> dict | None:
        """The best epoch of stage ``stage`` by ``train.select_best``, if recorded."""
        path = self._best_record_path(stage)
        return json.loads(path.read_text()) if path.is_file() else None

    def write_best_record(self, stage: int, record: dict | None) -> None:
        """Record the best epoch of a finished stage (None: it kept none)."""
        if record is None:
            self._best_record_path(stage).unlink(missing_ok=True)
        else:
            self.write_json(f"{self.CHECKPOINTS}/best-{stage}.json", record)

    def _best_record_path(self, stage: int) -> Path:
        return self.path / self.CHECKPOINTS / f"best-{stage}.json"

    @classmethod
    def is_run_dir(cls, path: str | Path) -> bool:
        return (Path(path) / cls.RECIPE).is_file()

    @property
    def finished(self) -> bool:
        return (self.path / self.METRICS).exists()

    def missing(self, names: list[str]) -> list[str]:
        """Which of ``names`` are not files here."""
        return [name for name in names if not (self.path / name).is_file()]

    def write_json(self, name: str, value: Any) -> Path:
        path = self.path / name
        replace_atomically(path, lambda p: p.write_text(
            json.dumps(value, indent=2, default=str) + "\n"))
        return path

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    def read_recipe(self) -> Recipe:
        """The recipe the run was trained with (code hooks and arrays not restored)."""
        return recipe_from_dict(self.read_json(self.RECIPE))

    def read_info(self) -> DataInfo:
        return DataInfo.from_dict(self.read_json(self.DATA_INFO))

    def read_metrics(self) -> dict[str, float]:
        if not self.finished:
            raise TftoolkitError(f"{self.path} is not finished (no {self.METRICS})")
        return self.read_json(self.METRICS)

    def progress(self) -> Progress | None:
        path = self.path / self.PROGRESS
        return Progress(**json.loads(path.read_text())) if path.is_file() else None

    def write_progress(self, progress: Progress) -> None:
        self.write_json(self.PROGRESS, asdict(progress))


_HELD: dict[Path, IO] = {}  # run directories this process writes -> their locked file


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON."""
    return json.loads(json.dumps(value, default=str))
