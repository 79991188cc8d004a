"""SavedModel export: serving signatures, a parity check, atomic numbered versions.

Layout: ``<export.dir>/<recipe>/<version>/`` (what TF Serving loads) holding the
SavedModel, ``labels.txt``, ``model_card.json`` and ``model.keras``. The version is
written in a temporary directory beside the target (``.tmp-<host>-<pid>-<id>``), checked,
then renamed into place: a failed export leaves no version directory, and an existing
version is never touched. The temporary directory of a process killed mid-export is
removed by the next export to the same root from the same host (on a shared disk, only
the host that wrote it can tell whether its process is alive).

Signatures of an image model, each returning the task's outputs
(:meth:`~tftoolkit.tasks.Task.serving_outputs`: a classifier's ``probabilities``
[batch, classes], ``class_id`` and ``class_name``; a multi-label classifier's
``probabilities`` and ``labels``, a boolean [batch, classes] mask of the classes at or
above their thresholds; a regression's ``outputs``):
- ``serving_default``: float ``images`` [batch, H, W, 3], raw 0-255, any H and W;
- ``serve_bytes``: ``image_bytes`` [batch] encoded JPEG/PNG.
Both bring images to the model's size with the training pipeline's own
:class:`~tftoolkit.data.pipeline.Resize` (``data.resize_method``, antialiased when
downscaling, whole pixel levels); the parity check serves real images through both at
sizes other than the model's.
A feature-vector model has one ``serving_default``: ``features`` -> the task's outputs.
The model is always called with ``training=False``: no augmentation, dropout or
BatchNorm update can reach a served prediction.
"""

from __future__ import annotations

import errno
import importlib.metadata
import json
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tftoolkit.data import DataInfo
from tftoolkit.data.pipeline import Resize, decode_image_bytes, to_rgb_image
from tftoolkit.errors import ExportError
from tftoolkit.serving import litert, mediapipe_tasks
from tftoolkit.serving.detection import mediapipe_detector
from tftoolkit.serving.formats import (ONNX_FILE, ONNX_TOLERANCE, check_formats, write_onnx,
                                       write_tflite)
from tftoolkit.serving.outputs import expected_output, served_key
from tftoolkit.tasks import Task
from tftoolkit.tempfiles import remove_stale_temporaries, temporary_path

MIXED_PRECISION_TOLERANCE = 1e-2
# Client image sides the parity check also serves (beside the model's own), and how many
# of the parity images it re-serves at each.
PARITY_SIDES, PARITY_RESIZED = (28, 300, 640), 4
MODEL_CARD, LABELS = "model_card.json", "labels.txt"
# LiteRT files measured on the validation and test splits before they are kept
MEASURED = (*litert.QUANTIZED, *mediapipe_tasks.MEDIAPIPE)


def next_version(root: Path) -> int:
    """One more than the highest numbered version under ``root`` (1 when none)."""
    versions = [int(p.name) for p in root.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def _out_of_space(error: BaseException) -> bool:
    return (isinstance(error, tf.errors.ResourceExhaustedError)
            or (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)))


def _served_outputs(info: DataInfo, thresholds: np.ndarray | None):
    """The map from the model's predictions to a signature's outputs: the task's, with
    the class names and a thresholded task's thresholds."""
    task = info.task
    if task.thresholded and thresholds is None:
        raise ExportError(f"a {task.name} export needs its per-class thresholds (the run's "
                          "thresholds.json)")
    names = tf.constant(info.class_names) if info.class_names else None
    cut = None if thresholds is None else tf.constant(np.asarray(thresholds, np.float32))
    return lambda predictions: task.serving_outputs(predictions, names, cut)


def write_savedmodel(model: keras.Model, info: DataInfo, path: Path,
                     thresholds: np.ndarray | None = None) -> None:
    """Write ``model`` with its serving signatures as a SavedModel at ``path``
    (``thresholds``: a multi-label model's, per class)."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    outputs = _served_outputs(info, thresholds)
    if info.image_size:
        size, resize = info.image_size, info.resize

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32,
                                                    name="images")])
        def serve_images(images):
            # the training pipeline's resize: exact (an identity) at the model's size
            return outputs(model(resize(images), training=False))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve_bytes(image_bytes):
            images = tf.map_fn(lambda b: to_rgb_image(decode_image_bytes(b, info.max_pixels),
                                                      resize),
                               image_bytes,
                               fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
            return outputs(model(images, training=False))

        archive.add_endpoint("serving_default", serve_images)
        archive.add_endpoint("serve_bytes", serve_bytes)
    else:
        @tf.function(input_signature=[tf.TensorSpec([None, *info.input_shape], tf.float32,
                                                    name="features")])
        def serve_features(features):
            return outputs(model(features, training=False))

        archive.add_endpoint("serving_default", serve_features)
    archive.write_out(str(path), verbose=False)


def _at_side(images: np.ndarray, side: int) -> np.ndarray:
    """``images`` as a client could send them at ``side`` x ``side`` (whole pixels)."""
    resized = tf.image.resize(images, (side, side), antialias=True)
    return np.asarray(tf.clip_by_value(tf.round(resized), 0.0, 255.0))


def _compare(what: str, got: np.ndarray, expected: np.ndarray, tolerance: float) -> float:
    diff = float(np.abs(got - expected).max())
    if diff > tolerance:
        raise ExportError(f"parity check failed: {what} differs from the Keras model on "
                          f"the training pipeline's resize of the same images by {diff:.3g} "
                          f"> tolerance {tolerance:g}")
    return diff


def parity_check(path: Path, model: keras.Model, inputs: np.ndarray, tolerance: float,
                 resize: Resize | None, max_pixels: int, task: Task) -> float:
    """Serve ``inputs`` from the SavedModel at ``path`` (twice) and compare with the Keras
    model in inference mode; for images (``resize``), serve them again through
    ``serving_default`` and ``serve_bytes`` (PNG) at other sizes (:data:`PARITY_SIDES`;
    ``serve_bytes`` only those within its ``max_pixels``) and compare with the Keras model
    on ``resize`` of those; ``task`` says what the main output serves. Returns the max
    abs difference; raises ExportError."""
    loaded = tf.saved_model.load(str(path))
    served = loaded.signatures["serving_default"]
    x = tf.constant(inputs, tf.float32)
    first = served(x)
    second = served(x)
    key = served_key(first, task)
    got = first[key].numpy()
    if not np.array_equal(got, second[key].numpy()):
        raise ExportError(f"parity check failed: two calls of serving_default on the same "
                          f"input differ (max {np.abs(got - second[key].numpy()).max():.3g}); "
                          "the served graph is not deterministic")
    prepared = inputs if resize is None else np.asarray(resize(x))
    diff = _compare(f"the SavedModel's {key}", got, expected_output(model, prepared, task, key),
                    tolerance)
    if resize is None or "serve_bytes" not in loaded.signatures:
        return diff
    for side in PARITY_SIDES:
        client = _at_side(inputs[:PARITY_RESIZED], side)
        expected = expected_output(model, np.asarray(resize(client)), task, key)
        by_array = served(tf.constant(client, tf.float32))[key].numpy()
        diff = max(diff, _compare(f"serving_default at {side} px", by_array, expected,
                                  tolerance))
        if side * side <= max_pixels:
            png = [tf.io.encode_png(tf.cast(image, tf.uint8)) for image in client]
            by_bytes = loaded.signatures["serve_bytes"](image_bytes=tf.stack(png))[key]
            diff = max(diff, _compare(f"serve_bytes (PNG) at {side} px", by_bytes.numpy(),
                                      expected, tolerance))
    return diff


def fixed_size(info: DataInfo, client_resize: str = "") -> dict[str, Any]:
    """What a client of a file of a fixed input size (LiteRT, ONNX, MediaPipe) must know:
    the shape it takes and, for images, how training brought them to it
    (``client_resize``: the format's own wording of it, when it has one)."""
    if info.resize is None:
        return {"input_shape": list(info.input_shape)}
    size = info.image_size
    return {"input_size": [size, size], "client_resize": client_resize or (
        f"Takes {size}x{size} images, as training saw them: {info.resize.describe()}. "
        "Resize each image that way before running the file (the SavedModel's signatures "
        "resize inside).")}


def _versions() -> dict[str, str]:
    return {"tftoolkit": importlib.metadata.version("tftoolkit"), "tensorflow": tf.__version__,
            "keras": keras.__version__, "python": platform.python_version()}


@dataclass
class Quantization:
    """What the quantized and MediaPipe LiteRT files are measured and calibrated on.

    Attributes:
        splits: ``{split: (inputs, class ids, multi-hot rows or targets)}`` to measure
            each file on; the validation split decides, the test split is only reported.
        calibration: batches of training inputs for ``tflite_int8`` and ``mediapipe_int8``.
        int8_io: ``float``, ``uint8`` or ``int8`` input/output of ``tflite_int8``.
        max_accuracy_drop: the most accuracy (multi-label: mAP) a variant may lose
            against the float model.
    """

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    calibration: list[np.ndarray]
    int8_io: str = "float"
    max_accuracy_drop: float = 0.02


def _quantized_variants(model: keras.Model, info: DataInfo, formats: list[str],
                        quantization: Quantization, tmp: Path,
                        thresholds: np.ndarray | None = None) -> tuple[dict, dict]:
    """Write each measured variant (quantized, MediaPipe) that keeps its accuracy (a
    multi-label model's mAP and micro-F1 at the thresholds) into ``tmp``; returns the card
    entries of the written ones and of the refused ones (with the reason)."""
    float_file = litert.convert(model, "tflite", info.input_shape, task=info.task)
    reference = litert.LiteRTModel(float_file)
    float_latency = reference.latency_ms(quantization.splits[litert.DECIDED_ON][0])
    written, refused = {}, {}
    for fmt in (f for f in formats if f in MEASURED):
        metadata = None
        if fmt in mediapipe_tasks.MEDIAPIPE and info.task.mediapipe_task == "ObjectDetector":
            flatbuffer, metadata = mediapipe_detector(model, fmt, info,
                                                      quantization.calibration)
        elif fmt in mediapipe_tasks.MEDIAPIPE:
            flatbuffer, metadata = mediapipe_tasks.convert(
                model, fmt, info, quantization.calibration, thresholds)
        else:
            flatbuffer = litert.convert(model, fmt, info.input_shape,
                                        quantization.calibration, quantization.int8_io,
                                        task=info.task)
        measured = litert.measure(litert.LiteRTModel(flatbuffer), model,
                                  quantization.splits, info.task, thresholds)
        entry = {"file": litert.file_name(fmt), "size_bytes": len(flatbuffer),
                 "size_vs_float_tflite": len(flatbuffer) / len(float_file),
                 **measured.figures, measured.drop_key: measured.drop,
                 "latency_ms": measured.latency_ms,
                 "latency_vs_float_tflite": measured.latency_ms / float_latency,
                 "examples": {s: int(len(x)) for s, (x, _) in quantization.splits.items()}}
        if fmt in ("tflite_int8", "mediapipe_int8"):
            entry["io"] = quantization.int8_io if fmt == "tflite_int8" else "uint8"
        if metadata is not None:
            entry["metadata_file"] = mediapipe_tasks.metadata_file(fmt)
            entry.update(fixed_size(info, mediapipe_tasks.resize_note(info.resize)))
        else:
            entry.update(fixed_size(info))
        reason = measured.refusal(fmt, quantization.max_accuracy_drop)
        if reason:
            refused[fmt] = {**entry, "file": None, "reason": reason}
            continue
        (tmp / entry["file"]).write_bytes(flatbuffer)
        if metadata is not None:
            (tmp / entry["metadata_file"]).write_text(metadata)
        written[fmt] = entry
    return written, refused


def export_model(model: keras.Model, info: DataInfo, root: Path, *,
                 parity_inputs: np.ndarray, card: dict[str, Any],
                 tolerance: float = 1e-4, mixed_precision: bool = False,
                 formats: list[str] = (), quantization: Quantization | None = None,
                 thresholds: np.ndarray | None = None) -> Path:
    """Export ``model`` as the next numbered version under ``root`` (plus ``formats``,
    the float ones parity-checked, the quantized ones measured with ``quantization``;
    ``thresholds``: a multi-label model's, served and kept in the card); returns its
    path."""
    check_formats(list(formats), info)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root)
    tmp = temporary_path(root)
    if mixed_precision:
        tolerance = max(tolerance, MIXED_PRECISION_TOLERANCE)
    try:
        write_savedmodel(model, info, tmp, thresholds)
        diff = parity_check(tmp, model, parity_inputs, tolerance, info.resize,
                            info.max_pixels, info.task)
        extra = {}
        if "tflite" in formats:
            extra["tflite"] = {"file": "model.tflite", "max_abs_diff": write_tflite(
                tmp / "model.tflite", model, info, parity_inputs, tolerance),
                **fixed_size(info)}
        if "onnx" in formats:
            onnx_tolerance = max(tolerance, ONNX_TOLERANCE)
            extra["onnx"] = {"file": ONNX_FILE, "tolerance": onnx_tolerance,
                             "max_abs_diff": write_onnx(model, info, tmp / ONNX_FILE,
                                                        parity_inputs, onnx_tolerance),
                             **fixed_size(info)}
        refused = {}
        if any(f in MEASURED for f in formats):
            if quantization is None:
                raise ExportError("quantized and MediaPipe LiteRT formats need data to be "
                                  "measured on "
                                  "(export a run directory, or pass quantization=)")
            written, refused = _quantized_variants(model, info, list(formats), quantization,
                                                   tmp, thresholds)
            extra.update(written)
        if info.class_names:
            (tmp / LABELS).write_text("".join(f"{n}\n" for n in info.class_names))
        model.save(tmp / "model.keras")
        card = {**card, "class_names": info.class_names,
                "input_shape": list(info.input_shape), "task": info.task.name,
                "parity": {"max_abs_diff": diff, "tolerance": tolerance,
                           "examples": int(len(parity_inputs)),
                           "note": "mixed precision: looser tolerance" if mixed_precision
                           else "float32"},
                "formats": extra, "formats_refused": refused,
                **({} if thresholds is None else {"thresholds": dict(zip(
                    info.class_names, map(float, thresholds)))}),
                "versions": _versions()}
        return _publish(tmp, root, card)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if _out_of_space(exc):
            detail = exc.message if isinstance(exc, tf.errors.OpError) else exc.strerror
            raise ExportError(f"the disk is full: the export to {root} failed "
                              f"({str(detail).splitlines()[0][:160]}); its partial files were "
                              "removed and no version was written. Free some space (or "
                              "--set export.dir=... on another disk), then `tftoolkit "
                              "export RUN_DIR` exports the trained run again") from exc
        raise


def _publish(tmp: Path, root: Path, card: dict[str, Any]) -> Path:
    """Rename the finished ``tmp`` to the next free version number. A rename onto a
    version another exporter took meanwhile fails, and the next number is tried: two
    exports to one folder each get their own version, and none is overwritten."""
    version = next_version(root)
    while True:
        (tmp / MODEL_CARD).write_text(
            json.dumps({**card, "version": version}, indent=2, default=str) + "\n")
        try:
            os.rename(tmp, root / str(version))
            return root / str(version)
        except OSError as exc:  # taken: a non-empty directory, or a file, of that name
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise
            version += 1
