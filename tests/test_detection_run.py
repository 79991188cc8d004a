"""A detector trained by the ordinary runner from VOC boxes (and CSV boxes read as a
detection source): targets encoded in the pipeline, ``val_map`` logged per epoch, the
test figures in metrics.json agreeing with pycocotools, the SavedModel serving the
model's detections, and MediaPipe files measured, refused or loaded by MediaPipe."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import write_image
from tftoolkit.augment import build_augmenter
from tftoolkit.data import load_data
from tftoolkit.detection.evaluation import ImageBoxes, coco_evaluate
from tftoolkit.detection.head import HEAD
from tftoolkit.errors import DataError, RecipeError
from tftoolkit.models.detector import build_detector
from tftoolkit.models.registry import get_architecture
from tftoolkit.recipe import load_recipe
from tftoolkit.tasks import Detection
from tftoolkit.training.runner import train

SIZE = 64
CLASSES = ("red", "blue")
COLOURS = ((230, 40, 40), (40, 40, 230))


def _scenes(count: int, seed: int = 0):
    """``count`` noise pictures of 80x64 pixels with 0-2 coloured squares each: per
    picture its pixels and its ``(class name, xmin, ymin, xmax, ymax)`` boxes."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        image = rng.integers(0, 60, (64, 80, 3), dtype=np.uint8)
        boxes = []
        for k in range(i % 3):
            side = int(rng.integers(16, 28))
            x = int(rng.integers(0, 80 - side)) if k == 0 else 80 - side
            y = int(rng.integers(0, 64 - side))
            label = int(rng.integers(0, 2))
            image[y:y + side, x:x + side] = COLOURS[label]
            boxes.append((CLASSES[label], x, y, x + side, y + side))
        yield image, boxes


def _voc(root: Path, count: int = 24) -> Path:
    (root / "Annotations").mkdir(parents=True)
    for i, (image, boxes) in enumerate(_scenes(count)):
        write_image(root / "JPEGImages" / f"{i}.png", image)
        objects = "".join(f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin>"
                          f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>"
                          "</object>" for name, x0, y0, x1, y1 in boxes)
        (root / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><filename>{i}.png</filename><size><width>80</width><height>64"
            f"</height><depth>3</depth></size>{objects}</annotation>")
    return root


def _csv(root: Path, count: int = 24) -> Path:
    lines = ["path,xmin,ymin,xmax,ymax,label,split"]
    for i, (image, boxes) in enumerate(_scenes(count, seed=1)):
        write_image(root / f"{i}.png", image)
        split = "test" if i % 6 == 0 else "val" if i % 6 == 1 else "train"
        lines += ([f"{i}.png,{x0},{y0},{x1},{y1},{name},{split}"
                   for name, x0, y0, x1, y1 in boxes] or [f"{i}.png,,,,,,{split}"])
    (root / "boxes.csv").write_text("\n".join(lines) + "\n")
    return root / "boxes.csv"


def _overrides(quiet: dict, **more) -> dict:
    return {**quiet, "data.image_size": SIZE, "model.weights": "imagenet-torchvision",
            "train.epochs": 2, "train.batch_size": 8, "train.learning_rate": 1e-2, **more}


@pytest.fixture(scope="module")
def voc_run(tmp_path_factory, imported_mobilenet):
    tmp = tmp_path_factory.mktemp("voc_run")
    quiet = {"train.run_dir": str(tmp / "runs"), "export.dir": str(tmp / "exports"),
             "train.verbose": 0}
    return train("object_detection", _overrides(
        quiet, **{"data.dir": str(_voc(tmp / "voc")), "augment.enabled": False,
                  "data.validation_fraction": 0.25, "data.test_fraction": 0.25,
                  "export.formats": ["mediapipe"], "train.steps_per_epoch": 40,
                  "train.fine_tune_epochs": 1}))


def test_a_voc_run_logs_val_map_every_epoch_and_reports_test_map(voc_run):
    assert isinstance(voc_run.info.task, Detection) and voc_run.info.class_names == \
        sorted(CLASSES)
    history = voc_run.history
    assert len(history["val_map"]) == len(history["val_map_50"]) == 3  # 2 + 1 epochs
    # mAP is validation's alone: the training batches' detections are not decoded
    assert set(history) == {"loss", "val_loss", "val_map", "val_map_50"}
    with Image.open(voc_run.run_dir / "curves.png") as curves:  # a panel (500 px) each:
        assert curves.width == 3 * 500                          # loss, map, map_50
    assert all(0.0 <= v <= 1.0 for v in history["val_map"] + history["val_map_50"])
    metrics = json.loads((voc_run.run_dir / "metrics.json").read_text())
    assert {"val_map", "val_map_50", "test_map", "test_map_50"} <= set(metrics)
    for stage in ("stage 1 (feature_extraction)", "stage 2 (fine_tune)"):
        assert any(note.startswith(f"{stage}: kept epoch") and "val_map" in note
                   for note in voc_run.notes), voc_run.notes
    # the recipe's two stages, without augmentation: the head trained on the frozen
    # backbone's cached feature maps, then the backbone's top 35% (MobileNetV2: from
    # block_11) with it on the cached output of the blocks below
    assert "feature cache: frozen backbone run once; head trained on cached features" in \
        voc_run.notes
    assert any(note.startswith("frozen-prefix cache: the frozen backbone layers below "
                               "block_11_expand run once") for note in voc_run.notes)


def test_the_reported_test_map_is_pycocotools_on_the_models_detections(voc_run):
    data = load_data(voc_run.recipe, SIZE)
    images, tables = data.arrays("test")
    task = voc_run.info.task
    found = task.decide(np.asarray(voc_run.model(images, training=False)))
    truths = [ImageBoxes(t[t[:, 4] >= 0, :4], t[t[:, 4] >= 0, 4].astype(int)) for t in tables]
    detections = [ImageBoxes(b[:n], c[:n], s[:n]) for b, c, s, n in zip(
        found["detection_boxes"], found["detection_classes"], found["detection_scores"],
        found["num_detections"])]
    coco = coco_evaluate(truths, detections, task.num_classes)
    assert voc_run.metrics["test_map"] == pytest.approx(coco.map, abs=0.005)
    assert voc_run.metrics["test_map_50"] == pytest.approx(coco.map_50, abs=0.005)


def test_the_export_serves_the_tf_od_api_outputs_of_images_of_any_size(voc_run):
    card = json.loads((voc_run.export_dir / "model_card.json").read_text())
    assert card["task"] == "detection" and card["parity"]["max_abs_diff"] <= 1e-5
    served = tf.saved_model.load(str(voc_run.export_dir))
    images = np.random.default_rng(3).integers(0, 255, (2, 90, 70, 3)).astype(np.float32)
    out = served.signatures["serving_default"](images=tf.constant(images))
    assert set(out) == {"detection_boxes", "detection_scores", "detection_classes",
                        "detection_class_names", "num_detections"}
    png = tf.stack([tf.io.encode_png(tf.cast(image, tf.uint8)) for image in images])
    by_bytes = served.signatures["serve_bytes"](image_bytes=png)
    np.testing.assert_allclose(by_bytes["detection_boxes"], out["detection_boxes"],
                               atol=1e-5)


def test_the_mediapipe_files_are_measured_on_validation_and_recorded_in_the_card(voc_run):
    card = json.loads((voc_run.export_dir / "model_card.json").read_text())
    written = {**card["formats"], **card["formats_refused"]}
    assert set(written) == {"mediapipe"} and "mediapipe" in card["formats"]
    assert {"val_map", "val_float_map", "val_map_drop", "val_agreement", "test_map",
            "size_vs_float_tflite", "metadata_file"} <= set(written["mediapipe"])
    assert written["mediapipe"]["val_map_drop"] == pytest.approx(0.0, abs=0.02)
    assert written["mediapipe"]["val_agreement"] >= 0.95
    allowed = voc_run.recipe.export.max_accuracy_drop
    for fmt, entry in card["formats"].items():   # kept: within the allowed drop
        assert entry["val_map_drop"] <= allowed and (voc_run.export_dir / entry["file"]) \
            .is_file()
    for fmt, entry in card["formats_refused"].items():   # refused: beyond it, not written
        assert entry["val_map_drop"] > allowed and "changes validation mAP" in \
            entry["reason"] and not (voc_run.export_dir / f"model_{fmt}.tflite").exists()


MEDIAPIPE_CLIENT = """
import json, sys
sys.modules["tensorflow"] = None  # the file must load without TensorFlow
import mediapipe as mp
from mediapipe.tasks.python import BaseOptions, vision

options = vision.ObjectDetectorOptions(base_options=BaseOptions(model_asset_path=sys.argv[1]),
                                       max_results=5, score_threshold=0.0)
with vision.ObjectDetector.create_from_options(options) as detector:
    found = detector.detect(mp.Image.create_from_file(sys.argv[2])).detections
print(json.dumps({"detections": len(found), "names": sorted({d.categories[0].category_name
                                                             for d in found})}))
"""


def test_the_exported_mediapipe_file_loads_in_mediapipes_object_detector(voc_run, tmp_path):
    image = write_image(tmp_path / "scene.png", next(_scenes(1))[0])
    proc = subprocess.run([sys.executable, "-c", MEDIAPIPE_CLIENT,
                           str(voc_run.export_dir / "model_mediapipe.tflite"), str(image)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["detections"] >= 1 and set(result["names"]) <= set(CLASSES)


def test_a_csv_of_boxes_with_a_split_column_is_a_detection_source(tmp_path, quiet):
    recipe = load_recipe("object_detection", _overrides(quiet, **{
        "data.source": "csv", "data.csv": str(_csv(tmp_path)),
        "data.split_column": "split"}))
    data = load_data(recipe, SIZE)
    assert isinstance(data.info.task, Detection) and data.info.task.max_boxes == 2
    assert data.info.counts == {"train": 16, "val": 4, "test": 4}
    images, tables = data.arrays("val")
    assert images.shape == (4, SIZE, SIZE, 3) and tables.shape == (4, 2, 5)
    assert (tables[:, :, 4] >= 0).sum(axis=1).tolist() == [1, 1, 1, 1]  # pictures 1, 7, ...
    assert not tables[:, 1, :4].any() and (tables[:, 1, 4] == -1).all()
    # the training pipeline moves each image's boxes with its pixels: every box of an
    # augmented batch still encloses its coloured square
    augmenter = build_augmenter(replace(recipe.augment, resized_crop_scale=0.5,
                                        rotation=0.05), SIZE, 0, spatial=True)
    assert augmenter.in_model is None and augmenter.in_pipeline is None
    x, y = next(iter(data.dataset("train", training=True, batch_size=16,
                                  augment=augmenter.pipeline_fn())))
    plain, _ = next(iter(data.dataset("train", batch_size=16)))
    assert not np.array_equal(np.asarray(x), np.asarray(plain))
    boxes = data.info.task.targets(np.asarray(y))
    checked = 0
    for image, table in zip(np.asarray(x), boxes):
        for ymin, xmin, ymax, xmax in table[table[:, 4] >= 0, :4] * SIZE:
            inner = image[int(ymin) + 2:int(ymax) - 2, int(xmin) + 2:int(xmax) - 2]
            assert inner.size and inner.max(axis=-1).mean() > 150, (ymin, xmin, ymax, xmax)
            checked += 1
    assert checked >= 8


def test_a_coco_file_is_a_detection_source_with_a_test_split_held_out(tmp_path, quiet):
    images, annotations = [], []
    for i, (image, boxes) in enumerate(_scenes(10, seed=2)):
        write_image(tmp_path / "images" / f"{i}.png", image)
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 80, "height": 64})
        annotations += [{"id": len(annotations) + 1, "image_id": i + 1,
                         "category_id": CLASSES.index(name) + 1,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0}
                        for name, x0, y0, x1, y1 in boxes]
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps({"images": images, "annotations": annotations,
                                     "categories": [{"id": 1, "name": "red"},
                                                    {"id": 2, "name": "blue"}]}))
    recipe = load_recipe("object_detection", _overrides(quiet, **{
        "data.source": "coco", "data.annotations": str(instances),
        "data.dir": str(tmp_path / "images"), "data.test_fraction": 0.2}))
    data = load_data(recipe, SIZE)
    assert data.info.class_names == ["red", "blue"] and sum(data.info.counts.values()) == 10
    tables = data.splits["train"].labels
    assert data.info.counts["test"] == 2 and data.info.class_counts == [
        int((tables[..., 4] == k).sum()) for k in range(2)]
    with pytest.raises(DataError, match="data.source='coco' needs data.annotations"):
        load_data(load_recipe("object_detection", _overrides(quiet, **{
            "data.source": "coco", "data.dir": str(tmp_path / "images")})), SIZE)


def test_fine_tuning_a_detector_on_its_frozen_prefix_gives_the_uncached_model(tmp_path,
                                                                             quiet):
    """The stride-8 tap lies below block_13: it is cached with the frozen blocks'
    activations, and the unfrozen blocks and the head train on them as on images."""
    table = _csv(tmp_path, count=18)
    runs = {}
    for cache in ("auto", "off"):
        runs[cache] = train("object_detection", _overrides(
            quiet, **{"data.source": "csv", "data.csv": str(table),
                      "data.split_column": "split", "model.mode": "fine_tune",
                      "model.unfreeze": "block_13", "train.cache_features": cache,
                      "train.optimizer": "sgd", "train.seed": 3,
                      "export.enabled": False}))
    cached, plain = runs["auto"], runs["off"]
    assert any(n.startswith("frozen-prefix cache: the frozen backbone layers below "
                            "block_13_expand run once") for n in cached.notes), cached.notes
    assert not any("prefix cache" in n for n in plain.notes)
    # The same steps, rounding apart: the frozen part runs in the training step's graph
    # on images and alone on the cache, with other convolution kernels. (SGD: Adam would
    # turn that rounding in the near-zero gradients of the box codes into whole steps.)
    np.testing.assert_allclose(cached.history["loss"], plain.history["loss"], rtol=1e-3)
    np.testing.assert_allclose(cached.history["val_loss"], plain.history["val_loss"],
                               rtol=1e-3)
    x = np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(cached.model.predict(x, verbose=0),
                               plain.model.predict(x, verbose=0), atol=1e-3)


def test_settings_that_do_not_move_boxes_are_refused_before_training(tmp_path, quiet):
    overrides = _overrides(quiet, **{"data.dir": str(_voc(tmp_path / "voc", 6))})
    with pytest.raises(RecipeError, match="augment.mixup=.*without moving the boxes"):
        load_data(load_recipe("object_detection", {**overrides, "augment.enabled": True,
                                                      "augment.mixup": 0.2}), SIZE)
    with pytest.raises(DataError, match="train.loss='categorical_crossentropy'.*boxes"):
        load_data(load_recipe("object_detection", {
            **overrides, "train.loss": "categorical_crossentropy"}), SIZE)
    with pytest.raises(RecipeError, match=r"export.formats has \['onnx'\]: a detector"):
        load_data(load_recipe("object_detection", {**overrides, "export.formats": ["onnx"]}),
                  SIZE)
    with pytest.raises(RecipeError, match="data.image_size=70.*multiple of"):
        load_data(load_recipe("object_detection", overrides), 70)


def test_model_anchor_strides_choose_the_pyramid_levels(tmp_path, quiet):
    overrides = _overrides(quiet, **{"data.dir": str(_voc(tmp_path / "voc", 6))})
    data = load_data(load_recipe("object_detection", {
        **overrides, "model.anchor_strides": [16, 32]}), SIZE)
    task = data.info.task
    assert task.anchors.strides == (16, 32) and task.config()["anchors"]["strides"] == (16, 32)
    model = build_detector(get_architecture("mobilenet_v2"), weights="none",
                           mode="feature_extraction", image_size=SIZE, task=task)
    assert [tuple(x.shape[1:3]) for x in model.get_layer(HEAD).inputs] == [(4, 4), (2, 2)]
    assert model.output.shape[1] == task.anchor_set.count == (16 + 4) * 9
    with pytest.raises(RecipeError, match=r"model.anchor_strides=\[8, 32\]: .*twice"):
        load_recipe("object_detection", {**overrides, "model.anchor_strides": [8, 32]})
    task = load_data(load_recipe("object_detection", {
        **overrides, "model.anchor_strides": [64]}), SIZE).info.task
    with pytest.raises(RecipeError, match="no feature map at stride.*model.anchor_strides"):
        build_detector(get_architecture("mobilenet_v2"), weights="none",
                       mode="feature_extraction", image_size=SIZE, task=task)


def test_predict_prints_the_boxes_and_draws_them(voc_run, tmp_path, cli):
    image = write_image(tmp_path / "scene.png", list(_scenes(3))[2][0])  # two squares
    proc = cli("predict", voc_run.export_dir, image, "--min-score", 0, "--out",
               tmp_path / "drawn")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == str(image) and len(lines) >= 3
    assert all(" box x " in line and line.endswith(" px") for line in lines[1:-1])
    drawn = tmp_path / "drawn" / "scene_boxes.png"
    assert drawn.is_file() and lines[-1].startswith(f"wrote {tmp_path / 'drawn'}")
    from PIL import Image
    assert Image.open(drawn).size == (80, 64)   # the image's own size


def test_evaluate_writes_coco_ap_per_class_curves_and_a_sheet_of_boxes(voc_run, tmp_path,
                                                                       cli):
    proc = cli("evaluate", voc_run.run_dir, "--out", tmp_path / "eval")
    assert proc.returncode == 0, proc.stderr
    assert "AP@0.5" in proc.stdout and "(pycocotools;" in proc.stdout
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["cocoeval"]["map"] == pytest.approx(voc_run.metrics["test_map"], abs=0.005)
    assert [row["class"] for row in report["per_class"]] == sorted(CLASSES)
    for name in ("per_class.csv", "pr_curves.png", "detections.png"):
        assert (tmp_path / "eval" / name).is_file(), name
    refused = cli("evaluate", voc_run.run_dir, "--tta", 2, "--out", tmp_path / "eval")
    assert refused.returncode != 0 and "boxes in other places" in refused.stderr


def test_augment_preview_draws_the_boxes_moved_with_the_pixels(voc_run, tmp_path,
                                                               monkeypatch):
    import tftoolkit.augment.preview as preview

    drawn = []
    monkeypatch.setattr(preview, "draw_boxes", lambda ax, boxes, *rest: drawn.append(
        np.asarray(boxes)))
    recipe = replace(voc_run.recipe, augment=replace(
        voc_run.recipe.augment, enabled=True, flip="horizontal", resized_crop_scale=0.5))
    out = preview.augment_preview(recipe, tmp_path / "preview.png", images=3, views=2)
    assert out.is_file() and len(drawn) == 3 * 3
    # a view's boxes are those of its image, flipped or cropped, never new ones
    assert all(len(view) <= 2 for view in drawn) and any(len(view) for view in drawn)
