"""``tf.data`` pipelines: decode, RGB, resize, cache, shuffle, batch, prefetch.

Images are decoded and resized in parallel, kept (cached) as uint8 pixels at the model's
input size, and leave the pipeline as float32 RGB pixels in 0-255: the backbone's own
preprocessing lives inside the model, never here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import tensorflow as tf

from tftoolkit.data.parallelism import PARALLEL_CALLS, PREFETCH_BATCHES
from tftoolkit.data.sources import Examples
from tftoolkit.labels import LabelEncoding

if TYPE_CHECKING:
    from tftoolkit.augment.stateless import PipelineAugment


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


def decode_image_bytes(data: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF bytes -> uint8 RGB image (first frame of a GIF)."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def to_pixels(image: tf.Tensor) -> tf.Tensor:
    """Float pixels -> uint8, rounded and clipped to 0-255 (what the caches keep)."""
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _references(examples: Examples) -> tuple[tf.data.Dataset, str]:
    """``(index, (reference, label))`` per example, cheap to shuffle, and the kind of
    reference: ``file`` (a path), ``bytes`` (encoded TFDS images), ``tensor`` (decoded
    TFDS images) or ``array`` (in-memory images or features)."""
    index = tf.data.Dataset.range(len(examples))
    if examples.paths is not None:
        pairs, kind = tf.data.Dataset.from_tensor_slices((examples.paths, examples.labels)), "file"
    elif examples.dataset is not None:  # TFDS: its length is known from the labels read
        pairs = examples.dataset.apply(tf.data.experimental.assert_cardinality(len(examples)))
        kind = "bytes" if pairs.element_spec[0].dtype == tf.string else "tensor"
    else:
        pairs = tf.data.Dataset.from_tensor_slices((examples.arrays, examples.labels))
        kind = "array"
    return tf.data.Dataset.zip(index, pairs), kind


def decode_window(data: tf.Tensor, window_fn: Callable) -> tf.Tensor:
    """Encoded image bytes -> the uint8 RGB window ``window_fn(shape)`` of the image. A
    JPEG's shape is read from its header and only the window is decoded; other formats
    are decoded whole, then cropped."""
    def jpeg():
        window = window_fn(tf.io.extract_jpeg_shape(data))
        return tf.image.decode_and_crop_jpeg(data, window, channels=3)

    def other():
        image = decode_image_bytes(data)
        return crop_window(image, window_fn(tf.shape(image)))

    image = tf.cond(tf.io.is_jpeg(data), jpeg, other)
    image.set_shape([None, None, 3])
    return image


def crop_window(image: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
    """The ``[y, x, height, width]`` window of a decoded image (any channels)."""
    return image[window[0]:window[0] + window[2], window[1]:window[1] + window[3]]


def _decoder(kind: str, image_size: int | None, method: str) -> Callable:
    """``(reference, window_fn=None) -> input``: images as uint8 at the model's input
    size, feature vectors as float32. ``window_fn`` (``shape -> [y, x, h, w]``) crops
    each image before it is resized, decoding only that window of a JPEG file."""
    def decode(ref, window_fn=None):
        if kind == "file":
            ref = tf.io.read_file(ref)
        if kind in ("file", "bytes"):
            image = (decode_image_bytes(ref) if window_fn is None
                     else decode_window(ref, window_fn))
        else:
            image = ref if window_fn is None else crop_window(ref, window_fn(tf.shape(ref)))
        if not image_size:
            return tf.cast(image, tf.float32)
        return to_pixels(to_rgb_image(image, image_size, method))

    return decode


def epoch_seed(seed: int, epoch) -> tf.Tensor:
    """The shuffle seed of one epoch: a pure function of (seed, epoch), so a resumed run
    sees exactly the batches an uninterrupted one would."""
    return tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)


def example_key(seed: int, epoch, index) -> tf.Tensor:
    """The stateless random key of one example in one epoch: a pure function of
    (seed, epoch, index), so its augmentation is the same however the pipeline runs
    and whichever epoch a run resumes at."""
    return tf.stack([epoch_seed(seed, epoch), tf.cast(index, tf.int64)])


def _parallel_map(ds: tf.data.Dataset, fn: Callable) -> tf.data.Dataset:
    """``ds.map(fn)`` on :data:`PARALLEL_CALLS` examples at a time, in order."""
    return ds.map(fn, num_parallel_calls=PARALLEL_CALLS, deterministic=True)


def make_dataset(examples: Examples, *, batch_size: int, image_size: int | None,
                 encoding: LabelEncoding, num_classes: int, training: bool, seed: int,
                 resize_method: str = "bilinear", cache: str = "memory",
                 cache_path: str | None = None, shuffle_buffer: int = 0,
                 class_weights: np.ndarray | None = None,
                 augment: PipelineAugment | None = None,
                 first_epoch: int = 0, autotune: bool = False) -> tf.data.Dataset:
    """A batched dataset of ``(x, y)`` or ``(x, y, sample_weight)``.

    ``cache`` is ``memory``, ``disk`` (tf.data's file cache at ``cache_path``) or ``off``.
    Training datasets are an endless stream of epochs, from ``first_epoch`` on, each
    shuffled with :func:`epoch_seed` through a buffer of ``shuffle_buffer`` examples (0:
    all), so memory holds the cache and a bounded buffer, never a second copy of the
    split; give training examples in a seeded random order, so that a bounded buffer
    mixes classes (train with ``steps_per_epoch``). Uncached, the buffer holds file names
    (or encoded records), and examples are decoded after they are drawn.

    ``augment`` runs only when ``training`` is true: its per-example part in parallel,
    keyed by :func:`example_key`, on the cached image or, uncached, on the source image
    (a crop decodes only its window of a JPEG); its per-batch part (Keras layers)
    sequentially, so that their random draws are reproducible.

    Maps run :data:`PARALLEL_CALLS` examples at a time, in order, and batches are
    prefetched :data:`PREFETCH_BATCHES` ahead, with or without ``autotune``.
    ``autotune=False`` turns off tf.data's autotuning thread: deleting an iterator waits
    for that thread's current sleep, which stalled 1 to 3 of every 8 Keras ``fit`` calls
    by 2-4 s on a 2-core machine.
    """
    refs, kind = _references(examples)
    decode = _decoder(kind, image_size, resize_method)
    if cache == "off":
        stored = refs
    else:
        stored = _parallel_map(refs, lambda i, pair: (i, (decode(pair[0]), pair[1])))
        stored = stored.cache() if cache == "memory" else stored.cache(str(cache_path))
    # Cached examples are decoded images; redecoding them is a crop and resize.
    redecode = decode if cache == "off" else _decoder("tensor", image_size, resize_method)
    per_example = augment.per_example if training and augment is not None else None
    per_batch = augment.per_batch if training and augment is not None else None

    def prepare(epoch):
        def example(index, pair):
            x, y = pair
            if per_example is None:
                return (redecode(x) if cache == "off" else x), y
            key = example_key(seed, epoch, index)
            return per_example.recolor(redecode(x, per_example.window_fn(key)), key), y

        return example

    n = max(len(examples), 1)
    batch = batch_size or n
    buffer = min(shuffle_buffer or n, n)
    if training:
        ds = tf.data.Dataset.range(first_epoch, 2 ** 62).flat_map(
            lambda epoch: _parallel_map(
                stored.shuffle(buffer, seed=epoch_seed(seed, epoch)), prepare(epoch))
            .batch(batch))
    else:
        ds = _parallel_map(stored, prepare(0)).batch(batch)
    weights = None if class_weights is None else tf.constant(class_weights, tf.float32)

    def finish(x, y):
        x = tf.cast(x, tf.float32)
        sample_weight = None if weights is None else tf.gather(weights, tf.cast(y, tf.int32))
        y = encoding.encode(y, num_classes)
        if per_batch is not None:
            x, y = per_batch(x, y)
        return (x, y) if sample_weight is None else (x, y, sample_weight)

    if per_batch is None:
        ds = _parallel_map(ds, finish)
    else:
        ds = ds.map(finish)  # sequential: Keras layers draw from their own generators
    options = tf.data.Options()
    options.autotune.enabled = autotune
    options.deterministic = True
    return ds.prefetch(PREFETCH_BATCHES).with_options(options)
