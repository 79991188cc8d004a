"""Feature caching for frozen backbones: same model as the uncached path, faster."""

from __future__ import annotations

import numpy as np
import pytest

import tftoolkit
from tftoolkit.recipe import (AugmentConfig, DataConfig, ExportConfig, ModelConfig, Recipe,
                              TrainConfig)
from tftoolkit.tasks import SingleLabel


def _recipe(folder, cache: str, **augment) -> Recipe:
    return Recipe(name=f"cache_{cache}",
                  data=DataConfig(source="folder", dir=str(folder), image_size=33),
                  model=ModelConfig(architecture="mobilenet_v2", weights="none",
                                    mode="feature_extraction"),
                  augment=AugmentConfig(**augment),
                  train=TrainConfig(epochs=2, batch_size=8, learning_rate=0.01, seed=7,
                                    cache_features=cache, solve_head="off"),
                  export=ExportConfig(enabled=cache == "auto"))


def test_cached_and_uncached_head_training_give_the_same_model(image_folder, quiet):
    cached = tftoolkit.train(_recipe(image_folder, "auto"), quiet)
    plain = tftoolkit.train(_recipe(image_folder, "off"), quiet)
    assert any(n.startswith("feature cache: frozen backbone run once") for n in cached.notes)
    assert not any(n.startswith("feature cache") for n in plain.notes)
    x = np.random.default_rng(0).uniform(0, 255, (6, 33, 33, 3)).astype("float32")
    np.testing.assert_allclose(cached.model.predict(x, verbose=0),
                               plain.model.predict(x, verbose=0), atol=1e-4)
    np.testing.assert_allclose(cached.history["loss"], plain.history["loss"], rtol=1e-4)
    assert cached.metrics["val_accuracy"] == pytest.approx(plain.metrics["val_accuracy"])
    # evaluated by the head on the cached validation features: the full model's figures
    assert cached.metrics["val_loss"] == pytest.approx(plain.metrics["val_loss"], rel=1e-4)
    # the assembled model exports through the same code and passes the parity check
    assert (cached.export_dir / "saved_model.pb").is_file()


def test_augmentation_turns_the_cache_off_and_says_so():
    from tftoolkit.augment import build_augmenter
    from tftoolkit.training.feature_cache import cache_plan

    plain = build_augmenter(AugmentConfig(), 33, 0)
    rotating = build_augmenter(AugmentConfig(enabled=True, rotation=0.1), 33, 0)
    mixing = build_augmenter(AugmentConfig(enabled=True, flip="none", mixup=0.4), 33, 0)
    names = ("feature cache", "frozen backbone run once")
    assert cache_plan(plain, 0, *names) == (True, "feature cache: frozen backbone run once")
    use, why = cache_plan(rotating, 0, *names)
    assert not use and "augment.cached_views=K" in why
    use, why = cache_plan(rotating, 3, *names)
    assert use is True and "3 augmented copies" in why
    assert cache_plan(mixing, 3, *names)[0] is False


def test_cached_augmented_views_train(image_folder, quiet):
    recipe = _recipe(image_folder, "auto", enabled=True, rotation=0.1, cached_views=2)
    result = tftoolkit.train(recipe, {**quiet, "train.epochs": 1})
    assert any("2 augmented copies" in n for n in result.notes)
    assert len(result.history["loss"]) == 1


def test_cached_views_without_pixel_augmentation_cache_each_image_once(image_folder, quiet):
    result = tftoolkit.train(_recipe(image_folder, "auto", cached_views=2),
                             {**quiet, "train.epochs": 1})
    assert ("feature cache: frozen backbone run once; head trained on cached features "
            "(augment.cached_views=2 ignored: no pixel augmentation is on, so each copy would "
            "be the image itself)") in result.notes
    assert len(result.history["loss"]) == 1


def _fine_tune_recipe(folder, cache: str) -> Recipe:
    return Recipe(name=f"prefix_{cache}",
                  data=DataConfig(source="folder", dir=str(folder), image_size=33),
                  model=ModelConfig(architecture="mobilenet_v2", weights="none",
                                    mode="fine_tune", unfreeze="block_13"),
                  train=TrainConfig(epochs=2, batch_size=8, learning_rate=0.01,
                                    fine_tune_learning_rate=0.01, layer_decay=0.8,
                                    seed=7, cache_features=cache),
                  export=ExportConfig(enabled=cache == "auto"))


def test_fine_tuning_on_cached_frozen_blocks_gives_the_same_model(image_folder, quiet):
    cached = tftoolkit.train(_fine_tune_recipe(image_folder, "auto"), quiet)
    plain = tftoolkit.train(_fine_tune_recipe(image_folder, "off"), quiet)
    assert any(n.startswith("frozen-prefix cache: the frozen backbone layers below "
                            "block_13_expand run once") for n in cached.notes), cached.notes
    assert not any("cache:" in n and "data cache" not in n for n in plain.notes)
    np.testing.assert_allclose(cached.history["loss"], plain.history["loss"], rtol=1e-4)
    np.testing.assert_allclose(cached.history["val_loss"], plain.history["val_loss"],
                               rtol=1e-4)
    x = np.random.default_rng(0).uniform(0, 255, (6, 33, 33, 3)).astype("float32")
    np.testing.assert_allclose(cached.model.predict(x, verbose=0),
                               plain.model.predict(x, verbose=0), atol=1e-4)
    # the unfrozen blocks did train, at their layer-decayed rates, and the export serves
    # the whole model
    assert cached.metrics["val_loss"] == pytest.approx(plain.metrics["val_loss"], rel=1e-4)
    assert cached.export_dir is not None


def test_the_prefix_and_the_top_compose_to_the_model(imported_mobilenet):
    from tftoolkit.models.transfer import set_trainable
    from tftoolkit.training.feature_cache import prefix_refusal, split_below_unfrozen

    recipe = tftoolkit.load_recipe("fashion_transfer", {"data.image_size": 33})
    from tftoolkit.data import DataInfo

    info = DataInfo(SingleLabel(3), (33, 33, 3), list("abc"), 33, "t")
    model = tftoolkit.build_model(recipe, info)
    prefix, top = split_below_unfrozen(model, "block_13")
    assert prefix.output.shape[1:] == (3, 3, 96)   # block_12_add at 33 px
    x = np.random.default_rng(1).uniform(0, 255, (4, 33, 33, 3)).astype("float32")
    np.testing.assert_allclose(top(prefix(x)), model(x), atol=1e-5)
    trained = {id(v) for v in top.trainable_weights}
    assert trained == {id(v) for v in model.trainable_weights}  # all of what fine-tunes
    assert not {id(v) for v in prefix.weights} & trained
    assert prefix_refusal(model, "block_13") is None
    assert split_below_unfrozen(model, 1.0) is None   # nothing frozen below
    assert prefix_refusal(model, 1.0) == "nothing below it is frozen"
    set_trainable(model, "fine_tune", 0)
    assert split_below_unfrozen(model, 0) is None     # nothing unfrozen
    assert prefix_refusal(model, 0) == "nothing is unfrozen"


def test_cuts_of_one_shape_are_cached_apart(image_folder, imported_mobilenet):
    """Fine-tuning from block_14 or from block_15 cuts the backbone at tensors of the same
    shape; a search over model.unfreeze must not get one cut's activations for the other."""
    from dataclasses import replace

    from tftoolkit.data import load_data
    from tftoolkit.training.feature_cache import _features, split_below_unfrozen

    recipe = _fine_tune_recipe(image_folder, "auto")
    recipe = replace(recipe, model=replace(recipe.model, weights="imagenet-torchvision"))
    data = load_data(recipe, 33)
    model = tftoolkit.build_model(recipe, data.info)
    below_14, _ = split_below_unfrozen(model, "block_14")
    below_15, _ = split_below_unfrozen(model, "block_15")
    assert below_14.output.shape == below_15.output.shape
    first = _features(below_14, data, "val", 8)
    second = _features(below_15, data, "val", 8)
    assert np.abs(first - second).max() > 0.1 * np.abs(second).max()
    np.testing.assert_allclose(second, below_15.predict(data.dataset("val", batch_size=8)
                                                        .map(lambda x, y: x), verbose=0))


PEAK_SCRIPT = """
import keras, numpy as np
from tftoolkit.augment import build_augmenter
from tftoolkit.data import load_data
from tftoolkit.recipe import AugmentConfig, DataConfig, Recipe, TrainConfig
from tftoolkit.training.feature_cache import cached_datasets

def memory(field):  # this process's own figures since its exec, in bytes (the peak that
    # ru_maxrss reports carries a parent's peak over the exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

rng = np.random.default_rng(0)
arrays = {"train": (rng.uniform(0, 255, (2000, 8, 8, 3)).astype("float32"),
                    np.arange(2000) % 2),
          "val": (rng.uniform(0, 255, (10, 8, 8, 3)).astype("float32"), np.arange(10) % 2)}
recipe = Recipe(name="m", data=DataConfig(source="arrays", image_size=8, arrays=arrays),
                train=TrainConfig(batch_size=20, verbose=0))
data = load_data(recipe, 8)
inputs = keras.Input((8, 8, 3))
extractor = keras.Model(inputs, keras.layers.Flatten()(keras.layers.UpSampling2D(16)(inputs)),
                        name="feature_extractor")           # 196 KB of features per image
width = extractor.output.shape[1]
head = keras.Sequential([keras.Input((width,)), keras.layers.Dense(2, activation="softmax")])
extractor.predict(arrays["val"][0], verbose=0)
before = memory("VmRSS:")
stage = cached_datasets((extractor, head), data, build_augmenter(AugmentConfig(), 8, 0), 0,
                        20)
for _ in zip(range(3), stage.train):
    pass
for _ in stage.val:
    pass
grown = memory("VmHWM:") - before
print(grown / (len(data.splits["train"]) * width * 4))
"""


def test_cached_features_are_held_once_in_memory():
    """The extractor's outputs are written into one array as they come and the stage's
    datasets read that array as it is: the process grows by about the features' size,
    not by the 5x of Keras' predict (every batch's outputs kept, then joined) followed
    by a data cache and a tensor made of them."""
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT], capture_output=True,
                          text=True, cwd=Path(__file__).parents[1], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    growth = float(proc.stdout.strip().splitlines()[-1])
    assert growth < 1.8, f"peak memory grew by {growth:.2f}x the cached features' size"


@pytest.mark.parametrize("verbose", [0, 1, 2])
def test_extractor_outputs_are_written_in_order_and_shown_as_verbose_asks(verbose, capsys):
    """Outputs of every pass, in order; a bar redrawn at a terminal (1), one line for a
    log (2), nothing (0); an input of more examples than expected is refused."""
    import keras
    import tensorflow as tf

    from tftoolkit.training.feature_cache import _outputs

    extractor = keras.Sequential([keras.Input((2,)), keras.layers.Dense(
        3, kernel_initializer="ones")], name="extractor")
    images = tf.data.Dataset.from_tensor_slices(np.arange(10, dtype="float32").reshape(5, 2)
                                                ).batch(2)
    outputs = _outputs(extractor, images, 5, verbose, passes=2)
    row_sums = np.arange(10, dtype="float32").reshape(5, 2).sum(axis=1)
    assert np.array_equal(outputs, np.repeat(np.tile(row_sums, 2)[:, None], 3, axis=1))
    shown = capsys.readouterr().out
    assert ("10/10" in shown) == bool(verbose)
    assert ("\r" in shown or "\b" in shown) == (verbose == 1)
    with pytest.raises(RuntimeError, match="more than the 4 examples"):
        _outputs(extractor, images, 4, 0)
