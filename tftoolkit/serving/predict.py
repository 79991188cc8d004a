"""Predict from an exported SavedModel alone: no recipe, no training code."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tftoolkit.errors import ExportError
from tftoolkit.serving.savedmodel import LABELS


def predict(export_dir: str | Path, images: list[str | Path],
            top_k: int = 3) -> list[list[tuple[str, float]]]:
    """Top-``k`` ``(class_name, probability)`` per image file, via ``serve_bytes``."""
    import tensorflow as tf

    export_dir = Path(export_dir)
    if not (export_dir / "saved_model.pb").is_file():
        raise ExportError(f"{export_dir} holds no SavedModel (saved_model.pb); give a "
                          "version directory such as saved_models/<recipe>/1")
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        raise ExportError(f"image file(s) not found: {', '.join(missing)}")
    loaded = tf.saved_model.load(str(export_dir))
    if "serve_bytes" not in loaded.signatures:
        raise ExportError(f"{export_dir} is not an image classifier export (no serve_bytes)")
    names = (export_dir / LABELS).read_text().splitlines()
    data = tf.constant([Path(p).read_bytes() for p in images])
    try:
        probabilities = loaded.signatures["serve_bytes"](image_bytes=data)["probabilities"]
    except tf.errors.InvalidArgumentError as exc:
        raise ExportError(f"cannot decode one of {', '.join(map(str, images))} as an image: "
                          f"{exc.message.splitlines()[0][:160]}") from None
    results = []
    for row in probabilities.numpy():
        order = np.argsort(row)[::-1][:top_k]
        results.append([(names[i], float(row[i])) for i in order])
    return results
