"""Predict from an exported SavedModel alone: no recipe, no training code.

A classifier gives its top classes; a multi-label classifier every label at or above its
threshold (the SavedModel's ``labels`` output; for a LiteRT file, the thresholds of the
model card beside it); a detector its boxes (:func:`detect`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from tftoolkit.data import DataInfo
from tftoolkit.data.decode import (DEFAULT_MAX_PIXELS, TOO_MANY_PIXELS, decode_image_bytes,
                                   refusal)
from tftoolkit.data.pipeline import Resize, to_rgb_image
from tftoolkit.errors import DataError, ExportError
from tftoolkit.serving.savedmodel import LABELS, MODEL_CARD

MAX_LISTED = 20  # refused images named in an error; the rest are counted


def refused_images(images: list[str | Path], max_pixels: int,
                   error: Exception | None = None) -> DataError:
    """The error for image files that did not decode: each refused file and why (more
    than ``max_pixels`` pixels declared, no image, a damaged one), with the fix; the
    decoder's ``error`` when no file is refused on its own."""
    reasons = [(str(path), refusal(Path(path).read_bytes(), max_pixels)) for path in images]
    refused = [f"{path}: {why}" for path, why in reasons if why is not None]
    if not refused:
        detail = str(getattr(error, "message", error) or "").strip().splitlines()
        return DataError(f"cannot decode {', '.join(path for path, _ in reasons)}"
                         f"{': ' + detail[-1][:200] if detail else ''}")
    fixes = []
    if any(TOO_MANY_PIXELS in line for line in refused):
        fixes.append(f"downscale an image over {max_pixels} pixels first (the "
                     "data.max_pixels the model was trained and exported with)")
    if any(TOO_MANY_PIXELS not in line for line in refused):
        fixes.append("give JPEG, PNG, GIF, BMP or WebP files that open in an image viewer")
    shown = refused[:MAX_LISTED] + ([f"and {len(refused) - MAX_LISTED} more"]
                                    if len(refused) > MAX_LISTED else [])
    return DataError(f"{len(refused)} of {len(images)} image(s) refused: {'; '.join(shown)}. "
                     f"Fix: {'; '.join(fixes)}")


def read_images(images: list[str | Path], max_pixels: int, resize: Resize) -> np.ndarray:
    """The image files, decoded and resized as the model was trained, as one batch;
    files that are not images, or declare more than ``max_pixels`` pixels, are refused,
    each named with why (:func:`refused_images`)."""
    try:
        return np.stack([np.asarray(to_rgb_image(decode_image_bytes(
            tf.io.read_file(str(path)), max_pixels), resize)) for path in images])
    except tf.errors.InvalidArgumentError as exc:
        raise refused_images(images, max_pixels, exc) from None


def _predict_litert(path: Path, images: list[str | Path]
                    ) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """Class probabilities from a LiteRT file, its labels (those packed in its metadata,
    for MediaPipe files, else the export version's beside it) and, for a multi-label
    model, the mask of labels at or above their thresholds (the model card's, or for a
    MediaPipe file on its own those in its metadata). Images
    are resized as the export's model card says the model was trained, or, for a
    MediaPipe file on its own, with the bilinear resize MediaPipe Tasks applies."""
    from tftoolkit.serving.litert import LiteRTModel
    from tftoolkit.serving.mediapipe_tasks import packed_labels, packed_thresholds

    packed, card = packed_labels(path), path.parent / MODEL_CARD
    names = packed
    if names is None:
        labels = path.parent / LABELS
        if not labels.is_file():
            raise ExportError(f"{path} has no labels in its metadata and is not inside an "
                              f"export version: no {LABELS} beside it")
        names = labels.read_text().splitlines()
    model = LiteRTModel(path)
    max_pixels, scores = DEFAULT_MAX_PIXELS, None
    if card.is_file():  # the training pipeline's resize and pixel limit, and the task
        info = DataInfo.from_dict(json.loads(card.read_text())["data_info"])
        resize, max_pixels, scores = info.resize, info.max_pixels, info.task.scores
    elif packed is not None:  # a MediaPipe file on its own: resized as MediaPipe does
        resize = Resize(model.input_shape[0], "bilinear")
    else:
        raise ExportError(f"{path} is not inside an export version: no {MODEL_CARD} beside "
                          "it, which says how images are resized for it")
    predictions = model.predict(read_images(images, max_pixels, resize))
    thresholds = (json.loads(card.read_text()).get("thresholds") if card.is_file()
                  else packed_thresholds(path))
    if thresholds:  # multi-label: sigmoid probabilities, one column per label
        return predictions, names, predictions >= np.array(list(thresholds.values()),
                                                           np.float32)
    # a MediaPipe file on its own serves its scores as they are
    return (predictions if scores is None else scores(predictions)), names, None


def predict(export_dir: str | Path, images: list[str | Path],
            top_k: int = 3) -> list[list[tuple[str, float]]]:
    """Top-``k`` ``(class_name, probability)`` per image file (a multi-label model: every
    label at or above its threshold, most probable first), from an export version's
    SavedModel (``serve_bytes``) or one of its LiteRT files (``.tflite``)."""
    export_dir = Path(export_dir)
    litert_file = export_dir.suffix == ".tflite" and export_dir.is_file()
    if not litert_file and not (export_dir / "saved_model.pb").is_file():
        raise ExportError(f"{export_dir} holds no SavedModel (saved_model.pb); give a "
                          "version directory such as saved_models/<recipe>/1, or a .tflite "
                          "file in one")
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        raise ExportError(f"image file(s) not found: {', '.join(missing)}")
    if litert_file:
        probabilities, names, labels = _predict_litert(export_dir, images)
        return _top(probabilities, names, top_k, labels)
    labels = export_dir / LABELS
    try:
        loaded = tf.saved_model.load(str(export_dir))
    except Exception as exc:  # a damaged file: protobuf's DecodeError, OSError, OpError
        detail = str(getattr(exc, "message", exc)).splitlines()[0][:160]
        raise ExportError(f"cannot load the SavedModel in {export_dir}: "
                          f"{type(exc).__name__}: {detail}; the export is damaged or "
                          "incomplete: export the run again (tftoolkit export RUN_DIR)"
                          ) from exc
    if "serve_bytes" not in loaded.signatures:
        raise ExportError(f"{export_dir} is not an image classifier export (no serve_bytes)")
    if not labels.is_file():
        raise ExportError(f"{export_dir} has no {LABELS} (its class names, one a line), "
                          "which every tftoolkit export writes: export the run again "
                          "(tftoolkit export RUN_DIR), or write the file")
    names = labels.read_text().splitlines()
    card = export_dir / MODEL_CARD
    max_pixels = (DataInfo.from_dict(json.loads(card.read_text())["data_info"]).max_pixels
                  if card.is_file() else DEFAULT_MAX_PIXELS)  # the limit the export serves
    data = tf.constant([Path(p).read_bytes() for p in images])
    try:
        outputs = loaded.signatures["serve_bytes"](image_bytes=data)
    except tf.errors.InvalidArgumentError as exc:
        raise refused_images(images, max_pixels, exc) from None
    labels = outputs["labels"].numpy() if "labels" in outputs else None
    return _top(outputs["probabilities"].numpy(), names, top_k, labels)


def _top(probabilities: np.ndarray, names: list[str], top_k: int,
         labels: np.ndarray | None = None) -> list[list[tuple[str, float]]]:
    """Per image, the ``top_k`` most probable classes, or with a multi-label mask every
    label it marks, most probable first."""
    results = []
    for i, row in enumerate(probabilities):
        order = np.argsort(row)[::-1]
        order = order[:top_k] if labels is None else [j for j in order if labels[i, j]]
        results.append([(names[j], float(row[j])) for j in order])
    return results


@dataclass(frozen=True)
class FoundObject:
    """One detection: its class, score and box ``(xmin, ymin, xmax, ymax)`` in pixels of
    the image it was found in."""

    class_name: str
    score: float
    box: tuple[float, float, float, float]


def is_detector(export_dir: str | Path) -> bool:
    """Whether the export version (or the LiteRT file in one) is an object detector's."""
    path = Path(export_dir)
    card = (path.parent if path.suffix == ".tflite" else path) / MODEL_CARD
    return card.is_file() and json.loads(card.read_text()).get("task") == "detection"


def detect(export_dir: str | Path, images: list[str | Path], min_score: float = 0.5,
           out: str | Path | None = None) -> list[list[FoundObject]]:
    """Per image file, the objects a detector's export version finds at ``min_score`` or
    more (its SavedModel's ``serve_bytes``: decoded and suppressed as MediaPipe does),
    most confident first; with ``out``, each image is written there as
    ``<name>_boxes.png`` with its boxes drawn."""
    import tensorflow as tf

    from tftoolkit.data.pipeline import decode_image_bytes, to_rgb
    from tftoolkit.detection.drawing import save_with_boxes

    export_dir = Path(export_dir)
    if export_dir.suffix == ".tflite":
        raise ExportError(f"{export_dir} is a MediaPipe ObjectDetector file: run it with "
                          "mediapipe.tasks.python.vision.ObjectDetector; predict reads the "
                          f"SavedModel of its version, {export_dir.parent}")
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        raise ExportError(f"image file(s) not found: {', '.join(missing)}")
    loaded = tf.saved_model.load(str(export_dir))
    found = []
    for path in images:
        data = Path(path).read_bytes()
        try:
            outputs = loaded.signatures["serve_bytes"](image_bytes=tf.constant([data]))
            image = to_rgb(decode_image_bytes(tf.constant(data))).numpy()
        except tf.errors.InvalidArgumentError as exc:
            raise ExportError(f"cannot decode {path} as an image: "
                              f"{exc.message.splitlines()[0][:160]}") from None
        count = int(outputs["num_detections"][0])
        scores = outputs["detection_scores"][0, :count].numpy()
        keep = scores >= min_score
        boxes = outputs["detection_boxes"][0, :count].numpy()[keep]
        names = [n.decode() for n in outputs["detection_class_names"][0, :count].numpy()[keep]]
        height, width = image.shape[:2]
        found.append([FoundObject(name, float(score), (
            float(box[1] * width), float(box[0] * height), float(box[3] * width),
            float(box[2] * height))) for name, score, box in zip(names, scores[keep], boxes)])
        if out is not None:
            save_with_boxes(image, Path(out) / f"{Path(path).stem}_boxes.png", boxes, names,
                            scores[keep])
    return found
