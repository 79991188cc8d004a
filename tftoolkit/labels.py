"""Label encodings: how the labels of a task reach the loss, and the model's output.

One :class:`LabelEncoding` per form of label (``categorical`` one-hot, ``sparse``
integer ids, ``binary`` 0/1 with one sigmoid unit, ``multilabel`` multi-hot rows with
one sigmoid unit per class, ``regression`` real targets) owns
everything that depends on that form: the loss, the output layer's activation and
units, how the input pipeline encodes a batch, how predictions and labels are decoded
back to class ids, and the metric reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from tftoolkit import multilabel
from tftoolkit.errors import RecipeError


@dataclass(frozen=True)
class LabelEncoding:
    """One form of label and what follows from it."""

    name: str
    activation: str | None       # of the output layer
    loss_class: type
    metric: str

    @property
    def is_classification(self) -> bool:
        return self.name != "regression"

    @property
    def is_multilabel(self) -> bool:
        return self.name == "multilabel"

    def loss(self, label_smoothing: float = 0.0,
             positive_weights: list[float] | None = None) -> keras.losses.Loss:
        """The loss, with label smoothing where the encoding supports it (and, for
        multi-label, per-class weights of the positive term)."""
        if self.is_multilabel:
            return self.loss_class(label_smoothing=label_smoothing,
                                   positive_weights=positive_weights)
        if self.name in ("categorical", "binary"):
            return self.loss_class(label_smoothing=label_smoothing)
        if label_smoothing:
            raise RecipeError(f"regularize.label_smoothing={label_smoothing} needs one-hot "
                              f"or binary labels, not {self.name} labels; use "
                              "train.loss=categorical_crossentropy (or auto)")
        return self.loss_class()

    def output_units(self, num_classes: int, target_dim: int = 1) -> int:
        """Units of the output layer."""
        if self.name == "regression":
            return target_dim
        return 1 if self.name == "binary" else num_classes

    def metrics(self, num_classes: int) -> list:
        """The metrics compiled with the loss."""
        return multilabel.metrics(num_classes) if self.is_multilabel else [self.metric]

    def encode(self, labels: tf.Tensor, num_classes: int) -> tf.Tensor:
        """A batch of integer class ids (or targets) in the form the loss expects."""
        if self.name == "categorical":
            return tf.one_hot(tf.cast(labels, tf.int32), num_classes)
        if self.name == "sparse":
            return tf.cast(labels, tf.int32)
        labels = tf.cast(labels, tf.float32)  # multi-hot rows stay as they are
        return tf.reshape(labels, [-1, 1]) if self.name == "binary" else labels

    def class_ids(self, encoded: np.ndarray) -> np.ndarray:
        """Integer class ids of a batch of encoded labels (the inverse of :meth:`encode`);
        multi-label: the 0/1 rows."""
        encoded = np.asarray(encoded)
        if self.name == "categorical":
            return encoded.argmax(axis=1)
        if self.is_multilabel:
            return encoded.round().astype(int)
        return encoded.reshape(-1).round().astype(int)


ENCODINGS: dict[str, LabelEncoding] = {
    "categorical": LabelEncoding("categorical", "softmax",
                                 keras.losses.CategoricalCrossentropy, "accuracy"),
    "sparse": LabelEncoding("sparse", "softmax",
                            keras.losses.SparseCategoricalCrossentropy, "accuracy"),
    "binary": LabelEncoding("binary", "sigmoid", keras.losses.BinaryCrossentropy, "accuracy"),
    "multilabel": LabelEncoding("multilabel", "sigmoid", multilabel.MultiLabelCrossentropy,
                                "map"),
    "regression": LabelEncoding("regression", None, keras.losses.MeanSquaredError, "mae"),
}

# train.loss -> the encoding it implies
ENCODING_OF_LOSS = {"mse": "regression", "binary_crossentropy": "binary",
                    "categorical_crossentropy": "categorical",
                    "sparse_categorical_crossentropy": "sparse"}
