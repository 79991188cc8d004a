"""Box geometry and the one box coding shared by training, serving and MediaPipe.

Boxes in the toolkit are ``(ymin, xmin, ymax, xmax)`` normalised to the image (0..1 on
each axis). A box relative to an anchor is coded ``[ty, tx, th, tw]``, y first, as
MediaPipe's ``TensorsToDetectionsCalculator`` decodes a model without non-max
suppression (``box_format=YXHW``, ``apply_exponential_on_box_size``)::

    yc = ty / y_scale * anchor_h + anchor_yc      h = exp(th / h_scale) * anchor_h
    xc = tx / x_scale * anchor_w + anchor_xc      w = exp(tw / w_scale) * anchor_w

:class:`BoxCoder` is that pair; its scales go into the MediaPipe metadata unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf


def corners_to_centres(boxes: tf.Tensor) -> tf.Tensor:
    """``[..., (ymin, xmin, ymax, xmax)]`` -> ``[..., (yc, xc, h, w)]``."""
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return tf.stack([(ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin], -1)


def centres_to_corners(boxes: tf.Tensor) -> tf.Tensor:
    """``[..., (yc, xc, h, w)]`` -> ``[..., (ymin, xmin, ymax, xmax)]``."""
    yc, xc, h, w = tf.unstack(boxes, axis=-1)
    return tf.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], -1)


def box_areas(boxes: tf.Tensor) -> tf.Tensor:
    """Areas of ``[..., 4]`` corner boxes (0 for an empty or inverted box)."""
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return tf.maximum(ymax - ymin, 0.0) * tf.maximum(xmax - xmin, 0.0)


def iou_matrix(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Intersection over union of every box of ``a`` [N, 4] with every box of ``b``
    [M, 4] (corners): [N, M]; 0 where the union is empty."""
    a, b = a[:, None, :], b[None, :, :]
    height = tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]),
                        0.0)
    width = tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]),
                       0.0)
    intersection = height * width
    union = box_areas(a) + box_areas(b) - intersection
    return tf.math.divide_no_nan(intersection, union)


@dataclass(frozen=True)
class BoxCoder:
    """Boxes <-> ``[ty, tx, th, tw]`` relative to anchors, with MediaPipe's scales.

    The scales (SSD's 10, 10, 5, 5 by default) bring the codes of matched boxes near
    unit size, which suits a Huber loss of delta 1.
    """

    y_scale: float = 10.0
    x_scale: float = 10.0
    h_scale: float = 5.0
    w_scale: float = 5.0

    def encode(self, boxes: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
        """Corner ``boxes`` [..., A, 4] -> codes [..., A, 4] against ``anchors`` [A, 4]
        ``(yc, xc, h, w)``. Boxes must have a positive size."""
        centres = corners_to_centres(boxes)
        return tf.stack([
            (centres[..., 0] - anchors[:, 0]) / anchors[:, 2] * self.y_scale,
            (centres[..., 1] - anchors[:, 1]) / anchors[:, 3] * self.x_scale,
            tf.math.log(centres[..., 2] / anchors[:, 2]) * self.h_scale,
            tf.math.log(centres[..., 3] / anchors[:, 3]) * self.w_scale], axis=-1)

    def decode(self, codes: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
        """Codes [..., A, 4] -> corner boxes [..., A, 4] (MediaPipe's decoding)."""
        codes = tf.cast(codes, tf.float32)
        anchors = tf.cast(anchors, tf.float32)
        return centres_to_corners(tf.stack([
            codes[..., 0] / self.y_scale * anchors[:, 2] + anchors[:, 0],
            codes[..., 1] / self.x_scale * anchors[:, 3] + anchors[:, 1],
            tf.exp(codes[..., 2] / self.h_scale) * anchors[:, 2],
            tf.exp(codes[..., 3] / self.w_scale) * anchors[:, 3]], axis=-1))

    def to_dict(self) -> dict[str, float]:
        return {"y_scale": self.y_scale, "x_scale": self.x_scale,
                "h_scale": self.h_scale, "w_scale": self.w_scale}
