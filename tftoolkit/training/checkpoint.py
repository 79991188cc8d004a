"""Checkpoint and resume: rerunning the same command continues an interrupted run.

After every epoch the state of what trains (weights, optimizer and random-generator
states) is copied to host memory and written in the background to
``checkpoints/state-<stage>-<epoch>.npz`` (a temporary file renamed into place once
complete); the progress marker (stage, next epoch, state file) is replaced atomically only
then, and the state files before the previous one are removed after it. So a run killed at
any moment leaves a progress marker that names a whole state file, and the one before it
is still there should that file be damaged (a full disk, a crash of the machine). At the
end of each stage the inference model's weights are kept too. A new run of the same
resolved recipe finds the latest unfinished run directory and resumes from its last
completed epoch whose state file reads back. The input pipeline shuffles each epoch from a seed that
depends only on (seed, epoch), so a resumed run sees the same batches.

The state of callbacks that span epochs (the best epoch kept so far, with its weights; early
stopping's patience) is written into the same state file, so a resumed stage continues
from the very epoch they describe, and the history CSV is cut back to the epochs before
the one a stage (resumed or started again) trains first.
"""

from __future__ import annotations

import csv
import json
import re
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Protocol

import keras
import numpy as np

from tftoolkit.errors import RecipeError
from tftoolkit.rundir import Progress, RunDir
from tftoolkit.tempfiles import replace_atomically

PATHS_KEY = "variable_paths"
CALLBACK_KEY = "callback.{name}.{part}"  # a callback's record, and its arrays by index


@dataclass
class CallbackState:
    """What a callback needs to continue a resumed stage as if it had never stopped:
    JSON values and arrays."""

    record: dict
    arrays: list[np.ndarray] = field(default_factory=list)


class Resumable(Protocol):
    """A callback whose state is part of each epoch's checkpoint."""

    def checkpoint_state(self) -> CallbackState: ...

    def resume(self, state: CallbackState) -> None: ...


def _state_variables(model: keras.Model) -> list:
    """Everything a resumed epoch needs, in a fixed order: the model's variables (BatchNorm
    statistics and the seed-generator states of dropout and augmentation included), then
    the optimizer's (its step count, so the schedule, and any weight average included)."""
    return [*model.variables, *model.optimizer.variables]


class SaveProgress(keras.callbacks.Callback):
    """After each epoch: snapshot the fit model's state and that of the ``resumables``
    (callbacks placed before this one), write them in the background into one state
    file, then the progress marker. Training goes on while the file is written; the next
    epoch's snapshot (and the end of training) waits for the previous write and re-raises
    its error, if any. An epoch after which training stops (early stopping) marks the
    end of the fit as the next epoch: a resumed stage trains no further."""

    def __init__(self, run: RunDir, stage: int,
                 resumables: dict[str, Resumable] | None = None):
        super().__init__()
        self.run, self.stage, self.resumables = run, stage, resumables or {}
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending: Future | None = None

    def on_epoch_end(self, epoch, logs=None):
        self._wait()
        variables = _state_variables(self.model)
        arrays = [v.value.numpy() for v in variables]  # copies: training may go on
        paths = np.array([v.path for v in variables])
        states = {name: callback.checkpoint_state()
                  for name, callback in self.resumables.items()}
        next_epoch = self.params["epochs"] if self.model.stop_training else epoch + 1
        self._pending = self._writer.submit(self._write, arrays, paths, states, next_epoch)

    def on_train_end(self, logs=None):
        self._wait()
        self._writer.shutdown()

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def _write(self, arrays: list[np.ndarray], paths: np.ndarray,
               states: dict[str, CallbackState], next_epoch: int) -> None:
        name = f"{RunDir.CHECKPOINTS}/state-{self.stage}-{next_epoch}.npz"
        before = self.run.progress()
        stored = {PATHS_KEY: paths}
        for callback, state in states.items():
            stored[CALLBACK_KEY.format(name=callback, part="record")] = np.array(
                json.dumps(state.record))
            stored.update({CALLBACK_KEY.format(name=callback, part=i): array
                           for i, array in enumerate(state.arrays)})
        replace_atomically(self.run / name, lambda p: np.savez(p, *arrays, **stored))
        self.run.write_progress(Progress(self.stage, next_epoch, name))
        keep = {name, before.state if before else None}
        for old in (self.run / RunDir.CHECKPOINTS).glob("state-*.npz"):
            if f"{RunDir.CHECKPOINTS}/{old.name}" not in keep:
                old.unlink()


def _damage(path) -> str | None:
    """Why the state file at ``path`` cannot be read back, or None when it can."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        return f"{type(exc).__name__}: {exc}"
    return f"{bad} is corrupt" if bad else None


def _earlier_states(run: RunDir, progress: Progress) -> list[tuple[int, str]]:
    """(next epoch, state file) of the stage's state files before ``progress``'s, latest
    first."""
    found = []
    for path in (run / RunDir.CHECKPOINTS).glob(f"state-{progress.stage}-*.npz"):
        match = re.fullmatch(rf"state-{progress.stage}-(\d+)\.npz", path.name)
        if match and int(match[1]) < progress.next_epoch:
            found.append((int(match[1]), f"{RunDir.CHECKPOINTS}/{path.name}"))
    return sorted(found, reverse=True)


def readable_progress(run: RunDir) -> tuple[Progress | None, str | None]:
    """The progress to resume ``run`` from, and a note when it is not the marker's own:
    a damaged newest state file falls back to the previous one (or, with none readable,
    to the start of the stage)."""
    progress = run.progress()
    if progress is None or progress.state is None:
        return progress, None
    damage = _damage(run / progress.state)
    if damage is None:
        return progress, None
    for next_epoch, state in _earlier_states(run, progress):
        if _damage(run / state) is None:
            return replace(progress, next_epoch=next_epoch, state=state), (
                f"the newest checkpoint {run / progress.state} is damaged ({damage}); "
                f"resuming from the previous one, {run / state}")
    return Progress(progress.stage, 0), (
        f"the newest checkpoint {run / progress.state} is damaged ({damage}) and no earlier "
        f"one of stage {progress.stage + 1} reads back; the stage starts again")


def finish_stage(run: RunDir, stage: int, next_epoch: int, model: keras.Model) -> None:
    """Keep the inference model's weights at the end of a stage; mark the stage done."""
    replace_atomically(run.stage_weights(stage), lambda p: np.savez(p, *model.get_weights()))
    run.write_progress(Progress(stage + 1, next_epoch))


def restore_stage_weights(run: RunDir, stage: int, model: keras.Model) -> None:
    """The inference model's weights as stage ``stage`` left them."""
    with np.load(run.stage_weights(stage)) as saved:
        model.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])


def restore_state(run: RunDir, progress: Progress, fit_model: keras.Model) -> None:
    """Load the weights, optimizer and random-generator states saved by
    :class:`SaveProgress` into the compiled ``fit_model``."""
    fit_model.optimizer.build(fit_model.trainable_variables)
    path = run / progress.state
    variables = _state_variables(fit_model)
    with np.load(path) as saved:
        saved_paths = saved[PATHS_KEY]
        arrays = [saved[f"arr_{i}"] for i in range(len(saved_paths))]
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


def callback_states(path) -> dict[str, CallbackState]:
    """The callbacks' states in the state file at ``path``, by name."""
    prefix, states = CALLBACK_KEY.split("{")[0], {}
    with np.load(path) as saved:
        for key in saved.files:
            if key.startswith(prefix) and key.endswith(".record"):
                name = key[len(prefix):-len(".record")]
                arrays, i = [], 0
                while CALLBACK_KEY.format(name=name, part=i) in saved.files:
                    arrays.append(saved[CALLBACK_KEY.format(name=name, part=i)])
                    i += 1
                states[name] = CallbackState(json.loads(str(saved[key])), arrays)
    return states


def resume_callbacks(run: RunDir, progress: Progress, resumables: dict[str, Resumable]) -> None:
    """Give each of ``resumables`` its state as saved with ``progress``'s state file."""
    states = callback_states(run / progress.state)
    for name, callback in resumables.items():
        if name in states:
            callback.resume(states[name])


def trim_history(run: RunDir, first_epoch: int) -> None:
    """Cut the history CSV back to the epochs before ``first_epoch``, the first a stage
    trains: rows of epochs a resume discards (past a damaged newest checkpoint, or
    logged just before a kill, ahead of their checkpoint) would otherwise be listed twice,
    and read by the curves and by whoever selects on them. A row cut short by a kill is
    dropped too."""
    path = run / RunDir.HISTORY
    if not path.is_file():
        return
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f)) or [[]]
    if "epoch" not in header:
        return
    column = header.index("epoch")

    def kept(row: list[str]) -> bool:
        try:
            return len(row) == len(header) and int(row[column]) < first_epoch
        except ValueError:
            return False

    keep = [row for row in rows if kept(row)]
    if len(keep) == len(rows):
        return
    if not keep:  # the CSV logger writes its header again
        path.unlink()
        return

    def write(target) -> None:
        with open(target, "w", newline="") as f:
            csv.writer(f).writerows([header, *keep])

    replace_atomically(path, write)
