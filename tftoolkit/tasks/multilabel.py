"""Multi-label classification: any number of classes per example, one sigmoid each.

Targets are multi-hot rows. Figures come from per-class score histograms
(:mod:`tftoolkit.multilabel`): ``map`` ranks, ``f1`` and ``macro_f1`` decide at 0.5 while
training; a finished run decides at per-class thresholds chosen on the validation split
(``train.threshold``), which the export serves and the reports use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import keras
import numpy as np
import tensorflow as tf

from tftoolkit import multilabel
from tftoolkit.tasks.base import Task


@dataclass(frozen=True)
class MultiLabel(Task):
    """``num_classes`` labels, each present or absent; ``class_counts``: training examples
    with each, of ``examples`` (what balancing weighs the positives by)."""

    num_classes: int
    class_counts: tuple[int, ...] = ()
    examples: int = 0

    name: ClassVar[str] = "multilabel"
    figures: ClassVar[dict[str, bool]] = {"loss": False, "map": True, "f1": True,
                                          "macro_f1": True}
    default_figure: ClassVar[str] = "map"

    @property
    def encoding(self) -> str:
        return "multilabel"

    @property
    def activation(self) -> str:
        return "sigmoid"

    @property
    def output_units(self) -> int:
        return self.num_classes

    @property
    def thresholded(self) -> bool:
        return True

    def encode(self, labels: tf.Tensor) -> tf.Tensor:
        return tf.cast(labels, tf.float32)

    def targets(self, encoded: np.ndarray) -> np.ndarray:
        return np.asarray(encoded).round().astype(int)

    def positive_weights(self) -> list[float]:
        """Per class, the training examples without it per example with it: the weight
        of a class's positive term that balances it."""
        return [(self.examples - c) / max(c, 1) for c in self.class_counts]

    def loss(self, label_smoothing: float = 0.0, balanced: bool = False) -> keras.losses.Loss:
        return multilabel.MultiLabelCrossentropy(
            label_smoothing=label_smoothing,
            positive_weights=self.positive_weights() if balanced else None)

    def metrics(self) -> list[keras.metrics.Metric]:
        return multilabel.metrics(self.num_classes)

    def measure(self, targets: np.ndarray, predictions: np.ndarray,
                thresholds: np.ndarray | None = None) -> dict[str, float]:
        """The logged figures; with ``thresholds``, micro- and macro-F1, precision and
        recall at them too (``f1_at_thresholds``, ...)."""
        figures = super().measure(targets, predictions)
        if thresholds is not None:
            histograms = multilabel.score_histograms(targets, predictions)
            figures.update({f"{k}_at_thresholds": v for k, v in
                            multilabel.report_at(*histograms, thresholds).items()
                            if k != "map"})
        return figures

    def decide(self, predictions: np.ndarray,
               thresholds: np.ndarray | None = None) -> np.ndarray:
        """The mask of labels whose probability is at least their threshold."""
        cut = multilabel.DEFAULT_THRESHOLD if thresholds is None else thresholds
        return np.asarray(predictions, np.float32) >= np.asarray(cut, np.float32)

    def serving_outputs(self, predictions: tf.Tensor, class_names: tf.Tensor | None = None,
                        thresholds: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        """``probabilities`` [batch, classes] float32 and ``labels`` [batch, classes] bool,
        true where a probability is at least its class's threshold (the class names, in
        column order, are ``labels.txt``)."""
        probabilities = tf.cast(predictions, tf.float32)
        return {"probabilities": probabilities, "labels": probabilities >= thresholds}

    @property
    def serving_key(self) -> str:
        return "probabilities"

    def report(self, targets: np.ndarray, predictions: np.ndarray, class_names: list[str],
               thresholds: np.ndarray | None = None) -> dict:
        """mAP, micro/macro F1 and per class AP, precision, recall, F1 and support at each
        class's threshold (chosen on validation)."""
        if thresholds is None:
            thresholds = np.full(len(class_names), multilabel.DEFAULT_THRESHOLD, np.float32)
        positives, negatives = (h.numpy() for h in multilabel.score_histograms(
            targets, np.asarray(predictions, np.float32)))
        counts = multilabel.counts_at(positives, negatives, thresholds)
        ap = multilabel.average_precision(positives, negatives).numpy()
        support = positives.sum(axis=-1)
        per_class = [{"class": name, "threshold": float(t), "ap": float(a),
                      "precision": float(p), "recall": float(r), "f1": float(f),
                      "support": int(round(n))}
                     for name, t, a, p, r, f, n in zip(class_names, thresholds, ap,
                                                       counts.precision, counts.recall,
                                                       counts.f1, support)]
        return {"examples": int(len(targets)),
                "map": float(multilabel.mean_average_precision(positives, negatives)),
                "micro_f1": counts.micro_f1, "macro_f1": float(counts.f1.mean()),
                "loss": self.measure(targets, predictions)["loss"],
                "per_class": per_class,
                "macro_avg": {"precision": float(counts.precision.mean()),
                              "recall": float(counts.recall.mean()),
                              "f1": float(counts.f1.mean())}}
