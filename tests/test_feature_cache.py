"""Feature caching for frozen backbones: same model as the uncached path, faster."""

from __future__ import annotations

import numpy as np
import pytest

import tftoolkit
from tftoolkit.recipe import (AugmentConfig, DataConfig, ExportConfig, ModelConfig, Recipe,
                              TrainConfig)


def _recipe(folder, cache: str, **augment) -> Recipe:
    return Recipe(name=f"cache_{cache}",
                  data=DataConfig(source="folder", dir=str(folder), image_size=33),
                  model=ModelConfig(architecture="mobilenet_v2", weights="none",
                                    mode="feature_extraction"),
                  augment=AugmentConfig(**augment),
                  train=TrainConfig(epochs=2, batch_size=8, learning_rate=0.01, seed=7,
                                    cache_features=cache),
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
    assert cache_plan(plain, 0)[0] is True
    use, why = cache_plan(rotating, 0)
    assert not use and "augment.cached_views=K" in why
    use, why = cache_plan(rotating, 3)
    assert use is True and "3 augmented copies" in why
    assert cache_plan(mixing, 3)[0] is False


def test_cached_augmented_views_train(image_folder, quiet):
    recipe = _recipe(image_folder, "auto", enabled=True, rotation=0.1, cached_views=2)
    result = tftoolkit.train(recipe, {**quiet, "train.epochs": 1})
    assert any("2 augmented copies" in n for n in result.notes)
    assert len(result.history["loss"]) == 1
