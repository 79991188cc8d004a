"""MediaPipe ObjectDetector files of a detector.

A detector's SavedModel is written as every task's (:mod:`tftoolkit.serving.savedmodel`):
its signatures return :meth:`~tftoolkit.tasks.Detection.serving_outputs`, the detections
decoded as MediaPipe decodes them under the TF Object Detection API's names.

MediaPipe files (``mediapipe``: float; ``mediapipe_int8``: full integer, uint8 pixels in,
float outputs) hold the model without non-max suppression, builtin ops only, input
``[1, size, size, 3]`` raw pixels (preprocessing inside; the metadata's normalisation is
mean 0, std 1), outputs in the order MediaPipe reads them: box codes [1, anchors, 4]
``[ty, tx, th, tw]`` then class scores [1, anchors, classes] (sigmoid applied). The
metadata is MediaPipe's own writer's (``create_for_models_without_nms``): the anchors,
the box coding's scales, the labels. ``mediapipe.tasks.python.vision.ObjectDetector``
loads such a file as it is.
"""

from __future__ import annotations

from typing import Iterable

import keras
import numpy as np
import tensorflow as tf

from tftoolkit.data import DataInfo
from tftoolkit.detection.head import detector_spec, raw_outputs
from tftoolkit.errors import ExportError
from tftoolkit.models.detector import split_detector
from tftoolkit.serving.calibration import full_integer
from tftoolkit.serving.litert import LiteRTModel
from tftoolkit.serving.mediapipe_tasks import LABELS_FILE, metadata_writers


def _flatbuffer(model: keras.Model, image_size: int, int8: bool,
                calibration: Iterable[np.ndarray]) -> bytes:
    """The LiteRT file of the raw outputs: a concrete function of a fixed one-image input,
    its weights frozen into constants, builtin ops only; ``int8``: full integer
    (calibrated on ``calibration`` images), uint8 pixels in, float32 outputs."""
    features, head = split_detector(model)
    head = raw_outputs(head)

    @tf.function(input_signature=[tf.TensorSpec([1, image_size, image_size, 3], tf.float32,
                                                name="image")])
    def served(image):
        if int8:  # uint8 pixels are fed as they are: the input's scale must be exactly 1
            image = tf.quantization.fake_quant_with_min_max_args(image, min=0.0, max=255.0,
                                                                 num_bits=8)
        # box codes and class scores as two tensors (each quantized on its own range), in
        # MediaPipe's order
        return tuple(head(features(image, training=False), training=False))

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [served.get_concrete_function()])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        if not int8:
            return converter.convert()
        samples = [image[None] for batch in calibration
                   for image in np.asarray(batch, np.float32)]
        if not samples:
            raise ExportError("mediapipe_int8 needs calibration images: none were given")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([sample] for sample in samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        flatbuffer = full_integer(converter, samples, tf.uint8, output_type=tf.float32)
    except ExportError:
        raise
    except Exception as exc:  # the converter raises ConverterError and plain errors
        raise ExportError(f"LiteRT detector conversion failed: "
                          f"{str(exc).splitlines()[0][:300]}") from None
    scale, zero = LiteRTModel(flatbuffer).input["quantization"]
    if (scale, zero) != (1.0, 0):
        raise ExportError(f"mediapipe_int8: the converter gave the uint8 input scale {scale} "
                          f"and zero point {zero}, but MediaPipe feeds raw pixels (needs 1 "
                          "and 0); not written")
    return flatbuffer


def mediapipe_detector(model: keras.Model, fmt: str, info: DataInfo,
                       calibration: Iterable[np.ndarray] = ()) -> tuple[bytes, str]:
    """The MediaPipe ObjectDetector file of the detector ``model`` (``fmt``:
    ``mediapipe`` or ``mediapipe_int8``) with its metadata, and the metadata as JSON;
    ``info`` names the classes."""
    spec, class_names = detector_spec(model), list(info.class_names or [])
    if len(class_names) != spec.num_classes:
        raise ExportError(f"{len(class_names)} class names for a detector of "
                          f"{spec.num_classes} classes")
    flatbuffer = _flatbuffer(model, spec.anchors.image_size, fmt == "mediapipe_int8",
                             calibration)
    writers = metadata_writers()
    detector = writers.object_detector
    anchors = [detector.FixedAnchor(x_center=float(xc), y_center=float(yc), width=float(w),
                                    height=float(h))
               for yc, xc, h, w in spec.anchors.centres_sizes()]
    coder = spec.coder
    decoding = detector.TensorsDecodingOptions(
        num_classes=spec.num_classes, num_boxes=spec.anchors.count, num_coords=4,
        keypoint_coord_offset=0, num_keypoints=0, num_values_per_keypoint=2,
        x_scale=coder.x_scale, y_scale=coder.y_scale, w_scale=coder.w_scale,
        h_scale=coder.h_scale, apply_exponential_on_box_size=True, sigmoid_score=False)
    writer = detector.MetadataWriter.create_for_models_without_nms(
        bytearray(flatbuffer), [0.0], [1.0],
        writers.metadata_writer.Labels().add(list(class_names),
                                             exported_filename=LABELS_FILE),
        detector.SsdAnchorsOptions(detector.FixedAnchorsSchema(anchors)), decoding,
        output_tensors_order=detector.metadata_info.RawDetectionOutputTensorsOrder
        .LOCATION_SCORE)
    with_metadata, metadata_json = writer.populate()
    del writer  # removes its temporary folder now rather than at interpreter exit
    return bytes(with_metadata), metadata_json
