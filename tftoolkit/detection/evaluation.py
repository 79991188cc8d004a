"""COCO detection metrics by pycocotools: mAP over IoU 0.50:0.95, mAP@0.50, AP per class.

:func:`coco_evaluate` runs ``pycocotools``' ``COCOeval`` (the standard implementation) on
detections and true boxes given per image: what ``tftoolkit evaluate`` reports per class
and draws as precision-recall curves. The figures logged every epoch come from a metric
that computes the same algorithm batch by batch (:mod:`tftoolkit.detection.metrics`);
the tests check the two against each other.

Boxes are ``(ymin, xmin, ymax, xmax)`` normalised; IoU does not depend on the unit. A
class without true boxes in the evaluated images has no AP (NaN) and is left out of the
means, as in COCO.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class ImageBoxes:
    """One image's boxes [N, 4] normalised corners and class ids [N]; for detections,
    their scores [N] too."""

    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray | None = None


@dataclass(frozen=True)
class CocoMetrics:
    """COCO's AP figures of a set of images.

    Attributes:
        map: mean over classes of AP averaged over IoU 0.50, 0.55, ..., 0.95.
        map_50: mean over classes of AP at IoU 0.50.
        per_class: AP (0.50:0.95) of each class, NaN for a class without true boxes.
        per_class_50: AP at IoU 0.50 of each class.
        precision: [IoU thresholds, 101 recall points, classes] interpolated precision
            (-1 for a class without true boxes): the precision-recall curves.
    """

    map: float
    map_50: float
    per_class: np.ndarray
    per_class_50: np.ndarray
    precision: np.ndarray

    @classmethod
    def from_precision(cls, precision: np.ndarray) -> "CocoMetrics":
        """The figures of COCO's ``precision`` array [T, R, K] (-1: no true boxes)."""
        has_truth = precision[0, 0] > -1                     # [K]
        kept = precision[:, :, has_truth]
        per_class = np.full(precision.shape[2], np.nan)
        per_class_50 = per_class.copy()
        per_class[has_truth] = kept.mean(axis=(0, 1))
        per_class_50[has_truth] = kept[0].mean(axis=0)
        if not has_truth.any():
            return cls(float("nan"), float("nan"), per_class, per_class_50, precision)
        return cls(float(kept.mean()), float(kept[0].mean()), per_class, per_class_50,
                   precision)


def box_iou(detections: np.ndarray, truths: np.ndarray) -> np.ndarray:
    """[D, G] IoU of corner boxes."""
    d, g = detections[:, None, :], truths[None, :, :]
    height = np.clip(np.minimum(d[..., 2], g[..., 2]) - np.maximum(d[..., 0], g[..., 0]), 0,
                     None)
    width = np.clip(np.minimum(d[..., 3], g[..., 3]) - np.maximum(d[..., 1], g[..., 1]), 0,
                    None)
    inter = height * width

    def area(b):
        return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])

    union = area(d) + area(g) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _check(truths: list[ImageBoxes], detections: list[ImageBoxes]) -> None:
    """Refuse lists of different lengths and inverted boxes (COCOeval would silently
    ignore an inverted detection: its area is negative)."""
    if len(truths) != len(detections):
        raise ValueError(f"{len(truths)} images of true boxes but {len(detections)} of "
                         "detections")
    for what, images in (("true box", truths), ("detection", detections)):
        for i, image in enumerate(images):
            boxes = np.asarray(image.boxes).reshape(-1, 4)
            if (boxes[:, 2:] < boxes[:, :2]).any():
                raise ValueError(f"image {i}: a {what} has a minimum above its maximum "
                                 "(boxes are ymin, xmin, ymax, xmax)")


def coco_evaluate(truths: list[ImageBoxes], detections: list[ImageBoxes],
                  num_classes: int) -> CocoMetrics:
    """COCO's figures of ``detections`` against ``truths`` by ``pycocotools``' COCOeval
    (bounding boxes, all areas, 100 detections per image)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    _check(truths, detections)

    def xywh(box):
        ymin, xmin, ymax, xmax = (float(v) for v in box)
        return [xmin, ymin, xmax - xmin, ymax - ymin]

    images = [{"id": i + 1} for i in range(len(truths))]
    annotations = []
    for i, truth in enumerate(truths):
        for box, class_id in zip(truth.boxes, truth.classes):
            x, y, w, h = xywh(box)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": int(class_id) + 1, "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0})
    results = [{"image_id": i + 1, "category_id": int(c) + 1, "bbox": xywh(b),
                "score": float(s)}
               for i, found in enumerate(detections)
               for b, c, s in zip(found.boxes, found.classes, found.scores)]
    precision = -np.ones((len(IOU_THRESHOLDS), len(RECALL_POINTS), num_classes))
    with contextlib.redirect_stdout(io.StringIO()):  # COCO prints its progress
        ground = COCO()
        ground.dataset = {"images": images, "annotations": annotations,
                          "categories": [{"id": k + 1} for k in range(num_classes)]}
        ground.createIndex()
        if not results:  # loadRes refuses an empty list: every class with boxes has AP 0
            present = {a["category_id"] - 1 for a in annotations}
            precision[:, :, sorted(present)] = 0.0
            return CocoMetrics.from_precision(precision)
        evaluation = COCOeval(ground, ground.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
    # [T, R, K, areas, max detections]: all areas, 100 detections
    return CocoMetrics.from_precision(evaluation.eval["precision"][:, :, :, 0, -1])
