"""Extra export formats beside the SavedModel, each checked like the SavedModel.

- ``tflite``: LiteRT flatbuffer of the model at its input size (``model.tflite``: float
  RGB pixels 0-255 already at the model's size in, predictions out; the caller resizes,
  as LiteRT clients such as MediaPipe do, and ``tftoolkit predict`` does with the
  training pipeline's resize), run through the LiteRT interpreter on the parity inputs.
  The SavedModel's in-graph antialiased resize has no LiteRT op.
- ``tflite_dynamic``, ``tflite_float16``, ``tflite_int8``: quantized LiteRT files, measured
  against the float model before they are kept (``tftoolkit.serving.litert``).
- ``mediapipe``, ``mediapipe_int8``: LiteRT files MediaPipe Tasks' ImageClassifier loads
  (``tftoolkit.serving.mediapipe_tasks``), measured like the quantized files.
- ``onnx``: the inference model through Keras' ONNX exporter (``tf2onnx``), raw 0-255
  pixels in, ``probabilities`` out (``model.onnx``), run through ONNX Runtime on the
  parity inputs.

Formats that need packages outside the core install (the ``onnx`` and ``mediapipe``
extras) are refused before anything is written when those packages are missing.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tftoolkit.data import DataInfo
from tftoolkit.errors import ExportError
from tftoolkit.serving import litert
from tftoolkit.serving.litert import QUANTIZED
from tftoolkit.serving.mediapipe_tasks import MEDIAPIPE
from tftoolkit.serving.outputs import expected_output

FORMATS = ("tflite", *QUANTIZED, *MEDIAPIPE, "onnx")
ONNX_FILE = "model.onnx"
# ONNX Runtime fuses and reorders float operations (convolution with batch norm, ...).
ONNX_TOLERANCE = 1e-4
# format -> (the modules it needs, the extra that installs them)
_NEEDS = {"onnx": (("tf2onnx", "onnx", "onnxruntime"), "onnx"),
          **{fmt: (("mediapipe",), "mediapipe") for fmt in MEDIAPIPE}}


def check_formats(formats: list[str], info: DataInfo) -> None:
    """Refuse unknown or unavailable formats before an export starts."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"export.formats has {unknown}; choices: {', '.join(FORMATS)}")
    served = info.task.formats
    if served is not None and any(f not in served for f in formats):
        refused = [f for f in formats if f not in served]
        raise ExportError(f"export.formats has {refused}: a {info.task.name} model is "
                          f"served as a SavedModel and as {', '.join(served)}; remove "
                          f"{', '.join(refused)}. Nothing was exported.")
    wanted = [f for f in formats if f in MEDIAPIPE]
    if wanted and not (info.image_size and info.class_names):
        raise ExportError(f"export.formats has {wanted}: MediaPipe image files, "
                          f"but this model is a {info.task.name} model of inputs "
                          f"{list(info.input_shape)}; remove them. Nothing was exported.")
    for fmt in formats:
        modules, extra = _NEEDS.get(fmt, ((), ""))
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            raise ExportError(f"export.formats has {fmt!r}, which needs {', '.join(missing)}: "
                              f"pip install 'tftoolkit[{extra}]'. Nothing was exported.")


def write_tflite(target: Path, model: keras.Model, info: DataInfo, inputs: np.ndarray,
                 tolerance: float) -> float:
    """Convert ``model`` at its input shape (``info.input_shape``) to float LiteRT and check
    it on ``inputs`` (at that shape); returns the max abs diff."""
    flatbuffer = litert.convert(model, "tflite", info.input_shape, task=info.task)
    target.write_bytes(flatbuffer)
    got = litert.LiteRTModel(flatbuffer).predict(inputs.astype(np.float32))
    expected = expected_output(model, inputs, info.task, info.task.serving_key)
    diff = float(np.abs(got - expected).max())
    if diff > tolerance:
        raise ExportError(f"LiteRT parity check failed: max abs diff {diff:.3g} > "
                          f"{tolerance:g}")
    return diff


def write_onnx(model: keras.Model, info: DataInfo, target: Path, inputs: np.ndarray,
               tolerance: float) -> float:
    """Export the inference model as ONNX through Keras' exporter and check it with ONNX
    Runtime; returns the max abs diff. Input ``images`` (raw 0-255 pixels at the model's
    size) or ``features``; output the task's main served output (a classifier's
    probabilities, one column per class; a regression's values)."""
    import onnxruntime

    x = keras.Input(info.input_shape, name="images" if info.image_size else "features")
    served = keras.Model(x, info.task.served_scores(model(x, training=False)))
    try:
        with warnings.catch_warnings():
            # Keras' patch of tf2onnx probes hasattr(np, "object"), which NumPy answers
            # with a FutureWarning about np.object's future meaning, unused here.
            warnings.filterwarnings("ignore", message="In the future `np.object`",
                                    category=FutureWarning)
            served.export(str(target), format="onnx", verbose=False, input_signature=[
                tf.TensorSpec([None, *info.input_shape], tf.float32, name=x.name)])
    except Exception as exc:  # tf2onnx raises plain errors of many types
        raise ExportError(f"ONNX conversion failed: {str(exc).splitlines()[0][:300]}") from None
    try:
        session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    except Exception as exc:  # an op the converter wrote that ONNX Runtime lacks
        raise ExportError(f"ONNX Runtime cannot load the converted model: "
                          f"{str(exc).splitlines()[0][-300:]}") from None
    got = session.run(None, {session.get_inputs()[0].name: inputs.astype(np.float32)})[0]
    expected = expected_output(model, inputs, info.task, info.task.serving_key)
    diff = float(np.abs(got - expected).max())
    if diff > tolerance:
        raise ExportError(f"ONNX parity check failed: ONNX Runtime's outputs differ from the "
                          f"Keras model's by {diff:.3g} > {tolerance:g}")
    return diff
