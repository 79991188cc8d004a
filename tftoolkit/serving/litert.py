"""Quantized LiteRT files, each measured before it is kept.

Variants of the inference model (fixed input size, float RGB 0-255 in, predictions out):

- ``tflite_dynamic``: weights stored as int8, activations float (no calibration);
- ``tflite_float16``: weights stored as float16;
- ``tflite_int8``: full integer, calibrated on training images through the evaluation
  pipeline (no augmentation), each tensor on its own values
  (``tftoolkit.serving.calibration``); input and output float, uint8 or int8
  (``export.int8_io``).

Every variant is run with the LiteRT interpreter on the validation and test examples and
compared with the float model on the same examples: accuracy and the agreement of its
top-1 class with the float model's (multi-label: mAP, and the agreement of its
decisions, one per image and class, at the thresholds; regression: the loss), file size,
and the median latency of one image on this machine. A variant that loses more than
``export.max_accuracy_drop`` of accuracy (multi-label: of mAP or of micro-F1 at the
thresholds; regression: gains more loss) on the validation split is not written; the
test split's figures are only reported.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import keras
import numpy as np
import tensorflow as tf

from tftoolkit.errors import ExportError
from tftoolkit.serving.calibration import full_integer, quiet_interpreter
from tftoolkit.tasks import Task

QUANTIZED = ("tflite_dynamic", "tflite_float16", "tflite_int8")
IO_TYPES = {"float": tf.float32, "uint8": tf.uint8, "int8": tf.int8}
LATENCY_IMAGES = 30


def file_name(fmt: str) -> str:
    return f"model_{fmt.removeprefix('tflite_')}.tflite"


def convert(model: keras.Model, fmt: str, input_shape: tuple[int, ...],
            calibration: Iterable[np.ndarray] = (), int8_io: str = "float",
            task: Task | None = None) -> bytes:
    """The LiteRT flatbuffer of ``model`` quantized as ``fmt`` (``tflite``: float); its
    output is ``task``'s main served output (a classifier's ``probabilities``, one column
    per class), or the model's predictions as ``outputs`` without a task."""
    def endpoint(inputs):
        predictions = model(inputs, training=False)
        if task is None:
            return {"outputs": tf.cast(predictions, tf.float32)}
        return {task.serving_key: task.served_scores(predictions)}

    return convert_endpoint(
        model, endpoint, tf.TensorSpec([None, *input_shape], tf.float32, name="inputs"), fmt,
        calibration, int8_io)


def convert_endpoint(model: keras.Model, endpoint: Callable, spec: tf.TensorSpec, fmt: str,
                     calibration: Iterable[np.ndarray] = (), int8_io: str = "float",
                     quantize: str | None = None) -> bytes:
    """The LiteRT flatbuffer of ``endpoint`` (a function of ``spec`` that calls
    ``model``), written as ``fmt``, quantized as ``quantize`` (a format of this module;
    default: ``fmt``)."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", endpoint, input_signature=[spec])
    with tempfile.TemporaryDirectory() as folder:
        archive.write_out(folder, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=["serve"])
        return _convert(converter, fmt, quantize or fmt, calibration, int8_io)


def _convert(converter, fmt: str, quantize: str, calibration: Iterable[np.ndarray],
             int8_io: str) -> bytes:
    if quantize != "tflite":  # "tflite": the float file the variants are compared with
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "tflite_float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "tflite_int8":
        samples = [image[None] for batch in calibration
                   for image in np.asarray(batch, np.float32)]
        if not samples:
            raise ExportError(f"{fmt} needs calibration images: the training split "
                              "gave none")
        converter.representative_dataset = lambda: ([sample] for sample in samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = IO_TYPES[int8_io]
        converter.inference_output_type = IO_TYPES[int8_io]
    try:
        if quantize == "tflite_int8":
            return full_integer(converter, samples, IO_TYPES[int8_io])
        return converter.convert()
    except Exception as exc:  # the converter raises ConverterError and plain errors
        raise ExportError(f"LiteRT {fmt} conversion failed: "
                          f"{str(exc).splitlines()[0][:300]}") from None


class LiteRTModel:
    """A LiteRT file behind ``predict(images)``, quantizing inputs and dequantizing
    outputs when its I/O is integer."""

    def __init__(self, flatbuffer: bytes | str | Path):
        if isinstance(flatbuffer, (str, Path)):
            flatbuffer = Path(flatbuffer).read_bytes()
        self.interpreter = quiet_interpreter(flatbuffer)
        self._output_indices = self._prediction_indices()
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = self._output_details()
        self._batch = None

    def _prediction_indices(self) -> list[int]:
        """The tensor indices of the predictions: a signature's ``probabilities`` (a
        multi-label file also outputs its ``labels`` mask); a MediaPipe detector's raw
        outputs, box codes then class scores (``[1, anchors, n]`` each), which are joined
        as the Keras detector joins them; else the first output."""
        for key in self.interpreter.get_signature_list():
            outputs = self.interpreter.get_signature_runner(key).get_output_details()
            if "probabilities" in outputs:
                return [outputs["probabilities"]["index"]]
        outputs = self.interpreter.get_output_details()
        if len(outputs) > 1 and all(len(d["shape"]) == 3 for d in outputs):
            return [d["index"] for d in outputs]
        return [outputs[0]["index"]]

    def _output_details(self) -> list[dict]:
        details = {d["index"]: d for d in self.interpreter.get_output_details()}
        return [details[index] for index in self._output_indices]

    @property
    def output(self) -> dict:
        """The details of the (first) prediction output."""
        return self.outputs[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.input["shape"][1:])

    @property
    def any_size(self) -> bool:
        """Whether the file takes images of any size (and resizes them inside)."""
        return any(int(d) < 0 for d in self.input["shape_signature"][1:-1])

    def _run(self, images: np.ndarray) -> np.ndarray:
        if self._batch != images.shape:
            self.interpreter.resize_tensor_input(self.input["index"], list(images.shape))
            self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
            self.outputs = self._output_details()
            self._batch = images.shape
        x = np.asarray(images, np.float32)
        if self.input["dtype"] != np.float32:
            scale, zero = self.input["quantization"]
            info = np.iinfo(self.input["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        self.interpreter.set_tensor(self.input["index"], x.astype(self.input["dtype"]))
        self.interpreter.invoke()
        found = []
        for output in self.outputs:
            y = self.interpreter.get_tensor(output["index"])
            if output["dtype"] != np.float32:
                scale, zero = output["quantization"]
                y = (y.astype(np.float32) - zero) * scale
            found.append(y.astype(np.float32))
        return np.concatenate(found, axis=-1)

    @property
    def fixed_batch(self) -> bool:
        """Whether the file takes a fixed batch (MediaPipe's take one image)."""
        return int(self.input["shape_signature"][0]) != -1

    def predict(self, images: np.ndarray, batch_size: int = 64, verbose: int = 0) -> np.ndarray:
        """Predictions for ``images``, ``batch_size`` at a time (Keras' signature); one at
        a time for a file of a fixed batch."""
        batch_size = 1 if self.fixed_batch else batch_size
        return np.concatenate([self._run(images[i:i + batch_size])
                               for i in range(0, len(images), batch_size)])

    def latency_ms(self, images: np.ndarray) -> float:
        """Median milliseconds to run one image."""
        self._run(images[:1])  # warm-up
        times = []
        for image in images[:LATENCY_IMAGES]:
            start = time.perf_counter()
            self._run(image[None])
            times.append((time.perf_counter() - start) * 1e3)
        return float(np.median(times))


@dataclass
class Measured:
    """A LiteRT file's figures against the float model on the same examples."""

    figures: dict[str, float]     # per split: the score, agreement, drop
    drop: float                   # the change of the score for the worse, on DECIDED_ON
    latency_ms: float
    score: str                    # what the file is judged by: the task's default figure
    higher_is_better: bool
    # multi-label: the fall of micro-F1 at the thresholds on DECIDED_ON (mAP ranks scores
    # only, and a shift of the scores changes the decisions clients make)
    f1_drop: float | None = None

    @property
    def drop_key(self) -> str:
        """The card's name of :attr:`drop`."""
        return drop_key(self.score, self.higher_is_better)

    def refusal(self, fmt: str, max_drop: float) -> str | None:
        """Why the variant ``fmt`` is not written (its validation score, or a multi-label
        file's micro-F1 at the thresholds, falls by more than ``max_drop``), or None."""
        what = {"map": "mAP"}.get(self.score, self.score)
        for name, drop in ((what, self.drop), ("micro-F1 at the thresholds", self.f1_drop)):
            if drop is not None and drop > max_drop:
                return (f"{fmt} changes validation {name} by {drop:.4f} against the float "
                        f"model, more than export.max_accuracy_drop={max_drop}; not written")
        return None


def drop_key(score: str, higher_is_better: bool = True) -> str:
    """The name of a variant's change of ``score`` for the worse."""
    return f"{score}_drop" if higher_is_better else f"{score}_rise"


# The split whose figures decide whether a variant ships; test figures are only reported.
DECIDED_ON = "val"


def measure(candidate, reference, splits: dict[str, tuple[np.ndarray, np.ndarray]],
            task: Task, thresholds: np.ndarray | None = None) -> Measured:
    """Compare ``candidate`` with the ``reference`` model (both with ``predict``) on each
    split's ``(inputs, labels)`` by ``task``'s figures (:meth:`~tftoolkit.tasks.Task.measure`,
    a thresholded task's decisions at ``thresholds``); ``splits`` must hold the
    validation split (:data:`DECIDED_ON`), whose change for the worse decides."""
    if DECIDED_ON not in splits:
        raise ExportError(f"a quantized variant is judged on the validation split, and "
                          f"only {', '.join(splits) or 'no split'} was given")
    if task.thresholded and thresholds is None:
        raise ExportError(f"a {task.name} variant is judged at its per-class thresholds, "
                          "and none were given")
    score, higher = task.default_figure, task.figures[task.default_figure]
    figures: dict[str, float] = {}
    drops: dict[str, float] = {}
    for split, (x, y) in splits.items():
        got, want = candidate.predict(x), np.asarray(reference.predict(x, verbose=0))
        mine, ref = task.measure(y, got, thresholds), task.measure(y, want, thresholds)
        figures[f"{split}_{score}"], figures[f"{split}_float_{score}"] = mine[score], ref[score]
        agreement = task.agreement(got, want, thresholds)
        if not np.isnan(agreement):
            figures[f"{split}_agreement"] = agreement
        if "f1_at_thresholds" in mine:
            figures[f"{split}_f1"] = mine["f1_at_thresholds"]
            figures[f"{split}_float_f1"] = ref["f1_at_thresholds"]
            figures[f"{split}_f1_drop"] = ref["f1_at_thresholds"] - mine["f1_at_thresholds"]
        drop = ref[score] - mine[score] if higher else mine[score] - ref[score]
        drops[split] = figures[f"{split}_{drop_key(score, higher)}"] = drop
    latency = (candidate.latency_ms(splits[DECIDED_ON][0]) if hasattr(candidate, "latency_ms")
               else float("nan"))
    return Measured(figures, drops[DECIDED_ON], latency, score, higher,
                    figures.get(f"{DECIDED_ON}_f1_drop"))
