"""SavedModel export: serving signatures, a parity check, atomic numbered versions.

Layout: ``<export.dir>/<recipe>/<version>/`` (what TF Serving loads) holding the
SavedModel, ``labels.txt``, ``model_card.json`` and ``model.keras``. The version is
written in a temporary directory beside the target, checked, then renamed into place:
a failed export leaves no version directory, and an existing version is never touched.

Signatures of an image classifier:
- ``serving_default``: float ``images`` [batch, H, W, 3], raw 0-255, any H and W
  -> ``probabilities`` [batch, classes], ``class_id``, ``class_name``;
- ``serve_bytes``: ``image_bytes`` [batch] encoded JPEG/PNG -> the same outputs.
A feature-vector model has one ``serving_default``: ``features`` -> ``outputs``.
The model is always called with ``training=False``: no augmentation, dropout or
BatchNorm update can reach a served prediction.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tftoolkit.data import DataInfo
from tftoolkit.data.pipeline import decode_image_bytes, to_rgb_image
from tftoolkit.errors import ExportError
from tftoolkit.serving.formats import check_formats, write_tflite
from tftoolkit.serving.outputs import classifier_outputs, expected_output, served_key

MIXED_PRECISION_TOLERANCE = 1e-2
MODEL_CARD, LABELS = "model_card.json", "labels.txt"


def next_version(root: Path) -> int:
    """One more than the highest numbered version under ``root`` (1 when none)."""
    versions = [int(p.name) for p in root.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def write_savedmodel(model: keras.Model, info: DataInfo, path: Path) -> None:
    """Write ``model`` with its serving signatures as a SavedModel at ``path``."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    if info.image_size and info.class_names:
        size = info.image_size
        names = tf.constant(info.class_names)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32,
                                                    name="images")])
        def serve_images(images):
            # resizing to the same size is exact: served == predicted at the model's size
            x = tf.image.resize(images, (size, size))
            return classifier_outputs(model(x, training=False), names)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve_bytes(image_bytes):
            images = tf.map_fn(lambda b: to_rgb_image(decode_image_bytes(b), size),
                               image_bytes,
                               fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
            return classifier_outputs(model(images, training=False), names)

        archive.add_endpoint("serving_default", serve_images)
        archive.add_endpoint("serve_bytes", serve_bytes)
    else:
        @tf.function(input_signature=[tf.TensorSpec([None, *info.input_shape], tf.float32,
                                                    name="features")])
        def serve_features(features):
            return {"outputs": tf.cast(model(features, training=False), tf.float32)}

        archive.add_endpoint("serving_default", serve_features)
    archive.write_out(str(path), verbose=False)


def parity_check(path: Path, model: keras.Model, inputs: np.ndarray,
                 tolerance: float) -> float:
    """Serve ``inputs`` from the SavedModel at ``path`` (twice) and compare with the Keras
    model in inference mode. Returns the max abs difference; raises ExportError."""
    served = tf.saved_model.load(str(path)).signatures["serving_default"]
    x = tf.constant(inputs, tf.float32)
    first = served(x)
    second = served(x)
    key = served_key(first)
    expected = expected_output(model, inputs, key)
    got = first[key].numpy()
    if not np.array_equal(got, second[key].numpy()):
        raise ExportError(f"parity check failed: two calls of serving_default on the same "
                          f"input differ (max {np.abs(got - second[key].numpy()).max():.3g}); "
                          "the served graph is not deterministic")
    diff = float(np.abs(got - expected).max())
    if diff > tolerance:
        raise ExportError(f"parity check failed: the SavedModel's {key} differ from the "
                          f"Keras model's by {diff:.3g} > tolerance {tolerance:g}")
    return diff


def _versions() -> dict[str, str]:
    return {"tftoolkit": importlib.metadata.version("tftoolkit"), "tensorflow": tf.__version__,
            "keras": keras.__version__, "python": platform.python_version()}


def export_model(model: keras.Model, info: DataInfo, root: Path, *,
                 parity_inputs: np.ndarray, card: dict[str, Any],
                 tolerance: float = 1e-5, mixed_precision: bool = False,
                 formats: list[str] = ()) -> Path:
    """Export ``model`` as the next numbered version under ``root`` (plus ``formats``,
    each parity-checked); returns its path."""
    check_formats(list(formats))
    root.mkdir(parents=True, exist_ok=True)
    version = next_version(root)
    target = root / str(version)
    tmp = root / f".tmp-{version}-{os.getpid()}"
    if mixed_precision:
        tolerance = max(tolerance, MIXED_PRECISION_TOLERANCE)
    try:
        write_savedmodel(model, info, tmp)
        diff = parity_check(tmp, model, parity_inputs, tolerance)
        extra = {}
        if "tflite" in formats:
            extra["tflite"] = {"file": "model.tflite", "max_abs_diff": write_tflite(
                tmp, tmp / "model.tflite", model, parity_inputs, tolerance)}
        if info.class_names:
            (tmp / LABELS).write_text("".join(f"{n}\n" for n in info.class_names))
        model.save(tmp / "model.keras")
        card = {**card, "version": version, "class_names": info.class_names,
                "input_shape": list(info.input_shape), "task": info.task,
                "parity": {"max_abs_diff": diff, "tolerance": tolerance,
                           "examples": int(len(parity_inputs)),
                           "note": "mixed precision: looser tolerance" if mixed_precision
                           else "float32"},
                "formats": extra,
                "versions": _versions()}
        (tmp / MODEL_CARD).write_text(json.dumps(card, indent=2, default=str) + "\n")
        if target.exists():
            raise ExportError(f"export version {target} appeared meanwhile; not overwriting")
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
