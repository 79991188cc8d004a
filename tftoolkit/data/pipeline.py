"""``tf.data`` pipelines: decode, RGB, resize, cache, shuffle, batch, prefetch.

Images are decoded and resized in parallel, kept (cached) as uint8 pixels at the model's
input size, and leave the pipeline as float32 RGB pixels in 0-255: the backbone's own
preprocessing lives inside the model, never here. :class:`Resize` is the one definition
of how an image reaches the model's size; the serving signatures, LiteRT predict and
explain use it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import tensorflow as tf

from tftoolkit.data.decode import DEFAULT_MAX_PIXELS, decode_image_bytes
from tftoolkit.data.sources import Examples
from tftoolkit.labels import LabelEncoding

AUTOTUNE = tf.data.AUTOTUNE


# Methods whose downscaling is filtered by tf.image.resize(antialias=True); "area"
# always averages, "nearest" never filters.
ANTIALIASED = ("bilinear", "bicubic")


@dataclass(frozen=True)
class Resize:
    """How an image (or a batch of one size) reaches the model's square input: the
    recipe's ``data.resize_method``, antialiased when the image is larger than the
    input on either side (so a prediction does not depend on the source resolution),
    plain interpolation when it is not (antialiasing changes an upscale, bicubic's by
    up to 0.17 of a pixel level), then rounded and clipped to 0-255 pixels as the
    training cache keeps them. Training and every served path call this one object.
    """

    size: int
    method: str

    @property
    def key(self) -> str:
        """What shapes a resized example, for cache keys (the size is keyed apart)."""
        return f"{self.method}, antialiased downscale"

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        """Float RGB images ``[..., H, W, 3]`` -> float32 pixels ``[..., size, size, 3]``."""
        target = (self.size, self.size)

        def plain():
            return tf.image.resize(images, target, method=self.method)

        if self.method in ANTIALIASED:
            shape = tf.shape(images)
            larger = tf.logical_or(shape[-3] > self.size, shape[-2] > self.size)
            resized = tf.cond(larger, lambda: tf.image.resize(
                images, target, method=self.method, antialias=True), plain)
        else:
            resized = plain()
        return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    """Any 2-D/3-D image tensor (gray, RGB, RGBA) -> float32 RGB at its own size."""
    if image.shape.rank == 2:
        image = image[..., tf.newaxis]
    channels = image.shape[-1]
    if channels == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif channels == 4:
        image = image[..., :3]
    return tf.cast(image, tf.float32)


def to_rgb_image(image: tf.Tensor, resize: Resize) -> tf.Tensor:
    """Any 2-D/3-D image tensor -> float32 RGB pixels at the model's size."""
    return resize(to_rgb(image))


def _examples_dataset(examples: Examples, resize: Resize | None,
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
    if resize:  # uint8 in the cache: a quarter of float32, and exact (already rounded)
        ds = ds.map(lambda x, y: (tf.cast(to_rgb_image(x, resize), tf.uint8), y),
                    num_parallel_calls=AUTOTUNE)
    else:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE)
    return ds


def epoch_seed(seed: int, epoch) -> tf.Tensor:
    """The shuffle seed of one epoch: a pure function of (seed, epoch), so a resumed run
    sees exactly the batches an uninterrupted one would."""
    return tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)


def epoch_order(n: int, seed: int, epoch) -> tf.Tensor:
    """A permutation of ``range(n)``: the order of one epoch, a pure function of
    (seed, epoch)."""
    return tf.random.experimental.stateless_shuffle(
        tf.range(n, dtype=tf.int64), seed=tf.stack([tf.cast(seed, tf.int64),
                                                    tf.cast(epoch, tf.int64)]))


def _permuted_epochs(ds: tf.data.Dataset, n: int, batch: int, seed: int,
                     first_epoch: int) -> tf.data.Dataset:
    """Batches of an endless stream of epochs, each the examples of ``ds`` in its own
    :func:`epoch_order`: the examples are decoded once into one tensor per component
    (the memory cache, in one piece so that it can be read in any order) and every
    batch gathers its rows."""
    cached = next(iter(ds.batch(n)))

    def epoch(e):
        return tf.data.Dataset.from_tensor_slices(epoch_order(n, seed, e)).batch(batch).map(
            lambda rows: tf.nest.map_structure(lambda c: tf.gather(c, rows), cached))

    return tf.data.Dataset.range(first_epoch, 2 ** 62).flat_map(epoch)


def make_dataset(examples: Examples, *, batch_size: int, resize: Resize | None,
                 encoding: LabelEncoding, num_classes: int, training: bool, seed: int,
                 cache: str = "memory",
                 cache_path: str | None = None, shuffle_buffer: int = 0,
                 class_weights: np.ndarray | None = None, augment: Callable | None = None,
                 first_epoch: int = 0, autotune: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.data.Dataset:
    """A batched dataset of ``(x, y)`` or ``(x, y, sample_weight)``; images are brought
    to the model's size by ``resize`` (None: feature vectors).

    ``cache`` is ``memory``, ``disk`` (tf.data's file cache at ``cache_path``) or ``off``.
    Training datasets are an endless stream of epochs, from ``first_epoch`` on (train
    with ``steps_per_epoch``). In memory, each epoch is a permutation of its own
    (:func:`epoch_order`); from disk or undecoded files, which are read in one order,
    each epoch is shuffled with :func:`epoch_seed` through a buffer of
    ``shuffle_buffer`` examples (0: all), so memory holds a bounded buffer, never a copy
    of the split; give those examples in a seeded random order, so that a bounded buffer
    mixes classes. ``augment`` (a
    ``(x, y) -> (x, y)`` batch map) runs only when ``training`` is true, sequentially so
    that its random draws are reproducible. ``autotune=False`` turns off tf.data's
    autotuning thread: deleting an iterator waits for that thread's current sleep, which
    stalled 1 to 3 of every 8 Keras ``fit`` calls by 2-4 s on a 2-core machine. An
    encoded image declaring more than ``max_pixels`` pixels stops the pipeline with an
    error before it is decoded.
    """
    ds = _examples_dataset(examples, resize, max_pixels)
    n = max(len(examples), 1)
    batch = batch_size or n
    buffer = min(shuffle_buffer or n, n)
    # Decoded once into memory (eagerly: not while a dataset function is traced).
    permuted = training and cache == "memory" and tf.executing_eagerly()
    if cache == "memory" and not permuted:
        ds = ds.cache()
    elif cache == "disk":
        ds = ds.cache(str(cache_path))
    if permuted:
        ds = _permuted_epochs(ds, n, batch, seed, first_epoch)
    elif training:
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
    if permuted:  # the rewrites serialize the dataset graph: a copy of the cached tensors
        options.experimental_optimization.apply_default_optimizations = False
    return ds.with_options(options)
