"""Transfer learning: imported weights, safe checkpoint reading, freezing, regularizers."""

from __future__ import annotations

import dataclasses

import io
import json
import pickle
import re
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import keras
import tftoolkit
from tftoolkit.errors import RecipeError, WeightsError
from tftoolkit.tasks import SingleLabel
from tftoolkit.models import backbones
from tftoolkit.models.torch_checkpoint import LEGACY_MAGIC, read_state_dict
from tftoolkit.models.transfer import (backbone_of, block_of, build_transfer_model,
                                       unfreeze_start)
from tftoolkit.layers import PREPROCESSING_MODES, Preprocess
from tftoolkit.models.registry import ARCHITECTURES, MODES, get_architecture
from tftoolkit.models.weights import build_backbone
from tftoolkit.recipe import (DataConfig, ExportConfig, ModelConfig, Recipe, RegularizeConfig,
                              TrainConfig)


def _classify(image: np.ndarray, weights: Path) -> np.ndarray:
    import tensorflow as tf

    model = keras.applications.MobileNetV2(weights=None, input_shape=(225, 225, 3))
    model.load_weights(weights)
    x = tf.image.resize(image.astype("float32")[None], (225, 225))
    return model(Preprocess("torch")(x)).numpy()[0]


def test_imported_mobilenet_v2_recognises_a_cat_and_an_espresso(imported_mobilenet):
    import skimage.data

    cat = _classify(skimage.data.chelsea(), imported_mobilenet.top)
    assert int(np.argmax(cat)) in range(281, 286)  # tabby .. Egyptian cat
    coffee = _classify(skimage.data.coffee(), imported_mobilenet.top)
    assert int(np.argmax(coffee)) == 967  # espresso
    assert imported_mobilenet.record()["preprocessing"] == "torch"


def _transfer_model(architecture: str, weights: str, input_shape, classes: int,
                    mode: str = "feature_extraction") -> keras.Model:
    return build_transfer_model(get_architecture(architecture), weights=weights, mode=mode,
                                unfreeze=0, input_shape=input_shape,
                                task=SingleLabel(classes))


def test_torchvision_weights_select_torch_preprocessing(imported_mobilenet):
    model = _transfer_model("mobilenet_v2", "imagenet-torchvision", (33, 33, 3), 4)
    assert model.get_layer("preprocess").mode == "torch"
    keras_weights = _transfer_model("mobilenet_v2", "none", (33, 33, 3), 4)
    assert keras_weights.get_layer("preprocess").mode == "tf"


def _legacy_checkpoint(state_pickle: bytes, storages: list[tuple[str, np.ndarray]]) -> bytes:
    out = io.BytesIO()
    for header in (LEGACY_MAGIC, 1001, {"little_endian": True}):
        pickle.dump(header, out, protocol=2)
    out.write(state_pickle)
    pickle.dump([key for key, _ in storages], out, protocol=2)
    for _, array in storages:
        out.write(struct.pack("<q", array.size))
        out.write(array.astype("<f4").tobytes())
    return out.getvalue()


def _fake_torch(monkeypatch):
    """Importable stand-ins for the torch globals a real checkpoint references."""
    import sys
    import types

    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while pickling")

    FloatStorage.__module__, _rebuild_tensor_v2.__module__ = "torch", "torch._utils"
    FloatStorage.__qualname__ = "FloatStorage"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    torch.FloatStorage, utils._rebuild_tensor_v2 = FloatStorage, _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return FloatStorage, _rebuild_tensor_v2


class _TensorStub:
    def __init__(self, rebuild, storage_type, key, shape, offset=0, stride=None):
        self.rebuild, self.storage_type, self.key, self.shape = rebuild, storage_type, key, shape
        self.offset = offset
        self.stride = stride or tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))

    def __reduce__(self):
        numel = int(np.prod(self.shape))
        return (self.rebuild, (("storage-ref", self.storage_type, self.key, numel),
                               self.offset, self.shape, self.stride, False, {}))


class _TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, tuple) and obj and obj[0] == "storage-ref":
            return ("storage", obj[1], obj[2], "cpu", obj[3], None)
        return None


def test_reads_a_legacy_checkpoint_without_torch(tmp_path, monkeypatch):
    storage_type, rebuild = _fake_torch(monkeypatch)
    weight = np.arange(6, dtype="float32").reshape(2, 3)
    body = io.BytesIO()
    _TorchLikePickler(body, protocol=2).dump(
        {"layer.weight": _TensorStub(rebuild, storage_type, "0", (2, 3)),
         "layer.weight_t": _TensorStub(rebuild, storage_type, "0", (3,))})
    path = tmp_path / "tiny.pth"
    path.write_bytes(_legacy_checkpoint(body.getvalue(), [("0", weight)]))
    monkeypatch.undo()
    state = read_state_dict(path)
    np.testing.assert_array_equal(state["layer.weight"], weight)
    np.testing.assert_array_equal(state["layer.weight_t"], [0, 1, 2])


@pytest.mark.parametrize("offset, shape, stride", [
    (0, (1000, 1000), None),    # far more elements than the storage holds
    (5, (2, 3), None),          # in range in size, pushed out by its offset
    (0, (2, 3), (1000, 1)),     # a stride that jumps out of the storage
    (-4, (2,), None),           # a negative offset reads before the storage
])
def test_a_tensor_reaching_outside_its_storage_is_refused(tmp_path, monkeypatch, offset,
                                                          shape, stride):
    storage_type, rebuild = _fake_torch(monkeypatch)
    body = io.BytesIO()
    _TorchLikePickler(body, protocol=2).dump(
        {"layer.weight": _TensorStub(rebuild, storage_type, "0", shape, offset, stride)})
    path = tmp_path / "crafted.pth"
    path.write_bytes(_legacy_checkpoint(body.getvalue(),
                                        [("0", np.arange(6, dtype="float32"))]))
    monkeypatch.undo()
    with pytest.raises(WeightsError) as err:
        read_state_dict(path)
    message = str(err.value)
    assert str(path) in message and "'layer.weight'" in message
    assert "damaged or crafted" in message


def _reduce_pickle(module: str, name: str, argument: str) -> bytes:
    """Protocol-2 pickle of ``module.name(argument)``: what a crafted checkpoint holds."""
    arg = argument.encode()
    return (b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X" + struct.pack("<I", len(arg))
            + arg + b"\x85R.")


def test_crafted_checkpoint_that_would_run_a_command_is_rejected(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_checkpoint(_reduce_pickle("os", "system", f"touch {marker}"), []))
    with pytest.raises(WeightsError, match=r"refusing to read .*os\.system"):
        read_state_dict(path)
    assert not marker.exists()


def test_crafted_checkpoint_rejected_by_the_import_command(tmp_path, cli):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_checkpoint(
        _reduce_pickle("builtins", "eval", f"open({str(marker)!r}, 'w')"), []))
    proc = cli("weights", "import", "mobilenet_v2", "--from", path)
    assert proc.returncode == 2
    assert "builtins.eval" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_offline_missing_imagenet_weights_give_one_actionable_error():
    with pytest.raises(WeightsError) as err:
        build_backbone(get_architecture("resnet50"), "imagenet", (32, 32, 3))
    message = str(err.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert "models" in message and "--set model.weights=PATH" in message
    assert "Traceback" not in message


def test_offline_imagenet_falls_back_to_imported_weights(imported_mobilenet, capsys):
    backbone, preprocess = build_backbone(get_architecture("mobilenet_v2"), "imagenet",
                                          (33, 33, 3))
    assert preprocess.mode == "torch"
    assert "using imported torchvision's ImageNet MobileNetV2 weights" in (
        capsys.readouterr().out)
    assert "mobilenet_v2-b0353104.pth" in preprocess.source
    reference = keras.applications.MobileNetV2(weights=None, include_top=False,
                                               input_shape=(33, 33, 3))
    reference.load_weights(imported_mobilenet.notop)
    np.testing.assert_array_equal(backbone.get_layer("Conv1").kernel.numpy(),
                                  reference.get_layer("Conv1").kernel.numpy())


def test_registry_covers_keras_applications():
    for name, spec in backbones.BACKBONES.items():
        assert callable(getattr(keras.applications, backbones.KERAS_CONSTRUCTORS[name])), name
        assert spec.preprocessing in PREPROCESSING_MODES
        assert ARCHITECTURES[name] is spec and spec.kind == "backbone"
        assert set(spec.modes) == set(MODES)
    for family in ("mobilenet", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b7",
                   "efficientnet_v2_s", "resnet50", "resnet50_v2", "convnext_tiny",
                   "densenet121", "inception_v3", "xception", "vgg16", "nasnet_mobile"):
        assert family in backbones.BACKBONES
    assert backbones.BACKBONES["efficientnet_b3"].default_size == 300
    assert backbones.BACKBONES["resnet50"].preprocessing == "caffe"
    assert backbones.BACKBONES["densenet121"].preprocessing == "torch"
    for name in ("linear", "mlp", "cnn"):
        assert ARCHITECTURES[name].modes == ("scratch",)
    assert get_architecture("path/to/saved.keras").kind == "backbone"


@pytest.mark.parametrize("architecture", ["efficientnet_v2_b0", "efficientnet_b0"])
def test_an_efficientnet_backbone_builds_into_a_classifier(architecture):
    model = tftoolkit.build_model(tftoolkit.load_recipe("fashion_transfer", {
        "model.architecture": architecture, "model.weights": "none",
        "model.mode": "fine_tune", "model.unfreeze": 0.25, "data.image_size": 32}))
    backbone = backbone_of(model)
    assert backbone.name == "backbone" and len(backbone.layers) > 100
    assert model(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 10)


def test_preprocess_layer_matches_keras_preprocess_input():
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    for mode, module in (("tf", keras.applications.mobilenet_v2),
                         ("caffe", keras.applications.resnet50),
                         ("torch", keras.applications.densenet)):
        expected = module.preprocess_input(x.copy())
        np.testing.assert_allclose(Preprocess(mode)(x), expected, rtol=1e-5,
                                   atol=1e-4)


def test_unfreeze_moves_to_a_block_boundary():
    backbone = keras.applications.MobileNetV2(weights=None, include_top=False,
                                              input_shape=(32, 32, 3))
    names = [layer.name for layer in backbone.layers]
    # The 12th layer from the top is block_15_add, inside block_15: the boundary moves
    # down to that block's first layer, so no block is ever half trained.
    assert names[len(names) - 12] == "block_15_add"
    assert names[unfreeze_start(backbone, 12)] == "block_15_expand"
    assert names[unfreeze_start(backbone, 11)] == "block_16_expand"  # already a boundary
    assert names[unfreeze_start(backbone, "block_13")] == "block_13_expand"
    assert names[unfreeze_start(backbone, "block_13_depthwise")] == "block_13_expand"
    assert names[unfreeze_start(backbone, 0.25)] == "block_13_expand"  # 38 of 154 layers
    assert unfreeze_start(backbone, 0) == len(names) and unfreeze_start(backbone, 1.0) == 0
    assert block_of("conv5_block3_1_conv") == "conv5_block3"
    assert block_of("block6a_expand_conv") == "block6a"
    # MobileNetV3's blocks: expanded_conv_N_..., the first one expanded_conv_...
    assert block_of("expanded_conv_8_squeeze_excite_relu") == "expanded_conv_8"
    assert block_of("expanded_conv_depthwise_bn") == "expanded_conv"


def test_a_mobilenet_v3_is_unfrozen_from_the_start_of_a_block():
    import keras

    backbone = keras.applications.MobileNetV3Small(input_shape=(64, 64, 3), weights=None,
                                                   include_top=False)
    names = [layer.name for layer in backbone.layers]
    for unfreeze in (0.25, 0.5, 40):
        first = names[unfreeze_start(backbone, unfreeze)]
        assert first.startswith("expanded_conv_") and first.endswith("_expand"), first


def _tiny_transfer(mode, weights="none", **kw):
    return Recipe(
        name=f"tiny_{mode}",
        data=DataConfig(source="folder", image_size=33, **kw.pop("data", {})),
        model=ModelConfig(architecture="mobilenet_v2", weights=weights,
                                           mode=mode, unfreeze="block_16"),
        train=TrainConfig(epochs=2, batch_size=8, learning_rate=0.01),
        export=ExportConfig(enabled=False), **kw)


def _backbone_state(model):
    backbone = backbone_of(model)
    return {v.path: v.numpy().copy() for v in backbone.weights}


def test_feature_extraction_leaves_every_backbone_weight_bit_identical(image_folder, quiet):
    recipe = _tiny_transfer("feature_extraction", data={"dir": str(image_folder)})
    model = tftoolkit.build_model(recipe)
    before = _backbone_state(model)
    head_before = model.get_layer("predictions").kernel.numpy().copy()
    # Train through the public path, starting from these exact weights, the head by the
    # optimizer (a solved head only writes the output layer).
    result = tftoolkit.train(replace(recipe, model_fn=lambda r, info: model),
                             {**quiet, "train.solve_head": "off"})
    after = _backbone_state(result.model)
    assert before.keys() == after.keys()
    assert any("moving_mean" in k for k in before)
    for key in before:
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)
    head = result.model.get_layer("predictions").kernel.numpy()
    assert result.history["loss"][0] != result.history["loss"][-1]
    assert not np.array_equal(head, head_before)  # the head did train


def test_fine_tuning_without_a_frozen_prefix_says_it_trains_on_images(image_folder, quiet):
    recipe = _tiny_transfer("fine_tune", data={"dir": str(image_folder)})
    result = tftoolkit.train(replace(recipe, model=replace(recipe.model, unfreeze=1.0)),
                             quiet)
    assert ("frozen-prefix cache off at model.unfreeze=1.0: nothing below it is frozen; "
            "the stage trains on images") in result.notes, result.notes


def test_fine_tune_changes_only_unfrozen_layers_and_never_batchnorm(image_folder, quiet):
    recipe = _tiny_transfer("fine_tune", data={"dir": str(image_folder)})
    model = tftoolkit.build_model(recipe)
    before = _backbone_state(model)
    result = tftoolkit.train(replace(recipe, model_fn=lambda r, info: model), quiet)
    after = _backbone_state(result.model)
    backbone = backbone_of(result.model)
    trainable = {v.path for layer in backbone.layers if layer.trainable for v in layer.weights}
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed, "fine-tuning changed nothing"
    assert changed <= trainable
    assert all(block_of(k.split("/")[-2]) in ("block_16", "Conv_1", "Conv_1_bn")
               for k in changed)
    bn_keys = [k for k in before if "moving_" in k or "gamma" in k or "beta" in k]
    assert bn_keys and not (set(bn_keys) & changed)


def test_l2_on_backbone_and_head_equals_lambda_sum_of_squares(image_folder):
    recipe = _tiny_transfer("scratch", data={"dir": str(image_folder)},
                            regularize=RegularizeConfig(kernel="l2",
                                                                         strength=1e-3))
    model = tftoolkit.build_model(recipe)
    kernels = [w.numpy() for w in model.weights
               if w.path.endswith("kernel") or w.path.endswith("depthwise_kernel")]
    assert len(kernels) == 52 + 1  # 52 backbone convolutions + the head
    expected = 1e-3 * sum(float((k.astype("float64") ** 2).sum()) for k in kernels)
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-4)


def test_a_saved_keras_model_can_be_the_next_backbone(image_folder, quiet, tmp_path):
    first = tftoolkit.train(Recipe(
        name="first", data=DataConfig(source="folder", dir=str(image_folder), image_size=33),
        model=ModelConfig(architecture="cnn", filters=[8, 16]),
        train=TrainConfig(epochs=1, batch_size=8), export=ExportConfig(enabled=False)), quiet)
    saved = first.run_dir / "model.keras"
    recipe = Recipe(
        name="reuse", data=DataConfig(source="folder", dir=str(image_folder), image_size=33),
        model=ModelConfig(architecture=str(saved), mode="feature_extraction"),
        train=TrainConfig(epochs=1, batch_size=8), export=ExportConfig(enabled=False))
    model = tftoolkit.build_model(recipe)
    backbone = backbone_of(model)
    assert not backbone.trainable
    x = np.random.default_rng(0).uniform(0, 255, (2, 33, 33, 3)).astype("float32")
    pooled = keras.Model(first.model.inputs, first.model.get_layer("pool").output)
    np.testing.assert_allclose(backbone(x), pooled(x), rtol=1e-5, atol=1e-5)

    # model.backbone_layer cuts the saved model at a named layer instead
    cut = tftoolkit.build_model(dataclasses.replace(recipe, model=dataclasses.replace(
        recipe.model, backbone_layer="bn_0")))
    bn_0 = keras.Model(first.model.inputs, first.model.get_layer("bn_0").output)
    np.testing.assert_allclose(backbone_of(cut)(x), bn_0(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(RecipeError, match="backbone_layer='bn_9' is not a layer.*conv_0"):
        tftoolkit.build_model(dataclasses.replace(recipe, model=dataclasses.replace(
            recipe.model, backbone_layer="bn_9")))


def test_weights_from_a_local_file(image_folder, tmp_path):
    source = keras.applications.MobileNetV2(weights=None, include_top=False,
                                            input_shape=(33, 33, 3))
    path = tmp_path / "mine.weights.h5"
    source.save_weights(path)
    recipe = _tiny_transfer("feature_extraction", weights=str(path),
                            data={"dir": str(image_folder)})
    model = tftoolkit.build_model(recipe)
    for a, b in zip(source.get_weights(), backbone_of(model).get_weights()):
        np.testing.assert_array_equal(a, b)
    assert model.get_layer("preprocess").mode == "tf"  # the architecture's own

    other = tmp_path / "resnet.weights.h5"
    keras.applications.ResNet50(weights=None, include_top=False,
                                input_shape=(33, 33, 3)).save_weights(other)
    with pytest.raises(WeightsError, match="does not fit a headless mobilenet_v2"):
        tftoolkit.build_model(dataclasses.replace(recipe, model=dataclasses.replace(
            recipe.model, weights=str(other))))
    with pytest.raises(WeightsError, match="no such file"):
        tftoolkit.build_model(dataclasses.replace(recipe, model=dataclasses.replace(
            recipe.model, weights=str(tmp_path / "missing.h5"))))


def test_saved_transfer_models_load_in_a_fresh_process(tmp_path):
    import subprocess
    import sys

    from tftoolkit.layers import FusedGeometric

    model = _transfer_model("mobilenet_v2", "none", (33, 33, 3), 3)
    wrapped = keras.Sequential([keras.Input((33, 33, 3)), FusedGeometric(rotation=0.1), model])
    wrapped.save(tmp_path / "m.keras")
    code = ("import keras, tftoolkit\n"
            f"m = keras.models.load_model({str(tmp_path / 'm.keras')!r})\n"
            "print(m.layers[-1].get_layer('preprocess').mode)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("tf")


def _failing_build(error: Exception):
    def build(**kwargs):
        raise error
    return build


def test_imagenet_falls_back_only_when_the_file_cannot_be_downloaded(monkeypatch):
    import dataclasses

    from tftoolkit.models import weights

    fallbacks = []
    monkeypatch.setattr(weights, "imported_or_wheel",
                        lambda *a, **k: fallbacks.append(a) or None)
    spec = get_architecture("mobilenet_v2")
    corrupt = dataclasses.replace(spec, build=_failing_build(
        OSError("Unable to synchronously open file (truncated file)")))
    with pytest.raises(WeightsError) as err:
        build_backbone(corrupt, "imagenet", (33, 33, 3))
    assert "truncated file" in str(err.value) and "mobilenet_v2" in str(err.value)
    assert not fallbacks  # a broken file is not "offline": no torchvision weights instead
    wrong_shape = dataclasses.replace(spec, build=_failing_build(
        ValueError("input_shape must be one of ...")))
    with pytest.raises(WeightsError, match="input_shape must be"):
        build_backbone(wrong_shape, "imagenet", (33, 33, 3))
    assert not fallbacks
    offline = dataclasses.replace(spec, build=_failing_build(Exception(
        "URL fetch failure on https://storage.googleapis.com/x.h5: None -- no network")))
    with pytest.raises(WeightsError, match="not available offline"):
        build_backbone(offline, "imagenet", (33, 33, 3))
    assert len(fallbacks) == 1  # the fallback was looked for (and there was none)


def test_a_keras_backbone_with_a_lambda_layer_is_refused_naming_the_file_key_and_fix(
        tmp_path, cli):
    from conftest import make_image_folder

    folder = make_image_folder(tmp_path / "shapes", per_class=3, size=8)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0)(keras.layers.Conv2D(2, 3)(inputs))
    saved = tmp_path / "with_lambda.keras"
    keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x))).save(saved)
    junk = tmp_path / "junk.keras"
    junk.write_text("not a model")
    for path, reason in ((saved, r"the model holds a Lambda layer, whose Python code Keras "
                                 r"does not load from a file .* replace it with a layer class "
                                 r"registered with @keras\.saving\.register_keras_serializable"),
                         (junk, r"not a \.keras file")):
        proc = cli("train", "image_folder", "--set", f"data.dir={folder}", "--set",
                   "data.image_size=8", "--set", f"model.architecture={path}", "--set",
                   f"train.run_dir={tmp_path / 'runs'}", "--set", "export.enabled=false")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert re.match(rf"error: model\.architecture='{re.escape(str(path))}': {reason}",
                        proc.stderr), proc.stderr


def test_the_weights_an_offline_run_falls_back_to_are_recorded_in_the_run_and_the_card(
        imported_mobilenet, image_folder, quiet):
    recipe = Recipe(name="offline", data=DataConfig(source="folder", dir=str(image_folder),
                                                    image_size=33),
                    model=ModelConfig(architecture="mobilenet_v2", weights="imagenet",
                                      mode="feature_extraction"),
                    train=TrainConfig(epochs=1, batch_size=8))
    result = tftoolkit.train(recipe, quiet)  # no network here: Keras' file cannot come
    runtime = json.loads((result.run_dir / "runtime.json").read_text())
    card = json.loads((result.export_dir / "model_card.json").read_text())
    for record in (runtime, card):
        assert record["preprocessing"] == "torch"
        assert imported_mobilenet.notop.name in record["pretrained_weights"]
        assert record["pretrained_weights"].endswith(
            "preprocessing torch; in place of Keras' ImageNet weights for mobilenet_v2, "
            "which could not be downloaded (model.weights=imagenet, offline)")
    scratch = tftoolkit.train(recipe.with_overrides({"model.mode": "scratch",
                                                     "export.enabled": False}), quiet)
    assert json.loads((scratch.run_dir / "runtime.json").read_text())[
        "pretrained_weights"] == "none (random initialisation)"
