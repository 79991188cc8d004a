"""A detector's raw outputs -> detections, the way MediaPipe's ObjectDetector decides.

MediaPipe Tasks runs a model without non-max suppression through
``TensorsToDetectionsCalculator`` and ``NonMaxSuppressionCalculator``: each anchor's box
decoded from its codes (:class:`~tftoolkit.detection.boxes.BoxCoder`), its score its
best class's and its class that class; anchors under the score threshold dropped; then
greedy suppression, class-agnostic, of every box whose IoU with a box already kept is
above 0.3, in order of score, until ``max_results`` are kept. :func:`decode_detections`
does the same with TensorFlow ops (any batch; usable in a SavedModel signature), so the
served model and the MediaPipe file return the same detections. Boxes are suppressed as
decoded and then clipped to the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from tftoolkit.detection.anchors import AnchorSet
from tftoolkit.detection.boxes import BoxCoder
from tftoolkit.detection.head import split_predictions

MEDIAPIPE_IOU = 0.3  # MediaPipe's default min_suppression_threshold


@dataclass(frozen=True)
class NmsConfig:
    """How many detections an image gets at most, the lowest score kept, and the IoU
    above which a lower-scored box is suppressed."""

    max_results: int = 100
    score_threshold: float = 0.0
    iou_threshold: float = MEDIAPIPE_IOU


def decode_detections(predictions: tf.Tensor, anchors: AnchorSet, coder: BoxCoder,
                      nms: NmsConfig = NmsConfig()) -> dict[str, tf.Tensor]:
    """A detector's predictions [batch, anchors, 4 + classes] (box codes, then class
    scores) -> the detection outputs of the TF Object Detection API, padded to
    ``nms.max_results``:

    - ``detection_boxes`` [batch, N, 4] float32 ``(ymin, xmin, ymax, xmax)`` normalised
      to the input image and clipped to it (0 past ``num_detections``);
    - ``detection_scores`` [batch, N] float32 (0 past it), in decreasing order;
    - ``detection_classes`` [batch, N] int64 0-based class ids (-1 past it);
    - ``num_detections`` [batch] int32.
    """
    codes, scores = split_predictions(tf.cast(predictions, tf.float32))
    boxes = coder.decode(codes, tf.constant(anchors.centres_sizes()))
    limit = nms.max_results

    def one_image(args):
        image_boxes, image_scores = args
        best = tf.reduce_max(image_scores, axis=-1)
        classes = tf.argmax(image_scores, axis=-1)
        candidates = tf.where(best >= nms.score_threshold)[:, 0]
        kept = tf.image.non_max_suppression(
            tf.gather(image_boxes, candidates), tf.gather(best, candidates), limit,
            iou_threshold=nms.iou_threshold)
        chosen = tf.gather(candidates, kept)
        count = tf.shape(chosen)[0]
        pad = [[0, limit - count]]
        return (tf.pad(tf.clip_by_value(tf.gather(image_boxes, chosen), 0.0, 1.0),
                       pad + [[0, 0]]),
                tf.pad(tf.gather(best, chosen), pad),
                tf.pad(tf.gather(classes, chosen), pad, constant_values=-1),
                count)

    out_boxes, out_scores, out_classes, counts = tf.map_fn(
        one_image, (boxes, scores), fn_output_signature=(
            tf.TensorSpec([limit, 4], tf.float32), tf.TensorSpec([limit], tf.float32),
            tf.TensorSpec([limit], tf.int64), tf.TensorSpec([], tf.int32)))
    return {"detection_boxes": out_boxes, "detection_scores": out_scores,
            "detection_classes": out_classes, "num_detections": counts}
