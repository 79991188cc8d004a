"""Data caches: uint8 pixels in memory, reusable disk caches, bounded shuffling."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from tftoolkit.data import load_data
from tftoolkit.data.pipeline import decode_image_bytes, to_rgb_image
from tftoolkit.recipe import DataConfig, ModelConfig, Recipe, TrainConfig


def _recipe(folder, tmp_path, **data) -> Recipe:
    return Recipe(name="cached", data=DataConfig(source="folder", dir=str(folder),
                                                 validation_fraction=0.0, test_fraction=0.0,
                                                 cache_dir=str(tmp_path / "caches"), **data),
                  model=ModelConfig(architecture="cnn"), train=TrainConfig(batch_size=8))


def _batches(data, **kw):
    return [tuple(np.asarray(t) for t in b) for b in data.dataset("train", **kw)]


def test_memory_cache_holds_uint8_and_serves_the_rounded_float_pixels(image_folder, tmp_path):
    data = load_data(_recipe(image_folder, tmp_path, cache="memory", image_size=20), 20)
    x = _batches(data)[0][0]
    assert "memory, uint8 pixels" in data.notes[-1]
    assert x.dtype == np.float32
    expected = np.stack([np.asarray(to_rgb_image(decode_image_bytes(tf.io.read_file(p)),
                                                 data.info.resize))
                         for p in data.splits["train"].paths[:8]])
    np.testing.assert_array_equal(x, expected)  # whole pixel levels, as served
    assert np.array_equal(expected, np.clip(np.round(expected), 0, 255))
    uncached = load_data(_recipe(image_folder, tmp_path, cache="off", image_size=20), 20)
    for a, b in zip(_batches(data), _batches(uncached)):
        np.testing.assert_array_equal(a[0], b[0])


def test_true_and_false_still_mean_memory_and_off(image_folder, tmp_path):
    from tftoolkit.recipe import validate

    assert validate(_recipe(image_folder, tmp_path, cache=True)).data.cache == "memory"
    assert validate(_recipe(image_folder, tmp_path, cache=False)).data.cache == "off"


def test_disk_cache_is_reused_and_invalidated_by_size_or_content(image_folder, tmp_path):
    from conftest import write_image

    recipe = _recipe(image_folder, tmp_path, cache="disk", image_size=20)
    first = load_data(recipe, 20)
    written = _batches(first)
    assert "written this run" in first.notes[-1]
    folders = {p.name for p in (tmp_path / "caches").iterdir()}
    assert len(folders) == 1 and list((tmp_path / "caches").rglob("cache.json"))

    again = load_data(recipe, 20)
    reread = _batches(again)
    assert "reused" in again.notes[-1]
    for a, b in zip(written, reread):
        np.testing.assert_array_equal(a[0], b[0])

    load_data(_recipe(image_folder, tmp_path, cache="disk", image_size=24), 24).dataset(
        "train")
    assert len({p.name for p in (tmp_path / "caches").iterdir()}) == 2  # another size
    write_image(image_folder / "circle" / "000.jpg", np.full((32, 32, 3), 7, np.uint8))
    changed = load_data(recipe, 20)
    changed.dataset("train")
    assert "written this run" in changed.notes[-1]  # another content
    assert len({p.name for p in (tmp_path / "caches").iterdir()}) == 3


def test_auto_chooses_disk_when_a_split_exceeds_the_memory_budget(image_folder, tmp_path):
    small = load_data(_recipe(image_folder, tmp_path, cache="auto", image_size=32,
                              memory_budget_mb=1), 32)
    small.dataset("train")
    assert "memory" in small.notes[-1] and "fits the memory budget of 1 MB" in small.notes[-1]
    # 24 images of 256 x 256 x 3 bytes are 4.5 MB: over a 1 MB budget
    large = load_data(_recipe(image_folder, tmp_path, cache="auto", image_size=256,
                              memory_budget_mb=1), 256)
    large.dataset("train")
    assert "disk" in large.notes[-1] and "exceeds the memory budget of 1 MB" in large.notes[-1]


def test_epoch_order_is_a_function_of_seed_and_epoch_with_a_bounded_buffer(image_folder,
                                                                        tmp_path):
    data = load_data(_recipe(image_folder, tmp_path, cache="memory", image_size=16,
                             shuffle_buffer=4), 16)
    steps = data.steps_per_epoch("train", 8)
    stream = data.dataset("train", training=True, batch_size=8)
    epochs = [np.asarray(b[1]) for b in stream.take(3 * steps)]
    resumed = data.dataset("train", training=True, batch_size=8, first_epoch=2)
    for a, b in zip(epochs[2 * steps:], (np.asarray(b[1]) for b in resumed.take(steps))):
        np.testing.assert_array_equal(a, b)
    first, second = (np.concatenate(epochs[i * steps:(i + 1) * steps]) for i in range(2))
    assert not np.array_equal(first, second)  # each epoch its own order
    # the buffer holds 4 examples, yet the first batch mixes both classes: the cache is
    # kept in a seeded random order, not class by class as the folder lists them
    assert len(set(np.argmax(epochs[0], axis=1))) == 2


@pytest.mark.parametrize("mode", ["memory", "disk", "off"])
def test_training_runs_with_each_cache(image_folder, tmp_path, mode, quiet):
    import tftoolkit

    recipe = _recipe(image_folder, tmp_path, cache=mode, image_size=32)
    result = tftoolkit.train(recipe, {**quiet, "train.epochs": 2, "export.enabled": False})
    assert any(f"data cache for train: {mode}" in note for note in result.notes)


def _two_epochs(data, **kw) -> list[tuple[np.ndarray, ...]]:
    steps = data.steps_per_epoch("train", 8)
    return [tuple(np.asarray(t) for t in b)
            for b in data.dataset("train", training=True, batch_size=8, **kw)
            .take(2 * steps)]


def test_every_cache_mode_trains_on_the_same_epochs(image_folder, tmp_path):
    epochs = {mode: _two_epochs(load_data(_recipe(image_folder, tmp_path, cache=mode,
                                                  image_size=16), 16))
              for mode in ("memory", "disk", "off")}
    for mode in ("disk", "off"):
        for a, b in zip(epochs["memory"], epochs[mode]):
            np.testing.assert_array_equal(a[1], b[1])  # the same examples, in one order
            np.testing.assert_array_equal(a[0], b[0])
    steps = len(epochs["memory"]) // 2
    first, second = (np.concatenate([b[0] for b in epochs["memory"][e * steps:
                                                                   (e + 1) * steps]])
                     for e in (0, 1))
    assert not np.array_equal(first, second)  # each epoch its own order


def test_one_disk_cache_serves_every_training_seed(image_folder, tmp_path):
    from dataclasses import replace

    def seeded(seed: int, cache: str):
        recipe = _recipe(image_folder, tmp_path, cache=cache, image_size=16)
        return load_data(replace(recipe, train=replace(recipe.train, seed=seed)), 16)

    first = seeded(1, "disk")
    one = _two_epochs(first)
    assert "written this run" in first.notes[-1]
    second = seeded(2, "disk")
    two = _two_epochs(second)
    assert "reused" in second.notes[-1], second.notes[-1]  # the same examples: one copy
    second.dataset("train")  # and the split read in order for evaluation
    assert len(list((tmp_path / "caches").iterdir())) == 1
    for a, b in zip(two, _two_epochs(seeded(2, "memory"))):  # each seed its own order
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(one, two))


def test_a_disk_cache_is_read_a_batch_of_records_per_call(image_folder, tmp_path,
                                                          monkeypatch):
    from tftoolkit.data.cache import DiskCache

    reads, reader = [], DiskCache.reader

    def counting(cache):
        read = reader(cache)
        return lambda rows: (reads.append(np.size(rows)), read(rows))[1]

    monkeypatch.setattr(DiskCache, "reader", counting)
    data = load_data(_recipe(image_folder, tmp_path, cache="disk", image_size=16), 16)
    for training in (True, False):  # the training stream, and the split in order
        reads.clear()
        assert len(list(data.dataset("train", training=training, batch_size=8).take(3))) == 3
        assert reads and max(reads) == 8, reads  # one call per batch of 8 records


def _gradient_folder(root, count: int = 8):
    """Non-square images whose pixels say where they are: red grows left to right, green
    top to bottom; blue, even, tells them apart (the same picture under two classes
    would be refused)."""
    from conftest import write_image

    yy, xx = np.mgrid[:24, :48]
    for i in range(count):
        image = np.stack([xx * 255 / 47, yy * 255 / 23, np.full_like(xx, 20 * i)], -1)
        write_image(root / ("a" if i % 2 else "b") / f"{i}.png", image.astype(np.uint8))
    return root


@pytest.mark.parametrize("policy", [{"resized_crop_scale": 0.2}, {"crop": 0.4}])
def test_a_crop_is_the_same_region_of_the_image_cached_or_not(tmp_path, policy):
    from tftoolkit.augment import build_augmenter
    from tftoolkit.recipe import AugmentConfig

    folder = _gradient_folder(tmp_path / "gradients")
    augment = build_augmenter(AugmentConfig(enabled=True, placement="pipeline", **policy),
                              16, 0).pipeline_fn()
    views = {mode: _two_epochs(load_data(_recipe(folder, tmp_path, cache=mode,
                                                 image_size=16), 16), augment=augment)
             for mode in ("memory", "disk", "off")}
    memory, disk, uncached = (np.concatenate([b[0] for b in views[m]])
                              for m in ("memory", "disk", "off"))
    np.testing.assert_array_equal(disk, memory)  # the same cached image, cut the same way
    # within about a pixel of the 16 px cached image (255 / 16 levels) of the crop from
    # the source; another region of the image would differ by far more
    assert np.abs(memory - uncached).mean() < 6
    assert np.abs(memory - uncached)[..., :2].max() < 40
    assert np.abs(uncached[:1] - uncached[1:]).mean() > 10  # the crops do differ


def _disk_cache_folder(tmp_path):
    (folder,) = (tmp_path / "caches").iterdir()
    return folder


@pytest.mark.parametrize("damage", ["empty marker", "truncated inputs", "no inputs",
                                    "shapes of another count"])
def test_a_damaged_disk_cache_is_written_again(image_folder, tmp_path, damage):
    recipe = _recipe(image_folder, tmp_path, cache="disk", image_size=16)
    written = _two_epochs(load_data(recipe, 16))
    folder = _disk_cache_folder(tmp_path)
    if damage == "empty marker":  # a kill while the marker was written
        (folder / "cache.json").write_text("")
    elif damage == "truncated inputs":
        with open(folder / "inputs.bin", "r+b") as f:
            f.truncate(100)
    elif damage == "no inputs":
        (folder / "inputs.bin").unlink()
    else:
        np.save(folder / "shapes.npy", np.zeros((3, 2), np.int32))
    again = load_data(recipe, 16)
    reread = _two_epochs(again)
    assert "written this run" in again.notes[-1], again.notes[-1]
    for a, b in zip(written, reread):
        np.testing.assert_array_equal(a[0], b[0])
    third = load_data(recipe, 16)
    _two_epochs(third)
    assert "reused" in third.notes[-1]  # whole again


def test_a_write_of_the_marker_cut_short_leaves_no_marker(image_folder, tmp_path,
                                                           monkeypatch):
    from pathlib import Path

    recipe = _recipe(image_folder, tmp_path, cache="disk", image_size=16)
    write_text = Path.write_text

    def killed(path, text, *args, **kwargs):  # the process dies halfway
        write_text(path, text[:len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        _two_epochs(load_data(recipe, 16))
    monkeypatch.setattr(Path, "write_text", write_text)
    folder = _disk_cache_folder(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["inputs.bin", "shapes.npy"]
    again = load_data(recipe, 16)
    _two_epochs(again)
    assert "written this run" in again.notes[-1]


def test_a_disk_cache_write_removes_the_temporary_files_of_dead_writers(image_folder,
                                                                        tmp_path):
    import socket
    import subprocess
    import sys

    recipe = _recipe(image_folder, tmp_path, cache="disk", image_size=16)
    load_data(recipe, 16).dataset("train")
    folder = _disk_cache_folder(tmp_path)
    (folder / "cache.json").unlink()  # to be written again
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = folder / f".tmp-{host}-{dead.pid}-0123abcd"  # a killed writer's inputs
    stale.write_bytes(b"0" * 1000)
    live = folder / f".tmp-{host}-{os.getpid()}-4567cdef"  # a live one's
    live.write_bytes(b"0" * 1000)
    data = load_data(recipe, 16)
    data.dataset("train")
    assert "written this run" in data.notes[-1]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["cache.json", "inputs.bin", "shapes.npy", live.name])


_UNCACHED_ARRAYS = """
import numpy as np
from tftoolkit.data.pipeline import make_dataset
from tftoolkit.data.sources import Examples
from tftoolkit.tasks import SingleLabel

def resident():
    return int(open("/proc/self/statm").read().split()[1]) * 4096

x = np.random.default_rng(0).random((1000, 25000), np.float32)  # 95 MB
before = resident()
dataset = make_dataset(Examples(np.arange(1000) % 2, arrays=x), batch_size=8, resize=None,
                       task=SingleLabel(2, "sparse"), training=True, seed=0,
                       cache="off")
next(iter(dataset))
print((resident() - before) / x.nbytes)
"""


def test_uncached_arrays_are_held_once_by_their_training_dataset():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _UNCACHED_ARRAYS], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    # one copy of the arrays (and TensorFlow's first iteration), not a second batch of
    # them all
    assert float(out.split()[-1]) < 1.5, out


def test_arrays_read_by_a_dataset_live_as_long_as_it_and_no_longer():
    """Batches are read from the arrays while only the dataset (or one made from it)
    refers to them; once it is gone, the arrays are freed (TensorFlow keeps the Python
    function that reads them for the life of the process)."""
    import gc
    import weakref

    from tftoolkit.data.pipeline import make_dataset
    from tftoolkit.data.sources import Examples
    from tftoolkit.tasks import SingleLabel

    x = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    held = weakref.ref(x)
    batches = make_dataset(Examples(np.arange(40) % 2, arrays=x), batch_size=8,
                           resize=None, task=SingleLabel(2, "sparse"), training=False,
                           seed=0, cache="off").map(lambda x, y: x)
    del x
    gc.collect()
    assert np.array_equal(np.concatenate(list(batches.as_numpy_iterator())),
                          np.arange(40 * 3, dtype=np.float32).reshape(40, 3))
    del batches
    gc.collect()
    assert held() is None
