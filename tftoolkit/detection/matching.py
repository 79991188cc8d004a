"""Training targets: each anchor matched to a true box by IoU, coded for the losses.

An anchor whose best IoU with a true box is at least ``positive_iou`` learns that box's
class and its coded offsets; below ``negative_iou`` it learns background (no class);
in between it is ignored by the classification loss. Each true box's best anchor is
positive whatever its IoU, so a box no anchor fits well still has one. An image without
objects gives background everywhere: it is a negative example, as it should be.

:class:`TargetEncoder` runs on one example in the input pipeline (TensorFlow ops, any
number of boxes, none included) and returns the two tensors the losses take:

- box targets ``[anchors, 5]``: the ``[ty, tx, th, tw]`` codes of each anchor's matched
  box, then 1 for a positive anchor and 0 otherwise (the box loss counts positives only);
- class targets ``[anchors]`` int32: the class id of a positive anchor,
  :data:`BACKGROUND` or :data:`IGNORED`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import tensorflow as tf

from tftoolkit.detection.anchors import AnchorSet
from tftoolkit.detection.boxes import BoxCoder, iou_matrix

BACKGROUND = -1   # class target of a negative anchor
IGNORED = -2      # class target of an anchor neither positive nor negative


@dataclass(frozen=True)
class MatchConfig:
    """IoU thresholds of a positive and of a negative anchor (RetinaNet's 0.5 and 0.4)."""

    positive_iou: float = 0.5
    negative_iou: float = 0.4

    def __post_init__(self):
        if not 0.0 < self.negative_iou <= self.positive_iou <= 1.0:
            raise ValueError(f"anchor matching needs 0 < negative_iou <= positive_iou <= 1, "
                             f"got {self.negative_iou} and {self.positive_iou}")


@dataclass(frozen=True)
class TargetEncoder:
    """True boxes and classes of one image -> box and class targets of every anchor."""

    anchors: AnchorSet
    coder: BoxCoder = BoxCoder()
    match: MatchConfig = MatchConfig()
    _corners: tf.Tensor = field(init=False, repr=False, compare=False)
    _centres: tf.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_corners", tf.constant(self.anchors.corners()))
        object.__setattr__(self, "_centres", tf.constant(self.anchors.centres_sizes()))

    def __call__(self, boxes: tf.Tensor, classes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``boxes`` [N, 4] normalised corners and ``classes`` [N] ids (N may be 0) ->
        box targets [anchors, 5] float32 and class targets [anchors] int32."""
        boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
        classes = tf.reshape(tf.cast(classes, tf.int32), [-1])
        count = tf.shape(boxes)[0]
        iou = iou_matrix(self._corners, boxes)                              # [A, N]
        # a column of -1 makes the argmax of an image without boxes background
        padded = tf.concat([iou, tf.fill([tf.shape(iou)[0], 1], -1.0)], axis=1)
        best_iou = tf.reduce_max(padded, axis=1)
        matched = tf.argmax(padded, axis=1, output_type=tf.int32)
        labels = tf.where(best_iou >= self.match.positive_iou, 0,
                          tf.where(best_iou < self.match.negative_iou, BACKGROUND, IGNORED))
        # each true box's best anchor is positive for it (if it overlaps any anchor)
        best_anchor = tf.argmax(padded, axis=0, output_type=tf.int32)[:count]   # [N]
        overlaps = tf.reduce_max(padded, axis=0)[:count] > 0.0
        forced = tf.boolean_mask(best_anchor, overlaps)
        matched = tf.tensor_scatter_nd_update(matched, forced[:, None],
                                              tf.boolean_mask(tf.range(count), overlaps))
        labels = tf.tensor_scatter_nd_update(labels, forced[:, None], tf.zeros_like(forced))
        positive = tf.equal(labels, 0)
        padded_classes = tf.concat([classes, [BACKGROUND]], axis=0)
        class_targets = tf.where(positive, tf.gather(padded_classes, matched), labels)
        padded_boxes = tf.concat([boxes, tf.zeros([1, 4])], axis=0)
        # non-positive anchors are coded against themselves (finite zeros), then masked
        safe = tf.where(positive[:, None], tf.gather(padded_boxes, matched), self._corners)
        codes = self.coder.encode(safe, self._centres)
        weight = tf.cast(positive, tf.float32)[:, None]
        return tf.concat([codes * weight, weight], axis=1), class_targets
