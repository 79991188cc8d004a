"""Training targets: each anchor matched to a true box by IoU, coded for the loss.

An image's boxes travel through the input pipeline as a fixed-size table of
:data:`BOX_FIELDS` rows ``[max_boxes, 5]``: ``(ymin, xmin, ymax, xmax, class id)``, boxes
normalised to the image, the unused rows with class :data:`NO_BOX` (-1).

An anchor whose best IoU with a true box is at least ``positive_iou`` learns that box's
class and its coded offsets; below ``negative_iou`` it learns background (no class);
in between it is ignored by the classification loss. Each true box's best anchor is
positive whatever its IoU, so a box no anchor fits well still has one. An image without
objects gives background everywhere: it is a negative example, as it should be.

:class:`TargetEncoder` encodes a batch of box tables (TensorFlow ops, vectorised over
the batch) into one tensor per image, ``[anchors + max_boxes, 6]``, that the loss and
the metrics read (:func:`anchor_targets`, :func:`true_boxes`):

- a row per anchor: the ``[ty, tx, th, tw]`` codes of its matched box (0 unless
  positive), 1 for a positive anchor (else 0), and its class target: the class id of a
  positive anchor, :data:`BACKGROUND` or :data:`IGNORED`;
- then the image's box table itself, a 0 appended to each row: what mAP is measured
  against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from tftoolkit.detection.anchors import AnchorSet
from tftoolkit.detection.boxes import BoxCoder, box_areas

BACKGROUND = -1   # class target of a negative anchor
IGNORED = -2      # class target of an anchor neither positive nor negative
NO_BOX = -1       # class id of an unused row of a box table
BOX_FIELDS = 5    # ymin, xmin, ymax, xmax, class id
TARGET_FIELDS = 6


@dataclass(frozen=True)
class MatchConfig:
    """IoU thresholds of a positive and of a negative anchor (RetinaNet's 0.5 and 0.4)."""

    positive_iou: float = 0.5
    negative_iou: float = 0.4

    def __post_init__(self):
        if not 0.0 < self.negative_iou <= self.positive_iou <= 1.0:
            raise ValueError(f"anchor matching needs 0 < negative_iou <= positive_iou <= 1, "
                             f"got {self.negative_iou} and {self.positive_iou}")


def _batch_iou(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """IoU of anchors ``a`` [A, 4] with each image's boxes ``b`` [B, M, 4]: [B, A, M]."""
    a, b = a[None, :, None, :], b[:, None, :, :]
    height = tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]),
                        0.0)
    width = tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]),
                       0.0)
    intersection = height * width
    return tf.math.divide_no_nan(intersection,
                                 box_areas(a) + box_areas(b) - intersection)


@dataclass(frozen=True)
class TargetEncoder:
    """Box tables of a batch of images -> the targets of every anchor (see the module
    docstring)."""

    anchors: AnchorSet
    coder: BoxCoder = BoxCoder()
    match: MatchConfig = MatchConfig()
    # numpy, made tensors in each call: an encoder serves graphs traced apart (pipelines,
    # metrics) and eager calls alike
    _corners: np.ndarray = field(init=False, repr=False, compare=False)
    _centres: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_corners", self.anchors.corners())
        object.__setattr__(self, "_centres", self.anchors.centres_sizes())

    def __call__(self, tables: tf.Tensor) -> tf.Tensor:
        """``[batch, max_boxes, 5]`` box tables -> ``[batch, anchors + max_boxes, 6]``."""
        corners, centres = tf.constant(self._corners), tf.constant(self._centres)
        tables = tf.cast(tables, tf.float32)
        boxes, classes = tables[..., :4], tf.cast(tables[..., 4], tf.int32)
        present = classes != NO_BOX                                       # [B, M]
        iou = tf.where(present[:, None, :], _batch_iou(corners, boxes), -1.0)
        shape = tf.shape(iou)
        # a column of -1 makes the argmax of an image without boxes background
        padded = tf.concat([iou, tf.fill([shape[0], shape[1], 1], -1.0)], axis=2)
        best_iou = tf.reduce_max(padded, axis=2)                          # [B, A]
        matched = tf.argmax(padded, axis=2, output_type=tf.int32)
        labels = tf.where(best_iou >= self.match.positive_iou, 0,
                          tf.where(best_iou < self.match.negative_iou, BACKGROUND, IGNORED))
        # each true box's best anchor is positive for it (if it overlaps any anchor)
        forced = tf.where(tf.logical_and(present, tf.reduce_max(iou, axis=1) > 0.0))
        forced = tf.cast(forced, tf.int32)                                # [K, (b, m)]
        best_anchor = tf.gather_nd(tf.argmax(iou, axis=1, output_type=tf.int32), forced)
        at = tf.stack([forced[:, 0], best_anchor], axis=1)
        matched = tf.tensor_scatter_nd_update(matched, at, forced[:, 1])
        labels = tf.tensor_scatter_nd_update(labels, at, tf.zeros_like(best_anchor))
        positive = tf.equal(labels, 0)
        padded_classes = tf.concat([classes, tf.fill([shape[0], 1], BACKGROUND)], axis=1)
        class_targets = tf.where(positive, tf.gather(padded_classes, matched, batch_dims=1),
                                 labels)
        padded_boxes = tf.concat([boxes, tf.zeros([shape[0], 1, 4])], axis=1)
        # non-positive anchors are coded against themselves (finite zeros), then masked
        safe = tf.where(positive[..., None], tf.gather(padded_boxes, matched, batch_dims=1),
                        corners[None])
        weight = tf.cast(positive, tf.float32)[..., None]
        anchor_rows = tf.concat([self.coder.encode(safe, centres) * weight, weight,
                                 tf.cast(class_targets, tf.float32)[..., None]], axis=2)
        table_rows = tf.pad(tables, [[0, 0], [0, 0], [0, 1]])
        return tf.concat([anchor_rows, table_rows], axis=1)


def anchor_targets(targets: tf.Tensor, anchors: int) -> tuple[tf.Tensor, tf.Tensor,
                                                              tf.Tensor]:
    """Of encoded targets ``[batch, anchors + max_boxes, 6]``: each anchor's box codes
    ``[batch, anchors, 4]``, positive flag (0/1) and class target (int32)."""
    rows = tf.cast(targets[:, :anchors], tf.float32)
    return rows[..., :4], rows[..., 4], tf.cast(tf.round(rows[..., 5]), tf.int32)


def true_boxes(targets, anchors: int):
    """The box tables ``[batch, max_boxes, 5]`` inside encoded targets."""
    return targets[:, anchors:, :BOX_FIELDS]
