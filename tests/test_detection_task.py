"""The detection task: its targets, its loss, and its figures against pycocotools."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tftoolkit.detection.anchors import AnchorConfig
from tftoolkit.detection.boxes import BoxCoder
from tftoolkit.detection.evaluation import ImageBoxes, coco_evaluate
from tftoolkit.detection.matching import BACKGROUND, IGNORED, NO_BOX, anchor_targets
from tftoolkit.tasks import Detection, make_task

SIZE = 64
# 64 anchors (8 x 8 cells of one shape): each can carry any box through its codes
ANCHORS = AnchorConfig(strides=(8,), size=2.0, scales=(1.0,), aspect_ratios=(1.0,))


def _task(classes: int = 4, max_boxes: int = 6) -> Detection:
    return Detection(classes, SIZE, max_boxes, ANCHORS)


def _tables(boxes_per_image: list[np.ndarray], classes_per_image: list[np.ndarray],
            max_boxes: int) -> np.ndarray:
    """Box tables [images, max_boxes, 5], unused rows of class NO_BOX."""
    tables = np.zeros((len(boxes_per_image), max_boxes, 5), np.float32)
    tables[..., 4] = NO_BOX
    for i, (boxes, classes) in enumerate(zip(boxes_per_image, classes_per_image)):
        tables[i, :len(boxes), :4], tables[i, :len(boxes), 4] = boxes, classes
    return tables


def _random_boxes(rng, count: int) -> np.ndarray:
    y, x = rng.uniform(0, 0.7, (2, count))
    h, w = rng.uniform(0.08, 0.3, (2, count))
    return np.stack([y, x, y + h, x + w], 1)


def _scene(seed: int, images: int = 40, classes: int = 4, max_boxes: int = 6):
    """Random true boxes (the last class never present), and raw predictions whose
    anchors carry jittered true boxes (often of the right class) and random boxes, at
    scores spread over [0, 1]."""
    task = _task(classes, max_boxes)
    rng = np.random.default_rng(seed)
    anchors = task.anchor_set.centres_sizes()
    truth_boxes, truth_classes, predictions = [], [], []
    for _ in range(images):
        n = int(rng.integers(0, max_boxes + 1))
        boxes, labels = _random_boxes(rng, n), rng.integers(0, classes - 1, n)
        truth_boxes.append(boxes)
        truth_classes.append(labels)
        extra = int(rng.integers(0, 8))
        found = np.concatenate([boxes + rng.normal(0, 0.02, boxes.shape),
                                _random_boxes(rng, extra)])
        found = np.concatenate([np.minimum(found[:, :2], found[:, 2:]),
                                np.maximum(found[:, :2], found[:, 2:])], axis=1)
        found_classes = np.concatenate([np.where(rng.random(n) < 0.8, labels,
                                                 rng.integers(0, classes, n)),
                                        rng.integers(0, classes, extra)])
        slots = rng.choice(len(anchors), len(found), replace=False)
        raw = np.zeros((len(anchors), 4 + classes), np.float32)
        raw[slots, :4] = BoxCoder().encode(found.astype(np.float32), anchors[slots]).numpy()
        raw[slots, 4 + found_classes] = rng.uniform(0.0, 1.0, len(found))
        predictions.append(raw)
    return task, _tables(truth_boxes, truth_classes, max_boxes), np.stack(predictions)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_logged_map_agrees_with_pycocotools_on_the_same_detections(seed):
    task, tables, predictions = _scene(seed)
    logged = task.measure(tables, predictions)
    found = task.decide(predictions)
    truths = [ImageBoxes(t[t[:, 4] >= 0, :4], t[t[:, 4] >= 0, 4].astype(int)) for t in tables]
    detections = [ImageBoxes(b[:n], c[:n], s[:n]) for b, c, s, n in zip(
        found["detection_boxes"], found["detection_classes"], found["detection_scores"],
        found["num_detections"])]
    coco = coco_evaluate(truths, detections, task.num_classes)
    assert 0.1 < coco.map < 0.9
    assert logged["map"] == pytest.approx(coco.map, abs=0.005)
    assert logged["map_50"] == pytest.approx(coco.map_50, abs=0.005)


def test_the_metric_adds_up_over_batches_as_over_one():
    task, tables, predictions = _scene(3, images=12)
    whole = task.measure(tables, predictions)
    in_parts = task.measure_batches([(tables[:5], predictions[:5]),
                                     (tables[5:], predictions[5:])])
    assert in_parts == pytest.approx(whole, abs=1e-6)


def test_perfect_detections_score_1_and_none_score_0():
    task = _task()
    rng = np.random.default_rng(4)
    cells = np.array([[0.0, 0.0], [0.0, 0.5], [0.5, 0.0], [0.5, 0.5]])  # boxes apart,
    boxes, classes = [], []                          # so suppression keeps every one
    for _ in range(10):
        n = int(rng.integers(0, 5))
        corner = cells[rng.choice(4, n, replace=False)] + 0.1
        boxes.append(np.concatenate([corner, corner + 0.3], axis=1))
        classes.append(rng.integers(0, 3, n))
    tables = _tables(boxes, classes, 6)
    anchors = task.anchor_set.centres_sizes()
    perfect = np.zeros((len(tables), len(anchors), 4 + task.num_classes), np.float32)
    for i, (image_boxes, image_classes) in enumerate(zip(boxes, classes)):
        n = len(image_boxes)
        perfect[i, :n, :4] = BoxCoder().encode(image_boxes.astype(np.float32), anchors[:n])
        perfect[i, np.arange(n), 4 + image_classes] = 0.9
    assert task.measure(tables, perfect) == pytest.approx({"map": 1.0, "map_50": 1.0},
                                                          abs=1e-6)
    assert task.measure(tables, np.zeros_like(perfect)) == {"map": 0.0, "map_50": 0.0}


def test_targets_mark_anchors_positive_ignored_or_background_and_keep_the_table():
    task = Detection(2, SIZE, 3, AnchorConfig(strides=(32,), size=1.0, scales=(1.0,),
                                              aspect_ratios=(1.0,)))
    # anchors: 0 [0, 0, .5, .5], 1 [0, .5, .5, 1], 2 [.5, 0, 1, .5], 3 [.5, .5, 1, 1]
    wide = [0.0, 0.05, 0.5, 1.0]     # IoU 0.526 with anchor 1, 0.45 with anchor 0
    tables = _tables([np.array([wide, [0.5, 0.5, 1.0, 1.0]]), np.zeros((0, 4))],
                     [np.array([1, 0]), np.zeros(0)], 3)
    encoded = task.encode(tf.constant(tables)).numpy()
    assert encoded.shape == (2, 4 + 3, 6)
    codes, positive, classes = (t.numpy() for t in anchor_targets(encoded, 4))
    assert classes.tolist() == [[IGNORED, 1, BACKGROUND, 0], [BACKGROUND] * 4]
    assert positive.tolist() == [[0, 1, 0, 1], [0] * 4]
    decoded = BoxCoder().decode(codes[0, 1:2], task.anchor_set.centres_sizes()[1:2])
    np.testing.assert_allclose(decoded.numpy()[0], wide, atol=1e-6)
    np.testing.assert_array_equal(task.targets(encoded), tables)


def test_the_loss_of_an_image_does_not_depend_on_the_others_in_its_batch():
    task, tables, predictions = _scene(5, images=6)
    loss = task.loss()
    y = task.encode(tf.constant(tables))
    per_image = [float(loss(y[i:i + 1], predictions[i:i + 1])) for i in range(6)]
    assert float(loss(y, predictions)) == pytest.approx(np.mean(per_image), rel=1e-5)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert float(again(y, predictions)) == pytest.approx(float(loss(y, predictions)))


def test_a_task_is_rebuilt_from_its_config_as_json_keeps_it():
    task = _task()
    config = json.loads(json.dumps(task.config()))
    assert make_task("detection", 4, config=config) == task


_MIRRORED = textwrap.dedent("""
    import json, sys, numpy as np, tensorflow as tf, keras
    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    from tftoolkit.tasks import make_task
    from tftoolkit.training import distributed
    saved = np.load(sys.argv[1])
    tables, predictions = saved["tables"], saved["predictions"]
    task = make_task("detection", int(saved["classes"]), config=json.loads(sys.argv[2]))
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():  # a model that returns its input: the predictions given
        inputs = keras.Input(predictions.shape[1:])
        model = keras.Model(inputs, keras.layers.Identity()(inputs))
        model.compile(optimizer="sgd", loss=task.loss(), weighted_metrics=task.metrics())
    data = tf.data.Dataset.from_tensor_slices((predictions, tables)).batch(10).map(
        lambda a, b: (a, task.encode(b)))
    print(json.dumps([model.evaluate(data, verbose=0, return_dict=True),
                      distributed.evaluate_distributed(model, data, strategy, task),
                      task.measure(tables, predictions)]))
""")


def test_the_figures_sum_over_replicas_under_mirrored_strategy(tmp_path):
    task, tables, predictions = _scene(6, images=30)
    np.savez(tmp_path / "scene.npz", tables=tables, predictions=predictions,
             classes=task.num_classes)
    proc = subprocess.run([sys.executable, "-c", _MIRRORED, str(tmp_path / "scene.npz"),
                           json.dumps(task.config())], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    keras_figures, own, measured = json.loads(proc.stdout.splitlines()[-1])
    assert set(keras_figures) == set(own) == {"loss", "map", "map_50"}
    assert 0.1 < keras_figures["map"] < 0.9
    for figure, value in keras_figures.items():
        assert own[figure] == pytest.approx(value, abs=1e-5), figure
        if figure != "loss":
            assert measured[figure] == pytest.approx(value, abs=1e-5), figure
