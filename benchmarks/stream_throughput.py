"""Uncached streaming input: tftoolkit's training pipeline vs Keras' own folder loader.

Photo-like JPEGs (crops of ``skimage.data`` photos resized to 500x375, in 4 class
folders) are read, decoded and resized to 224 px in batches of 64, one epoch at a time,
with no cache:

- plain: tftoolkit (``data.cache=off``: antialiased downscale) vs
  ``keras.utils.image_dataset_from_directory(...).prefetch(AUTOTUNE)`` (not antialiased);
- augmented: tftoolkit's random resized crop (scale 0.08-1) + flip in the pipeline vs
  ``image_dataset_from_directory`` at 256 px + ``RandomCrop(224)`` / ``RandomFlip``
  mapped in tf.data;
- the ceiling: a bare parallel ``tf.io.decode_jpeg`` loop over the same files, alone,
  then with Keras' plain bilinear resize, with TF's antialiased one and with the
  toolkit's (the same pixels): what the filter itself costs;
- a disk cache's second epoch (``data.cache=disk``).

The primary figure is the process's CPU time per image, over all its threads: what a
pipeline costs, and steadier than wall time on a shared machine. Images per second come
second, with the 1-minute load average before and after each pass: a wall-clock ratio
measured at a load above the number of cores says little, and is printed flagged as
such, not as a result. Every measurement alternates with the others three times in this
run; the best of each is compared (load only ever slows).

    python -m benchmarks.stream_throughput [--files 3000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import keras
import numpy as np
import tensorflow as tf

from tftoolkit.augment import build_augmenter
from tftoolkit.data import load_data
from tftoolkit.data.pipeline import Resize
from tftoolkit.recipe import AugmentConfig, DataConfig, Recipe

SIZE, BATCH, REPEATS, CLASSES = 224, 64, 3, 4
PHOTO_SHAPE = (375, 500)  # height, width


def make_photos(root: Path, count: int) -> Path:
    """``count`` JPEGs in ``CLASSES`` folders: random crops of real photos, 500x375."""
    import skimage.data
    from PIL import Image

    if len(list(root.glob("*/*.jpg"))) == count:
        return root
    photos = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut(),
              skimage.data.rocket()]
    rng = np.random.default_rng(0)
    for i in range(count):
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        image = Image.fromarray(photo[y:y + ch, x:x + cw]).resize(PHOTO_SHAPE[::-1],
                                                                  Image.BILINEAR)
        path = root / f"class_{i % CLASSES}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90)
    return root


@dataclass(frozen=True)
class Throughput:
    """One pass: the process's CPU time per image (all threads), images per second, and
    the 1-minute load average before and after it."""

    cpu_ms_per_image: float
    images_per_second: float
    load: tuple[float, float]


def _images_per_second(dataset: tf.data.Dataset | Iterator, batches: int) -> Throughput:
    """Throughput over ``batches`` batches: one epoch from a new iterator of
    ``dataset``, or the next ``batches`` of an iterator."""
    load = os.getloadavg()[0]
    source = iter(dataset)
    start, cpu, images = time.perf_counter(), time.process_time(), 0
    for _ in range(batches):
        batch = next(source)
        images += int((batch[0] if isinstance(batch, tuple) else batch).shape[0])
    return Throughput(1000 * (time.process_time() - cpu) / images,
                      images / (time.perf_counter() - start), (load, os.getloadavg()[0]))


def _keras_dataset(folder: Path, size: int) -> tf.data.Dataset:
    return keras.utils.image_dataset_from_directory(
        folder, image_size=(size, size), batch_size=BATCH, shuffle=True, seed=0,
        verbose=False)


def keras_plain(folder: Path, batches: int) -> Throughput:
    return _images_per_second(_keras_dataset(folder, SIZE).prefetch(tf.data.AUTOTUNE), batches)


def keras_augmented(folder: Path, batches: int) -> Throughput:
    augment = keras.Sequential([keras.layers.RandomCrop(SIZE, SIZE, seed=1),
                                keras.layers.RandomFlip("horizontal", seed=2)])
    dataset = (_keras_dataset(folder, 256)
               .map(lambda x, y: (augment(x, training=True), y),
                    num_parallel_calls=tf.data.AUTOTUNE)
               .prefetch(tf.data.AUTOTUNE))
    return _images_per_second(dataset, batches)


def _recipe(folder: Path, **data) -> Recipe:
    return Recipe(name="stream", data=DataConfig(
        source="folder", dir=str(folder), image_size=SIZE, validation_fraction=0.0,
        test_fraction=0.0, **{"cache": "off", **data}))


def toolkit_plain(folder: Path, batches: int) -> Throughput:
    dataset = load_data(_recipe(folder), SIZE).dataset("train", training=True,
                                                        batch_size=BATCH)
    return _images_per_second(dataset, batches)


def toolkit_augmented(folder: Path, batches: int) -> Throughput:
    policy = AugmentConfig(enabled=True, placement="pipeline", flip="horizontal",
                           resized_crop_scale=0.08)
    dataset = load_data(_recipe(folder), SIZE).dataset(
        "train", training=True, batch_size=BATCH,
        augment=build_augmenter(policy, SIZE, 0).pipeline_fn())
    return _images_per_second(dataset, batches)


def _bare_decode(folder: Path, batches: int, resize=None) -> Throughput:
    """A bare parallel ``decode_jpeg`` of the same files, then ``resize``: no pixel
    check, no shuffle."""
    paths = sorted(str(p) for p in folder.glob("*/*.jpg"))

    def load(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return image if resize is None else resize(image)

    dataset = (tf.data.Dataset.from_tensor_slices(paths)
               .map(load, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(BATCH).prefetch(tf.data.AUTOTUNE))
    return _images_per_second(dataset, batches)


def decode_ceiling(folder: Path, batches: int) -> Throughput:
    """Decoding alone."""
    return _bare_decode(folder, batches)


def decode_bilinear(folder: Path, batches: int) -> Throughput:
    """Decoding and the plain bilinear resize of Keras' loader."""
    return _bare_decode(folder, batches, lambda image: tf.image.resize(image, (SIZE, SIZE)))


def decode_tf_antialiased(folder: Path, batches: int) -> Throughput:
    """Decoding and TF's antialiased bilinear resize (the toolkit's gives its pixels,
    rounded)."""
    return _bare_decode(folder, batches, lambda image: tf.image.resize(
        image, (SIZE, SIZE), antialias=True))


def decode_antialiased(folder: Path, batches: int) -> Throughput:
    """Decoding and the toolkit's resize (antialiased bilinear, whole pixel levels)."""
    return _bare_decode(folder, batches, Resize(SIZE, "bilinear"))


def disk_cache_second_epoch(folder: Path, batches: int) -> Throughput:
    """The second epoch read from ``data.cache=disk`` (the cache is written in one pass
    when the pipeline is built)."""
    with tempfile.TemporaryDirectory() as caches:
        data = load_data(_recipe(folder, cache="disk", cache_dir=caches), SIZE)
        iterator = iter(data.dataset("train", training=True, batch_size=BATCH))
        assert "written this run" in data.notes[-1], data.notes[-1]
        _images_per_second(iterator, batches)
        second = _images_per_second(iterator, batches)
        del iterator  # stops its prefetching before the cache folder is removed
        return second


MEASURES = {"keras_plain": keras_plain, "toolkit_plain": toolkit_plain,
            "keras_augmented": keras_augmented, "toolkit_augmented": toolkit_augmented,
            "decode_ceiling": decode_ceiling, "decode_bilinear": decode_bilinear,
            "decode_tf_antialiased": decode_tf_antialiased,
            "decode_antialiased": decode_antialiased,
            "disk_cache_epoch_2": disk_cache_second_epoch}


CORES = os.cpu_count() or 1


@dataclass(frozen=True)
class Ratio:
    """A ratio of two measures, and whether it is a result: a wall-clock ratio measured
    at a load above the number of cores is not."""

    value: float
    wall_clock: bool
    highest_load: float

    @property
    def flag(self) -> str:
        """What to print after the ratio: nothing, or why it is not a result."""
        if self.wall_clock and self.highest_load > CORES:
            return (f" (wall clock at load {self.highest_load:.1f} > {CORES} cores: "
                    "not a result)")
        return ""


def run(files: int = 3000, folder: Path | None = None) -> dict:
    """Every measure, alternated :data:`REPEATS` times: per measure its least CPU time
    per image (``*_cpu_ms``), most images per second (``*_img_s``) and highest load
    (``*_load``); the target ratios (``*_ratio``, with ``*_flag`` saying when one is not
    a result); ``ratio``: the plain CPU time ratio."""
    folder = make_photos(folder or Path(tempfile.gettempdir()) / f"tftoolkit-photos-{files}",
                         files)
    batches = -(-files // BATCH)
    runs: dict[str, list[Throughput]] = {name: [] for name in MEASURES}
    for _ in range(REPEATS):  # alternating; the best of each (load only ever slows)
        for name, measure in MEASURES.items():
            r = measure(folder, batches)
            runs[name].append(r)
            print(f"  {name:22s} {r.cpu_ms_per_image:6.2f} CPU ms/img "
                  f"{r.images_per_second:8.1f} img/s  load {r.load[0]:.1f} -> {r.load[1]:.1f}",
                  flush=True)
    best = {f"{name}_cpu_ms": min(r.cpu_ms_per_image for r in values)
            for name, values in runs.items()}
    best.update({f"{name}_img_s": max(r.images_per_second for r in values)
                 for name, values in runs.items()})
    loads = {name: max(max(r.load) for r in values) for name, values in runs.items()}
    best.update({f"{name}_load": load for name, load in loads.items()})

    def ratio(ours: str, theirs: str, figure: str) -> Ratio:
        value = best[f"{ours}_{figure}"] / best[f"{theirs}_{figure}"]
        return Ratio(value, figure == "img_s", max(loads[ours], loads[theirs]))

    ratios = {"plain_cpu": ratio("toolkit_plain", "keras_plain", "cpu_ms"),
              "plain_speed": ratio("toolkit_plain", "keras_plain", "img_s"),
              "augmented_speed": ratio("toolkit_augmented", "keras_augmented", "img_s"),
              "augmented_cpu_vs_plain_keras": ratio("toolkit_augmented", "keras_plain",
                                                    "cpu_ms")}
    return {**best, **{f"{name}_ratio": r.value for name, r in ratios.items()},
            **{f"{name}_flag": r.flag for name, r in ratios.items()},
            "ratio": ratios["plain_cpu"].value}


TARGETS = {"plain_cpu": "toolkit / Keras loader, CPU ms per image (target <= 1.2)",
           "plain_speed": "toolkit / Keras loader, images per second (target >= 0.9)",
           "augmented_speed": "toolkit RRC+flip / Keras crop+flip layers, images per "
                              "second (target >= 1.5)",
           "augmented_cpu_vs_plain_keras": "toolkit RRC+flip / Keras plain loader, CPU ms "
                                           "per image (target <= 1.0)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000)
    r = run(parser.parse_args().files)
    print(f"{CORES} cores; best of {REPEATS} alternated passes")
    for name in MEASURES:
        print(f"{name:22s}: {r[f'{name}_cpu_ms']:5.2f} CPU ms per image, "
              f"{r[f'{name}_img_s']:8.1f} img/s (highest load {r[f'{name}_load']:.1f})")
    for name, label in TARGETS.items():
        print(f"stream_throughput {label}: {r[f'{name}_ratio']:.2f}x{r[f'{name}_flag']}")


if __name__ == "__main__":
    main()
