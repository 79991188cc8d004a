"""Peak memory of fine-tuning on an image folder, by cache mode and folder size.

Random 256 px JPEGs (1,000 and 4,000), MobileNetV2 fine-tuned (blocks 16 and up) for
one epoch at 160 px; each case runs in a fresh process that reports its own peak RSS.
Then the epoch time with tftoolkit's uint8 memory cache against the plain Keras way
(``image_dataset_from_directory(...).cache()``, float32 pixels): an epoch after the
cache is filled, the two sides alternated three times, the fastest of each compared.
The last line is the growth per extra image of the memory cache.

    python -m benchmarks.data_memory [--epoch-time-only]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SIZES = (1000, 4000)
CHILD = """
import json, resource, sys
import tftoolkit
result = tftoolkit.train("image_folder", {
    "data.dir": sys.argv[1], "data.cache": sys.argv[2], "data.cache_dir": sys.argv[3],
    "data.image_size": 160, "model.mode": "fine_tune", "model.weights": "none",
    "model.unfreeze": "block_16", "augment.enabled": False, "train.epochs": 1,
    "data.test_fraction": 0.0, "train.run_dir": sys.argv[4], "export.enabled": False,
    "train.verbose": 0})
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_mb": peak_kb / 1024, "notes": result.notes}))
"""


def make_folder(root: Path, count: int) -> Path:
    """``count`` random 256 x 256 JPEGs in two class folders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((256, 256)).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def peak_rss(folder: Path, cache: str, workdir: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder), cache,
                           str(workdir / "caches"), str(workdir / "runs")],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def epoch_times(folder: Path, workdir: Path) -> dict[str, float]:
    """Second-epoch seconds: tftoolkit's uint8 memory cache vs Keras' float32 cache."""
    import time

    import keras
    import tensorflow as tf

    import tftoolkit
    from tftoolkit.recipe import load_recipe

    recipe = load_recipe("image_folder", {
        "data.dir": str(folder), "data.cache": "memory", "data.image_size": 160,
        "data.validation_fraction": 0.0, "data.test_fraction": 0.0,
        "model.mode": "fine_tune", "model.weights": "none", "model.unfreeze": "block_16",
        "augment.enabled": False})
    data = tftoolkit.load_data(recipe, 160)
    steps = data.steps_per_epoch("train", 32)

    def timed(model, dataset) -> float:
        model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)  # fills the cache
        start = time.perf_counter()
        model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
        return time.perf_counter() - start

    def compiled():
        model = tftoolkit.build_model(recipe, data.info)
        model.compile("adam", "categorical_crossentropy")
        return model

    ours = data.dataset("train", training=True, batch_size=32)
    plain = keras.utils.image_dataset_from_directory(
        folder, image_size=(160, 160), batch_size=32, label_mode="categorical", seed=0)
    options = tf.data.Options()
    options.autotune.enabled = False  # as tftoolkit's pipelines: no teardown stall
    plain = plain.cache().repeat().with_options(options)
    best = {"tftoolkit_uint8_s": float("inf"), "keras_float32_s": float("inf")}
    for _ in range(3):
        for key, dataset in (("tftoolkit_uint8_s", ours), ("keras_float32_s", plain)):
            best[key] = min(best[key], timed(compiled(), dataset))
    return best


def main() -> None:
    if "--epoch-time-only" in sys.argv[1:]:
        with tempfile.TemporaryDirectory() as tmp:
            times = epoch_times(make_folder(Path(tmp) / "images", SIZES[0]), Path(tmp))
        print(f"epoch after caching, {SIZES[0]} images: uint8 memory cache "
              f"{times['tftoolkit_uint8_s']:.2f} s, Keras float32 cache "
              f"{times['keras_float32_s']:.2f} s (ratio "
              f"{times['tftoolkit_uint8_s'] / times['keras_float32_s']:.2f}, target <= 1.1)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = {}
        for count in SIZES:
            folder = make_folder(tmp / f"images{count}", count)
            for cache in ("memory", "disk"):
                row = rows[(cache, count)] = peak_rss(folder, cache, tmp / f"{cache}{count}")
                print(f"{cache:6s} {count:5d} images: peak RSS {row['peak_mb']:7.0f} MB",
                      flush=True)
        times = epoch_times(tmp / f"images{SIZES[0]}", tmp)
    extra = SIZES[1] - SIZES[0]
    disk_growth = rows[("disk", SIZES[1])]["peak_mb"] - rows[("disk", SIZES[0])]["peak_mb"]
    print(f"disk cache: peak RSS grows {disk_growth:.0f} MB from {SIZES[0]} to {SIZES[1]} "
          "images (target <= 300 MB)")
    ratio = times["tftoolkit_uint8_s"] / times["keras_float32_s"]
    print(f"epoch after caching, {SIZES[0]} images: uint8 memory cache "
          f"{times['tftoolkit_uint8_s']:.2f} s, Keras float32 cache "
          f"{times['keras_float32_s']:.2f} s (ratio {ratio:.2f}, target <= 1.1)")
    growth_kb = (rows[("memory", SIZES[1])]["peak_mb"]
                 - rows[("memory", SIZES[0])]["peak_mb"]) * 1024 / extra
    print(f"memory cache: {growth_kb:.0f} KB per extra image at 160 px (target <= 120)")


if __name__ == "__main__":
    main()
