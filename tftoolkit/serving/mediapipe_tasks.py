"""MediaPipe Tasks image-classifier files: LiteRT with the metadata MediaPipe reads.

``mediapipe`` (float) and ``mediapipe_int8`` (full integer, uint8 in and out, calibrated
like ``tflite_int8``) are files that MediaPipe Tasks' ``ImageClassifier`` loads as is:

- one input ``[1, H, W, 3]``: RGB pixels 0-255 at the model's size (MediaPipe resizes
  each image to it); the backbone's own preprocessing is inside the graph, so the
  metadata's normalization is mean 0 / std 1 (MediaPipe takes one mean and std for all
  channels);
- one output ``[1, classes]`` of probabilities (MediaPipe applies no softmax); a
  multi-label model's are each class's sigmoid, computed inside the graph;
- the class names packed in the file as its label file (``labels.txt``);
- a description of how images were resized in training (``data.resize_method``), which
  a client should reproduce: MediaPipe's own resize of other sizes does not.

A multi-label file also carries its per-class thresholds (chosen on validation) in its
metadata: listed, in label order, in the output tensor's description, and the lowest of
them as the metadata's score threshold. MediaPipe applies one ``score_threshold`` to every
class, so by default it returns each class whose score is at least that lowest
threshold; a client keeps the categories whose ``score`` is at least the threshold of
their ``index`` (the model card's ``thresholds``), which gives the SavedModel's ``labels``.

Beside each file, ``model_<format>_metadata.json`` is its metadata as JSON, as MediaPipe
Model Maker writes it. The metadata is written by MediaPipe's own writer (the
``mediapipe`` extra); see :func:`metadata_writers` for the one piece its wheel lacks.
"""

from __future__ import annotations

import json
import sys
import types
import zipfile
from pathlib import Path
from typing import Iterable

import keras
import numpy as np
import tensorflow as tf

from tftoolkit.data import DataInfo
from tftoolkit.data.pipeline import Resize
from tftoolkit.errors import ExportError
from tftoolkit.serving import litert

MEDIAPIPE = ("mediapipe", "mediapipe_int8")
LABELS_FILE = "labels.txt"
# mediapipe >= 0.10.30 imports this extension in its metadata module and does not ship it.
_VERSION_MODULE = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"


def metadata_file(fmt: str) -> str:
    """The JSON beside a MediaPipe file."""
    return f"model_{fmt}_metadata.json"


def resize_note(resize: Resize) -> str:
    """How to bring an image to the model's input as training did (``data.resize_method``),
    which MediaPipe's own resize of an image of another size does not reproduce, not even
    for bilinear; part of the metadata's description."""
    size = f"{resize.size}x{resize.size}"
    return (f"Trained on {resize.describe()}. MediaPipe resizes an image of another size "
            "its own way (bilinear, not antialiased), which changes some classes; for the "
            f"served model's classes, resize images to {size} as training did before "
            "classifying them.")


def convert(model: keras.Model, fmt: str, info: DataInfo,
            calibration: Iterable[np.ndarray] = (),
            thresholds: np.ndarray | None = None) -> tuple[bytes, str]:
    """The MediaPipe file of ``model`` (flatbuffer with its metadata) and the metadata
    as JSON; ``info`` describes the data (the task, the classes, the image size and
    resize); ``thresholds``: a multi-label model's, per class. The metadata's description
    says how to resize images for it (:func:`resize_note`)."""
    int8 = fmt == "mediapipe_int8"
    image_size = info.image_size

    def endpoint(image):
        if int8:  # uint8 pixels are fed as they are: the input's scale must be exactly 1
            image = tf.quantization.fake_quant_with_min_max_args(image, min=0.0, max=255.0,
                                                                 num_bits=8)
        return {"probabilities": info.task.served_scores(model(image, training=False))}

    flatbuffer = litert.convert_endpoint(
        model, endpoint, tf.TensorSpec([1, image_size, image_size, 3], tf.float32,
                                       name="image"),
        fmt, calibration, int8_io="uint8", quantize="tflite_int8" if int8 else "tflite")
    if int8:
        scale, zero = litert.LiteRTModel(flatbuffer).input["quantization"]
        if (scale, zero) != (1.0, 0):
            raise ExportError(f"{fmt}: the converter gave the uint8 input scale {scale} and "
                              f"zero point {zero}, but MediaPipe feeds raw pixels (needs 1 "
                              "and 0); not written")
    writer = _metadata_writer(bytearray(flatbuffer), list(info.class_names), thresholds,
                              resize_note(info.resize))
    with_metadata, metadata_json = writer.populate()
    del writer  # removes its temporary folder now rather than at interpreter exit
    return bytes(with_metadata), metadata_json


def _metadata_writer(flatbuffer: bytearray, class_names: list[str],
                     thresholds: np.ndarray | None, note: str):
    """MediaPipe's image-classifier metadata writer for the file: raw pixels in (mean 0,
    std 1), the class names as its label file, ``note`` (:func:`resize_note`) in its
    description; for a multi-label file, its thresholds (:func:`thresholds_description`)
    and the lowest as the score threshold."""
    writers = metadata_writers()
    labels = writers.metadata_writer.Labels().add(class_names, exported_filename=LABELS_FILE)
    if thresholds is None:
        writer = writers.image_classifier.MetadataWriter.create(
            flatbuffer, input_norm_mean=[0.0], input_norm_std=[1.0], labels=labels)
        writer.writer.add_general_info(  # replaces the writer's generic description
            "ImageClassifier", f"Classifies an RGB image into {len(class_names)} classes. "
                               f"{note}")
        return writer
    writer = writers.metadata_writer.MetadataWriter.create(flatbuffer)
    writer.add_general_info(MULTILABEL_NAME, f"{MULTILABEL_DESCRIPTION} {note}")
    writer.add_image_input([0.0], [1.0])
    writer.add_classification_output(
        labels, score_thresholding=writers.metadata_writer.ScoreThresholding(
            float(np.min(thresholds))),
        description=thresholds_description(class_names, thresholds))
    return writer


MULTILABEL_NAME = "ImageClassifier"
MULTILABEL_DESCRIPTION = "Identify every object of a known set of categories in the image."
THRESHOLDS_PREFIX = "Per-class thresholds: "


def thresholds_description(class_names: list[str], thresholds: np.ndarray) -> str:
    """The output tensor's description in a multi-label file: what its scores are, and
    the thresholds a client applies to them (a JSON object after
    :data:`THRESHOLDS_PREFIX`, label -> threshold, in label order)."""
    listed = json.dumps({name: float(t) for name, t in zip(class_names, thresholds)})
    return ("Probability of each label (a sigmoid each, multi-label). A label is predicted "
            "when its score is at least its own threshold; MediaPipe's score_threshold is "
            "one for all labels (by default the lowest of them), so keep each category "
            "whose score is at least its index's threshold. " + THRESHOLDS_PREFIX + listed)


def packed_thresholds(path: Path) -> dict[str, float] | None:
    """The per-class thresholds a multi-label file's metadata carries (see
    :func:`thresholds_description`), label -> threshold in label order; None for a file
    without them. The description is a flatbuffer string in the file: UTF-8 bytes ended by
    a NUL byte, read without the metadata schema."""
    data = Path(path).read_bytes()
    start = data.find(THRESHOLDS_PREFIX.encode())
    if start < 0:
        return None
    start += len(THRESHOLDS_PREFIX)
    end = data.find(b"\0", start)
    try:
        return json.loads(data[start:end if end >= 0 else len(data)])
    except ValueError:
        raise ExportError(f"{path}: its metadata's per-class thresholds are not readable "
                          "JSON; export the run again") from None


def packed_labels(path: Path) -> list[str] | None:
    """The class names packed in a LiteRT file's metadata (None when it has none)."""
    if not zipfile.is_zipfile(path):  # packed files are a zip archive after the model
        return None
    with zipfile.ZipFile(path) as archive:
        if LABELS_FILE not in archive.namelist():
            return None
        return archive.read(LABELS_FILE).decode("utf-8").splitlines()


def metadata_writers() -> types.SimpleNamespace:
    """MediaPipe's ``image_classifier``, ``object_detector`` and ``metadata_writer``
    modules.

    Their ``metadata`` module imports the extension ``_pywrap_metadata_version``, only to
    compute the metadata's minimum parser version; when the installed wheel lacks it,
    :func:`minimum_parser_version` stands in for it.
    """
    def load():
        from mediapipe.tasks.python.metadata.metadata_writers import (image_classifier,
                                                                      metadata_writer,
                                                                      object_detector)
        return types.SimpleNamespace(image_classifier=image_classifier,
                                     object_detector=object_detector,
                                     metadata_writer=metadata_writer)

    try:
        writers = load()
    except ModuleNotFoundError as exc:
        if not exc.name or not _VERSION_MODULE.startswith(exc.name) or \
                exc.name.split(".")[0] != "mediapipe":
            raise
        _provide_version_module()
        writers = load()
    _forget_audio_import_error()
    return writers


def _forget_audio_import_error() -> None:
    """Drop the traceback of the error MediaPipe's audio module keeps from importing
    ``sounddevice`` (``PortAudio library not found`` where PortAudio is not installed).
    Its frames reach back through the import to whatever called it first, so every
    object of that export (the model, the metadata writers) would stay alive until the
    interpreter exits; a metadata writer then removes its temporary folder after ``os``
    is gone, and Python prints "Exception ignored in: MetadataWriter.__del__". The error
    itself stays, for MediaPipe's audio recorder to raise."""
    audio = sys.modules.get("mediapipe.tasks.python.audio.core.audio_record")
    error = getattr(audio, "sd_error", None)
    if isinstance(error, BaseException):
        error.__traceback__ = None


def _provide_version_module() -> None:
    parts = _VERSION_MODULE.split(".")
    for depth in range(3, len(parts) + 1):  # mediapipe.tasks exists; cc and below do not
        name = ".".join(parts[:depth])
        module = sys.modules.get(name) or types.ModuleType(name)
        if depth < len(parts):
            module.__path__ = []
        sys.modules[name] = module
        setattr(sys.modules[".".join(parts[:depth - 1])], parts[depth - 1], module)
    sys.modules[_VERSION_MODULE].GetMinimumMetadataParserVersion = minimum_parser_version


def minimum_parser_version(metadata: bytes) -> str:
    """The oldest metadata parser that reads every field of ``metadata`` (a
    ``ModelMetadata`` flatbuffer): the rules of MediaPipe's ``metadata_version.cc``."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema

    files_type = schema.AssociatedFileType
    units_type = schema.ProcessUnitOptions
    versions = [(1, 0, 0)]

    def files(items):
        for item in items or []:
            if item.type == files_type.VOCABULARY:
                versions.append((1, 0, 1))
            if item.type == files_type.SCANN_INDEX_FILE:
                versions.append((1, 4, 0))
            if item.version is not None:
                versions.append((1, 4, 1))

    def units(items):
        for item in items or []:
            if item.optionsType in (units_type.BertTokenizerOptions,
                                    units_type.SentencePieceTokenizerOptions):
                versions.append((1, 1, 0))
            if item.optionsType == units_type.RegexTokenizerOptions:
                versions.append((1, 2, 1))

    root = schema.ModelMetadataT.InitFromPackedBuf(bytes(metadata), 0)
    for graph in root.subgraphMetadata or []:
        for tensor in (graph.inputTensorMetadata or []) + (graph.outputTensorMetadata or []):
            files(tensor.associatedFiles)
            units(tensor.processUnits)
            if tensor.content is not None and tensor.content.contentPropertiesType == \
                    schema.ContentProperties.AudioProperties:
                versions.append((1, 3, 0))
        files(graph.associatedFiles)
        for process_units in (graph.inputProcessUnits, graph.outputProcessUnits):
            if process_units is not None:
                versions.append((1, 1, 0))
                units(process_units)
        if graph.inputTensorGroups is not None or graph.outputTensorGroups is not None:
            versions.append((1, 2, 0))
        if graph.customMetadata is not None:
            versions.append((1, 5, 0))
    files(root.associatedFiles)
    return ".".join(map(str, max(versions)))
