"""The detector's two losses, on the targets of :mod:`tftoolkit.detection.matching`.

Both are sums over a batch divided by the number of positive anchors in the batch (at
least 1), as RetinaNet normalises them: an image with many objects weighs more than one
with few, and the background anchors (thousands per image) do not dilute the loss.
Keras reduces them with ``reduction="sum"``: ``call`` returns each image's share.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tftoolkit.detection.matching import IGNORED

EPSILON = 1e-7   # probabilities are clipped to [EPSILON, 1 - EPSILON] before the log


def _positives(class_targets: tf.Tensor) -> tf.Tensor:
    """Positive anchors in the batch (at least 1), from class targets [B, A]."""
    return tf.maximum(tf.reduce_sum(tf.cast(class_targets >= 0, tf.float32)), 1.0)


@keras.saving.register_keras_serializable(package="tftoolkit")
class FocalLoss(keras.losses.Loss):
    """Sigmoid focal loss (Lin et al. 2017) of class scores against class targets.

    ``y_true``: class targets [B, A] (a class id, ``BACKGROUND`` or ``IGNORED``);
    ``y_pred``: sigmoid scores [B, A, classes]. Every class of every anchor not ignored
    counts: ``-alpha_t (1 - p_t)^gamma log(p_t)``.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "sum",
                 name: str = "focal_loss", **kwargs):
        super().__init__(reduction=reduction, name=name, **kwargs)
        self.alpha, self.gamma = alpha, gamma

    def call(self, y_true, y_pred):
        targets = tf.cast(tf.reshape(y_true, tf.shape(y_pred)[:2]), tf.int32)
        scores = tf.clip_by_value(tf.cast(y_pred, tf.float32), EPSILON, 1.0 - EPSILON)
        onehot = tf.one_hot(targets, tf.shape(scores)[-1], dtype=tf.float32)  # -1, -2: 0s
        p_t = onehot * scores + (1.0 - onehot) * (1.0 - scores)
        alpha_t = onehot * self.alpha + (1.0 - onehot) * (1.0 - self.alpha)
        loss = -alpha_t * tf.pow(1.0 - p_t, self.gamma) * tf.math.log(p_t)
        counted = tf.cast(tf.not_equal(targets, IGNORED), tf.float32)[..., None]
        return tf.reduce_sum(loss * counted, axis=[1, 2]) / _positives(targets)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="tftoolkit")
class BoxLoss(keras.losses.Loss):
    """Huber (smooth L1) loss of the box codes of positive anchors.

    ``y_true``: box targets [B, A, 5] (codes, then 1 for a positive anchor);
    ``y_pred``: box codes [B, A, 4]. Summed over the 4 codes of each positive anchor.
    """

    def __init__(self, delta: float = 1.0, reduction: str = "sum", name: str = "box_loss",
                 **kwargs):
        super().__init__(reduction=reduction, name=name, **kwargs)
        self.delta = delta

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        codes, positive = y_true[..., :4], y_true[..., 4]
        error = tf.abs(tf.cast(y_pred, tf.float32) - codes)
        quadratic = tf.minimum(error, self.delta)
        huber = 0.5 * quadratic ** 2 + self.delta * (error - quadratic)
        per_anchor = tf.reduce_sum(huber, axis=-1) * positive
        count = tf.maximum(tf.reduce_sum(positive), 1.0)
        return tf.reduce_sum(per_anchor, axis=1) / count

    def get_config(self):
        return {**super().get_config(), "delta": self.delta}
