"""``tf.data`` pipelines: decode, RGB, resize, cache, shuffle, batch, prefetch.

Images are decoded and resized in parallel, kept (cached) as uint8 pixels at the model's
input size, and leave the pipeline as float32 RGB pixels in 0-255: the backbone's own
preprocessing lives inside the model, never here.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from tftoolkit.data.decode import DEFAULT_MAX_PIXELS, decode_image_bytes
from tftoolkit.data.sources import Examples
from tftoolkit.labels import LabelEncoding

AUTOTUNE = tf.data.AUTOTUNE


def to_rgb_image(image: tf.Tensor, size: int, method: str = "bilinear") -> tf.Tensor:
    """Any 2-D/3-D image tensor (gray, RGB, RGBA) -> float32 RGB ``size`` x ``size``."""
    if image.shape.rank == 2:
        image = image[..., tf.newaxis]
    channels = image.shape[-1]
    if channels == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif channels == 4:
        image = image[..., :3]
    image = tf.cast(image, tf.float32)
    return tf.image.resize(image, (size, size), method=method)


def to_pixels(image: tf.Tensor) -> tf.Tensor:
    """Float pixels -> uint8, rounded and clipped to 0-255 (what the caches keep)."""
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _examples_dataset(examples: Examples, image_size: int | None, method: str,
                      max_pixels: int) -> tf.data.Dataset:
    """Unbatched ``(input, label)`` pairs: images as uint8 at the model's input size,
    feature vectors as float32."""
    labels = examples.labels
    if examples.paths is not None:
        ds = tf.data.Dataset.from_tensor_slices((examples.paths, labels))
        ds = ds.map(lambda p, y: (decode_image_bytes(tf.io.read_file(p), max_pixels), y),
                    num_parallel_calls=AUTOTUNE)
    elif examples.dataset is not None:  # TFDS: its length is known from the labels read
        ds = examples.dataset.apply(tf.data.experimental.assert_cardinality(len(examples)))
        if ds.element_spec[0].dtype == tf.string:  # decoded only once selected
            ds = ds.map(lambda data, y: (decode_image_bytes(data, max_pixels), y),
                        num_parallel_calls=AUTOTUNE)
    else:
        ds = tf.data.Dataset.from_tensor_slices((examples.arrays, labels))
    if image_size:
        ds = ds.map(lambda x, y: (to_pixels(to_rgb_image(x, image_size, method)), y),
                    num_parallel_calls=AUTOTUNE)
    else:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE)
    return ds


def epoch_seed(seed: int, epoch) -> tf.Tensor:
    """The shuffle seed of one epoch: a pure function of (seed, epoch), so a resumed run
    sees exactly the batches an uninterrupted one would."""
    return tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)


def make_dataset(examples: Examples, *, batch_size: int, image_size: int | None,
                 encoding: LabelEncoding, num_classes: int, training: bool, seed: int,
                 resize_method: str = "bilinear", cache: str = "memory",
                 cache_path: str | None = None, shuffle_buffer: int = 0,
                 class_weights: np.ndarray | None = None, augment: Callable | None = None,
                 first_epoch: int = 0, autotune: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.data.Dataset:
    """A batched dataset of ``(x, y)`` or ``(x, y, sample_weight)``.

    ``cache`` is ``memory``, ``disk`` (tf.data's file cache at ``cache_path``) or ``off``.
    Training datasets are an endless stream of epochs, from ``first_epoch`` on, each
    shuffled with :func:`epoch_seed` through a buffer of ``shuffle_buffer`` examples (0:
    all), so memory holds the cache and a bounded buffer, never a second copy of the
    split; give training examples in a seeded random order, so that a bounded buffer
    mixes classes (train with ``steps_per_epoch``). ``augment`` (a
    ``(x, y) -> (x, y)`` batch map) runs only when ``training`` is true, sequentially so
    that its random draws are reproducible. ``autotune=False`` turns off tf.data's
    autotuning thread: deleting an iterator waits for that thread's current sleep, which
    stalled 1 to 3 of every 8 Keras ``fit`` calls by 2-4 s on a 2-core machine. An
    encoded image declaring more than ``max_pixels`` pixels stops the pipeline with an
    error before it is decoded.
    """
    ds = _examples_dataset(examples, image_size, resize_method, max_pixels)
    if cache == "memory":
        ds = ds.cache()
    elif cache == "disk":
        ds = ds.cache(str(cache_path))
    n = max(len(examples), 1)
    batch = batch_size or n
    buffer = min(shuffle_buffer or n, n)
    if training:
        examples_ds = ds
        ds = tf.data.Dataset.range(first_epoch, 2 ** 62).flat_map(
            lambda epoch: examples_ds.shuffle(buffer, seed=epoch_seed(seed, epoch))
            .batch(batch))
    else:
        ds = ds.batch(batch)
    weights = None if class_weights is None else tf.constant(class_weights, tf.float32)
    augmenting = training and augment is not None

    def finish(x, y):
        x = tf.cast(x, tf.float32)
        sample_weight = None if weights is None else tf.gather(weights, tf.cast(y, tf.int32))
        y = encoding.encode(y, num_classes)
        if augmenting:
            x, y = augment(x, y)
        return (x, y) if sample_weight is None else (x, y, sample_weight)

    ds = ds.map(finish, num_parallel_calls=None if augmenting else AUTOTUNE).prefetch(AUTOTUNE)
    options = tf.data.Options()
    options.autotune.enabled = autotune
    return ds.with_options(options)
