"""COCO average precision as a Keras metric whose state adds up over batches and replicas.

A batch's predictions are decoded as MediaPipe decodes them
(:func:`~tftoolkit.detection.decoding.decode_detections`) and each image's detections
are matched to its true boxes as COCO's ``COCOeval`` matches them: in decreasing order of
score, each detection takes the unmatched true box of its class with the highest IoU (the
last of equals), if that IoU reaches the threshold; per IoU threshold on its own. The
state is, per IoU threshold and class, how many matched (true positive) and unmatched
(false positive) detections scored in each of ``bins`` equal bins of [0, 1], and the
number of true boxes per class: sums, so batches, replicas and workers add up.

The precision-recall curve of a class is read from the bins counted from the top;
as in COCO it is made monotone (each precision raised to the best at any higher recall)
and read at 101 recall points 0, 0.01, ..., 1 (0 where the recall is never reached). A
class's AP is their mean; mAP the mean over the classes that have true boxes (and over
the IoU thresholds). The only difference from ``COCOeval`` is that detections of one
bin are counted together, where COCO orders them by their exact scores; with 1,000 bins
the figures agree within 0.005 (``tests/test_detection_task.py`` checks it against
pycocotools on the same detections).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tftoolkit.detection.anchors import AnchorSet
from tftoolkit.detection.boxes import BoxCoder
from tftoolkit.detection import evaluation
from tftoolkit.detection.decoding import NmsConfig, decode_detections
from tftoolkit.detection.matching import NO_BOX, true_boxes

IOU_THRESHOLDS = tuple(float(t) for t in evaluation.IOU_THRESHOLDS)   # COCO's, 0.50:0.95
RECALL_POINTS = len(evaluation.RECALL_POINTS)
BINS = 1000


def _pairwise_iou(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """IoU of every box of ``a`` [B, N, 4] with every box of ``b`` [B, M, 4]: [B, N, M]."""
    a, b = a[:, :, None, :], b[:, None, :, :]
    height = tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]),
                        0.0)
    width = tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]),
                       0.0)
    intersection = height * width

    def area(box):
        return (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])

    return tf.math.divide_no_nan(intersection, area(a) + area(b) - intersection)


def greedy_matches(boxes: tf.Tensor, classes: tf.Tensor, truth: tf.Tensor,
                   thresholds) -> tf.Tensor:
    """Which detections COCO counts as true positives, ``[batch, thresholds, N]`` bool.

    ``boxes`` [B, N, 4] and ``classes`` [B, N] (``NO_BOX`` for padding) of each image's
    detections in decreasing order of score; ``truth`` its box tables [B, M, 5]."""
    true_classes = tf.cast(truth[..., 4], tf.int64)
    classes = tf.cast(classes, tf.int64)
    same = tf.logical_and(tf.equal(classes[:, :, None], true_classes[:, None, :]),
                          tf.not_equal(true_classes, NO_BOX)[:, None, :])
    iou = tf.where(same, _pairwise_iou(tf.cast(boxes, tf.float32),
                                       tf.cast(truth[..., :4], tf.float32)), -1.0)
    floor = tf.minimum(tf.constant(thresholds, tf.float32), 1.0 - 1e-10)[None, :, None]
    batch, count, boxes_per_image = tf.shape(iou)[0], tf.shape(iou)[1], tf.shape(iou)[2]
    thresholds_count = len(thresholds)

    def step(d, taken, matched):
        row = iou[:, d, :][:, None, :]                                   # [B, 1, M]
        candidates = tf.where(tf.logical_and(tf.logical_not(taken), row >= floor), row, -1.0)
        best = tf.reduce_max(candidates, axis=2)                          # [B, T]
        found = best >= 0.0
        ties = tf.logical_and(tf.equal(candidates, best[..., None]), found[..., None])
        last = boxes_per_image - 1 - tf.argmax(tf.reverse(ties, [2]), axis=2,
                                                output_type=tf.int32)
        taken = tf.logical_or(taken, tf.logical_and(
            tf.one_hot(last, boxes_per_image, on_value=True, off_value=False),
            found[..., None]))
        matched = tf.logical_or(matched, tf.logical_and(
            found[..., None], tf.one_hot(d, count, on_value=True, off_value=False)))
        return d + 1, taken, matched

    detected = tf.reduce_max(tf.reduce_sum(tf.cast(classes != NO_BOX, tf.int32), axis=1))
    _, _, matched = tf.while_loop(  # up to the most detections of an image of the batch
        lambda d, *_: d < detected, step,
        (tf.constant(0), tf.zeros([batch, thresholds_count, boxes_per_image], tf.bool),
         tf.zeros([batch, thresholds_count, count], tf.bool)))
    return matched


def _suffix_max(values: tf.Tensor) -> tf.Tensor:
    """Along the last axis of non-negative ``values``, each raised to the largest at or
    after it (a doubling scan: log2(length) steps)."""
    length, rank = values.shape[-1], values.shape.rank
    shift = 1
    while shift < length:
        ahead = tf.pad(values[..., shift:], [[0, 0]] * (rank - 1) + [[0, shift]])
        values = tf.maximum(values, ahead)
        shift *= 2
    return values


def average_precision(true_pos: tf.Tensor, false_pos: tf.Tensor,
                      truths: tf.Tensor) -> tf.Tensor:
    """COCO's interpolated AP per IoU threshold and class, ``[T, C]``, from the score
    histograms ``[T, C, bins]`` of true and false positives and the true boxes per class
    ``[C]`` (0 for a class without true boxes)."""
    tp = tf.cumsum(tf.reverse(true_pos, [-1]), axis=-1)       # from the top score down
    fp = tf.cumsum(tf.reverse(false_pos, [-1]), axis=-1)
    precision = _suffix_max(tf.math.divide_no_nan(tp, tp + fp))
    recall = tf.math.divide_no_nan(tp, truths[None, :, None])
    shape = tf.shape(recall)
    flat_recall = tf.reshape(recall, [-1, shape[-1]])
    points = tf.tile(tf.linspace(0.0, 1.0, RECALL_POINTS)[None], [tf.shape(flat_recall)[0], 1])
    at = tf.searchsorted(flat_recall, points, side="left")               # [T*C, R]
    reached = at < shape[-1]
    read = tf.gather(tf.reshape(precision, [-1, shape[-1]]),
                     tf.minimum(at, shape[-1] - 1), batch_dims=1)
    interpolated = tf.where(reached, read, 0.0)
    return tf.reshape(tf.reduce_mean(interpolated, axis=-1), shape[:2])


def mean_over_present(ap: tf.Tensor, truths: tf.Tensor) -> tf.Tensor:
    """The mean of ``ap`` [T, C] over the thresholds and the classes with true boxes (0
    when none has any)."""
    present = tf.cast(truths > 0, tf.float32)[None, :]
    return tf.math.divide_no_nan(tf.reduce_sum(ap * present),
                                 tf.reduce_sum(present) * tf.cast(tf.shape(ap)[0], tf.float32))


@keras.saving.register_keras_serializable(package="tftoolkit")
class DetectionAP(keras.metrics.Metric):
    """mAP over ``iou_thresholds`` (COCO's 0.50:0.95, logged as ``map``; or 0.5 alone,
    ``map_50``) of a detector's predictions against encoded targets (see the module
    docstring). ``anchors`` and ``coder`` are the detector's (as dicts), ``nms`` how it
    decodes (:class:`~tftoolkit.detection.decoding.NmsConfig`'s fields)."""

    def __init__(self, num_classes: int, anchors: dict, coder: dict, nms: dict,
                 iou_thresholds: tuple[float, ...] = IOU_THRESHOLDS, bins: int = BINS,
                 name: str = "map", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes, self.bins = int(num_classes), int(bins)
        self.anchors, self.coder, self.nms = dict(anchors), dict(coder), dict(nms)
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        self._anchor_set = AnchorSet.from_dict(self.anchors)
        shape = (len(self.iou_thresholds), self.num_classes, self.bins)
        self.true_pos = self.add_variable(shape=shape, initializer="zeros", name="true_pos")
        self.false_pos = self.add_variable(shape=shape, initializer="zeros",
                                           name="false_pos")
        self.truths = self.add_variable(shape=(self.num_classes,), initializer="zeros",
                                        name="truths")

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth = tf.cast(true_boxes(y_true, self._anchor_set.count), tf.float32)
        found = decode_detections(y_pred, self._anchor_set, BoxCoder(**self.coder),
                                  NmsConfig(**self.nms))
        classes = found["detection_classes"]                             # [B, N], -1 pad
        matched = tf.cast(greedy_matches(found["detection_boxes"], classes, truth,
                                         self.iou_thresholds), tf.float32)   # [B, T, N]
        weight = (tf.ones_like(found["detection_scores"][:, :1]) if sample_weight is None
                  else tf.reshape(tf.cast(sample_weight, tf.float32), [-1, 1]))
        present = tf.cast(classes >= 0, tf.float32) * weight                 # [B, N]
        score_bin = tf.clip_by_value(tf.cast(tf.floor(found["detection_scores"] * self.bins),
                                             tf.int64), 0, self.bins - 1)
        thresholds = len(self.iou_thresholds)
        cell = (tf.maximum(classes, 0) * self.bins + score_bin)[:, None, :]      # [B, 1, N]
        index = tf.reshape(cell + tf.range(thresholds, dtype=tf.int64)[None, :, None]
                           * self.num_classes * self.bins, [-1])
        cells = thresholds * self.num_classes * self.bins
        shape = (thresholds, self.num_classes, self.bins)

        def count(values):
            return tf.reshape(tf.math.unsorted_segment_sum(tf.reshape(values, [-1]), index,
                                                           cells), shape)

        self.true_pos.assign_add(count(matched * present[:, None, :]))
        self.false_pos.assign_add(count((1.0 - matched) * present[:, None, :]))
        true_classes = tf.cast(truth[..., 4], tf.int64)
        boxes = tf.cast(true_classes != NO_BOX, tf.float32) * weight
        self.truths.assign_add(tf.math.unsorted_segment_sum(
            tf.reshape(boxes, [-1]), tf.reshape(tf.maximum(true_classes, 0), [-1]),
            self.num_classes))

    def result(self):
        return mean_over_present(self.per_class(), self.truths)

    def per_class(self) -> tf.Tensor:
        """AP per IoU threshold and class, ``[T, C]`` (0 for a class without boxes)."""
        return average_precision(self.true_pos, self.false_pos, self.truths)

    def reset_state(self):
        for variable in (self.true_pos, self.false_pos, self.truths):
            variable.assign(tf.zeros_like(variable))

    def get_config(self) -> dict:
        return {"num_classes": self.num_classes, "anchors": self.anchors,
                "coder": self.coder, "nms": self.nms,
                "iou_thresholds": list(self.iou_thresholds), "bins": self.bins,
                "name": self.name}
