"""Augmentation throughput inside tf.data: the plain Keras layer chain vs the fused path.

Chain: RandomFlip + RandomCrop + RandomRotation + RandomZoom + RandomTranslation (five
resamplings). Fused: the same five transforms as one projective transform per image.
224 px output, batch 32; the two alternate three times in this run and the best
throughput of each is compared. The last line is the ratio.

    python -m benchmarks.augment_throughput
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from tftoolkit.layers import FusedGeometric

SIZE, SOURCE, BATCH, BATCHES, REPEATS = 224, 256, 32, 40, 3


def _throughput(augment, source_size: int) -> float:
    """Images per second through ``augment`` mapped over batches in tf.data."""
    images = np.random.default_rng(0).integers(0, 255, (BATCH * 4, source_size, source_size, 3),
                                               dtype=np.uint8)
    ds = (tf.data.Dataset.from_tensor_slices(images).repeat().batch(BATCH)
          .map(lambda x: augment(tf.cast(x, tf.float32), training=True),
               num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(tf.data.AUTOTUNE))
    iterator = iter(ds)
    for _ in range(5):  # warm-up: tracing and the first batches
        next(iterator)
    start = time.perf_counter()
    for _ in range(BATCHES):
        batch = next(iterator)
    assert batch.shape == (BATCH, SIZE, SIZE, 3)
    return BATCHES * BATCH / (time.perf_counter() - start)


def run() -> dict[str, float]:
    chain = keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=1),
        keras.layers.RandomCrop(SIZE, SIZE, seed=2),
        keras.layers.RandomRotation(0.05, seed=3),
        keras.layers.RandomZoom(0.1, seed=4),
        keras.layers.RandomTranslation(0.1, 0.1, seed=5),
    ])
    fused = FusedGeometric(flip="horizontal", crop_to=SIZE, rotation=0.05, zoom=0.1,
                           translation=0.1, seed=1)
    chain_runs, fused_runs = [], []
    for _ in range(REPEATS):  # alternating; the best of each (load only ever slows)
        chain_runs.append(_throughput(chain, SOURCE))
        fused_runs.append(_throughput(fused, SOURCE))
    chain_ips, fused_ips = max(chain_runs), max(fused_runs)
    return {"keras_chain_img_s": chain_ips, "fused_img_s": fused_ips,
            "ratio": fused_ips / chain_ips}


def main() -> None:
    r = run()
    print(f"keras layer chain : {r['keras_chain_img_s']:8.1f} img/s")
    print(f"fused transform   : {r['fused_img_s']:8.1f} img/s")
    print(f"augment_throughput ratio (fused / keras chain): {r['ratio']:.2f}x")


if __name__ == "__main__":
    main()
