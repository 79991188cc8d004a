"""``tf.data`` pipelines: decode, RGB, resize, cache, shuffle, batch, prefetch.

Images are decoded and resized in parallel, kept (cached) as uint8 pixels at the model's
input size, and leave the pipeline as float32 RGB pixels in 0-255: the backbone's own
preprocessing lives inside the model, never here. :class:`Resize` is the one definition
of how an image reaches the model's size; the serving signatures, LiteRT predict and
explain use it too.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import tensorflow as tf

from tftoolkit.data.cache import DiskCache
from tftoolkit.data.decode import DEFAULT_MAX_PIXELS, decode_image_bytes, size_check
from tftoolkit.data.parallelism import PARALLEL_CALLS, PREFETCH_BATCHES
from tftoolkit.data.sources import Examples
from tftoolkit.tasks import Task

if TYPE_CHECKING:
    from tftoolkit.augment.stateless import PipelineAugment


# Methods whose downscaling is filtered by tf.image.resize(antialias=True), and the
# sampling kernel it filters with; "area" always averages, "nearest" never filters.
ANTIALIASED = {"bilinear": "triangle", "bicubic": "keyscubic"}


@dataclass(frozen=True)
class Resize:
    """How an image (or a batch of one size) reaches the model's square input: the
    recipe's ``data.resize_method``, antialiased when the image is larger than the
    input on either side (so a prediction does not depend on the source resolution),
    plain interpolation when it is not (antialiasing changes an upscale, bicubic's by
    up to 0.17 of a pixel level), then rounded and clipped to 0-255 pixels as the
    training cache keeps them. Training and every served path call this one object.

    The antialiased resize gives the pixels of ``tf.image.resize(..., antialias=True)``
    bit for bit, computed as two passes that each resample rows (:func:`_resample_rows`):
    TF's own op resamples columns one pixel at a time, at up to twice the CPU time.
    """

    size: int
    method: str

    @property
    def key(self) -> str:
        """What shapes a resized example, for cache keys (the size is keyed apart)."""
        return f"{self.method}, antialiased downscale"

    def describe(self) -> str:
        """How images reach the model's input, in words, for clients that must do it
        themselves (files of a fixed input size)."""
        antialiased = ", antialiased when downscaling" if self.method in ANTIALIASED else ""
        return (f"images brought to {self.size}x{self.size} by {self.method} "
                f"resizing{antialiased}, rounded to whole pixel levels 0-255")

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        """RGB images ``[H, W, 3]`` or ``[batch, H, W, 3]`` (uint8 or float) -> float32
        pixels at ``[size, size]``."""
        images, target = tf.convert_to_tensor(images), (self.size, self.size)

        def plain():
            return tf.cast(tf.image.resize(images, target, method=self.method), tf.float32)

        if self.method in ANTIALIASED:
            shape = tf.shape(images)
            larger = tf.logical_or(shape[-3] > self.size, shape[-2] > self.size)
            resized = tf.cond(larger, lambda: _antialiased(images, self.size,
                                                           ANTIALIASED[self.method]), plain)
        else:
            resized = plain()
        return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


def _resample_rows(rows: tf.Tensor, size: int, kernel: str) -> tf.Tensor:
    """``[batch, n, m]`` -> ``[batch, size, m]``: each of the ``m`` columns resampled from
    ``n`` to ``size`` points by ``tf.image.resize``'s antialiased ``kernel``, whose row
    pass adds whole scaled rows (vectorised); its column pass, over one column of ``m``
    channels, copies them."""
    shape = tf.shape(rows)
    scale = tf.cast(tf.stack([size, 1]), tf.float32) / tf.cast(tf.stack([shape[1], 1]),
                                                                tf.float32)
    resampled = tf.raw_ops.ScaleAndTranslate(
        images=rows[:, :, tf.newaxis], size=tf.constant([size, 1]), scale=scale,
        translation=tf.zeros([2]), kernel_type=kernel, antialias=True)
    return resampled[:, :, 0]


def _antialiased(images: tf.Tensor, size: int, kernel: str) -> tf.Tensor:
    """``tf.image.resize(images, (size, size), antialias=True)`` with ``kernel``, bit for
    bit: its rows pass, then its columns pass as a rows pass of the transpose (the same
    weights, added in the same order)."""
    batch = images if images.shape.rank == 4 else images[tf.newaxis]
    shape = tf.shape(batch)
    n, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    tall = _resample_rows(tf.reshape(batch, [n, height, width * channels]), size, kernel)
    # [n, size (y), width * channels] -> [n, width, channels * size]: x is the row now
    across = tf.reshape(tf.transpose(tall, [0, 2, 1]), [n, width, channels * size])
    wide = _resample_rows(across, size, kernel)  # [n, size (x), channels * size (y)]
    out = tf.reshape(tf.transpose(tf.reshape(wide, [n, size * channels, size]), [0, 2, 1]),
                     [n, size, size, channels])
    return out if images.shape.rank == 4 else out[0]


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    """Any 2-D/3-D image tensor (gray, RGB, RGBA) -> RGB at its own size and dtype."""
    if image.shape.rank == 2:
        image = image[..., tf.newaxis]
    channels = image.shape[-1]
    if channels == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif channels == 4:
        image = image[..., :3]
    return image


def to_rgb_image(image: tf.Tensor, resize: Resize) -> tf.Tensor:
    """Any 2-D/3-D image tensor -> float32 RGB pixels at the model's size."""
    return resize(to_rgb(image))


def _reference_tensors(examples: Examples, positions: np.ndarray | None = None
                       ) -> tuple[tf.Tensor, tuple[tf.Tensor, tf.Tensor]] | None:
    """``(indices, (references, labels))`` of files or in-memory arrays as tensors, the
    one copy their dataset and their rows share (None for TFDS). The index is the
    example's position in ``positions`` order (default: 0, 1, ...)."""
    if examples.dataset is not None:
        return None
    indices = (np.arange(len(examples), dtype=np.int64) if positions is None
               else np.asarray(positions, np.int64))
    refs = examples.paths if examples.paths is not None else examples.arrays
    return tf.constant(indices), (tf.constant(refs), tf.constant(examples.labels))


def _references(examples: Examples, tensors, positions: np.ndarray | None = None
                ) -> tuple[tf.data.Dataset, str]:
    """``(index, (reference, label))`` per example, cheap to shuffle, and the kind of
    reference: ``file`` (a path), ``bytes`` (encoded TFDS images), ``tensor`` (decoded
    TFDS images) or ``array`` (in-memory images or features). ``tensors``: what
    :func:`_reference_tensors` returned; ``positions``: as there."""
    if tensors is not None:
        return (tf.data.Dataset.from_tensor_slices(tensors),
                "file" if examples.paths is not None else "array")
    # TFDS: its length is known from the labels read
    pairs = examples.dataset.apply(tf.data.experimental.assert_cardinality(len(examples)))
    kind = "bytes" if pairs.element_spec[0].dtype == tf.string else "tensor"
    index = (tf.data.Dataset.range(len(examples)) if positions is None
             else tf.data.Dataset.from_tensor_slices(np.asarray(positions, np.int64)))
    return tf.data.Dataset.zip(index, pairs), kind


def decode_window(data: tf.Tensor, window_fn: Callable,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """Encoded image bytes -> the uint8 RGB window ``window_fn(shape)`` of the image. A
    JPEG's shape is read from its header and only the window is decoded; other formats
    are decoded whole, then cropped. Either is refused first if the image declares more
    than ``max_pixels`` pixels."""
    def jpeg():
        shape = tf.io.extract_jpeg_shape(data)  # read once, for the check and the window
        declared = (tf.cast(shape[1], tf.int64), tf.cast(shape[0], tf.int64))
        with tf.control_dependencies([size_check(data, max_pixels, declared)]):
            window = window_fn(shape)
        return tf.image.decode_and_crop_jpeg(data, window, channels=3)

    def other():
        image = decode_image_bytes(data, max_pixels)
        return crop_window(image, window_fn(tf.shape(image)))

    image = tf.cond(tf.io.is_jpeg(data), jpeg, other)
    image.set_shape([None, None, 3])
    return image


def crop_window(image: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
    """The ``[y, x, height, width]`` window of a decoded image (any channels)."""
    return image[window[0]:window[0] + window[2], window[1]:window[1] + window[3]]


def _decoder(kind: str, resize: Resize | None, max_pixels: int) -> Callable:
    """``(reference, window_fn=None) -> input``: images as uint8 at the model's input
    size (``resize``), feature vectors as float32. ``window_fn`` (``shape -> [y, x, h,
    w]``) crops each image before it is resized, decoding only that window of a JPEG
    file. Encoded images declaring more than ``max_pixels`` pixels are refused."""
    def decode(ref, window_fn=None):
        return _decode_with_shape(kind, resize, max_pixels, ref, window_fn)[0]

    return decode


def _cache_decoder(kind: str, resize: Resize | None, max_pixels: int) -> Callable:
    """``reference -> (input, source shape)``: what a cache keeps of an example, its
    input at the model's size and its source image's ``[height, width]`` (zeros for
    feature vectors), from which its crops are drawn."""
    return lambda ref: _decode_with_shape(kind, resize, max_pixels, ref)


def _decode_with_shape(kind, resize, max_pixels, ref, window_fn=None):
    """What :func:`_decoder` and :func:`_cache_decoder` return, the input and the
    source shape."""
    if kind == "file":
        ref = tf.io.read_file(ref)
    if kind in ("file", "bytes"):
        image = (decode_image_bytes(ref, max_pixels) if window_fn is None
                 else decode_window(ref, window_fn, max_pixels))
    else:
        image = ref if window_fn is None else crop_window(ref, window_fn(tf.shape(ref)))
    if resize is None:
        return tf.cast(image, tf.float32), tf.zeros([2], tf.int32)
    # uint8 in the cache: a quarter of float32, and exact (Resize rounds)
    return tf.cast(to_rgb_image(image, resize), tf.uint8), tf.shape(image)[:2]


def in_resized(window: tf.Tensor, source_shape: tf.Tensor, shape: tf.Tensor) -> tf.Tensor:
    """A ``[y, x, height, width]`` window of a source image of ``source_shape`` -> the
    same window of that image resized to ``shape``, to the nearest pixel (at least one)."""
    scale = tf.cast(shape[:2], tf.float32) / tf.cast(source_shape[:2], tf.float32)
    start = tf.cast(tf.round(tf.cast(window[:2], tf.float32) * scale), tf.int32)
    end = tf.cast(tf.round(tf.cast(window[:2] + window[2:], tf.float32) * scale), tf.int32)
    start = tf.minimum(start, shape[:2] - 1)
    return tf.concat([start, tf.maximum(tf.minimum(end, shape[:2]) - start, 1)], 0)


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


def example_key(seed: int, epoch, index) -> tf.Tensor:
    """The stateless random key of one example in one epoch: a pure function of
    (seed, epoch, index), so its augmentation is the same however the pipeline runs
    and whichever epoch a run resumes at."""
    return tf.stack([epoch_seed(seed, epoch), tf.cast(index, tf.int64)])


def _parallel_map(ds: tf.data.Dataset, fn: Callable) -> tf.data.Dataset:
    """``ds.map(fn)`` on :data:`PARALLEL_CALLS` examples at a time, in order."""
    return ds.map(fn, num_parallel_calls=PARALLEL_CALLS, deterministic=True)


@dataclass(frozen=True)
class _Rows:
    """A split held so that any of its examples can be read, in any order: ``read(rows)
    -> (stored inputs, labels)`` of one row or of a vector of rows (read in one call);
    ``in_memory``: the data are tensors of the dataset graph."""

    read: Callable[[tf.Tensor], tuple]
    in_memory: bool


def _in_memory(pairs) -> _Rows:
    """Rows gathered from one tensor per component of ``pairs`` (``(inputs, labels)``)."""
    return _Rows(lambda rows: tf.nest.map_structure(
        lambda component: tf.gather(component, rows), pairs), True)


def _from_arrays(arrays: np.ndarray, labels: np.ndarray) -> _Rows:
    """Rows of feature vectors read from their NumPy arrays, a batch of rows per call (a
    tensor made of them would be a copy, twice their size while it is made); labels in
    memory. The reading function holds the arrays weakly (TensorFlow keeps a dataset's
    Python functions for the life of the process): the dataset made of these rows holds
    them (:func:`make_dataset`)."""
    labels = tf.constant(labels)
    held = weakref.ref(arrays)

    def read_rows(rows):
        x = tf.numpy_function(lambda r: held()[r], [rows], tf.as_dtype(arrays.dtype),
                              stateful=False)
        x.set_shape(rows.shape.concatenate(arrays.shape[1:]))
        return x, tf.gather(labels, rows)

    return _Rows(read_rows, False)


def _on_disk(stored: tf.data.Dataset, folder, labels: np.ndarray) -> _Rows:
    """The inputs and source shapes of ``stored`` in a :class:`DiskCache` (written in
    one pass first, unless complete), read a batch of records per call; labels in
    memory."""
    cache = DiskCache(folder)
    if not cache.complete(len(labels)):
        cache.write((np.asarray(x), np.asarray(shape))
                    for _, ((x, shape), _) in stored.batch(256))
    spec, read = cache.spec, cache.reader()
    dtype, shape = tf.as_dtype(spec["dtype"]), spec["shape"]
    shapes, labels = tf.constant(cache.shapes()), tf.constant(labels)

    def read_rows(rows):
        x = tf.numpy_function(read, [rows], dtype, stateful=False)
        x.set_shape(rows.shape.concatenate(shape))
        return (x, tf.gather(shapes, rows)), tf.gather(labels, rows)

    return _Rows(read_rows, False)


def make_dataset(examples: Examples, *, batch_size: int, resize: Resize | None,
                 task: Task, training: bool, seed: int,
                 cache: str = "memory",
                 cache_path: str | None = None, shuffle_buffer: int = 0,
                 class_weights: np.ndarray | None = None,
                 augment: PipelineAugment | None = None,
                 first_epoch: int = 0, autotune: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 positions: np.ndarray | None = None,
                 order: np.ndarray | None = None) -> tf.data.Dataset:
    """A batched dataset of ``(x, y)`` or ``(x, y, sample_weight)``, ``y`` encoded for
    ``task``'s loss; images are brought to the model's size by ``resize`` (None: feature
    vectors), and an encoded image declaring more than ``max_pixels`` pixels stops the
    pipeline with an error before it is decoded.

    ``cache`` is ``memory``, ``disk`` (a :class:`DiskCache` in the folder
    ``cache_path``) or ``off``. Training datasets are an endless stream of epochs, from
    ``first_epoch`` on (train with ``steps_per_epoch``), each the examples in its own
    :func:`epoch_order`, whatever the cache: the memory cache is one tensor gathered
    by row, the disk cache one record per example, and uncached files or arrays are
    gathered by row, then decoded; each batch of rows is read in one call. Only uncached
    TFDS records, which are read in one order, are shuffled instead, with
    :func:`epoch_seed`, through a buffer of ``shuffle_buffer`` examples (0: all).

    ``order`` (training): the rows of ``examples`` as the epochs number them, row ``r``
    being ``examples[order[r]]`` (default: as read). Caches hold ``examples`` as read,
    whatever ``order``: a disk cache of the same examples serves every order.

    ``augment`` runs only when ``training`` is true: its per-example part in parallel,
    keyed by :func:`example_key` (a spatial one, :class:`~tftoolkit.augment.BoxAugment`,
    on the image at the model's size together with its targets); its per-batch part
    (Keras layers) sequentially, so that their random draws are reproducible. A crop's
    window is drawn from the source image's shape, so an example's crop is the same
    region of its image in every cache mode: uncached, only that window is decoded (of a
    JPEG); cached, it is cut from the cached image, whose cache keeps the source shape
    (:func:`in_resized`), and resized again. An example's key names its row's entry of
    ``positions`` (its position in the whole split when ``examples`` is a shard of it:
    shards then never repeat one another's draws; default: the row).

    Maps run :data:`PARALLEL_CALLS` examples at a time, in order, and batches are
    prefetched :data:`PREFETCH_BATCHES` ahead, with or without ``autotune``.
    ``autotune=False`` turns off tf.data's autotuning thread: deleting an iterator waits
    for that thread's current sleep, which stalled 1 to 3 of every 8 Keras ``fit`` calls
    by 2-4 s on a 2-core machine.
    """
    n = max(len(examples), 1)
    batch = batch_size or n
    cached = cache != "off"
    # uncached feature vectors in memory, read from their arrays
    vectors = not cached and examples.arrays is not None and resize is None
    # Rows are read from a disk cache or such arrays, and in training (eagerly: not while
    # a dataset function is traced) from the memory cache or the files' or arrays'
    # references; other examples are read in the order they are stored in: stored in
    # ``order``.
    rows_read = vectors or cache == "disk" or (training and tf.executing_eagerly()
                                               and (cached or examples.dataset is None))
    if order is not None and not rows_read:
        examples, order = examples.subset(order), None
    if vectors:
        tensors, stored, kind = None, None, "array"
    else:
        tensors = _reference_tensors(examples, positions)
        refs, kind = _references(examples, tensors, positions)
        stored = refs if not cached else _parallel_map(
            refs, lambda i, pair: (i, (_cache_decoder(kind, resize, max_pixels)(pair[0]),
                                       pair[1])))
    decode = _decoder(kind, resize, max_pixels)
    # Cached examples are decoded images; redecoding them is a crop and resize.
    redecode = _decoder("tensor", resize, max_pixels)
    per_example = augment.per_example if training and augment is not None else None
    per_batch = augment.per_batch if training and augment is not None else None
    # work done example by example: decoding, augmenting (feature vectors are only cast,
    # a batch at a time)
    by_example = per_example is not None or not (cached or vectors)

    def prepare(epoch):
        """``(index, (stored input, label)) -> (x, y)``: of one example, or of a batch
        when nothing is done example by example (a cached input as it is)."""
        def example(index, pair):
            x, y = pair
            if cached:
                x, source_shape = x
            if per_example is None:
                return (x if cached else decode(x)), y
            key = example_key(seed, epoch, index)
            if per_example.spatial:  # targets that are places move with the pixels: the
                # image at the model's size and its targets, augmented together
                return per_example.augment_example(x if cached else decode(x), y, key,
                                                   resize)
            window_fn = per_example.window_fn(key)
            if not cached:
                return per_example.recolor(decode(x, window_fn), key), y
            if window_fn is not None:  # the window of the source, in the cached image
                source_window = window_fn
                window_fn = lambda shape: in_resized(source_window(source_shape),  # noqa: E731
                                                     source_shape, shape)
            return per_example.recolor(redecode(x, window_fn), key), y

        return example

    def in_batches(ds: tf.data.Dataset, epoch) -> tf.data.Dataset:
        """``ds`` of examples (``(index, (stored input, label))``) -> batches of ``(x,
        y)``, prepared example by example (in parallel) only when they need to be."""
        if by_example:
            return _parallel_map(ds, prepare(epoch)).batch(batch)
        return _parallel_map(ds.batch(batch), prepare(epoch))

    # Read once (eagerly) into rows read in any order; uncached TFDS records have none.
    rows = None
    if cache == "disk":
        rows = _on_disk(stored, cache_path, examples.labels)
    elif vectors:
        rows = _from_arrays(examples.arrays, examples.labels)
    elif rows_read and cache == "memory":
        rows = _in_memory(next(iter(stored.batch(n)))[1])  # decoded once
    elif rows_read:
        rows = _in_memory(tensors[1])  # uncached: the references' own tensors
    if rows is not None:
        keys = None if positions is None else tf.constant(np.asarray(positions, np.int64))
        stored_rows = None if order is None else tf.constant(np.asarray(order, np.int64))

        def read(rows_in_order):
            """A batch of rows, numbered as the epochs number them -> its examples."""
            index = rows_in_order if keys is None else tf.gather(keys, rows_in_order)
            return index, rows.read(rows_in_order if stored_rows is None
                                    else tf.gather(stored_rows, rows_in_order))

        def epoch_of(rows_in_order: tf.data.Dataset, epoch) -> tf.data.Dataset:
            """The batches of ``rows_in_order``, each batch of rows read in one call."""
            read_batches = _parallel_map(rows_in_order.batch(batch), read)
            if by_example:  # (unbatch() would add a serial map)
                return in_batches(read_batches.flat_map(
                    lambda *batch_read: tf.data.Dataset.from_tensor_slices(batch_read)),
                    epoch)
            return _parallel_map(read_batches, prepare(epoch))

    if rows is not None and training:
        ds = tf.data.Dataset.range(first_epoch, 2 ** 62).flat_map(
            lambda epoch: epoch_of(tf.data.Dataset.from_tensor_slices(
                epoch_order(n, seed, epoch)), epoch))
    elif rows is not None:  # a disk cache or arrays, in read order
        ds = epoch_of(tf.data.Dataset.range(n), 0)
    elif training:
        if cache == "memory":
            stored = stored.cache()
        buffer = min(shuffle_buffer or n, n)
        ds = tf.data.Dataset.range(first_epoch, 2 ** 62).flat_map(
            lambda epoch: in_batches(stored.shuffle(buffer, seed=epoch_seed(seed, epoch)),
                                     epoch))
    else:
        ds = in_batches(stored.cache() if cache == "memory" else stored, 0)
    weights = None if class_weights is None else tf.constant(class_weights, tf.float32)

    def finish(x, y):
        x = tf.cast(x, tf.float32)
        sample_weight = None if weights is None else tf.gather(weights, tf.cast(y, tf.int32))
        y = task.encode(y)
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
    if rows is not None and rows.in_memory:  # the rewrites serialize the dataset graph:
        # a copy of the tensors it holds
        options.experimental_optimization.apply_default_optimizations = False
    ds = ds.prefetch(PREFETCH_BATCHES).with_options(options)
    if vectors:  # what the rows are read from lives as long as the dataset (and those
        # made from it, which hold it)
        ds.source_arrays = examples.arrays
    return ds
