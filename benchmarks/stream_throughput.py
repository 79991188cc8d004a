"""Uncached streaming input: tftoolkit's training pipeline vs Keras' own folder loader.

Photo-like JPEGs (crops of ``skimage.data`` photos resized to 500x375, in 4 class
folders) are read, decoded and resized to 224 px in batches of 64, one epoch at a time,
with no cache:

- plain: tftoolkit (``data.cache=off``) vs
  ``keras.utils.image_dataset_from_directory(...).prefetch(AUTOTUNE)``;
- augmented: tftoolkit's random resized crop (scale 0.08-1) + flip in the pipeline vs
  ``image_dataset_from_directory`` at 256 px + ``RandomCrop(224)`` / ``RandomFlip``
  mapped in tf.data;
- the ceiling: a bare parallel ``tf.io.decode_jpeg`` loop over the same files, and the
  fraction of it each pipeline reaches;
- a disk cache's second epoch (``data.cache=disk``).

Every measurement alternates with the others three times in this run; the best of each
is compared. The last lines are the ratios.

    python -m benchmarks.stream_throughput [--files 3000]
"""

from __future__ import annotations

import argparse
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
    """One pass: images per second, and the process's CPU time per image (all threads;
    less sensitive than wall time to other processes on a shared machine)."""

    images_per_second: float
    cpu_ms_per_image: float


def _images_per_second(dataset: tf.data.Dataset | Iterator, batches: int) -> Throughput:
    """Throughput over ``batches`` batches: one epoch from a new iterator of
    ``dataset``, or the next ``batches`` of an iterator."""
    source = iter(dataset)
    start, cpu, images = time.perf_counter(), time.process_time(), 0
    for _ in range(batches):
        batch = next(source)
        images += int((batch[0] if isinstance(batch, tuple) else batch).shape[0])
    return Throughput(images / (time.perf_counter() - start),
                      1000 * (time.process_time() - cpu) / images)


def _keras_dataset(folder: Path, size: int) -> tf.data.Dataset:
    return keras.utils.image_dataset_from_directory(
        folder, image_size=(size, size), batch_size=BATCH, shuffle=True, seed=0,
        verbose=False)


def keras_plain(folder: Path, batches: int) -> float:
    return _images_per_second(_keras_dataset(folder, SIZE).prefetch(tf.data.AUTOTUNE), batches)


def keras_augmented(folder: Path, batches: int) -> float:
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


def toolkit_plain(folder: Path, batches: int) -> float:
    dataset = load_data(_recipe(folder), SIZE).dataset("train", training=True,
                                                        batch_size=BATCH)
    return _images_per_second(dataset, batches)


def toolkit_augmented(folder: Path, batches: int) -> float:
    policy = AugmentConfig(enabled=True, placement="pipeline", flip="horizontal",
                           resized_crop_scale=0.08)
    dataset = load_data(_recipe(folder), SIZE).dataset(
        "train", training=True, batch_size=BATCH,
        augment=build_augmenter(policy, SIZE, 0).pipeline_fn())
    return _images_per_second(dataset, batches)


def decode_ceiling(folder: Path, batches: int) -> float:
    """A bare parallel ``decode_jpeg`` of the same files: no resize, no shuffle."""
    paths = sorted(str(p) for p in folder.glob("*/*.jpg"))
    dataset = (tf.data.Dataset.from_tensor_slices(paths)
               .map(lambda p: tf.io.decode_jpeg(tf.io.read_file(p), channels=3),
                    num_parallel_calls=tf.data.AUTOTUNE)
               .batch(BATCH).prefetch(tf.data.AUTOTUNE))
    return _images_per_second(dataset, batches)


def disk_cache_second_epoch(folder: Path, batches: int) -> float:
    """Images per second of the second epoch read from ``data.cache=disk`` (the cache is
    written in one pass when the pipeline is built)."""
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
            "decode_ceiling": decode_ceiling, "disk_cache_epoch_2": disk_cache_second_epoch}


def run(files: int = 3000, folder: Path | None = None) -> dict[str, float]:
    folder = make_photos(folder or Path(tempfile.gettempdir()) / f"tftoolkit-photos-{files}",
                         files)
    batches = -(-files // BATCH)
    runs: dict[str, list[Throughput]] = {name: [] for name in MEASURES}
    for _ in range(REPEATS):  # alternating; the best of each (load only ever slows)
        for name, measure in MEASURES.items():
            runs[name].append(measure(folder, batches))
            print(f"  {name:20s} {runs[name][-1].images_per_second:8.1f} img/s "
                  f"{runs[name][-1].cpu_ms_per_image:6.2f} CPU ms/img", flush=True)
    best = {f"{name}_img_s": max(r.images_per_second for r in values)
            for name, values in runs.items()}
    best.update({f"{name}_cpu_ms": min(r.cpu_ms_per_image for r in values)
                 for name, values in runs.items()})
    ceiling = best["decode_ceiling_img_s"]
    return {**best,
            "plain_ratio": best["toolkit_plain_img_s"] / best["keras_plain_img_s"],
            "augmented_ratio": best["toolkit_augmented_img_s"] / best["keras_augmented_img_s"],
            **{f"{name}_of_ceiling": best[f"{name}_img_s"] / ceiling
               for name in ("keras_plain", "toolkit_plain", "keras_augmented",
                            "toolkit_augmented")},
            "ratio": best["toolkit_plain_img_s"] / best["keras_plain_img_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000)
    r = run(parser.parse_args().files)
    for name in MEASURES:
        print(f"{name:22s}: {r[f'{name}_img_s']:8.1f} img/s, "
              f"{r[f'{name}_cpu_ms']:5.2f} CPU ms per image")
    for name in ("keras_plain", "toolkit_plain", "keras_augmented", "toolkit_augmented"):
        print(f"{name:22s}: {r[f'{name}_of_ceiling']:.2f} of the decode ceiling")
    print(f"stream_throughput augmented ratio (toolkit RRC+flip / keras crop+flip layers): "
          f"{r['augmented_ratio']:.2f}x")
    print(f"stream_throughput plain ratio (toolkit / image_dataset_from_directory): "
          f"{r['plain_ratio']:.2f}x")


if __name__ == "__main__":
    main()
