"""Extra export formats beside the SavedModel, each checked like the SavedModel.

- ``tflite``: LiteRT flatbuffer of the ``serving_default`` signature (``model.tflite``),
  run through the LiteRT interpreter on the parity inputs.
- ``tflite_dynamic``, ``tflite_float16``, ``tflite_int8``: quantized LiteRT files, measured
  against the float model before they are kept (``tftoolkit.serving.litert``).
- ``onnx``: needs ``tf2onnx`` and ``onnxruntime``, which this stack does not provide;
  asking for it stops the export before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tftoolkit.errors import ExportError
from tftoolkit.recipe import ONNX_UNAVAILABLE
from tftoolkit.serving.litert import QUANTIZED
from tftoolkit.serving.outputs import expected_output, served_key

FORMATS = ("tflite", *QUANTIZED, "onnx")


def check_formats(formats: list[str]) -> None:
    """Refuse unknown or unavailable formats before an export starts."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"export.formats has {unknown}; choices: {', '.join(FORMATS)}")
    if "onnx" in formats:
        raise ExportError(f"{ONNX_UNAVAILABLE}. Nothing was exported.")


def write_tflite(savedmodel: Path, target: Path, model: keras.Model, inputs: np.ndarray,
                 tolerance: float) -> float:
    """Convert ``serving_default`` to LiteRT and check it; returns the max abs diff."""
    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(savedmodel), signature_keys=["serving_default"])
    try:
        flatbuffer = converter.convert()
    except Exception as exc:  # the converter raises ConverterError and plain errors
        raise ExportError(f"LiteRT conversion failed: {str(exc).splitlines()[0][:300]}") from None
    target.write_bytes(flatbuffer)
    runner = tf.lite.Interpreter(model_content=flatbuffer).get_signature_runner(
        "serving_default")
    key = served_key(runner.get_output_details())
    got = np.asarray(runner(**{next(iter(runner.get_input_details())):
                               inputs.astype(np.float32)})[key])
    expected = expected_output(model, inputs, key)
    diff = float(np.abs(got - expected).max())
    if diff > tolerance:
        raise ExportError(f"LiteRT parity check failed: max abs diff {diff:.3g} > "
                          f"{tolerance:g}")
    return diff
