"""Augmentation: training-only, per-image, seeded; label mixing; the fused transform."""

from __future__ import annotations

import numpy as np
import pytest

import keras
import tensorflow as tf
from tftoolkit.augment import build_augmenter, training_model
from tftoolkit.layers import FusedGeometric
from tftoolkit.recipe import AugmentConfig

SIZE = 32
OPS = {
    "flip": dict(flip="horizontal"),
    "crop": dict(flip="none", crop=0.2),
    "resized_crop": dict(flip="none", resized_crop_scale=0.3),
    "rotation": dict(flip="none", rotation=0.1),
    "zoom": dict(flip="none", zoom=0.3),
    "translation": dict(flip="none", translation=0.2),
    "contrast": dict(flip="none", contrast=0.5),
    "brightness": dict(flip="none", brightness=0.5),
    "erasing": dict(flip="none", erasing=1.0),
    "rand_augment": dict(flip="none", rand_augment=True),
    "fused": dict(flip="horizontal", rotation=0.1, zoom=0.2, translation=0.1, crop=0.1,
                  fused=True),
}


def _batch(n=8, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")
    images[:, :, : SIZE // 2] *= 0.3  # asymmetric, so flips and shifts show
    return images


def _pixels(op: str, seed: int = 0) -> keras.Sequential:
    return build_augmenter(AugmentConfig(enabled=True, **OPS[op]), SIZE, seed).in_model


@pytest.mark.parametrize("op", list(OPS))
def test_op_changes_training_inputs_and_leaves_inference_identical(op):
    layers = _pixels(op)
    x = _batch()
    np.testing.assert_array_equal(layers(x, training=False), x)
    augmented = np.asarray(layers(x, training=True))
    assert augmented.shape == x.shape
    assert np.abs(augmented - x).max() > 1.0


@pytest.mark.parametrize("op", [op for op in OPS if op != "rand_augment"])
def test_each_image_in_a_batch_gets_its_own_parameters(op):
    layers = _pixels(op)
    same = np.repeat(_batch(1), 8, axis=0)
    out = np.asarray(layers(same, training=True))
    distinct = {out[i].tobytes() for i in range(len(out))}
    needed = 2 if op == "flip" else 3  # a flip has two outcomes: some copies flip, some not
    assert len(distinct) >= needed, f"{op}: {len(distinct)} distinct results for 8 copies"


@pytest.mark.parametrize("op", list(OPS))
def test_same_seed_reproduces_the_augmented_batch(op):
    x = _batch()
    a = np.asarray(_pixels(op, seed=5)(x, training=True))
    b = np.asarray(_pixels(op, seed=5)(x, training=True))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mixer", ["mixup", "cutmix"])
def test_mixed_labels_sum_to_one_and_the_loss_accepts_them(mixer):
    augmenter = build_augmenter(AugmentConfig(enabled=True, flip="none", **{mixer: 1.0}),
                                SIZE, seed=0)
    x = _batch()
    y = tf.one_hot(np.arange(8) % 4, 4)
    images, labels = augmenter.pipeline_fn().per_batch(tf.constant(x), y)
    labels = np.asarray(labels)
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
    assert ((labels > 0) & (labels < 1)).any()  # really soft
    loss = keras.losses.CategoricalCrossentropy()(labels, np.full((8, 4), 0.25, "float32"))
    assert np.isfinite(float(loss))


def test_training_model_wraps_and_shares_weights_with_the_inference_model():
    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    augmenter = build_augmenter(AugmentConfig(enabled=True, rotation=0.1), SIZE, 0)
    graph = training_model(model, augmenter)
    assert graph is not model
    assert not any(isinstance(layer, keras.layers.RandomRotation)
               for layer in model.layers)
    assert {id(v) for v in model.weights} <= {id(v) for v in graph.weights}


def test_pipeline_placement_augments_training_batches_only(tmp_path):
    from conftest import make_image_folder
    from tftoolkit.data import load_data
    from tftoolkit.recipe import DataConfig, Recipe

    folder = make_image_folder(tmp_path / "f", per_class=4)
    recipe = Recipe(name="p", data=DataConfig(source="folder", dir=str(folder), image_size=SIZE,
                                              validation_fraction=0.0, cache=True))
    bundle = load_data(recipe, SIZE)
    augmenter = build_augmenter(AugmentConfig(enabled=True, placement="pipeline",
                                              rotation=0.2), SIZE, 0)
    assert augmenter.in_model is None
    plain = np.asarray(next(iter(bundle.dataset("train", batch_size=8)))[0])
    evaluated = np.asarray(next(iter(bundle.dataset("train", batch_size=8,
                                                    augment=augmenter.pipeline_fn())))[0])
    np.testing.assert_array_equal(plain, evaluated)  # not training: untouched
    trained = np.asarray(next(iter(bundle.dataset("train", training=True, batch_size=8,
                                                  augment=augmenter.pipeline_fn())))[0])
    assert not np.array_equal(np.sort(plain.ravel()), np.sort(trained.ravel()))


def _dot_displacements(layer, n=400):
    """Where a single bright dot lands, relative to the image centre, per image."""
    side = 2 * SIZE + 1
    image = np.zeros((side, side, 1), "float32")
    image[SIZE - 8, SIZE + 9, 0] = 255.0  # off centre, far from the borders
    out = np.asarray(layer(np.repeat(image[None], n, axis=0), training=True))[..., 0]
    grid_y, grid_x = np.mgrid[:side, :side]
    weights = out / out.sum(axis=(1, 2), keepdims=True)
    return ((weights * grid_y).sum(axis=(1, 2)) - SIZE,
            (weights * grid_x).sum(axis=(1, 2)) - SIZE)


CHAIN = {
    "rotation": lambda: keras.layers.RandomRotation(0.1, fill_mode="constant", seed=1),
    "zoom": lambda: keras.layers.RandomZoom(0.3, fill_mode="constant", seed=1),
    "translation": lambda: keras.layers.RandomTranslation(0.15, 0.15, fill_mode="constant",
                                                          seed=1),
    "flip": lambda: keras.layers.RandomFlip("horizontal", seed=1),
}
FUSED = {"rotation": dict(rotation=0.1), "zoom": dict(zoom=0.3),
         "translation": dict(translation=0.15), "flip": dict(flip="horizontal")}


@pytest.mark.parametrize("op", list(CHAIN))
def test_fused_transform_matches_the_keras_layer_distribution(op):
    fused = FusedGeometric(**{"flip": "none", **FUSED[op]}, seed=2, fill_mode="CONSTANT")
    cy, cx = _dot_displacements(CHAIN[op]())
    fy, fx = _dot_displacements(fused)
    for a, b in ((cy, fy), (cx, fx), (np.hypot(cy, cx), np.hypot(fy, fx))):
        assert abs(np.mean(a) - np.mean(b)) < 0.6
        assert abs(np.std(a) - np.std(b)) < 0.1 * np.std(a) + 0.3
        assert abs(np.percentile(a, 5) - np.percentile(b, 5)) < 1.0
        assert abs(np.percentile(a, 95) - np.percentile(b, 95)) < 1.0


def test_fused_crop_to_crops_a_window_at_a_per_image_offset():
    side = 2 * SIZE + 1
    layer = FusedGeometric(flip="none", crop_to=SIZE, seed=3, fill_mode="CONSTANT")
    image = np.zeros((side, side, 1), "float32")
    image[SIZE, SIZE, 0] = 255.0  # the centre pixel
    out = np.asarray(layer(np.repeat(image[None], 300, axis=0), training=True))[..., 0]
    assert out.shape == (300, SIZE, SIZE)
    visible = out.sum(axis=(1, 2)) > 0
    # the window's offset is uniform over [0, side - SIZE], so the dot lands anywhere
    ys = (out * np.arange(SIZE)[None, :, None]).sum(axis=(1, 2))[visible] / out.sum(
        axis=(1, 2))[visible]
    assert ys.min() < 3 and ys.max() > SIZE - 4
    assert abs(np.mean(ys) - (SIZE - 1) / 2) < 2


def test_augment_preview_writes_a_grid(image_folder, tmp_path, cli):
    out = tmp_path / "grid.png"
    proc = cli("augment-preview", "image_folder", "--set", f"data.dir={image_folder}",
               "--set", "data.image_size=48", "--set", "augment.rotation=0.1", "--out", out,
               "--images", "3", "--views", "4")
    assert proc.returncode == 0, proc.stderr
    from PIL import Image

    width, height = Image.open(out).size
    assert width > height > 100  # five columns, three rows


@pytest.mark.parametrize("cache", ["off", "memory"])
def test_pipeline_augmentation_is_a_function_of_seed_epoch_and_example(tmp_path, cache):
    from conftest import make_image_folder
    from tftoolkit.data import load_data
    from tftoolkit.recipe import DataConfig, Recipe

    folder = make_image_folder(tmp_path / "f", per_class=4)
    recipe = Recipe(name="p", data=DataConfig(source="folder", dir=str(folder), image_size=SIZE,
                                              validation_fraction=0.0, test_fraction=0.0,
                                              cache=cache))
    policy = AugmentConfig(enabled=True, placement="pipeline", flip="horizontal",
                           resized_crop_scale=0.3, brightness=0.2)

    def epochs(first_epoch=0, count=3, augment=True):
        augmenter = build_augmenter(policy, SIZE, 0)  # a fresh build each time
        assert augmenter.pipeline_fn().per_example is not None
        dataset = load_data(recipe, SIZE).dataset(
            "train", training=True, batch_size=8, first_epoch=first_epoch,
            augment=augmenter.pipeline_fn() if augment else None)
        return [np.asarray(x) for x, _ in dataset.take(count)]  # one batch per epoch

    first = epochs()
    for a, b in zip(first, epochs()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(epochs(first_epoch=2, count=1)[0], first[2])  # resumed
    plain = epochs(augment=False)
    for epoch in range(3):
        assert np.abs(first[epoch] - plain[epoch]).max() > 1.0
    assert not np.array_equal(np.sort(first[1].ravel()), np.sort(first[2].ravel()))
