"""Detection pieces: anchors, box coding, matching, the loss, MediaPipe-style decoding,
the detector model, and COCO metrics by pycocotools."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tftoolkit  # noqa: F401  (registers the backbones)
from tftoolkit.detection.anchors import AnchorConfig, AnchorSet
from tftoolkit.detection.boxes import BoxCoder, iou_matrix
from tftoolkit.detection.decoding import NmsConfig, decode_detections
from tftoolkit.detection.evaluation import ImageBoxes, coco_evaluate
from tftoolkit.detection.head import HEAD, detector_spec, split_predictions
from tftoolkit.detection.losses import DetectionLoss, box_loss, focal_loss
from tftoolkit.detection.matching import (BACKGROUND, IGNORED, NO_BOX, MatchConfig,
                                          TargetEncoder, anchor_targets)
from tftoolkit.errors import RecipeError
from tftoolkit.models.detector import build_detector, feature_taps, split_detector
from tftoolkit.models.registry import get_architecture
from tftoolkit.tasks import Detection

# one anchor per cell of a 2x2 grid on a 64 px image: centres 0.25 / 0.75, side 0.5
GRID = AnchorSet.build(AnchorConfig(strides=(32,), size=1.0, scales=(1.0,),
                                    aspect_ratios=(1.0,)), 64)


# --- anchors and box coding -------------------------------------------------------------

def test_anchors_are_listed_by_level_then_row_then_column_then_shape():
    config = AnchorConfig(strides=(16, 32), size=2.0, scales=(1.0, 2.0),
                          aspect_ratios=(0.5, 2.0))
    anchors = AnchorSet.build(config, 64)
    table = anchors.centres_sizes()
    assert [(level.stride, level.rows) for level in anchors.levels] == [(16, 4), (32, 2)]
    assert anchors.count == len(table) == (16 + 4) * 4
    # the first location of the finest level: its four shapes, scale-major
    side = 2.0 * 16 / 64
    np.testing.assert_allclose(table[:4, :2], [[0.125, 0.125]] * 4)
    np.testing.assert_allclose(table[:4, 2:], [
        [side / math.sqrt(0.5), side * math.sqrt(0.5)], [side / math.sqrt(2), side * math.sqrt(2)],
        [2 * side / math.sqrt(0.5), 2 * side * math.sqrt(0.5)],
        [2 * side / math.sqrt(2), 2 * side * math.sqrt(2)]], rtol=1e-6)
    # then the next column of the same row, and the next row after the last column
    np.testing.assert_allclose(table[4, :2], [0.125, 0.375])
    np.testing.assert_allclose(table[16, :2], [0.375, 0.125])
    # the coarser level follows the whole finer one
    np.testing.assert_allclose(table[64, :2], [0.25, 0.25])
    np.testing.assert_allclose(table[-1, :2], [0.75, 0.75])


def test_an_anchor_set_is_rebuilt_from_its_dict_as_json_keeps_it():
    import json

    anchors = AnchorSet.build(AnchorConfig(), 96)
    again = AnchorSet.from_dict(json.loads(json.dumps(anchors.to_dict())))
    assert again == anchors
    np.testing.assert_array_equal(again.corners(), anchors.corners())


def test_an_input_side_that_is_not_a_multiple_of_the_largest_stride_is_refused():
    with pytest.raises(RecipeError, match=r"data.image_size=100.*multiple of .* 32"):
        AnchorSet.build(AnchorConfig(), 100)


def test_box_codes_decode_back_to_their_boxes_as_mediapipe_computes_them():
    coder = BoxCoder()
    anchors = np.array([[0.3, 0.4, 0.2, 0.1], [0.6, 0.5, 0.3, 0.5]], np.float32)
    boxes = np.array([[0.25, 0.33, 0.41, 0.47], [0.5, 0.2, 0.8, 0.9]], np.float32)
    codes = coder.encode(boxes, anchors).numpy()
    np.testing.assert_allclose(coder.decode(codes, anchors).numpy(), boxes, atol=1e-6)
    # MediaPipe's TensorsToDetectionsCalculator (YXHW, exponential sizes), written out
    ty, tx, th, tw = codes.T
    yc = ty / coder.y_scale * anchors[:, 2] + anchors[:, 0]
    xc = tx / coder.x_scale * anchors[:, 3] + anchors[:, 1]
    h = np.exp(th / coder.h_scale) * anchors[:, 2]
    w = np.exp(tw / coder.w_scale) * anchors[:, 3]
    np.testing.assert_allclose(np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], 1),
                               boxes, atol=1e-6)


def test_iou_of_boxes():
    a = tf.constant([[0.0, 0.0, 0.5, 0.5]])
    b = tf.constant([[0.0, 0.0, 0.5, 0.5], [0.25, 0.0, 0.75, 0.5], [0.6, 0.6, 0.7, 0.7]])
    np.testing.assert_allclose(iou_matrix(a, b).numpy(), [[1.0, 1 / 3, 0.0]], atol=1e-6)


# --- matching ---------------------------------------------------------------------------

def _table(boxes, classes, max_boxes: int = 4) -> tf.Tensor:
    """One image's box table [1, max_boxes, 5] (unused rows of class NO_BOX)."""
    table = np.zeros((1, max_boxes, 5), np.float32)
    table[0, :, 4] = NO_BOX
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    table[0, :len(boxes), :4], table[0, :len(boxes), 4] = boxes, classes
    return tf.constant(table)


def _encoded(encoder: TargetEncoder, boxes, classes):
    """An image's (box codes [A, 4], positive flags [A], class targets [A])."""
    targets = encoder(_table(boxes, classes))
    return tuple(t.numpy()[0] for t in anchor_targets(targets, encoder.anchors.count))


def test_anchors_are_positive_ignored_or_background_by_their_best_iou():
    # GRID's anchors: 0 [0, 0, .5, .5], 1 [0, .5, .5, 1], 2 [.5, 0, 1, .5], 3 [.5, .5, 1, 1]
    wide = [0.0, 0.05, 0.5, 1.0]     # IoU 0.526 with anchor 1, 0.45 with anchor 0
    _, positive, classes = _encoded(TargetEncoder(GRID, match=MatchConfig(0.5, 0.4)),
                                    [wide, [0.5, 0.5, 1.0, 1.0]], [2, 1])
    assert classes.tolist() == [IGNORED, 2, BACKGROUND, 1]
    assert positive.tolist() == [0, 1, 0, 1]
    # below a negative threshold above its IoU, anchor 0 is background
    _, _, classes = _encoded(TargetEncoder(GRID, match=MatchConfig(0.5, 0.46)), [wide], [2])
    assert classes.tolist() == [BACKGROUND, 2, BACKGROUND, BACKGROUND]


def test_a_box_that_fits_no_anchor_well_still_gets_its_best_anchor():
    tiny = [[0.7, 0.7, 0.75, 0.75]]  # IoU 0.01 with anchor 3
    codes, _, classes = _encoded(TargetEncoder(GRID), tiny, [2])
    assert classes.tolist() == [BACKGROUND, BACKGROUND, BACKGROUND, 2]
    decoded = BoxCoder().decode(codes[3:], GRID.centres_sizes()[3:])
    np.testing.assert_allclose(decoded.numpy(), tiny, atol=1e-6)


def test_an_image_without_boxes_is_background_everywhere():
    codes, positive, classes = _encoded(TargetEncoder(AnchorSet.build(AnchorConfig(), 64)),
                                        np.zeros((0, 4)), [])
    assert set(classes.tolist()) == {BACKGROUND}
    assert not codes.any() and not positive.any()


def test_box_targets_decode_to_the_matched_box():
    anchors = AnchorSet.build(AnchorConfig(), 96)
    boxes = np.array([[0.1, 0.2, 0.45, 0.5], [0.5, 0.55, 0.95, 0.9]], np.float32)
    codes, _, classes = _encoded(TargetEncoder(anchors), boxes, [0, 1])
    positive = classes >= 0
    decoded = BoxCoder().decode(codes, anchors.centres_sizes()).numpy()
    np.testing.assert_allclose(decoded[positive], boxes[classes[positive]], atol=1e-5)
    assert positive.sum() >= 2


def test_images_of_one_batch_are_encoded_as_each_alone():
    anchors = AnchorSet.build(AnchorConfig(), 64)
    encoder = TargetEncoder(anchors)
    first = _table([[0.1, 0.1, 0.5, 0.4]], [1])
    second = _table([[0.2, 0.5, 0.9, 0.95], [0.0, 0.0, 0.3, 0.3]], [0, 2])
    together = encoder(tf.concat([first, second], axis=0)).numpy()
    np.testing.assert_array_equal(together[:1], encoder(first).numpy())
    np.testing.assert_array_equal(together[1:], encoder(second).numpy())


# --- the loss ---------------------------------------------------------------------------

def _term(p: float, positive: bool) -> float:
    p_t, a_t = (p, 0.25) if positive else (1 - p, 0.75)
    return -a_t * (1 - p_t) ** 2 * math.log(p_t)


def test_focal_loss_is_the_sigmoid_focal_loss_of_every_anchor_not_ignored():
    scores = np.array([[[0.9, 0.2], [0.3, 0.1], [0.6, 0.5]]], np.float32)
    targets = np.array([[0, BACKGROUND, IGNORED]], np.int32)
    expected = _term(0.9, True) + _term(0.2, False) + _term(0.3, False) + _term(0.1, False)
    assert focal_loss(targets, scores).numpy() == pytest.approx([expected], rel=1e-5)


def test_box_loss_is_huber_over_the_codes_of_positive_anchors():
    codes = np.zeros((2, 3, 4), np.float32)
    truth = np.zeros((2, 3, 4), np.float32)
    positive = np.zeros((2, 3), np.float32)
    truth[0, 0, 0], positive[0, 0] = 0.5, 1    # error 0.5: Huber 0.125
    truth[1, 2, 0], positive[1, 2] = 3.0, 1    # error 3: Huber 2.5
    truth[1, 1] = 9.0                          # not positive: not counted
    assert box_loss(truth, positive, codes).numpy() == pytest.approx([0.125, 2.5])


def test_the_detection_loss_is_each_images_sum_over_its_positives_averaged():
    anchors = AnchorSet.build(AnchorConfig(strides=(32,), size=1.0, scales=(1.0,),
                                           aspect_ratios=(1.0,)), 64)
    encoder = TargetEncoder(anchors)
    tables = tf.concat([_table([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]], [0, 1]),
                        _table(np.zeros((0, 4)), [])], axis=0)
    targets = encoder(tables)
    predictions = np.concatenate([np.full((2, 4, 4), 0.3, np.float32),
                                  np.full((2, 4, 2), 0.4, np.float32)], axis=-1)
    # the first image's boxes are anchors 0 (class 0) and 3 (class 1): its positives
    first = (sum(_term(0.4, c == k) for c in (0, 1) for k in (0, 1))   # anchors 0, 3
             + 2 * 2 * _term(0.4, False)                                # anchors 1, 2
             + 2 * 4 * 0.5 * 0.3 ** 2) / 2                              # codes 0.3 off
    second = 4 * 2 * _term(0.4, False) / 1
    assert DetectionLoss()(targets, predictions).numpy() == pytest.approx(
        (first + second) / 2, rel=1e-5)
    again = keras.losses.deserialize(keras.losses.serialize(DetectionLoss(box_weight=2.0)))
    assert type(again) is DetectionLoss and again.box_weight == 2.0


# --- decoding as MediaPipe does ---------------------------------------------------------

def _predictions(boxes: np.ndarray, scores: np.ndarray, anchors: AnchorSet) -> np.ndarray:
    """One image's predictions [1, anchors, 4 + classes] putting ``boxes`` on the anchors."""
    codes = BoxCoder().encode(boxes, anchors.centres_sizes()).numpy()
    return np.concatenate([codes, scores], axis=-1)[None]


def test_suppression_is_greedy_class_agnostic_above_iou_0_3_and_capped():
    anchors = AnchorSet.build(AnchorConfig(strides=(32,), size=1.0, scales=(1.0,),
                                           aspect_ratios=(1.0,)), 128)   # 16 anchors
    boxes = np.tile([[0.0, 0.0, 0.1, 0.1]], (16, 1)).astype(np.float32)
    scores = np.zeros((16, 2), np.float32)
    placed = {0: ([0.1, 0.1, 0.5, 0.5], (0.9, 0.1)),
              1: ([0.1, 0.2, 0.5, 0.6], (0.2, 0.8)),    # IoU 0.6 with 0: suppressed
              2: ([0.1, 0.35, 0.5, 0.75], (0.7, 0.0)),  # IoU 0.23 with 0: kept
              3: ([0.6, 0.6, 0.9, 0.9], (0.05, 0.6)),   # apart: kept
              4: ([0.6, 0.1, 0.9, 0.4], (0.1, 0.2))}    # apart, lowest: beyond the cap
    for i, (box, score) in placed.items():
        boxes[i], scores[i] = box, score
    predictions = _predictions(boxes, scores, anchors)
    out = decode_detections(predictions, anchors, BoxCoder(), NmsConfig(max_results=3))
    assert int(out["num_detections"][0]) == 3
    np.testing.assert_allclose(out["detection_scores"][0], [0.9, 0.7, 0.6], atol=1e-6)
    assert out["detection_classes"][0].numpy().tolist() == [0, 0, 1]
    np.testing.assert_allclose(out["detection_boxes"][0], boxes[[0, 2, 3]], atol=1e-5)
    # a score threshold keeps scores at least it; padding past num_detections
    out = decode_detections(predictions, anchors, BoxCoder(),
                            NmsConfig(max_results=5, score_threshold=0.7))
    assert int(out["num_detections"][0]) == 2
    assert out["detection_classes"][0].numpy().tolist() == [0, 0, -1, -1, -1]
    assert not out["detection_boxes"][0, 2:].numpy().any()


def test_decoded_boxes_are_clipped_to_the_image_after_suppression():
    boxes = np.array([[-0.2, 0.1, 0.4, 0.5], [0.5, 0.5, 0.6, 0.6], [0.5, 0.5, 0.6, 0.6],
                      [0.55, 0.55, 1.3, 1.2]], np.float32)
    scores = np.array([[0.9], [0.0], [0.0], [0.8]], np.float32)
    out = decode_detections(_predictions(boxes, scores, GRID), GRID, BoxCoder(),
                            NmsConfig(max_results=2))
    np.testing.assert_allclose(out["detection_boxes"][0],
                               [[0.0, 0.1, 0.4, 0.5], [0.55, 0.55, 1.0, 1.0]], atol=1e-5)


# --- the model --------------------------------------------------------------------------

SMALL_TASK = Detection(3, 64)


@pytest.fixture(scope="module")
def small_detector():
    return build_detector(get_architecture("mobilenet_v2"), weights="none",
                          mode="feature_extraction", image_size=64, task=SMALL_TASK)


def test_mobilenet_v2_is_tapped_at_its_usual_layers_for_strides_8_16_32():
    backbone = keras.applications.MobileNetV2(weights=None, include_top=False,
                                              input_shape=(96, 96, 3))
    assert feature_taps(backbone, (8, 16, 32), 96) == [
        "block_6_expand_relu", "block_13_expand_relu", "out_relu"]
    with pytest.raises(RecipeError, match="no feature map at stride"):
        feature_taps(backbone, (64,), 96)


def test_the_detector_predicts_codes_and_scores_of_every_anchor(small_detector):
    spec = detector_spec(small_detector)
    assert spec.num_classes == 3 and spec.anchors == SMALL_TASK.anchor_set
    out = small_detector(np.full((2, 64, 64, 3), 120.0, np.float32))
    assert out.shape == (2, spec.anchors.count, 4 + 3)
    _, scores = split_predictions(out)
    # every class starts near the prior
    assert 0.001 < float(np.median(scores)) < 0.05


def test_a_frozen_backbone_trains_nothing(small_detector):
    backbone, head = small_detector.get_layer("backbone"), small_detector.get_layer(HEAD)
    assert not backbone.trainable_weights
    assert len(small_detector.trainable_weights) == len(head.trainable_weights) > 0


def test_fine_tuning_trains_the_top_blocks_with_batchnorm_frozen():
    model = build_detector(get_architecture("mobilenet_v2"), weights="none", mode="fine_tune",
                           unfreeze="block_15", image_size=64, task=Detection(2, 64))
    layers = model.get_layer("backbone").layers
    trained = {layer.name for layer in layers if layer.trainable and layer.weights}
    assert "block_15_expand" in trained and "block_14_expand" not in trained
    assert not any(isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
                   for layer in layers)


def test_a_saved_detector_loads_with_its_anchors(small_detector, tmp_path):
    small_detector.save(tmp_path / "detector.keras")
    again = keras.models.load_model(tmp_path / "detector.keras")
    assert detector_spec(again) == detector_spec(small_detector)
    x = np.full((1, 64, 64, 3), 90.0, np.float32)
    np.testing.assert_allclose(again(x), small_detector(x), atol=1e-6)


def test_the_head_on_the_features_gives_the_detectors_outputs(small_detector):
    features, head = split_detector(small_detector)
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    maps = features(x)
    assert [tuple(m.shape[1:3]) for m in maps] == [(8, 8), (4, 4), (2, 2)]
    np.testing.assert_allclose(head(maps), small_detector(x), atol=1e-6)


def test_the_cached_feature_maps_and_the_head_on_them_give_the_detectors_outputs(
        small_detector):
    from tftoolkit.augment import build_augmenter
    from tftoolkit.recipe import AugmentConfig
    from tftoolkit.training.feature_cache import cache_plan, split_at_feature_maps

    extractor, head = split_at_feature_maps(small_detector)
    x = np.random.default_rng(2).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    features = extractor(x)
    assert features.shape == (2, 8 * 8 * 192 + 4 * 4 * 576 + 2 * 2 * 1280)
    np.testing.assert_allclose(head(features), small_detector(x), atol=1e-5)
    assert {id(w) for w in head.trainable_weights} == {
        id(w) for w in small_detector.get_layer(HEAD).trainable_weights}
    # augmentation that moves boxes cannot be cached
    boxes = build_augmenter(AugmentConfig(enabled=True, flip="horizontal"), 64, 0,
                            spatial=True)
    assert cache_plan(boxes, 2, "feature cache", "")[0] is False


def test_fine_tuning_a_detector_trains_its_top_on_the_frozen_prefix_and_taps():
    """Fine-tuning from block_13, the stride-8 tap (block_6_expand_relu) is frozen: the
    prefix outputs it with block_12's activations, and the top (the unfrozen blocks,
    which make the other taps, and the head) gives the detector's outputs on them."""
    from tftoolkit.training.feature_cache import split_below_unfrozen

    detector = build_detector(get_architecture("mobilenet_v2"), weights="none",
                              mode="fine_tune", image_size=64, task=SMALL_TASK,
                              unfreeze="block_13")
    prefix, top = split_below_unfrozen(detector, "block_13")
    x = np.random.default_rng(3).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    # block_12_add at stride 16 (4x4x96), then the stride-8 tap (8x8x192)
    assert prefix(x).shape == (2, 4 * 4 * 96 + 8 * 8 * 192)
    np.testing.assert_allclose(top(prefix(x)), detector(x), atol=1e-5)
    trained = {id(w) for w in top.trainable_weights}
    assert trained == {id(w) for w in detector.trainable_weights}
    assert not {id(w) for w in prefix.weights} & trained
    # nothing frozen below block_1: no prefix to cache
    assert split_below_unfrozen(detector, 1.0) is None


def test_a_compiled_detector_loads_in_a_new_process_with_only_tftoolkit_imported(
        small_detector, tmp_path):
    import subprocess
    import sys

    small_detector.compile(loss=DetectionLoss(), metrics=SMALL_TASK.metrics())
    small_detector.save(tmp_path / "detector.keras")
    code = "import sys, keras, tftoolkit; keras.models.load_model(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "detector.keras")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


# --- COCO metrics ----------------------------------------------------------------------

def test_coco_metrics_of_perfect_and_of_missing_detections():
    truths = [ImageBoxes(np.array([[0.1, 0.1, 0.4, 0.4]]), np.array([0])),
              ImageBoxes(np.zeros((0, 4)), np.zeros(0, int))]
    perfect = [ImageBoxes(t.boxes, t.classes, np.ones(len(t.classes))) for t in truths]
    assert coco_evaluate(truths, perfect, 2).map == pytest.approx(1.0)
    none = [ImageBoxes(np.zeros((0, 4)), np.zeros(0, int), np.zeros(0))] * 2
    assert coco_evaluate(truths, none, 2).map == 0.0


def test_an_inverted_box_is_refused_rather_than_ignored():
    truths = [ImageBoxes(np.array([[0.1, 0.1, 0.4, 0.4]]), np.array([0]))]
    inverted = [ImageBoxes(np.array([[0.4, 0.1, 0.1, 0.4]]), np.array([0]), np.ones(1))]
    with pytest.raises(ValueError, match="minimum above its maximum"):
        coco_evaluate(truths, inverted, 1)
