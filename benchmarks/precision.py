"""Training throughput of MobileNetV2 at 160 px: float32 vs mixed_bfloat16.

Full training (all layers), batch 32, random data; both measured in this run after a
warm-up, each as the faster of two timed epochs. The last line is the speed ratio.

    python -m benchmarks.precision
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from tftoolkit.training.runtime import precision_policy

SIZE, BATCH, STEPS = 160, 32, 6


def _images_per_second(precision: str) -> float:
    with precision_policy(precision):
        return _measure()


def _measure() -> float:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.applications.MobileNetV2(weights=None, include_top=False,
                                       input_shape=(SIZE, SIZE, 3))(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax",
                                                   dtype="float32")(x))
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (BATCH * STEPS, SIZE, SIZE, 3)).astype("float32")
    y = rng.integers(0, 10, BATCH * STEPS)
    options = tf.data.Options()
    options.autotune.enabled = False  # as tftoolkit's pipelines: no teardown stall
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).with_options(options)
    model.fit(batches.take(2), epochs=1, verbose=0)  # warm-up: tracing
    seconds = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        model.fit(batches, epochs=1, verbose=0)
        seconds = min(seconds, time.perf_counter() - start)
    return BATCH * STEPS / seconds


def run() -> dict[str, float]:
    f32 = _images_per_second("float32")
    bf16 = _images_per_second("mixed_bfloat16")
    return {"float32_img_s": f32, "mixed_bfloat16_img_s": bf16, "ratio": bf16 / f32}


def main() -> None:
    r = run()
    print(f"float32        : {r['float32_img_s']:6.1f} img/s")
    print(f"mixed_bfloat16 : {r['mixed_bfloat16_img_s']:6.1f} img/s")
    print(f"precision ratio (mixed_bfloat16 / float32): {r['ratio']:.2f}x")


if __name__ == "__main__":
    main()
