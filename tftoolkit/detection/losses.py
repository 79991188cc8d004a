"""The detector's loss: sigmoid focal loss of the class scores plus a Huber loss of the
box codes, on the targets of :mod:`tftoolkit.detection.matching`.

Each image's loss is its focal loss summed over every class of every anchor that is not
ignored, plus its box loss summed over the codes of its positive anchors, divided by its
number of positive anchors (at least 1): RetinaNet's normalisation, per image, so that
the thousands of background anchors do not dilute the loss, and an image's loss does
not depend on the other images of its batch (the toolkit's loops average per-example
losses over the global batch, across replicas; DP-SGD clips them one by one).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tftoolkit.detection.head import split_predictions
from tftoolkit.detection.matching import IGNORED, anchor_targets

EPSILON = 1e-7   # probabilities are clipped to [EPSILON, 1 - EPSILON] before the log


def focal_loss(class_targets: tf.Tensor, scores: tf.Tensor, alpha: float = 0.25,
               gamma: float = 2.0) -> tf.Tensor:
    """Sigmoid focal loss (Lin et al. 2017) per image, summed: ``-alpha_t (1 - p_t)^gamma
    log(p_t)`` over every class of every anchor not ignored. ``class_targets`` [B, A]
    (a class id, ``BACKGROUND`` or ``IGNORED``), ``scores`` [B, A, classes] -> [B]."""
    scores = tf.clip_by_value(tf.cast(scores, tf.float32), EPSILON, 1.0 - EPSILON)
    onehot = tf.one_hot(class_targets, tf.shape(scores)[-1], dtype=tf.float32)  # -1, -2: 0s
    p_t = onehot * scores + (1.0 - onehot) * (1.0 - scores)
    alpha_t = onehot * alpha + (1.0 - onehot) * (1.0 - alpha)
    loss = -alpha_t * tf.pow(1.0 - p_t, gamma) * tf.math.log(p_t)
    counted = tf.cast(tf.not_equal(class_targets, IGNORED), tf.float32)[..., None]
    return tf.reduce_sum(loss * counted, axis=[1, 2])


def box_loss(code_targets: tf.Tensor, positive: tf.Tensor, codes: tf.Tensor,
             delta: float = 1.0) -> tf.Tensor:
    """Huber (smooth L1) loss per image, summed over the 4 codes of each positive anchor:
    targets [B, A, 4], positive flags [B, A], predicted codes [B, A, 4] -> [B]."""
    error = tf.abs(tf.cast(codes, tf.float32) - code_targets)
    quadratic = tf.minimum(error, delta)
    huber = 0.5 * quadratic ** 2 + delta * (error - quadratic)
    return tf.reduce_sum(tf.reduce_sum(huber, axis=-1) * positive, axis=1)


@keras.saving.register_keras_serializable(package="tftoolkit")
class DetectionLoss(keras.losses.Loss):
    """Focal loss plus ``box_weight`` times the box loss, per image divided by its
    positive anchors (see the module docstring).

    ``y_true``: encoded targets ``[B, anchors + max_boxes, 6]``; ``y_pred``: the
    detector's predictions ``[B, anchors, 4 + classes]``.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, delta: float = 1.0,
                 box_weight: float = 1.0, reduction: str | None = "sum_over_batch_size",
                 name: str = "detection_loss", **kwargs):
        super().__init__(reduction=reduction, name=name, **kwargs)
        self.alpha, self.gamma, self.delta, self.box_weight = alpha, gamma, delta, box_weight

    def call(self, y_true, y_pred):
        codes, scores = split_predictions(y_pred)
        code_targets, positive, class_targets = anchor_targets(y_true, tf.shape(y_pred)[1])
        positives = tf.maximum(tf.reduce_sum(positive, axis=1), 1.0)
        total = (focal_loss(class_targets, scores, self.alpha, self.gamma)
                 + self.box_weight * box_loss(code_targets, positive, codes, self.delta))
        return total / positives

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma,
                "delta": self.delta, "box_weight": self.box_weight}
