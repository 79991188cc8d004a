"""Extra export formats beside the SavedModel, each checked like the SavedModel.

- ``tflite``: LiteRT flatbuffer of the model at its input size (``model.tflite``: float
  RGB pixels 0-255 already at the model's size in, predictions out; the caller resizes,
  as LiteRT clients such as MediaPipe do, and ``tftoolkit predict`` does with the
  training pipeline's resize), run through the LiteRT interpreter on the parity inputs.
  The SavedModel's in-graph antialiased resize has no LiteRT op.
- ``tflite_dynamic``, ``tflite_float16``, ``tflite_int8``: quantized LiteRT files, measured
  against the float model before they are kept (``tftoolkit.serving.litert``).
- ``onnx``: needs ``tf2onnx`` and ``onnxruntime``, which this stack does not provide;
  asking for it stops the export before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from tftoolkit.errors import ExportError
from tftoolkit.recipe import ONNX_UNAVAILABLE
from tftoolkit.serving import litert
from tftoolkit.serving.litert import QUANTIZED
from tftoolkit.serving.outputs import expected_output

FORMATS = ("tflite", *QUANTIZED, "onnx")


def check_formats(formats: list[str]) -> None:
    """Refuse unknown or unavailable formats before an export starts."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"export.formats has {unknown}; choices: {', '.join(FORMATS)}")
    if "onnx" in formats:
        raise ExportError(f"{ONNX_UNAVAILABLE}. Nothing was exported.")


def write_tflite(target: Path, model: keras.Model, input_shape: tuple[int, ...],
                 inputs: np.ndarray, tolerance: float) -> float:
    """Convert ``model`` at ``input_shape`` to float LiteRT and check it on ``inputs`` (at
    that shape); returns the max abs diff."""
    flatbuffer = litert.convert(model, "tflite", input_shape)
    target.write_bytes(flatbuffer)
    got = litert.LiteRTModel(flatbuffer).predict(inputs.astype(np.float32))
    diff = float(np.abs(got - expected_output(model, inputs, "outputs")).max())
    if diff > tolerance:
        raise ExportError(f"LiteRT parity check failed: max abs diff {diff:.3g} > "
                          f"{tolerance:g}")
    return diff
