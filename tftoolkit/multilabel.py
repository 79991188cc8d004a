"""Multi-label classification: the loss, the figures and the per-class thresholds.

Every figure comes from one summary of a split's predictions: per class, how many
positive and negative examples scored in each of ``BINS`` equal bins of [0, 1]
(:func:`score_histograms`). Counted from the top, the bins give each class's
precision-recall curve, its average precision (AP, as scikit-learn's
``average_precision_score`` with scores tied within a bin), and its precision, recall
and F1 at any threshold ``b / BINS``; a class is predicted when its probability is at
least its threshold. The Keras metrics (``map``, ``f1``, ``macro_f1``, logged per
epoch) keep these histograms as state, so that they add up over batches and replicas;
evaluation and the choice of thresholds read the same histograms.

Thresholds are chosen on the validation split only, per class or one for all
(``train.threshold``), each maximising F1.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

BINS = 1000
DEFAULT_THRESHOLD = 0.5


def score_histograms(labels, scores, bins: int = BINS,
                     weights=None) -> tuple[tf.Tensor, tf.Tensor]:
    """``(positives, negatives)``, each ``[classes, bins]``: per class, the (soft, for
    mixed labels) count of positive and of negative examples whose score fell in each
    bin of [0, 1], each example counted ``weights`` times (default: once)."""
    labels = tf.cast(labels, tf.float32)
    scores = tf.cast(scores, tf.float32)
    if weights is not None:  # a weight per example, for both of its terms
        per_example = tf.reshape(tf.cast(weights, tf.float32), [-1, 1])
    else:
        per_example = tf.ones_like(labels[:, :1])
    classes = tf.shape(scores)[-1]
    index = tf.clip_by_value(tf.cast(tf.floor(scores * bins), tf.int32), 0, bins - 1)
    flat = tf.reshape(index + tf.range(classes)[tf.newaxis, :] * bins, [-1])
    shape = [classes, bins]

    def count(weights):
        return tf.reshape(tf.math.unsorted_segment_sum(tf.reshape(weights, [-1]), flat,
                                                       classes * bins), shape)

    return count(labels * per_example), count((1.0 - labels) * per_example)


def _at_or_above(counts: tf.Tensor) -> tf.Tensor:
    """Counts of examples scoring in each bin or a higher one."""
    return tf.cumsum(counts, axis=-1, reverse=True)


def _ratio(numerator: tf.Tensor, denominator: tf.Tensor) -> tf.Tensor:
    return tf.math.divide_no_nan(numerator, denominator)


def average_precision(positives: tf.Tensor, negatives: tf.Tensor) -> tf.Tensor:
    """AP per class: the precision at each bin, weighted by the recall it adds; 0 for a
    class without positives."""
    true_pos = _at_or_above(positives)
    precision = _ratio(true_pos, true_pos + _at_or_above(negatives))
    total = tf.reduce_sum(positives, axis=-1)
    return _ratio(tf.reduce_sum(positives * precision, axis=-1), total)


def mean_average_precision(positives: tf.Tensor, negatives: tf.Tensor) -> tf.Tensor:
    """mAP: the mean AP of the classes that have positive examples."""
    present = tf.cast(tf.reduce_sum(positives, axis=-1) > 0, tf.float32)
    return _ratio(tf.reduce_sum(average_precision(positives, negatives) * present),
                  tf.reduce_sum(present))


@dataclass
class Counts:
    """Per class true positives, false positives and false negatives at thresholds."""

    true_pos: np.ndarray
    false_pos: np.ndarray
    false_neg: np.ndarray

    @property
    def precision(self) -> np.ndarray:
        return _safe(self.true_pos, self.true_pos + self.false_pos)

    @property
    def recall(self) -> np.ndarray:
        return _safe(self.true_pos, self.true_pos + self.false_neg)

    @property
    def f1(self) -> np.ndarray:
        return _safe(2 * self.true_pos, 2 * self.true_pos + self.false_pos + self.false_neg)

    @property
    def micro_f1(self) -> float:
        tp = self.true_pos.sum()
        return float(_safe(2 * tp, 2 * tp + self.false_pos.sum() + self.false_neg.sum()))


def _safe(numerator, denominator) -> np.ndarray:
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator),
                     where=denominator > 0)


def threshold_bins(thresholds, bins: int = BINS) -> np.ndarray:
    """The first bin counted as predicted for each threshold (a threshold ``b / bins``
    stored as float32, a hair above or below, still starts at bin ``b``)."""
    return np.clip(np.ceil(np.asarray(thresholds, float) * bins - 1e-3), 0, bins).astype(int)


def _counts(positives, negatives, thresholds) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per class ``(true_pos, false_pos, false_neg)`` when each class is predicted at
    probability >= its threshold (one number, or one per class)."""
    start = tf.constant(threshold_bins(thresholds), tf.int32)
    bins = tf.range(tf.shape(positives)[-1])[tf.newaxis, :]
    chosen = tf.cast(bins >= tf.reshape(start, [-1, 1]), tf.float32)
    positives, negatives = tf.cast(positives, tf.float32), tf.cast(negatives, tf.float32)
    true_pos = tf.reduce_sum(positives * chosen, axis=-1)
    return (true_pos, tf.reduce_sum(negatives * chosen, axis=-1),
            tf.reduce_sum(positives, axis=-1) - true_pos)


def counts_at(positives, negatives, thresholds) -> Counts:
    """:class:`Counts` at ``thresholds`` (one number, or one per class)."""
    return Counts(*(t.numpy() for t in _counts(positives, negatives, thresholds)))


def choose_thresholds(positives, negatives, mode: str = "per_class") -> np.ndarray:
    """Per class thresholds that maximise F1 on the histograms given (those of the
    validation split): each class its own (``per_class``) or one for all that maximises
    micro-F1 (``global``). A class without positive examples keeps 0.5."""
    positives = np.asarray(positives, float)
    bins = positives.shape[-1]
    true_pos = _at_or_above(positives).numpy()
    false_pos = _at_or_above(np.asarray(negatives, float)).numpy()
    false_neg = positives.sum(axis=-1, keepdims=True) - true_pos
    if mode == "global":
        tp, fp, fn = true_pos.sum(0), false_pos.sum(0), false_neg.sum(0)
        best = int(np.argmax(_safe(2 * tp, 2 * tp + fp + fn)))
        return np.full(len(positives), best / bins)
    f1 = _safe(2 * true_pos, 2 * true_pos + false_pos + false_neg)
    chosen = np.argmax(f1, axis=-1) / bins
    return np.where(positives.sum(axis=-1) > 0, chosen, DEFAULT_THRESHOLD)


def precision_recall_curve(positives, negatives) -> tuple[np.ndarray, np.ndarray]:
    """``(precision, recall)`` per class at every bin's threshold, ``[classes, bins]``."""
    true_pos = _at_or_above(np.asarray(positives, float)).numpy()
    false_pos = _at_or_above(np.asarray(negatives, float)).numpy()
    return (_safe(true_pos, true_pos + false_pos),
            _safe(true_pos, true_pos[:, :1]))


# --- Keras: the loss and the per-epoch metrics -----------------------------------------

@keras.saving.register_keras_serializable(package="tftoolkit")
class MultiLabelCrossentropy(keras.losses.Loss):
    """Binary cross-entropy of each class's sigmoid probability, averaged over classes,
    with label smoothing (targets pulled towards 0.5) and optional per-class weights of
    the positive term (``negatives / positives`` of the training split, for
    ``data.class_weight=balanced``)."""

    def __init__(self, label_smoothing: float = 0.0,
                 positive_weights: list[float] | None = None,
                 name: str = "multilabel_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)
        self.positive_weights = (None if positive_weights is None
                                 else [float(w) for w in positive_weights])

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        if self.label_smoothing:
            y_true = y_true * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        epsilon = keras.config.epsilon()
        p = tf.clip_by_value(tf.cast(y_pred, tf.float32), epsilon, 1.0 - epsilon)
        positive = y_true * tf.math.log(p)
        if self.positive_weights is not None:
            positive *= tf.constant(self.positive_weights, tf.float32)
        return -tf.reduce_mean(positive + (1.0 - y_true) * tf.math.log(1.0 - p), axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "label_smoothing": self.label_smoothing,
                "positive_weights": self.positive_weights}


class _Histograms(keras.metrics.Metric):
    """A metric whose state is the split's score histograms."""

    def __init__(self, num_classes: int, name: str, **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.positives = self.add_variable(shape=(self.num_classes, BINS),
                                           initializer="zeros", name="positives")
        self.negatives = self.add_variable(shape=(self.num_classes, BINS),
                                           initializer="zeros", name="negatives")

    def update_state(self, y_true, y_pred, sample_weight=None):
        positives, negatives = score_histograms(y_true, y_pred, weights=sample_weight)
        self.positives.assign_add(positives)
        self.negatives.assign_add(negatives)

    def reset_state(self):
        self.positives.assign(tf.zeros_like(self.positives))
        self.negatives.assign(tf.zeros_like(self.negatives))

    def get_config(self) -> dict:
        return {"num_classes": self.num_classes, "name": self.name}


@keras.saving.register_keras_serializable(package="tftoolkit")
class MeanAveragePrecision(_Histograms):
    """mAP over the classes with positives (logged as ``map``)."""

    def __init__(self, num_classes: int, name: str = "map", **kwargs):
        super().__init__(num_classes, name, **kwargs)

    def result(self):
        return mean_average_precision(self.positives, self.negatives)


@keras.saving.register_keras_serializable(package="tftoolkit")
class MultiLabelF1(_Histograms):
    """Micro (``f1``) or macro (``macro_f1``) F1 at probability >= 0.5."""

    def __init__(self, num_classes: int, average: str = "micro", name: str | None = None,
                 **kwargs):
        self.average = average
        super().__init__(num_classes, name or ("f1" if average == "micro" else "macro_f1"),
                         **kwargs)

    def result(self):
        true_pos, false_pos, false_neg = _counts(self.positives, self.negatives,
                                                 DEFAULT_THRESHOLD)
        if self.average == "micro":
            true_pos, false_pos, false_neg = (tf.reduce_sum(t) for t in
                                              (true_pos, false_pos, false_neg))
        f1 = _ratio(2 * true_pos, 2 * true_pos + false_pos + false_neg)
        return tf.reduce_mean(f1)

    def get_config(self) -> dict:
        return {**super().get_config(), "average": self.average}


def metrics(num_classes: int) -> list[keras.metrics.Metric]:
    """The per-epoch multi-label metrics: ``map``, ``f1`` (micro) and ``macro_f1``."""
    return [MeanAveragePrecision(num_classes), MultiLabelF1(num_classes, "micro"),
            MultiLabelF1(num_classes, "macro")]


# --- thresholds, chosen on validation --------------------------------------------------

def split_histograms(model: keras.Model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """The score histograms of ``model`` (in inference mode) over a batched dataset of
    ``(inputs, multi-hot labels)``."""
    positives = negatives = 0
    for batch in dataset:
        pos, neg = score_histograms(batch[1], model(batch[0], training=False))
        positives, negatives = positives + pos.numpy(), negatives + neg.numpy()
    return np.asarray(positives), np.asarray(negatives)


@dataclass
class Thresholds:
    """Per class probability thresholds and how they were chosen."""

    values: np.ndarray
    chosen_by: str      # "per_class F1 on val", "global micro-F1 on val", "fixed", ...

    def to_dict(self, class_names: list[str]) -> dict:
        return {"chosen_by": self.chosen_by,
                "thresholds": {n: float(t) for n, t in zip(class_names, self.values)}}

    @classmethod
    def from_dict(cls, d: dict, class_names: list[str]) -> "Thresholds":
        return cls(np.array([d["thresholds"][n] for n in class_names], "float32"),
                   d["chosen_by"])


def validation_thresholds(model: keras.Model, data, setting: float | str,
                          batch_size: int = 64) -> Thresholds:
    """``train.threshold`` for the model of a run on ``data`` (a DataBundle): a fixed
    number, or chosen to maximise F1 on the validation split (``per_class`` or
    ``global``); no other split is read."""
    k = data.info.num_classes
    if not isinstance(setting, str):
        return Thresholds(np.full(k, float(setting), "float32"), "fixed (train.threshold)")
    if "val" not in data.splits:
        return Thresholds(np.full(k, DEFAULT_THRESHOLD, "float32"),
                          f"{DEFAULT_THRESHOLD} (no validation split to choose on)")
    positives, negatives = split_histograms(model, data.dataset("val", batch_size=batch_size))
    what = "per-class F1" if setting == "per_class" else "micro-F1 (one for all classes)"
    return Thresholds(choose_thresholds(positives, negatives, setting).astype("float32"),
                      f"max {what} on the validation split")


def report_at(positives, negatives, thresholds: np.ndarray) -> dict[str, float]:
    """mAP, micro/macro F1, mean precision and recall at ``thresholds``."""
    counts = counts_at(positives, negatives, thresholds)
    return {"map": float(mean_average_precision(positives, negatives)),
            "f1": counts.micro_f1, "macro_f1": float(counts.f1.mean()),
            "precision": float(counts.precision.mean()),
            "recall": float(counts.recall.mean())}
