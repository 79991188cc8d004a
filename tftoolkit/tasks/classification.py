"""Single-label classification: one class per example.

Targets reach the loss as integer ids (``sparse``), one-hot rows (``categorical``) or,
for two classes, one 0/1 column under a single sigmoid unit (``binary``, as the classic
perceptron). Whatever the form, a served or evaluated classifier has one probability
column per class: a single sigmoid column P(1) becomes [P(0), P(1)].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import keras
import numpy as np
import tensorflow as tf

from tftoolkit.errors import RecipeError
from tftoolkit.tasks.base import Task

ENCODINGS = ("sparse", "categorical", "binary")
_LOSSES = {"sparse": keras.losses.SparseCategoricalCrossentropy,
           "categorical": keras.losses.CategoricalCrossentropy,
           "binary": keras.losses.BinaryCrossentropy}
_ACCURACY = {"sparse": keras.metrics.SparseCategoricalAccuracy,
             "categorical": keras.metrics.CategoricalAccuracy,
             "binary": keras.metrics.BinaryAccuracy}


@dataclass(frozen=True)
class SingleLabel(Task):
    """One class per example, ``num_classes`` of them, targets in ``form``."""

    num_classes: int
    form: str = "categorical"

    name: ClassVar[str] = "classification"
    figures: ClassVar[dict[str, bool]] = {"loss": False, "accuracy": True}
    default_figure: ClassVar[str] = "accuracy"

    def __post_init__(self):
        if self.form not in ENCODINGS:
            raise ValueError(f"single-label targets are {', '.join(ENCODINGS)}, not "
                             f"{self.form!r}")

    @property
    def encoding(self) -> str:
        return self.form

    @property
    def activation(self) -> str:
        return "sigmoid" if self.form == "binary" else "softmax"

    @property
    def output_units(self) -> int:
        return 1 if self.form == "binary" else self.num_classes

    def encode(self, labels: tf.Tensor) -> tf.Tensor:
        if self.form == "categorical":
            return tf.one_hot(tf.cast(labels, tf.int32), self.num_classes)
        if self.form == "sparse":
            return tf.cast(labels, tf.int32)
        return tf.reshape(tf.cast(labels, tf.float32), [-1, 1])

    def targets(self, encoded: np.ndarray) -> np.ndarray:
        encoded = np.asarray(encoded)
        if self.form == "categorical":
            return encoded.argmax(axis=-1)
        return encoded.reshape(-1).round().astype(int)

    def loss(self, label_smoothing: float = 0.0, balanced: bool = False) -> keras.losses.Loss:
        if self.form == "sparse":
            if label_smoothing:
                raise RecipeError(f"regularize.label_smoothing={label_smoothing} needs "
                                  "one-hot or binary labels, not sparse ones; use "
                                  "train.loss=categorical_crossentropy (or auto)")
            return _LOSSES["sparse"]()
        return _LOSSES[self.form](label_smoothing=label_smoothing)

    def metrics(self) -> list[keras.metrics.Metric]:
        return [_ACCURACY[self.form](name="accuracy")]

    def example_weights(self, class_counts: list[int]) -> np.ndarray:
        counts = np.asarray(class_counts, dtype="float64")
        return (counts.sum() / (len(counts) * np.maximum(counts, 1))).astype("float32")

    def scores(self, predictions: np.ndarray) -> np.ndarray:
        """One probability column per class."""
        predictions = np.asarray(predictions, dtype=np.float32)
        if predictions.shape[-1] == 1:
            return np.concatenate([1 - predictions, predictions], axis=-1)
        return predictions

    def served_scores(self, predictions: tf.Tensor) -> tf.Tensor:
        probabilities = tf.cast(predictions, tf.float32)
        if probabilities.shape[-1] == 1:
            probabilities = tf.concat([1.0 - probabilities, probabilities], axis=-1)
        return probabilities

    @property
    def serving_key(self) -> str:
        return "probabilities"

    def decide(self, predictions: np.ndarray,
               thresholds: np.ndarray | None = None) -> np.ndarray:
        """The most probable class of each example."""
        return self.scores(predictions).argmax(axis=-1)

    def serving_outputs(self, predictions: tf.Tensor, class_names: tf.Tensor | None = None,
                        thresholds: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        """``probabilities`` [batch, classes], ``class_id`` and ``class_name``."""
        probabilities = self.served_scores(predictions)
        class_id = tf.argmax(probabilities, axis=-1)
        return {"probabilities": probabilities, "class_id": class_id,
                "class_name": tf.gather(class_names, class_id)}

    def report(self, targets: np.ndarray, predictions: np.ndarray, class_names: list[str],
               thresholds: np.ndarray | None = None) -> dict:
        """Accuracy and loss (:meth:`measure`), top-k accuracy, per-class precision,
        recall, F1 and support, their averages, and the confusion matrix."""
        labels = np.asarray(targets).astype(int)
        probabilities = self.scores(predictions)
        k = len(class_names)
        matrix = confusion_matrix(labels, self.decide(predictions), k)
        true_pos = np.diag(matrix).astype(float)
        predicted_count, support = matrix.sum(axis=0), matrix.sum(axis=1)
        precision = _ratio(true_pos, predicted_count)
        recall = _ratio(true_pos, support)
        f1 = _ratio(2 * precision * recall, precision + recall)
        weights = support / max(support.sum(), 1)
        per_class = [{"class": name, "precision": float(p), "recall": float(r), "f1": float(f),
                      "support": int(s)}
                     for name, p, r, f, s in zip(class_names, precision, recall, f1, support)]
        top_k = min(5, k - 1) if k > 2 else 1
        figures = self.measure(labels, predictions)
        return {
            "examples": int(len(labels)),
            "accuracy": figures["accuracy"],
            f"top_{top_k}_accuracy": top_k_accuracy(labels, probabilities, top_k),
            "loss": figures["loss"],
            "per_class": per_class,
            "macro_avg": {"precision": float(precision.mean()), "recall": float(recall.mean()),
                          "f1": float(f1.mean())},
            "weighted_avg": {"precision": float((precision * weights).sum()),
                             "recall": float((recall * weights).sum()),
                             "f1": float((f1 * weights).sum())},
            "confusion_matrix": matrix.tolist(),
        }


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator),
                     where=denominator > 0)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``[true, predicted]``; sums to the number of examples."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def top_k_accuracy(labels: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """Share of examples whose true class is among the ``k`` most probable."""
    top = np.argsort(-probabilities, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))
