"""Regression: real-valued targets, ``target_dim`` per example, mean squared error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import keras
import numpy as np
import tensorflow as tf

from tftoolkit.errors import RecipeError
from tftoolkit.tasks.base import Task


@dataclass(frozen=True)
class Regression(Task):
    """Targets of ``target_dim`` real values; the output layer is linear."""

    target_dim: int = 1

    name: ClassVar[str] = "regression"
    figures: ClassVar[dict[str, bool]] = {"loss": False, "mae": False}
    default_figure: ClassVar[str] = "loss"

    @property
    def encoding(self) -> str:
        return "regression"

    @property
    def activation(self) -> None:
        return None

    @property
    def output_units(self) -> int:
        return self.target_dim

    def encode(self, labels: tf.Tensor) -> tf.Tensor:
        return tf.cast(labels, tf.float32)

    def loss(self, label_smoothing: float = 0.0, balanced: bool = False) -> keras.losses.Loss:
        if label_smoothing:
            raise RecipeError(f"regularize.label_smoothing={label_smoothing} needs class "
                              "labels; this data has real-valued targets")
        return keras.losses.MeanSquaredError()

    def metrics(self) -> list[keras.metrics.Metric]:
        return [keras.metrics.MeanAbsoluteError(name="mae")]

    def decide(self, predictions: np.ndarray,
               thresholds: np.ndarray | None = None) -> np.ndarray:
        return np.asarray(predictions, np.float32)

    def agreement(self, predictions: np.ndarray, reference: np.ndarray,
                  thresholds: np.ndarray | None = None) -> float:
        """Values have no agreement to count: NaN."""
        return float("nan")

    def serving_outputs(self, predictions: tf.Tensor, class_names: tf.Tensor | None = None,
                        thresholds: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        return {"outputs": tf.cast(predictions, tf.float32)}

    def report(self, targets: np.ndarray, predictions: np.ndarray, class_names: list[str],
               thresholds: np.ndarray | None = None) -> dict:
        """Mean squared error (``loss``) and mean absolute error."""
        return {"examples": int(len(targets)), **self.measure(targets, predictions)}
