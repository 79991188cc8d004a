"""Checkpoint and resume: rerunning the same command continues an interrupted run.

After every epoch the state of what trains (weights, optimizer and random-generator
states) is copied to host memory and written in the background to
``checkpoints/state-<stage>-<epoch>.npz``; ``progress.json`` (stage, next epoch, state
file) is replaced atomically only once that file is complete, and the older state files
are removed after it. So a run killed at any moment leaves a progress marker that names a
whole state file. At the end of each stage the inference model's weights are kept too. A
new run of the same resolved recipe finds the latest unfinished run directory and resumes
from its last completed epoch. The input pipeline shuffles each epoch from a seed that
depends only on (seed, epoch), so a resumed run sees the same batches.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np

from tftoolkit.errors import RecipeError

PROGRESS, STAGE_WEIGHTS = "progress.json", "checkpoints/stage_end.npz"
FINISHED = "metrics.json"
PATHS_KEY = "variable_paths"


def _replace_atomically(path: Path, write) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    write(tmp)
    os.replace(tmp, path)


def write_progress(run_dir: Path, stage: int, next_epoch: int, state: str | None = None) -> None:
    _replace_atomically(run_dir / PROGRESS, lambda p: p.write_text(json.dumps(
        {"stage": stage, "next_epoch": next_epoch, "state": state})))


def load_progress(run_dir: Path) -> dict | None:
    path = run_dir / PROGRESS
    return json.loads(path.read_text()) if path.is_file() else None


def find_resumable(root: Path, resolved_recipe: dict) -> Path | None:
    """The latest unfinished run directory under ``root`` of this very recipe."""
    if not root.is_dir():
        return None
    for run_dir in sorted((p for p in root.iterdir() if p.is_dir()), reverse=True):
        if (run_dir / FINISHED).exists() or not (run_dir / PROGRESS).is_file():
            continue
        try:
            saved = json.loads((run_dir / "recipe.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if saved == json.loads(json.dumps(resolved_recipe, default=str)):
            return run_dir
    return None


def _state_variables(model: keras.Model) -> list:
    """Everything a resumed epoch needs, in a fixed order: the model's variables (BatchNorm
    statistics and the seed-generator states of dropout and augmentation included), then
    the optimizer's."""
    return [*model.variables, *model.optimizer.variables]


class SaveProgress(keras.callbacks.Callback):
    """After each epoch: snapshot the fit model's state, write it in the background, then
    the progress marker. Training goes on while the file is written; the next epoch's
    snapshot (and the end of training) waits for the previous write and re-raises its
    error, if any."""

    def __init__(self, run_dir: Path, stage: int):
        super().__init__()
        self.run_dir, self.stage = run_dir, stage
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending: Future | None = None

    def on_epoch_end(self, epoch, logs=None):
        self._wait()
        variables = _state_variables(self.model)
        arrays = [v.value.numpy() for v in variables]  # copies: training may go on
        paths = np.array([v.path for v in variables])
        self._pending = self._writer.submit(self._write, arrays, paths, epoch + 1)

    def on_train_end(self, logs=None):
        self._wait()
        self._writer.shutdown()

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def _write(self, arrays: list[np.ndarray], paths: np.ndarray, next_epoch: int) -> None:
        name = f"state-{self.stage}-{next_epoch}.npz"
        checkpoints = self.run_dir / "checkpoints"
        _replace_atomically(checkpoints / name,
                            lambda p: np.savez(p, *arrays, **{PATHS_KEY: paths}))
        write_progress(self.run_dir, self.stage, next_epoch, f"checkpoints/{name}")
        for old in checkpoints.glob("state-*.npz"):
            if old.name != name:
                old.unlink()


def finish_stage(run_dir: Path, stage: int, next_epoch: int, model: keras.Model) -> None:
    """Keep the inference model's weights at the end of a stage; mark the stage done."""
    _replace_atomically(run_dir / STAGE_WEIGHTS, lambda p: np.savez(p, *model.get_weights()))
    write_progress(run_dir, stage + 1, next_epoch)


def restore_stage_weights(run_dir: Path, model: keras.Model) -> None:
    with np.load(run_dir / STAGE_WEIGHTS) as saved:
        model.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])


def restore_state(run_dir: Path, progress: dict, fit_model: keras.Model) -> None:
    """Load the weights, optimizer and random-generator states saved by
    :class:`SaveProgress` into the compiled ``fit_model``."""
    fit_model.optimizer.build(fit_model.trainable_variables)
    path = run_dir / progress["state"]
    variables = _state_variables(fit_model)
    with np.load(path) as saved:
        arrays = [saved[f"arr_{i}"] for i in range(len(saved.files) - 1)]
        saved_paths = saved[PATHS_KEY]
    if len(arrays) != len(variables):
        raise RecipeError(f"cannot resume from {path}: it holds {len(arrays)} variables, "
                          f"this model has {len(variables)}; set train.resume=false to "
                          "start afresh")
    for variable, array, saved_path in zip(variables, arrays, saved_paths):
        if tuple(variable.shape) != array.shape:
            raise RecipeError(f"cannot resume from {path}: {saved_path} has shape "
                              f"{array.shape}, this model's {variable.path} has "
                              f"{tuple(variable.shape)}; set train.resume=false")
        variable.assign(array)
