"""The detection pieces together: a tiny detector trained with plain Keras compile/fit on
the task's encoded targets of synthetic squares, then served as a SavedModel and as
MediaPipe ObjectDetector files that MediaPipe loads in a process without TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import write_image
from tftoolkit.data import DataInfo
from tftoolkit.data.pipeline import Resize
from tftoolkit.detection.anchors import AnchorConfig
from tftoolkit.detection.decoding import NmsConfig
from tftoolkit.detection.evaluation import box_iou
from tftoolkit.detection.head import HeadConfig
from tftoolkit.models.detector import build_detector
from tftoolkit.models.registry import get_architecture
from tftoolkit.models.weights import TORCHVISION
from tftoolkit.serving.detection import mediapipe_detector
from tftoolkit.serving.savedmodel import write_savedmodel
from tftoolkit.tasks import Detection

SIZE = 64
CLASSES = ["red", "blue"]
COLOURS = [(230, 40, 40), (40, 40, 230)]
ANCHORS = AnchorConfig(strides=(16, 32), size=2.0, scales=(1.0, 1.5),
                       aspect_ratios=(0.5, 1.0, 2.0))
NMS = NmsConfig(max_results=5, score_threshold=0.3)
TASK = Detection(2, SIZE, 1, ANCHORS, nms=NMS, head_config=HeadConfig(width=32, depth=1))
INFO = DataInfo(TASK, (SIZE, SIZE, 3), CLASSES, SIZE, "squares")


def squares(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` noise images with one red or blue square each: images (float 0-255),
    boxes [count, 1, 4] normalised, classes [count, 1]."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (count, SIZE, SIZE, 3)).astype(np.float32)
    boxes = np.zeros((count, 1, 4), np.float32)
    classes = rng.integers(0, 2, (count, 1))
    for i in range(count):
        side = rng.integers(16, 30)
        y, x = rng.integers(0, SIZE - side, 2)
        images[i, y:y + side, x:x + side] = COLOURS[classes[i, 0]]
        boxes[i, 0] = np.array([y, x, y + side, x + side]) / SIZE
    return images, boxes, classes


@dataclass
class Trained:
    model: keras.Model
    losses: list[float]
    images: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    backbone_before: list[np.ndarray]   # the backbone's weights and statistics before fit


@pytest.fixture(scope="module")
def trained(imported_mobilenet) -> Trained:
    keras.utils.set_random_seed(0)
    images, boxes, classes = squares(48, seed=0)
    model = build_detector(get_architecture("mobilenet_v2"), weights=TORCHVISION,
                           mode="feature_extraction", image_size=SIZE, task=TASK)
    backbone_before = [w.numpy().copy() for w in model.get_layer("backbone").weights]
    tables = np.concatenate([boxes, classes[..., None].astype(np.float32)], axis=-1)
    model.compile(keras.optimizers.Adam(1e-2), loss=TASK.loss())
    history = model.fit(images, TASK.encode(tf.constant(tables)),
                        batch_size=16, epochs=60, verbose=0)
    return Trained(model, history.history["loss"], images, boxes, classes, backbone_before)


def test_a_tiny_detector_learns_to_put_boxes_on_the_squares(trained):
    assert trained.losses[-1] < 0.2 * trained.losses[0]
    found = TASK.decide(trained.model(trained.images, training=False))
    iou = np.array([box_iou(b[None], t)[0, 0] for b, t in zip(
        found["detection_boxes"][:, 0], trained.boxes)])
    right = found["detection_classes"][:, 0] == trained.classes[:, 0]
    assert np.mean((iou >= 0.5) & right) >= 0.9, (iou.round(2), right)


def test_training_leaves_a_frozen_backbone_and_its_batchnorm_statistics_as_they_were(
        trained):
    backbone = trained.model.get_layer("backbone")
    for before, after in zip(trained.backbone_before, backbone.weights):
        np.testing.assert_array_equal(before, after.numpy(), err_msg=after.path)
    # the head's BatchNorm statistics did follow the training batches
    head_means = [w for w in trained.model.get_layer("detection_head").weights
                  if w.path.endswith("moving_mean")]
    assert head_means and all(np.abs(w.numpy()).max() > 0 for w in head_means)


@pytest.fixture(scope="module")
def savedmodel(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("detector") / "savedmodel"
    write_savedmodel(trained.model, INFO, path)
    return tf.saved_model.load(str(path))


def _expected(trained: Trained, images: np.ndarray) -> dict[str, np.ndarray]:
    """What serving must return: the Keras model on the training pipeline's resize."""
    resized = Resize(SIZE, "bilinear")(tf.constant(images))
    out = TASK.serving_outputs(trained.model(resized, training=False), tf.constant(CLASSES))
    return {key: value.numpy() for key, value in out.items()}


def _assert_same(served: dict, expected: dict) -> None:
    for key in ("num_detections", "detection_classes", "detection_class_names"):
        np.testing.assert_array_equal(served[key].numpy(), expected[key], err_msg=key)
    for key in ("detection_boxes", "detection_scores"):
        np.testing.assert_allclose(served[key].numpy(), expected[key], atol=1e-5,
                                   err_msg=key)


def test_the_savedmodel_serves_the_models_detections_of_images_of_any_size(trained,
                                                                          savedmodel):
    served = savedmodel.signatures["serving_default"]
    images = trained.images[:6]
    out = served(images=tf.constant(images))
    expected = _expected(trained, images)
    _assert_same(out, expected)
    assert (out["num_detections"].numpy() > 0).sum() >= 4
    names = out["detection_class_names"].numpy()
    count = out["num_detections"].numpy()
    assert all(n.decode() in CLASSES for i, row in enumerate(names) for n in row[:count[i]])
    assert all(n == b"" for i, row in enumerate(names) for n in row[count[i]:])
    # a client's image of another size, as pixels and as PNG bytes
    large = tf.image.resize(images, (100, 90), antialias=True).numpy().round()
    _assert_same(served(images=tf.constant(large)), _expected(trained, large))
    png = tf.stack([tf.io.encode_png(tf.cast(image, tf.uint8)) for image in large])
    _assert_same(savedmodel.signatures["serve_bytes"](image_bytes=png),
                 _expected(trained, large))


# MediaPipe's ObjectDetector on the files, TensorFlow blocked.
CLIENT = """
import json, sys
sys.modules["tensorflow"] = None  # mediapipe imports it when it can; it must not need it
import mediapipe as mp
from mediapipe.tasks.python import BaseOptions, vision

model, images = sys.argv[1], sys.argv[2:]
options = vision.ObjectDetectorOptions(base_options=BaseOptions(model_asset_path=model),
                                       max_results=%d, score_threshold=%r)
found = []
with vision.ObjectDetector.create_from_options(options) as detector:
    for path in images:
        result = detector.detect(mp.Image.create_from_file(path))
        found.append([[d.categories[0].category_name, d.categories[0].score,
                       d.bounding_box.origin_x, d.bounding_box.origin_y,
                       d.bounding_box.width, d.bounding_box.height]
                      for d in result.detections])
imported = any(m.startswith(("tensorflow", "tftoolkit")) and sys.modules[m] for m in sys.modules)
print(json.dumps({"detections": found, "tensorflow_imported": imported}))
""" % (NMS.max_results, NMS.score_threshold)


@pytest.fixture(scope="module")
def mediapipe_files(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mediapipe")
    files = {}
    for fmt in ("mediapipe", "mediapipe_int8"):
        flatbuffer, metadata = mediapipe_detector(trained.model, fmt, INFO,
                                                  calibration=[trained.images[:32]])
        files[fmt] = folder / f"model_{fmt}.tflite"
        files[fmt].write_bytes(flatbuffer)
        files[f"{fmt}_metadata"] = metadata
    images = [str(write_image(folder / f"{i}.png", trained.images[i].astype(np.uint8)))
              for i in range(8)]
    return files, images


def _pixel_boxes(boxes: np.ndarray) -> np.ndarray:
    """Normalised corners -> MediaPipe's whole-pixel [ymin, xmin, ymax, xmax]
    (``int(xmin * W)``, ``int(width * W)``)."""
    ymin, xmin = (boxes[:, :2] * SIZE).astype(int).T
    h, w = ((boxes[:, 2:] - boxes[:, :2]) * SIZE).astype(int).T
    return np.stack([ymin, xmin, ymin + h, xmin + w], 1).astype(float)


def test_mediapipe_files_are_builtin_ops_raw_outputs_in_mediapipes_order(trained,
                                                                          mediapipe_files):
    files, _ = mediapipe_files
    anchors = TASK.anchor_set.count
    for fmt, dtype in (("mediapipe", np.float32), ("mediapipe_int8", np.uint8)):
        interpreter = tf.lite.Interpreter(model_path=str(files[fmt]))
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        assert [list(d["shape"]) for d in inputs] == [[1, SIZE, SIZE, 3]]
        assert inputs[0]["dtype"] == dtype
        assert [list(d["shape"]) for d in outputs] == [[1, anchors, 4], [1, anchors, 2]]
        assert all(d["dtype"] == np.float32 for d in outputs)
        ops = {op["op_name"] for op in interpreter._get_ops_details()}
        assert "CUSTOM" not in ops and not any(op.startswith("Flex") for op in ops), ops
        metadata = json.loads(files[f"{fmt}_metadata"])
        assert json.dumps(metadata).count('"x_center"') == anchors
    assert files["mediapipe_int8"].stat().st_size <= 0.35 * files["mediapipe"].stat().st_size


def test_mediapipe_finds_what_the_savedmodel_finds_without_tensorflow(
        trained, savedmodel, mediapipe_files):
    """The float file: every detection is one of the SavedModel's (same class, IoU at
    least 0.9 in MediaPipe's whole pixels). The int8 file: the same objects (same class,
    IoU at least 0.5); how much mAP it loses is measured at export."""
    files, images = mediapipe_files
    served = savedmodel.signatures["serving_default"](images=tf.constant(trained.images[:8]))
    for fmt, least_iou in (("mediapipe", 0.9), ("mediapipe_int8", 0.5)):
        proc = subprocess.run([sys.executable, "-c", CLIENT, str(files[fmt]), *images],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert not result["tensorflow_imported"]
        best = []   # per MediaPipe detection: its IoU with the SavedModel's of its class
        for i, detections in enumerate(result["detections"]):
            n = int(served["num_detections"][i])
            ours = _pixel_boxes(served["detection_boxes"][i, :n].numpy())
            names = np.array([c.decode() for c in served["detection_class_names"][i, :n]
                              .numpy()])
            if fmt == "mediapipe":
                assert len(detections) == n, (i, detections, ours)
            for name, _, x, y, w, h in detections:
                iou = box_iou(np.array([[y, x, y + h, x + w]], float), ours)[0]
                best.append(float(np.max(iou[names == name], initial=0.0)))
        matched = np.mean(np.array(best) >= least_iou)
        assert len(best) >= 5 and matched >= (1.0 if fmt == "mediapipe" else 0.8), \
            (fmt, np.round(best, 2))
