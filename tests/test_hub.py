"""KerasHub presets as backbones (``model.architecture=hub:...``), on tiny presets saved
locally with ``save_to_preset``: no download."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import tftoolkit
from tftoolkit.errors import RecipeError, WeightsError
from tftoolkit.recipe import DataConfig, ExportConfig, ModelConfig, Recipe, TrainConfig
from tftoolkit.tasks import SingleLabel

keras_hub = pytest.importorskip("keras_hub")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _converter(cls, size: int):
    return cls(image_size=(size, size), scale=[1 / (255 * s) for s in STD],
               offset=[-m / s for m, s in zip(MEAN, STD)])


@pytest.fixture(scope="module")
def resnet_preset(tmp_path_factory):
    """A two-stage ResNet (random weights) and a 32 px converter with ImageNet mean/std."""
    folder = tmp_path_factory.mktemp("hub") / "resnet_tiny"
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        image_shape=(None, None, 3))
    backbone.save_to_preset(str(folder))
    _converter(keras_hub.layers.ResNetImageConverter, 32).save_to_preset(str(folder))
    return folder, backbone


@pytest.fixture(scope="module")
def vit_preset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub") / "vit_tiny"
    keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=2,
                                 num_heads=2, hidden_dim=16, mlp_dim=32).save_to_preset(
        str(folder))
    keras_hub.layers.ViTImageConverter(image_size=(32, 32), scale=1 / 127.5,
                                       offset=-1.0).save_to_preset(str(folder))
    return folder


def _recipe(architecture: str, folder, mode: str, image_size: int = 0, **export) -> Recipe:
    return Recipe(name="hub",
                  data=DataConfig(source="folder", dir=str(folder), image_size=image_size,
                                  test_fraction=0.25),
                  model=ModelConfig(architecture=architecture, mode=mode,
                                    unfreeze="stack1_block0"),
                  train=TrainConfig(epochs=1, batch_size=8, learning_rate=1e-3,
                                    fine_tune_learning_rate=1e-3, seed=5),
                  export=ExportConfig(max_accuracy_drop=1.0, **export))


def _info(size: int):
    from tftoolkit.data import DataInfo

    return DataInfo(SingleLabel(2, "categorical"), (size, size, 3), ["a", "b"], size, "t")


def test_the_presets_converter_is_the_in_graph_preprocessing(resnet_preset):
    folder, saved = resnet_preset
    architecture = f"hub:{folder}"
    assert tftoolkit.models.get_architecture(architecture).default_size == 32
    recipe = _recipe(architecture, folder, "feature_extraction")
    model = tftoolkit.build_model(recipe, _info(32))
    converter = keras_hub.layers.ImageConverter.from_preset(str(folder))
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    preprocess = model.get_layer("preprocess")
    assert preprocess.mode == "affine" and str(folder) in preprocess.source
    np.testing.assert_allclose(preprocess(x), converter(x), atol=1e-5)
    # model.weights=imagenet: the preset's own weights
    np.testing.assert_array_equal(model.get_layer("backbone").get_layer("conv1_conv").kernel,
                                  saved.get_layer("conv1_conv").kernel)
    # another image size: resized in the graph to the preset's, as its converter does
    other = tftoolkit.build_model(recipe, _info(48))
    big = np.random.default_rng(1).uniform(0, 255, (2, 48, 48, 3)).astype("float32")
    np.testing.assert_allclose(other.get_layer("preprocess")(big), converter(big), atol=1e-4)


def test_a_cnn_preset_trains_by_block_with_caches_and_exports(resnet_preset, image_folder,
                                                              quiet):
    folder, _ = resnet_preset
    recipe = _recipe(f"hub:{folder}", image_folder, "two_stage",
                     formats=["tflite", "tflite_int8", "mediapipe", "mediapipe_int8", "onnx"])
    result = tftoolkit.train(recipe, quiet)
    assert any(n.startswith("feature cache: frozen backbone run once") for n in result.notes)
    assert any(n.startswith("frozen-prefix cache: the frozen backbone layers below "
                            "stack1_block0_1_pad") for n in result.notes), result.notes
    backbone = result.model.get_layer("backbone")
    assert backbone.get_layer("stack1_block0_2_conv").trainable
    assert not backbone.get_layer("stack0_block0_2_conv").trainable
    card = json.loads((result.export_dir / "model_card.json").read_text())
    assert set(card["formats"]) == {"tflite", "tflite_int8", "mediapipe", "mediapipe_int8",
                                    "onnx"}, card.get("formats_refused")
    assert card["formats"]["mediapipe"]["test_agreement"] == 1.0
    # the saved model loads in a fresh process (KerasHub's classes come with it)
    code = ("import sys, tftoolkit; m = tftoolkit.models.load_keras_model(sys.argv[1]); "
            "print(m.get_layer('backbone').__class__.__name__)")
    proc = subprocess.run([sys.executable, "-c", code, str(result.run_dir / "model.keras")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ResNetBackbone")


def test_a_transformer_preset_extracts_features_and_exports(vit_preset, image_folder, quiet):
    from tftoolkit.errors import ExportError

    recipe = _recipe(f"hub:{vit_preset}", image_folder, "feature_extraction",
                     formats=["mediapipe"])
    result = tftoolkit.train(recipe, quiet)
    assert result.model.get_layer("pool").__class__.__name__ == "GlobalAveragePooling1D"
    card = json.loads((result.export_dir / "model_card.json").read_text())
    assert card["formats"]["mediapipe"]["test_agreement"] == 1.0
    # tf2onnx writes the exact GELU as an Erfc node, which ONNX Runtime lacks: the export
    # says so, and leaves no version behind
    recipe_file = result.run_dir / "recipe.json"
    saved = json.loads(recipe_file.read_text())
    saved["export"]["formats"] = ["onnx"]
    recipe_file.write_text(json.dumps(saved))
    versions = sorted(result.export_dir.parent.iterdir())
    with pytest.raises(ExportError, match="ONNX Runtime cannot load .*Erfc"):
        tftoolkit.export(result.run_dir)
    assert sorted(result.export_dir.parent.iterdir()) == versions


def test_a_preset_name_offline_says_what_to_download_where():
    with pytest.raises(WeightsError) as err:
        tftoolkit.models.get_architecture("hub:resnet_18_imagenet")
    message = str(err.value)
    assert "kagglehub.model_download('keras/resnetv1/keras/resnet_18_imagenet" in message
    assert "model.architecture=hub:/path/to/that/folder" in message


def test_an_unknown_preset_or_an_incomplete_folder_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="did you mean 'resnet_18_imagenet'"):
        tftoolkit.models.get_architecture("hub:resnet_18_imagenett")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RecipeError, match="no image_converter.json"):
        tftoolkit.models.get_architecture(f"hub:{tmp_path}")


def test_without_keras_hub_a_hub_architecture_says_how_to_install(monkeypatch):
    from tftoolkit.models import hub

    monkeypatch.setitem(sys.modules, "keras_hub", None)  # import keras_hub: ImportError
    hub.hub_spec.cache_clear()
    with pytest.raises(RecipeError, match="needs KerasHub, which is not installed"):
        tftoolkit.models.get_architecture("hub:resnet_18_imagenet")
