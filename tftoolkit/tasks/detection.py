"""Object detection: boxes and their classes in, an anchor-based single-stage detector.

Targets come from sources as box tables, ``[max_boxes, 5]`` rows of ``(ymin, xmin, ymax,
xmax, class id)`` per image (normalised boxes; unused rows of class -1); the pipeline
encodes a batch of them against the fixed anchors (:mod:`tftoolkit.detection.matching`).
The head is a feature pyramid over the backbone's maps at the anchors' strides
(:attr:`Detection.feature_strides`, :mod:`tftoolkit.detection.head`), whose predictions
are every anchor's box codes and class scores; the loss is the focal loss plus the box
loss (:mod:`tftoolkit.detection.losses`); the figures are COCO's mAP over IoU 0.50:0.95
(``map``) and at 0.50 (``map_50``), by a metric whose state adds up over batches and
replicas (:mod:`tftoolkit.detection.metrics`). Decisions and served outputs are the
detections decoded as MediaPipe's ObjectDetector decodes them
(:mod:`tftoolkit.detection.decoding`), under the TF Object Detection API's names.

Everything that makes the anchors, the coding and the decoding is in the task's
:meth:`~Detection.config`, kept in the run's data description, so every later command
(resume, evaluate, export) rebuilds the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, ClassVar

import keras
import numpy as np
import tensorflow as tf

from tftoolkit.detection.anchors import AnchorConfig, AnchorSet
from tftoolkit.detection.boxes import BoxCoder
from tftoolkit.detection.decoding import NmsConfig, decode_detections
from tftoolkit.detection.evaluation import ImageBoxes, box_iou, coco_evaluate
from tftoolkit.detection.head import HeadConfig, build_head
from tftoolkit.detection.losses import DetectionLoss
from tftoolkit.detection.matching import MatchConfig, TargetEncoder, true_boxes
from tftoolkit.detection.metrics import IOU_THRESHOLDS, DetectionAP
from tftoolkit.errors import RecipeError
from tftoolkit.tasks.base import Task

if TYPE_CHECKING:  # annotations only: tasks never import the recipe
    from tftoolkit.recipe import Recipe

# A detection of one file "agrees" with one of another: same class, at least this IoU.
AGREEMENT_IOU = 0.9
# The detections of a served model and of the metrics: MediaPipe's suppression, the 100
# detections COCO counts per image, scores of at least 0.05 (RetinaNet's test threshold;
# lower ones add nothing visible to mAP).
DEFAULT_NMS = NmsConfig(max_results=100, score_threshold=0.05)
# Augmentation keys that move pixels without moving boxes, or mix images.
UNBOXED_AUGMENT = ("crop", "erasing", "rand_augment", "mixup", "cutmix")


@dataclass(frozen=True)
class Detection(Task):
    """Boxes of ``num_classes`` classes in images of ``image_size`` pixels a side, at
    most ``max_boxes`` per image; ``anchors``, ``coder``, ``match``, ``nms`` and
    ``head_config`` configure the detector (see the module docstring)."""

    num_classes: int
    image_size: int
    max_boxes: int = 1
    anchors: AnchorConfig = AnchorConfig()
    coder: BoxCoder = BoxCoder()
    match: MatchConfig = MatchConfig()
    nms: NmsConfig = DEFAULT_NMS
    head_config: HeadConfig = HeadConfig()
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    name: ClassVar[str] = "detection"
    traced_updates: ClassVar[bool] = True
    figures: ClassVar[dict[str, bool]] = {"loss": False, "map": True, "map_50": True}
    # decoding, suppressing and matching each training batch's detections would add a
    # fifth to the training time (the detection benchmark's set, 6 + 10 epochs: 479 s
    # against 405 s): mAP is validation's alone
    train_figures: ClassVar[bool] = False
    default_figure: ClassVar[str] = "map"
    spatial: ClassVar[bool] = True
    formats: ClassVar[tuple[str, ...] | None] = ("mediapipe", "mediapipe_int8")
    mediapipe_task: ClassVar[str] = "ObjectDetector"

    def __post_init__(self):
        AnchorSet.build(self.anchors, self.image_size)  # refuse an impossible input size

    @property
    def anchor_set(self) -> AnchorSet:
        if "anchors" not in self._cache:
            self._cache["anchors"] = AnchorSet.build(self.anchors, self.image_size)
        return self._cache["anchors"]

    @property
    def _encoder(self) -> TargetEncoder:
        if "encoder" not in self._cache:
            self._cache["encoder"] = TargetEncoder(self.anchor_set, self.coder, self.match)
        return self._cache["encoder"]

    # --- rebuilding the task ---------------------------------------------------------

    def config(self) -> dict:
        return {"image_size": self.image_size, "max_boxes": self.max_boxes,
                "anchors": asdict(self.anchors), "coder": self.coder.to_dict(),
                "match": asdict(self.match), "nms": asdict(self.nms),
                "head": asdict(self.head_config)}

    @classmethod
    def from_config(cls, num_classes: int, config: dict) -> "Detection":
        """The task :meth:`config` describes (a data description's ``task_config``)."""
        if not config:
            raise ValueError("a detection task is rebuilt from its config (the data "
                             "description's task_config), and none was given")
        return cls(num_classes, config["image_size"], config["max_boxes"],
                   AnchorConfig.from_dict(config["anchors"]), BoxCoder(**config["coder"]),
                   MatchConfig(**config["match"]), NmsConfig(**config["nms"]),
                   HeadConfig(**config["head"]))

    # --- targets ---------------------------------------------------------------------

    @property
    def encoding(self) -> str:
        return "detection"

    def encode(self, labels: tf.Tensor) -> tf.Tensor:
        """Box tables ``[batch, max_boxes, 5]`` -> anchor targets and the tables
        (:class:`~tftoolkit.detection.matching.TargetEncoder`)."""
        return self._encoder(labels)

    def targets(self, encoded: np.ndarray) -> np.ndarray:
        return np.asarray(true_boxes(np.asarray(encoded), self.anchor_set.count))

    # --- the head, the loss and the figures ------------------------------------------

    @property
    def output_units(self) -> int:
        return self.num_classes

    @property
    def activation(self) -> str:
        return "sigmoid"

    @property
    def feature_strides(self) -> tuple[int, ...]:
        return tuple(self.anchors.strides)

    def head(self, feature_shapes: list[tuple[int, ...]]) -> keras.Model:
        return build_head(feature_shapes, self.anchor_set, self.num_classes,
                          self.head_config, self.coder)

    def loss(self, label_smoothing: float = 0.0, balanced: bool = False) -> keras.losses.Loss:
        return DetectionLoss()

    def metrics(self) -> list[keras.metrics.Metric]:
        shared = dict(num_classes=self.num_classes, anchors=self.anchor_set.to_dict(),
                      coder=self.coder.to_dict(), nms=asdict(self.nms))
        return [DetectionAP(**shared, iou_thresholds=IOU_THRESHOLDS, name="map"),
                DetectionAP(**shared, iou_thresholds=(0.5,), name="map_50")]

    def check_recipe(self, recipe: "Recipe") -> None:
        """Refuse settings that have no meaning for boxes."""
        a, t = recipe.augment, recipe.train
        if recipe.regularize.label_smoothing:
            raise RecipeError(f"regularize.label_smoothing={recipe.regularize.label_smoothing}"
                              ": a detector's focal loss has no label smoothing; set it to 0")
        if recipe.data.class_weight != "none":
            raise RecipeError("data.class_weight=balanced weighs whole images by their "
                              "class, which a detection image does not have (the focal loss "
                              "balances its anchors itself); set data.class_weight=none")
        if t.tta:
            raise RecipeError(f"train.tta={t.tta}: test-time augmentation averages the "
                              "predictions of flipped views, which for a detector are boxes "
                              "in other places; set train.tta=0")
        if recipe.privacy.enabled:
            raise RecipeError("privacy.enabled: DP-SGD is not offered for detectors; set "
                              "privacy.enabled=false")
        other = [f for f in recipe.export.formats if f not in self.formats]
        if recipe.export.enabled and other:
            raise RecipeError(f"export.formats has {other}: a detector is served as a "
                              f"SavedModel and as {', '.join(self.formats)}; remove "
                              f"{', '.join(other)}")
        unboxed = [key for key in UNBOXED_AUGMENT if a.enabled and getattr(a, key)]
        if unboxed:
            raise RecipeError(f"augment.{unboxed[0]}={getattr(a, unboxed[0])!r} changes "
                              "pixels without moving the boxes with them; a detector's "
                              "augmentation takes flip, resized_crop_scale, rotation, zoom, "
                              "translation, contrast and brightness: set "
                              f"augment.{unboxed[0]}=0")

    # --- decisions and served outputs ------------------------------------------------

    def _decoded(self, predictions) -> dict[str, tf.Tensor]:
        return decode_detections(tf.convert_to_tensor(predictions, tf.float32),
                                 self.anchor_set, self.coder, self.nms)

    def decide(self, predictions: np.ndarray,
               thresholds: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The detections (``detection_boxes``, ``detection_scores``,
        ``detection_classes``, ``num_detections``), decoded as MediaPipe does."""
        return {key: value.numpy() for key, value in self._decoded(predictions).items()}

    def agreement(self, predictions: np.ndarray, reference: np.ndarray,
                  thresholds: np.ndarray | None = None) -> float:
        """The share of the detections of ``predictions`` that match a detection of
        ``reference`` (same class, IoU at least :data:`AGREEMENT_IOU`); 1 when neither
        detects anything."""
        mine, theirs = (_image_boxes(self.decide(p)) for p in (predictions, reference))
        matched = total = 0
        for found, wanted in zip(mine, theirs):
            total += len(found.classes)
            if len(found.classes) and len(wanted.classes):
                same = found.classes[:, None] == wanted.classes[None, :]
                iou = np.where(same, box_iou(found.boxes, wanted.boxes), 0.0)
                matched += int((iou.max(axis=1) >= AGREEMENT_IOU).sum())
        return matched / total if total else float(not sum(len(w.classes) for w in theirs))

    def serving_outputs(self, predictions: tf.Tensor, class_names: tf.Tensor | None = None,
                        thresholds: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        """``detection_boxes`` [batch, N, 4] ``(ymin, xmin, ymax, xmax)`` normalised to the
        image, ``detection_scores``, ``detection_classes`` (0-based, -1 past
        ``num_detections``), ``detection_class_names`` ("" past it), ``num_detections``."""
        found = self._decoded(predictions)
        classes = found["detection_classes"]
        names = tf.gather(tf.concat([class_names, [""]], axis=0),
                          tf.where(classes >= 0, classes, tf.size(class_names, tf.int64)))
        return {**found, "detection_class_names": names}

    @property
    def serving_key(self) -> str:
        return "detection_boxes"

    def scores(self, predictions: np.ndarray) -> np.ndarray:
        """What the served model returns as :attr:`serving_key`: the detected boxes."""
        return self._decoded(predictions)["detection_boxes"].numpy()

    def report(self, targets: np.ndarray, predictions: np.ndarray, class_names: list[str],
               thresholds: np.ndarray | None = None) -> dict:
        """:meth:`measure`'s ``map`` and ``map_50``; and by pycocotools' ``COCOeval`` on
        the same detections, the same two figures, AP (0.50:0.95 and 0.50) and true boxes
        per class, and the precision at 101 recall points of each class at IoU 0.50."""
        truths = [ImageBoxes(t[t[:, 4] >= 0, :4], t[t[:, 4] >= 0, 4].astype(int))
                  for t in np.asarray(targets)]
        found = _image_boxes(self.decide(predictions))
        coco = coco_evaluate(truths, found, self.num_classes)
        boxes = np.bincount(np.concatenate([t.classes for t in truths] + [np.zeros(0, int)]),
                            minlength=self.num_classes)
        per_class = [{"class": name, "ap": _number(ap), "ap_50": _number(ap_50),
                      "boxes": int(count)}
                     for name, ap, ap_50, count in zip(class_names, coco.per_class,
                                                       coco.per_class_50, boxes)]
        return {"examples": int(len(truths)), **self.measure(targets, predictions),
                "cocoeval": {"map": _number(coco.map), "map_50": _number(coco.map_50)},
                "per_class": per_class,
                "precision_50": coco.precision[0].T.round(4).tolist()}


def _number(value: float) -> float | None:
    """A figure for JSON: None for NaN (a class without true boxes has no AP)."""
    return None if np.isnan(value) else float(value)


def _image_boxes(detections: dict[str, np.ndarray]) -> list[ImageBoxes]:
    """Per image, the detections of decoded outputs (padding left out)."""
    return [ImageBoxes(boxes[:n], classes[:n], scores[:n]) for boxes, classes, scores, n in
            zip(detections["detection_boxes"], detections["detection_classes"],
                detections["detection_scores"], detections["num_detections"])]

