"""Checkpoint and resume: rerunning the same command continues an interrupted run.

After every epoch the weights of what trains (with the optimizer's and the random
generators' states) and ``progress.json`` (stage, next epoch) are written atomically into the run
directory; at the end of each stage the inference model's weights are kept too. A new
run of the same resolved recipe finds the latest unfinished run directory and resumes
from its last completed epoch. The input pipeline shuffles each epoch from a seed that
depends only on (seed, epoch), so a resumed run sees the same batches.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import numpy as np

PROGRESS, STAGE_WEIGHTS = "progress.json", "checkpoints/stage_end.npz"
STATE = "checkpoints/state.weights.h5"
RNG = "checkpoints/rng_state.npz"  # Keras does not save random-generator states with the weights
FINISHED = "metrics.json"


def _replace_atomically(path: Path, write) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    write(tmp)
    os.replace(tmp, path)


def write_progress(run_dir: Path, stage: int, next_epoch: int) -> None:
    _replace_atomically(run_dir / PROGRESS, lambda p: p.write_text(json.dumps(
        {"stage": stage, "next_epoch": next_epoch})))


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


class SaveProgress(keras.callbacks.Callback):
    """After each epoch: the fit model's full state, then the progress marker."""

    def __init__(self, run_dir: Path, stage: int):
        super().__init__()
        self.run_dir, self.stage = run_dir, stage

    def on_epoch_end(self, epoch, logs=None):
        _replace_atomically(self.run_dir / STATE, self.model.save_weights)
        _replace_atomically(self.run_dir / RNG, lambda p: np.savez(
            p, *[np.asarray(v) for v in _rng_states(self.model)]))
        write_progress(self.run_dir, self.stage, epoch + 1)


def _rng_states(model: keras.Model) -> list:
    """The seed-generator states of dropout and augmentation layers, in a fixed order."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def finish_stage(run_dir: Path, stage: int, next_epoch: int, model: keras.Model) -> None:
    """Keep the inference model's weights at the end of a stage; mark the stage done."""
    _replace_atomically(run_dir / STAGE_WEIGHTS, lambda p: np.savez(p, *model.get_weights()))
    write_progress(run_dir, stage + 1, next_epoch)


def restore_stage_weights(run_dir: Path, model: keras.Model) -> None:
    with np.load(run_dir / STAGE_WEIGHTS) as saved:
        model.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])


def restore_state(run_dir: Path, fit_model: keras.Model) -> None:
    """Load weights and optimizer state saved by :class:`SaveProgress`."""
    fit_model.optimizer.build(fit_model.trainable_variables)
    fit_model.load_weights(run_dir / STATE)
    with np.load(run_dir / RNG) as saved:
        for i, variable in enumerate(_rng_states(fit_model)):
            variable.assign(saved[f"arr_{i}"])
