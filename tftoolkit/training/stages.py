"""The stages of a run: which transfer mode trains for how many epochs at what rate.

``feature_extraction``, ``fine_tune`` and ``scratch`` are one stage each; ``two_stage``
is feature extraction, then fine-tuning from where it ended. Epochs are numbered across
the stages (the history and resume markers use these global numbers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from tftoolkit.recipe import Recipe


@dataclass(frozen=True)
class Stage:
    """One fit of a run."""

    index: int
    mode: str                # feature_extraction | fine_tune | scratch
    first_epoch: int         # global number of the stage's first epoch
    epochs: int
    learning_rate: float

    @property
    def end(self) -> int:
        """Global number of the first epoch after the stage."""
        return self.first_epoch + self.epochs


@dataclass
class CachedArrays:
    """The cached outputs of a frozen part that a stage trains on, in memory, with their
    labels (class ids, or multi-hot rows): what a solved head is fitted to."""

    train: np.ndarray
    train_labels: np.ndarray
    val: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    # when ``train`` holds augmented copies: the outputs of the training images as they
    # are, in example order (computed when first called)
    unaugmented: Callable[[], np.ndarray] | None = None


@dataclass
class StageInputs:
    """What a stage fits: the model (the training graph, or the head alone on cached
    features) and its datasets."""

    model: keras.Model
    train: tf.data.Dataset | tf.distribute.DistributedDataset   # (each worker's shard)
    val: tf.data.Dataset | tf.distribute.DistributedDataset | None
    steps_per_epoch: int
    # builds the training split once, in order, not augmented (DP-SGD's arrays), when read
    plain_train: Callable[[], tf.data.Dataset]
    arrays: CachedArrays | None = None   # what trains on cached outputs, in memory


def stage_modes(recipe: Recipe) -> list[str]:
    """The transfer mode of each stage of ``recipe``, in order."""
    mode = recipe.model.mode
    return ["feature_extraction", "fine_tune"] if mode == "two_stage" else [mode]


def plan_stages(recipe: Recipe, lr_scale: float = 1.0) -> list[Stage]:
    """The stages of ``recipe``; learning rates multiplied by ``lr_scale``."""
    t, mode = recipe.train, recipe.model.mode
    fine_tune_lr = (t.fine_tune_learning_rate or t.learning_rate / 10) * lr_scale
    if mode == "two_stage":
        first = Stage(0, "feature_extraction", 0, t.epochs, t.learning_rate * lr_scale)
        return [first, Stage(1, "fine_tune", first.end, t.fine_tune_epochs or t.epochs,
                             fine_tune_lr)]
    if mode == "fine_tune":
        return [Stage(0, "fine_tune", 0, t.epochs, fine_tune_lr)]
    return [Stage(0, mode, 0, t.epochs, t.learning_rate * lr_scale)]
