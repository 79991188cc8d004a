"""Data: image folders with bad files, splits, TFDS, arrays, class weights, errors."""

from __future__ import annotations

from dataclasses import replace

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tftoolkit
from conftest import make_image_folder, write_image
from tftoolkit.data import load_data
from tftoolkit.data.splits import stratified_split
from tftoolkit.errors import DataError
from tftoolkit.recipe import DataConfig, ExportConfig, ModelConfig, Recipe, TrainConfig


def _folder_recipe(path, **data) -> Recipe:
    return Recipe(name="folder", data=DataConfig(source="folder", dir=str(path), image_size=32,
                                                 **data),
                  model=ModelConfig(architecture="cnn", filters=[8]),
                  train=TrainConfig(epochs=1, batch_size=8),
                  export=ExportConfig(enabled=False))


@pytest.fixture
def messy_folder(tmp_path):
    """Good images in awkward formats, plus three files that cannot be images."""
    root = make_image_folder(tmp_path / "messy", per_class=6)
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
    write_image(root / "circle" / "gray.png", rgb[..., 0])
    write_image(root / "circle" / "rgba.png", np.dstack([rgb, rgb[..., :1]]))
    write_image(root / "square" / "cmyk.jpg", rgb, fmt="JPEG", mode="CMYK")
    write_image(root / "square" / "anim.gif", rgb, fmt="GIF")
    write_image(root / "square" / "bitmap.bmp", rgb, fmt="BMP")
    good_jpeg = (root / "circle" / "000.jpg").read_bytes()
    bad = {root / "circle" / "truncated.jpg": good_jpeg[: len(good_jpeg) // 2],
           root / "square" / "empty.png": b"",
           root / "square" / "notes.txt": b"not an image\n"}
    for path, data in bad.items():
        path.write_bytes(data)
    return root, sorted(str(p) for p in bad)


def test_default_run_stops_before_training_and_names_exactly_the_bad_files(messy_folder,
                                                                            quiet):
    root, bad = messy_folder
    with pytest.raises(DataError) as err:
        tftoolkit.train(_folder_recipe(root), quiet)
    message = str(err.value)
    listed = sorted(line.strip().split(":")[0] for line in message.splitlines()
                    if line.startswith("  /"))
    assert listed == bad
    assert "data.on_bad_file=skip" in message
    assert not (root.parent / "runs").exists() or not any((root.parent / "runs").rglob("*.csv"))


def test_skip_trains_on_the_good_files_and_records_the_bad_ones(messy_folder, quiet):
    root, bad = messy_folder
    result = tftoolkit.train(_folder_recipe(root, on_bad_file="skip",
                                            validation_fraction=0.0, test_fraction=0.0),
                             quiet)
    assert result.info.counts["train"] == 12 + 5  # every good file, odd formats included
    skipped = (result.run_dir / "skipped_files.txt").read_text()
    assert sorted(line.split("\t")[0] for line in skipped.splitlines()) == bad
    assert len(result.history["loss"]) == 1


def test_hidden_and_system_files_are_not_examples_nor_bad_files(image_folder):
    circle = image_folder / "circle"
    (circle / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (circle / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (circle / "._000.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (image_folder / "__MACOSX" / "square").mkdir(parents=True)
    (image_folder / "__MACOSX" / "square" / "._x.png").write_bytes(b"\x00")
    (circle / ".ipynb_checkpoints").mkdir()
    (circle / ".ipynb_checkpoints" / "broken.png").write_bytes(b"")
    data = load_data(_folder_recipe(image_folder, test_fraction=0.0), 32)  # on_bad_file=error
    assert data.info.class_names == ["circle", "square"]
    assert data.info.bad_files == []
    assert sum(data.info.counts.values()) == 24
    assert not [p for split in data.splits.values() for p in split.paths
                if "/." in p or "Thumbs" in p]


def test_odd_formats_decode_to_rgb(messy_folder):
    root, _ = messy_folder
    bundle = load_data(_folder_recipe(root, on_bad_file="skip", validation_fraction=0.0), 32)
    images, _ = next(iter(bundle.dataset("train", batch_size=64)))
    assert images.shape[1:] == (32, 32, 3) and images.dtype.name == "float32"
    assert float(np.max(images)) <= 255.0


@pytest.mark.parametrize("setup,match", [
    (lambda root: None, "no such directory"),
    (lambda root: (root / "only").mkdir(parents=True), "at least two"),
    (lambda root: (make_image_folder(root, per_class=2), (root / "empty").mkdir()),
     r"\['empty'\] hold no files"),
])
def test_folder_errors(tmp_path, setup, match):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError, match=match):
        load_data(_folder_recipe(root), 32)


def test_stratified_split_keeps_proportions_and_is_seeded():
    labels = np.array([0] * 80 + [1] * 20 + [2] * 40)
    keep_a, held_a = stratified_split(labels, 0.25, seed=3)
    keep_b, held_b = stratified_split(labels, 0.25, seed=3)
    np.testing.assert_array_equal(held_a, held_b)
    assert np.bincount(labels[held_a]).tolist() == [20, 5, 10]
    assert set(keep_a).isdisjoint(held_a) and len(keep_a) + len(held_a) == len(labels)
    _, held_c = stratified_split(labels, 0.25, seed=4)
    assert not np.array_equal(held_a, held_c)


def test_folder_validation_split_is_stratified_and_reproducible(image_folder):
    recipe = _folder_recipe(image_folder, validation_fraction=0.25)
    a, b = load_data(recipe, 32), load_data(recipe, 32)
    np.testing.assert_array_equal(a.splits["val"].paths, b.splits["val"].paths)
    assert np.bincount(a.splits["val"].labels).tolist() == [3, 3]
    assert a.info.class_names == ["circle", "square"]


def test_arrays_with_labels_out_of_range_are_refused():
    x = np.zeros((6, 2), "float32")
    recipe = Recipe(name="a", data=DataConfig(source="arrays", arrays={"train": (
        x, np.array([0, 1, 2, 0, 1, 2])), "val": (x[:2], np.array([0, -1]))}))
    with pytest.raises(DataError, match="label -1 is negative"):
        load_data(recipe)
    skipped = Recipe(name="a", data=DataConfig(source="arrays", arrays={"train": (
        x, np.array([0, 1, 5, 0, 1, 5]))}))
    with pytest.raises(DataError, match=r"classes \[2, 3, 4\] never occur"):
        load_data(skipped)


def test_a_samples_cache_is_keyed_by_the_seed_that_draws_it(monkeypatch):
    import tftoolkit.data as data_module
    from tftoolkit.data.cache import plan_cache

    keys = []

    def recording(*args, settings, **kwargs):
        keys.append(settings["order"])
        return plan_cache(*args, settings=settings, **kwargs)

    monkeypatch.setattr(data_module, "plan_cache", recording)
    x = np.zeros((12, 2), "float32")
    base = Recipe(name="s", data=DataConfig(source="arrays", validation_fraction=0.0,
                                            test_fraction=0.0,
                                            arrays={"train": (x, np.arange(12) % 2)}))
    for split_seed, seed in ((1, 5), (1, 6), (2, 5)):
        recipe = replace(base, data=replace(base.data, split_seed=split_seed),
                         train=replace(base.train, seed=seed))
        load_data(recipe).sample("train", 4)
    # the sample is drawn by data.split_seed: train.seed changes neither it nor its key
    assert keys[0] == keys[1] != keys[2]
    assert keys[0] == f"sample of 4, seed {1 + data_module.SAMPLE_SEED_OFFSET}"


def test_balanced_class_weights_change_the_loss(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 2)).astype("float32")
    y = np.array([0] * 36 + [1] * 4)
    base = Recipe(name="imb", data=DataConfig(source="arrays", arrays={"train": (x, y)},
                                              validation_fraction=0.0, test_fraction=0.0),
                  model=ModelConfig(architecture="linear"),
                  train=TrainConfig(batch_size=40, loss="categorical_crossentropy"))
    balanced = replace(base, data=replace(base.data, class_weight="balanced"))
    plain_data, weighted_data = load_data(base), load_data(balanced)
    np.testing.assert_allclose(weighted_data.class_weights(), [40 / 72, 40 / 8])
    model = tftoolkit.build_model(base)
    from tftoolkit.training import compile_model

    losses = []
    for data in (plain_data, weighted_data):
        compile_model(model, base, data.info, 0.1)
        batch = next(iter(data.dataset("train", training=True)))
        losses.append(float(model.evaluate(*[np.asarray(t) for t in batch[:2]],
                                           sample_weight=None if len(batch) < 3
                                           else np.asarray(batch[2]), verbose=0)[0]))
        assert (len(batch) == 3) == (data is weighted_data)
    assert losses[0] != pytest.approx(losses[1], rel=1e-3)
    # And training uses it: the minority class is predicted more often.
    def minority_rate(recipe):
        result = tftoolkit.train(replace(recipe, train=replace(recipe.train, epochs=30,
                                                               learning_rate=0.1, verbose=0,
                                                               run_dir=str(tmp_path)),
                                         export=replace(recipe.export, enabled=False)))
        return float(np.mean(np.argmax(result.model.predict(x, verbose=0), 1) == 1))
    assert minority_rate(balanced) > minority_rate(base)


def test_tfds_dataset_loads_with_mock_data():
    import tensorflow_datasets as tfds

    recipe = tftoolkit.load_recipe("flowers", ["data.max_examples=12"])
    with tfds.testing.mock_data(num_examples=20):
        bundle = load_data(recipe, 32)
    assert bundle.info.class_names[:2] == ["dandelion", "daisy"]
    assert bundle.info.num_classes == 5
    assert set(bundle.splits) == {"train", "val", "test"}


@pytest.mark.filterwarnings("error:Your input ran out of data")  # lengths are known
def test_flowers_recipe_trains_one_step_under_mock_data(quiet, imported_mobilenet):
    import tensorflow_datasets as tfds

    overrides = {**quiet, "data.max_examples": 8, "data.image_size": 33, "train.epochs": 1,
                 "train.fine_tune_epochs": 1, "train.batch_size": 4,
                 "train.steps_per_epoch": 1,
                 "model.weights": "imagenet-torchvision", "export.enabled": False}
    with tfds.testing.mock_data(num_examples=16):
        result = tftoolkit.train("flowers", overrides)
    assert len(result.history["loss"]) == 2  # one step of each stage of two_stage
    assert result.info.class_names[0] == "dandelion"


def test_unknown_tfds_name_suggests():
    recipe = Recipe(name="t", data=DataConfig(source="tfds", name="tf_flower"))
    with pytest.raises(DataError, match=r"'tf_flower' is not a TFDS dataset; did you mean "
                                        r"'tf_flowers'"):
        load_data(recipe, 32)


def test_tfds_not_downloaded_offline_says_what_to_do(tmp_path):
    recipe = Recipe(name="t", data=DataConfig(source="tfds", name="tf_flowers",
                                              data_dir=str(tmp_path / "tfds")))
    with pytest.raises(DataError, match=r"not prepared.*tfds build tf_flowers.*data\.data_dir"):
        load_data(recipe, 32)


def test_autotune_switch_reaches_the_pipeline_and_leaves_the_batches_alone(image_folder):
    recipe = Recipe(name="folder", data=DataConfig(source="folder", dir=str(image_folder),
                                                   image_size=32))
    batches = {}
    for autotune in (False, True):
        data = load_data(recipe.with_overrides({"data.autotune": autotune}), 32)
        dataset = data.dataset("train", training=True, batch_size=4)
        assert dataset.options().autotune.enabled is autotune
        batches[autotune] = [x.numpy() for x, _ in dataset.take(6)]
    for off, on in zip(batches[False], batches[True]):
        np.testing.assert_array_equal(off, on)


def _write_idx(folder: Path, images_per_split: dict[str, int]) -> None:
    """Tiny gzip'd IDX files with Fashion-MNIST's names: image i of a split is filled
    with the value i and labelled i % 10."""
    import gzip
    import struct

    from tftoolkit.data.sources import FASHION_MNIST_FILES

    folder.mkdir(parents=True, exist_ok=True)
    for split, (image_file, label_file) in FASHION_MNIST_FILES.items():
        n = images_per_split[split]
        pixels = np.repeat(np.arange(n, dtype=np.uint8), 28 * 28)
        with gzip.open(folder / image_file, "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + pixels.tobytes())
        with gzip.open(folder / label_file, "wb") as f:
            f.write(struct.pack(">II", 2049, n) + (np.arange(n) % 10).astype(np.uint8).tobytes())


def _fashion_recipe(**data) -> Recipe:
    return Recipe(name="fashion", data=DataConfig(source="fashion_mnist", image_size=32,
                                                  validation_fraction=0.2, **data),
                  model=ModelConfig(architecture="cnn"))


def test_fashion_mnist_reads_the_keras_cache_before_the_debian_folder(tmp_path, monkeypatch,
                                                                       keras_home):
    from tftoolkit.data import sources

    debian = tmp_path / "debian"
    _write_idx(debian, {"train": 30, "test": 20})
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", debian)
    data = load_data(_fashion_recipe(), 32)
    assert str(debian) in data.info.description
    # 3 examples per class: stratified, one of each class is held out for validation
    assert data.info.counts == {"train": 20, "val": 10, "test": 20}
    assert data.info.class_names[9] == "Ankle boot"
    test = data.splits["test"]
    assert test.arrays.shape == (20, 28, 28)
    np.testing.assert_array_equal(test.arrays[:, 0, 0], np.arange(20))  # order kept
    np.testing.assert_array_equal(test.labels, np.arange(20) % 10)

    cache = keras_home / "datasets" / "fashion-mnist"
    _write_idx(cache, {"train": 40, "test": 10})
    try:
        data = load_data(_fashion_recipe(), 32)
        assert str(cache) in data.info.description
        assert data.info.counts["test"] == 10
    finally:
        for f in cache.iterdir():
            f.unlink()


def test_fashion_mnist_offline_without_files_says_where_to_put_them(tmp_path, monkeypatch):
    import keras

    from tftoolkit.data import sources

    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "nothing")

    def offline():
        raise Exception("URL fetch failure on https://storage.googleapis.com/...")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(DataError) as err:
        load_data(_fashion_recipe(), 32)
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path / "nothing") in message and "fashion-mnist" in message


def test_max_examples_caps_each_source_split_and_its_held_out_splits_alike():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (200, 4)).astype("float32")
    y = np.arange(200) % 4
    recipe = Recipe(name="cap", data=DataConfig(
        source="arrays", arrays={"train": (x, y), "test": (x[:50], y[:50])},
        max_examples=40, validation_fraction=0.25), model=ModelConfig(architecture="mlp"))
    data = load_data(recipe)
    counts = data.info.counts
    # 48 held out of 200 for validation, then a fifth of each part kept: 30 + 10
    assert counts == {"train": 30, "test": 40, "val": 10}
    for split in ("train", "val", "test"):  # still stratified: within one per class
        per_class = np.bincount(data.splits[split].labels, minlength=4)
        assert per_class.max() - per_class.min() <= 1, (split, per_class)


def _numbered_arrays_recipe(**data) -> Recipe:
    x = np.arange(400, dtype="float32")[:, None]  # each example is its own number
    return Recipe(name="numbered", data=DataConfig(
        source="arrays", arrays={"train": (x, np.arange(400) % 4)}, validation_fraction=0.2,
        test_fraction=0.1, **data), model=ModelConfig(architecture="mlp"))


def _members(data) -> dict[str, set]:
    return {name: set(split.arrays[:, 0].tolist()) for name, split in data.splits.items()}


def test_max_examples_takes_a_subset_without_moving_examples_across_splits():
    full = _members(load_data(_numbered_arrays_recipe()))
    assert {k: len(v) for k, v in full.items()} == {"train": 288, "val": 72, "test": 40}
    smaller = None
    for cap in (200, 100, 37):
        data = load_data(_numbered_arrays_recipe(max_examples=cap))
        assert sum(data.info.counts.values()) == cap
        members = _members(data)
        for split, numbers in members.items():
            assert numbers <= full[split], split         # never another split's example
            if smaller is not None:
                assert numbers <= smaller[split], split  # a smaller cap: a subset
        smaller = members


def _epochs(first_epoch: int, epochs: int, n: int = 300, batch: int = 30) -> list[list[int]]:
    from tftoolkit.data.pipeline import make_dataset
    from tftoolkit.data.sources import Examples
    from tftoolkit.tasks import Regression

    numbers = np.arange(n, dtype="float32")[:, None]
    ds = make_dataset(Examples(numbers[:, 0].copy(), arrays=numbers), batch_size=batch,
                      resize=None, task=Regression(),
                      training=True, seed=3, cache="memory", shuffle_buffer=16,
                      first_epoch=first_epoch)
    steps = n // batch
    flat = [int(v) for b in ds.take(epochs * steps) for v in np.asarray(b[0])[:, 0]]
    return [flat[e * n:(e + 1) * n] for e in range(epochs)]


def test_each_epoch_is_a_new_permutation_of_seed_and_epoch_alone():
    first, second = _epochs(0, 2)
    assert sorted(first) == sorted(second) == list(range(300))
    position = {number: i for i, number in enumerate(first)}
    moved = np.mean([abs(position[number] - i) for i, number in enumerate(second)])
    assert moved > 60  # a full re-permutation moves an example ~n/3; a 16-buffer, ~16
    assert _epochs(1, 1) == [second]  # a resumed run's epoch 1 is the same


def test_splits_depend_on_the_data_seed_never_on_the_training_seed():
    runs = [_members(load_data(_numbered_arrays_recipe().with_overrides(
        {"train.seed": seed}))) for seed in (1, 2, 42)]
    assert runs[0] == runs[1] == runs[2]
    other = _members(load_data(_numbered_arrays_recipe(split_seed=7)))
    assert other["test"] != runs[0]["test"] and other["val"] != runs[0]["val"]


def test_a_folder_gets_a_stratified_seeded_test_split(image_folder):
    recipe = _folder_recipe(image_folder, validation_fraction=0.25, test_fraction=0.25)
    data = load_data(recipe, 32)
    assert data.info.counts == {"train": 14, "test": 6, "val": 4}
    for split in ("train", "val", "test"):  # both classes in every split
        assert set(data.splits[split].labels.tolist()) == {0, 1}
    again = load_data(recipe, 32)
    np.testing.assert_array_equal(data.splits["test"].paths, again.splits["test"].paths)
    assert not set(data.splits["test"].paths) & set(data.splits["train"].paths)
    assert not set(data.splits["test"].paths) & set(data.splits["val"].paths)
    none = load_data(_folder_recipe(image_folder, test_fraction=0.0), 32)
    assert "test" not in none.splits


def test_a_stratified_order_keeps_every_prefix_in_class_proportion():
    from tftoolkit.data.splits import stratified_order

    labels = np.repeat([0, 1, 2], [30, 60, 10])  # class-sorted, unbalanced
    order = stratified_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(100))
    for m in (5, 10, 17, 50):
        counts = np.bincount(labels[order[:m]], minlength=3)
        assert np.all(np.abs(counts - m * np.array([0.3, 0.6, 0.1])) < 2), (m, counts)
    np.testing.assert_array_equal(order, stratified_order(labels, seed=3))
    assert not np.array_equal(order, stratified_order(labels, seed=4))


def _bomb(path: Path, width: int, height: int) -> Path:
    """A tiny PNG (1-bit, all black) that declares ``width`` x ``height`` pixels."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("1", (width, height)).save(path)
    return path


def test_image_headers_are_read_without_decoding(tmp_path):
    import tensorflow as tf

    from tftoolkit.data.decode import declared_size

    rgb = np.zeros((20, 30, 3), np.uint8)
    for fmt in ("PNG", "JPEG", "GIF", "BMP"):
        path = write_image(tmp_path / f"x.{fmt.lower()}", rgb, fmt=fmt)
        assert [int(v) for v in declared_size(tf.io.read_file(str(path)))] == [30, 20], fmt
    assert [int(v) for v in declared_size(tf.constant(b"not an image"))] == [-1, -1]


def _gif_with_canvas(path: Path, width: int, height: int, canvas: tuple[int, int]) -> Path:
    """A tiny GIF of one ``width`` x ``height`` frame whose logical-screen header (the
    canvas) claims ``canvas`` instead."""
    from PIL import Image

    Image.new("P", (width, height)).save(path, format="GIF")
    data = bytearray(path.read_bytes())
    data[6:10] = canvas[0].to_bytes(2, "little") + canvas[1].to_bytes(2, "little")
    path.write_bytes(bytes(data))
    return path


def test_a_gif_lying_about_its_canvas_is_checked_by_its_first_frame(tmp_path):
    import tensorflow as tf

    from tftoolkit.data.decode import declared_size
    from tftoolkit.data.scan import _check

    liar = _gif_with_canvas(tmp_path / "liar.gif", 3000, 3000, canvas=(10, 10))
    assert liar.stat().st_size < 100_000
    assert [int(v) for v in declared_size(tf.io.read_file(str(liar)))] == [3000, 3000]
    assert "declares 3000x3000 pixels, more than data.max_pixels=1000000" in _check(
        liar, max_pixels=1_000_000)
    data = liar.read_bytes()
    headless = tmp_path / "headless.gif"  # no image descriptor: cut before it
    headless.write_bytes(data[:data.index(b"\x2c", 13)])
    assert "size cannot be read from its header" in _check(headless)
    fine = _gif_with_canvas(tmp_path / "fine.gif", 30, 20, canvas=(30, 20))
    assert _check(fine, max_pixels=1_000_000) is None


def test_a_webp_is_checked_against_max_pixels_and_small_images_of_every_format_decode(
        tmp_path):
    import tensorflow as tf
    from PIL import Image

    from tftoolkit.data.decode import decode_image_bytes, declared_size
    from tftoolkit.data.scan import _check

    big = tmp_path / "big.webp"
    Image.new("1", (6000, 6000)).save(big, format="WEBP", lossless=True)
    assert big.stat().st_size < 100_000
    assert "declares 6000x6000 pixels, more than data.max_pixels=1000000" in _check(
        big, max_pixels=1_000_000)
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    files = {f"x.{fmt.lower()}": dict(format=fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP")}
    files.update({"lossless.webp": dict(format="WEBP", lossless=True),
                  "lossy.webp": dict(format="WEBP", quality=80),
                  "extended.webp": dict(format="WEBP", exif=b"Exif\0\0II*\0")})
    for name, options in files.items():
        Image.fromarray(rgb).save(tmp_path / name, **options)
        data = tf.io.read_file(str(tmp_path / name))
        assert [int(v) for v in declared_size(data)] == [30, 20], name
        assert decode_image_bytes(data, max_pixels=1_000_000).shape == (20, 30, 3), name
        assert _check(tmp_path / name, max_pixels=1_000_000) is None, name
    (tmp_path / "disguised.png").write_bytes(b"II*\0" + bytes(100))  # a TIFF
    assert "its size cannot be read from its header" in _check(tmp_path / "disguised.png")


def test_an_image_declaring_more_than_max_pixels_is_a_bad_file_named(tmp_path, quiet):
    root = make_image_folder(tmp_path / "shapes", per_class=4)
    bomb = _bomb(root / "circle" / "huge.png", 8000, 6000)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(DataError, match=rf"{bomb}: declares 8000x6000 pixels, more than "
                                        r"data\.max_pixels=40000000: a decompression bomb"):
        load_data(_folder_recipe(root))
    skipped = load_data(_folder_recipe(root, on_bad_file="skip"))
    assert [path for path, _ in skipped.info.bad_files] == [str(bomb)]
    with pytest.raises(DataError, match=r"32x32 pixels, more than data\.max_pixels=1000"):
        load_data(tftoolkit.load_recipe(_folder_recipe(root), ["data.max_pixels=1000"]))


def test_the_decoder_refuses_an_image_over_max_pixels_before_decoding(tmp_path):
    import tensorflow as tf

    from tftoolkit.data.pipeline import Resize, make_dataset
    from tftoolkit.data.sources import Examples
    from tftoolkit.tasks import SingleLabel

    bomb = _bomb(tmp_path / "huge.png", 8000, 6000)
    examples = Examples(np.array([0]), paths=np.array([str(bomb)]))
    ds = make_dataset(examples, batch_size=1, resize=Resize(32, "bilinear"),
                      task=SingleLabel(2, "sparse"), training=False, seed=0, cache="off")
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"declares 8000x6000 pixels, more than data\.max_pixels"):
        next(iter(ds))


def test_a_decompression_bomb_in_a_folder_leaves_memory_bounded(tmp_path):
    """A 48 KB PNG declaring 20000 x 20000 pixels (1.2 GB decoded as RGB): the scan
    refuses it from its header, so the peak memory of the process that reads the folder
    stays that of TensorFlow. It runs as the child of a small launcher whose
    ``getrusage(RUSAGE_CHILDREN)`` reports it: Linux carries a process's ``ru_maxrss``
    over from the process it was forked from, so a child of pytest would inherit pytest's."""
    root = make_image_folder(tmp_path / "shapes", per_class=4)
    _bomb(root / "circle" / "bomb.png", 20000, 20000)
    reader = ("import sys\n"
              "from tftoolkit.data.sources import load_source\n"
              "from tftoolkit.recipe import DataConfig\n"
              "source = load_source(DataConfig(source='folder', dir=sys.argv[1], "
              "on_bad_file='skip'), 0)\n"
              "print(len(source.bad_files))\n")
    launcher = ("import resource, subprocess, sys\n"
                "done = subprocess.run([sys.executable, '-c', sys.argv[1], sys.argv[2]], "
                "capture_output=True, text=True)\n"
                "sys.stderr.write(done.stderr)\n"
                "print(done.returncode, done.stdout.strip() or -1, "
                "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n")
    done = subprocess.run([sys.executable, "-c", launcher, reader, str(root)],
                          capture_output=True, text=True, timeout=300)
    returncode, skipped, peak_mb = map(int, done.stdout.split())
    assert returncode == 0, done.stderr[-2000:]
    assert peak_mb < 1200, f"peak RSS {peak_mb} MB"  # TensorFlow alone: ~700 MB
    assert skipped == 1


def _dataset_ops(dataset) -> list[tuple[object, dict[str, int]]]:
    """Every op of a dataset's graph, those of the functions it maps included, each
    with the integer constants it takes, by input position."""
    import tensorflow as tf

    graph = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph().numpy())
    ops = []
    for scope in [graph.node] + [f.node_def for f in graph.library.function]:
        consts = {n.name: int(tf.make_ndarray(n.attr["value"].tensor)) for n in scope
                  if n.op == "Const" and n.attr["dtype"].type == tf.int64.as_datatype_enum
                  and not n.attr["value"].tensor.tensor_shape.dim}
        for node in scope:
            inputs = [consts.get(name.split(":")[0]) for name in node.input]
            ops.append((node, inputs))
    return ops


def test_with_autotune_off_every_map_runs_in_parallel_and_in_order(image_folder):
    from tftoolkit.augment import build_augmenter
    from tftoolkit.data.parallelism import PARALLEL_CALLS, PREFETCH_BATCHES
    from tftoolkit.recipe import AugmentConfig

    recipe = _folder_recipe(image_folder, cache="off", validation_fraction=0.0)
    data = load_data(recipe, 32)
    augment = build_augmenter(AugmentConfig(enabled=True, placement="pipeline",
                                            resized_crop_scale=0.5), 32, 0).pipeline_fn()
    dataset = data.dataset("train", training=True, batch_size=4, augment=augment)
    assert dataset.options().autotune.enabled is False
    assert dataset.options().deterministic is True
    ops = _dataset_ops(dataset)
    maps = [(n, inputs) for n, inputs in ops
            if n.op in ("MapDataset", "ParallelMapDataset", "ParallelMapDatasetV2")]
    assert len(maps) == 2  # the examples (decode, crop, flip) and the batches
    assert all(n.op == "ParallelMapDatasetV2" for n, _ in maps)  # none serial
    assert all(n.attr["deterministic"].s == b"true" for n, _ in maps)
    assert {inputs[-1] for _, inputs in maps} == {PARALLEL_CALLS} and PARALLEL_CALLS >= 2
    prefetch = [inputs[1] for n, inputs in ops if n.op == "PrefetchDataset"]
    assert prefetch == [PREFETCH_BATCHES]


def test_a_jpeg_window_is_decoded_alone_and_gives_the_pixels_of_decode_then_crop(tmp_path):
    import tensorflow as tf

    from tftoolkit.data.pipeline import decode_window

    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (45, 61, 3), dtype=np.uint8)
    window = tf.constant([7, 13, 22, 30])
    for fmt in ("JPEG", "PNG"):
        data = tf.constant(write_image(tmp_path / f"x.{fmt}", photo, fmt=fmt).read_bytes())
        whole = tf.io.decode_image(data, channels=3).numpy()
        cropped = decode_window(data, lambda shape: window).numpy()
        np.testing.assert_array_equal(cropped, whole[7:29, 13:43])
    graph = tf.function(lambda d: decode_window(d, lambda shape: window)).get_concrete_function(
        tf.TensorSpec([], tf.string)).graph
    ops = {op.type for op in graph.get_operations()}
    ops |= {node.op for f in graph.as_graph_def().library.function for node in f.node_def}
    assert {"ExtractJpegShape", "DecodeAndCropJpeg"} <= ops


def test_tfds_record_files_are_read_in_parallel(monkeypatch):
    import tensorflow_datasets as tfds

    from tftoolkit.data.parallelism import PARALLEL_CALLS

    read_configs = []
    recipe = tftoolkit.load_recipe("flowers", ["data.max_examples=12"])
    with tfds.testing.mock_data(num_examples=20), monkeypatch.context() as patch:
        as_dataset = tfds.core.DatasetBuilder.as_dataset  # the mock's

        def recording(self, *args, **kwargs):
            read_configs.append(kwargs.get("read_config"))
            return as_dataset(self, *args, **kwargs)

        patch.setattr(tfds.core.DatasetBuilder, "as_dataset", recording)
        load_data(recipe, 32)
    assert read_configs and all(
        c.num_parallel_calls_for_interleave_files == PARALLEL_CALLS for c in read_configs)


def test_a_jpeg_window_is_refused_when_the_image_declares_more_than_max_pixels(tmp_path):
    import tensorflow as tf
    from PIL import Image

    from tftoolkit.data.pipeline import decode_window

    path = tmp_path / "large.jpg"
    Image.new("RGB", (3000, 2000)).save(path)  # 6 MP, a few KB
    data = tf.io.read_file(str(path))
    window = tf.constant([0, 0, 10, 10], tf.int32)
    assert decode_window(data, lambda shape: window, max_pixels=6_000_000).shape == (10, 10, 3)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"declares 3000x2000 pixels, more than data\.max_pixels"):
        decode_window(data, lambda shape: window, max_pixels=5_000_000)
