"""Full-integer LiteRT quantization with each tensor calibrated on its own values.

TensorFlow Lite's calibrator logs an op's inputs a second time after the op has run. When
the interpreter's memory planner lets an elementwise op (ADD, MUL, ...) write its output
into the buffer of its input, that second reading sees the op's output, and the input's
calibrated range becomes the union of the two (tensorflow/tensorflow#127842, open in TF
2.21). In a transfer model this widens the ranges of the in-graph preprocessing and of
every projection that feeds a residual add: with the torch preprocessing
(``x / 255 - mean) / std``), ``x / 255`` was given ``[-0.49, 1]`` and ``x / 255 - mean``
the whole normalized range, 4.4 times its own, which keeps 58 of the 256 pixel levels;
in the flagship MobileNetV2, 27 of 70 calibrated ranges were too wide, up to 3x.

:func:`full_integer` runs the converter's calibration alone, measures every calibrated
tensor's range again with an interpreter that keeps each tensor in a buffer of its own,
and then quantizes with those ranges through the converter's own quantization step.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import tensorflow as tf

from tftoolkit.errors import ExportError


def full_integer(converter: tf.lite.TFLiteConverter, samples: Sequence[np.ndarray],
                 io_type: tf.DType, output_type: tf.DType | None = None) -> bytes:
    """The full-integer flatbuffer of ``converter`` (set up for int8 with
    ``samples`` as its representative dataset), input of ``io_type`` and outputs of
    ``output_type`` (default: ``io_type``; float32 dequantizes them in the graph)."""
    from tensorflow.lite.python.convert import mlir_quantize

    converter._experimental_calibrate_only = True  # the float model with its ranges
    calibrated = converter.convert()
    return mlir_quantize(with_own_ranges(calibrated, samples), input_data_type=io_type,
                         output_data_type=output_type or io_type)


def quiet_interpreter(flatbuffer: bytes, **options) -> tf.lite.Interpreter:
    """``tf.lite.Interpreter`` of ``flatbuffer``, without the warning it prints each time
    to announce its successor package (ai-edge-litert, not a dependency here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        return tf.lite.Interpreter(model_content=flatbuffer, **options)


def own_ranges(model: bytes, samples: Sequence[np.ndarray],
               tensors: Sequence[int]) -> dict[int, tuple[float, float]]:
    """``{tensor: (min, max)}`` of the float LiteRT ``model``'s ``tensors`` (of its
    main subgraph) over ``samples`` (inputs of its one input), each tensor read from a
    buffer no other tensor shares."""
    interpreter = quiet_interpreter(
        model, experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=  # delegated ops would hide their tensors
        tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    index = interpreter.get_input_details()[0]["index"]
    low = dict.fromkeys(tensors, np.inf)
    high = dict.fromkeys(tensors, -np.inf)
    shape = None
    for sample in samples:
        if sample.shape != shape:
            interpreter.resize_tensor_input(index, list(sample.shape))
            interpreter.allocate_tensors()
            shape = sample.shape
        interpreter.set_tensor(index, sample)
        interpreter.invoke()
        for tensor in tensors:
            values = interpreter.get_tensor(tensor)
            low[tensor] = min(low[tensor], float(values.min()))
            high[tensor] = max(high[tensor], float(values.max()))
    return {t: (low[t], high[t]) for t in tensors}


def with_own_ranges(calibrated: bytes, samples: Sequence[np.ndarray]) -> bytes:
    """``calibrated`` (the calibrator's float model, each tensor's range recorded in its
    quantization parameters) with every range of its main subgraph measured again by
    :func:`own_ranges` on the same ``samples``."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    tensors = model.subgraphs[0].tensors
    recorded = [i for i, t in enumerate(tensors)
                if t.quantization is not None and t.quantization.min is not None
                and len(t.quantization.min) == 1]
    floats = all(tensors[i].type == schema.TensorType.FLOAT32
                 for i in model.subgraphs[0].inputs)
    if not recorded or not floats:  # the private switch was ignored: TF's own ranges
        raise ExportError("this TensorFlow's LiteRT converter did not give the calibrated "
                          "float model (converter._experimental_calibrate_only), which "
                          "full-integer export needs; it is built for tensorflow 2.21")
    for i, (low, high) in own_ranges(calibrated, samples, recorded).items():
        tensors[i].quantization.min, tensors[i].quantization.max = [low], [high]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
