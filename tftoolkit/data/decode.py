"""Decoding encoded image bytes, with the size an image declares checked first.

A small file can declare gigabytes of pixels (a decompression bomb: a 48 KB PNG of
20000 x 20000). :func:`decode_image_bytes` reads the width and height from the header
and refuses an image over ``max_pixels`` before the decoder allocates anything; the
bad-file scan, the input pipeline and the serving signature all decode through it.
:func:`refusal` says in words why given bytes are refused (what TensorFlow reports as
an assertion inside a graph).
"""

from __future__ import annotations

import re
import threading

import tensorflow as tf

from tftoolkit.recipe import DataConfig

DEFAULT_MAX_PIXELS = DataConfig.max_pixels  # 40 MP: 120 MB of RGB
TOO_MANY_PIXELS = "more than data.max_pixels"  # in the error of an image over the limit
UNREADABLE_SIZE = "its size cannot be read from its header"  # in the error of such an image


def _gif_frame_size(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(width, height) of a GIF's first image descriptor, found by walking its blocks
    past the global colour table and any extension blocks; (-1, -1) when the file ends
    or breaks off first. The decoder decodes that frame, whatever the canvas says."""
    length = tf.cast(tf.strings.length(data), tf.int64)
    padded = tf.strings.join([data, tf.constant(b"\0" * 8)])

    def read(pos: tf.Tensor, count: int) -> tf.Tensor:
        """``count`` bytes at ``pos`` as int64, or -1s past the end of the file."""
        raw = tf.io.decode_raw(tf.strings.substr(padded, tf.minimum(pos, length), count),
                               tf.uint8)
        return tf.where(pos + count <= length, tf.cast(raw, tf.int64), -1)

    flags = read(tf.constant(10, tf.int64), 1)[0]
    table = tf.where(flags >= 128, 3 * tf.bitwise.left_shift(
        tf.constant(2, tf.int64), flags % 8), 0)

    def step(pos, in_extension, done, width, height):
        byte = read(pos, 1)[0]
        descriptor = tf.logical_and(tf.logical_not(in_extension), tf.equal(byte, 0x2C))
        frame = read(pos + 5, 4)
        descriptor = tf.logical_and(descriptor, tf.reduce_all(frame >= 0))
        extension = tf.logical_and(tf.logical_not(in_extension), tf.equal(byte, 0x21))
        # in an extension: ``byte`` is the size of the next sub-block, 0 ending the block
        next_pos = tf.where(extension, pos + 2, pos + 1 + tf.maximum(byte, 0))
        still_in = tf.where(in_extension, byte > 0, extension)
        stop = tf.logical_or(descriptor, tf.logical_and(tf.logical_not(in_extension),
                                                        tf.logical_not(extension)))
        stop = tf.logical_or(stop, byte < 0)
        return (next_pos, still_in, stop,
                tf.where(descriptor, frame[0] + 256 * frame[1], width),
                tf.where(descriptor, frame[2] + 256 * frame[3], height))

    missing = tf.constant(-1, tf.int64)
    _, _, _, width, height = tf.while_loop(
        lambda pos, in_extension, done, width, height: tf.logical_not(done), step,
        (13 + table, tf.constant(False), tf.constant(False), missing, missing))
    return width, height


def declared_size(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(width, height) that encoded PNG/GIF/BMP/JPEG/WebP bytes declare in their header,
    read without decoding; (-1, -1) when it cannot be read (another format, a GIF
    without an image descriptor). A GIF's is the larger of its canvas and first frame.
    A JPEG's is read by one op (most files of a photo folder), the others' from the
    first 30 bytes."""
    jpeg = tf.equal(tf.strings.substr(data, 0, 2), b"\xff\xd8")
    return tf.cond(jpeg, lambda: _jpeg_size(data), lambda: _other_size(data))


def _jpeg_size(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(width, height) of a JPEG's frame header."""
    shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
    return shape[1], shape[0]


def _other_size(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """:func:`declared_size` of bytes that are not a JPEG."""
    head = tf.cast(tf.io.decode_raw(tf.strings.substr(
        tf.strings.join([data, tf.constant(b"\0" * 30)]), 0, 30), tf.uint8), tf.int64)

    def number(start: int, length: int, big_endian: bool) -> tf.Tensor:
        digits = [head[start + k] for k in range(length)]
        if big_endian:
            digits.reverse()
        return tf.add_n([d * (256 ** k) for k, d in enumerate(digits)])

    def starts(*signature: int) -> tf.Tensor:
        return tf.reduce_all(tf.equal(head[:len(signature)], signature))

    bmp_height = number(22, 4, False)  # signed: negative for top-down bitmaps
    bmp_height = tf.where(bmp_height >= 2 ** 31, 2 ** 32 - bmp_height, bmp_height)
    gif = starts(0x47, 0x49, 0x46)
    frame = tf.cond(gif, lambda: tf.stack(_gif_frame_size(data)),
                    lambda: tf.zeros([2], tf.int64))
    gif_width, gif_height = [tf.where(frame[k] < 0, frame[k], tf.maximum(frame[k], canvas))
                             for k, canvas in enumerate((number(6, 2, False),
                                                         number(8, 2, False)))]
    # WebP: a RIFF file of one chunk: VP8X (extended: the canvas), VP8L or VP8 (lossy)
    riff = tf.logical_and(starts(0x52, 0x49, 0x46, 0x46),
                          tf.reduce_all(tf.equal(head[8:15], list(b"WEBPVP8"))))
    lossless = number(21, 4, False)  # 14 bits width - 1, then 14 bits height - 1
    cases = [(starts(0x89, 0x50, 0x4E, 0x47), number(16, 4, True), number(20, 4, True)),
             (gif, gif_width, gif_height),
             (starts(0x42, 0x4D), number(18, 4, False), bmp_height),
             (tf.logical_and(riff, tf.equal(head[15], ord("X"))),
              number(24, 3, False) + 1, number(27, 3, False) + 1),
             (tf.logical_and(riff, tf.equal(head[15], ord("L"))),
              lossless % 2 ** 14 + 1, lossless // 2 ** 14 % 2 ** 14 + 1),
             (tf.logical_and(riff, tf.equal(head[15], ord(" "))),
              number(26, 2, False) % 2 ** 14, number(28, 2, False) % 2 ** 14)]
    width = height = tf.constant(-1, tf.int64)
    for matches, w, h in reversed(cases):
        width, height = tf.where(matches, w, width), tf.where(matches, h, height)
    return width, height


def size_check(data: tf.Tensor, max_pixels: int,
               size: tuple[tf.Tensor, tf.Tensor] | None = None) -> tf.Operation:
    """An assertion that encoded image bytes declare at most ``max_pixels`` pixels: run
    it (as a control dependency) before anything decodes them. ``size``: their
    :func:`declared_size`, when it is read already."""
    width, height = declared_size(data) if size is None else size
    readable = tf.debugging.Assert(tf.logical_and(width >= 0, height >= 0), [
        f"the image is refused: {UNREADABLE_SIZE}: not a JPEG, PNG, GIF, BMP or WebP "
        "file, or a damaged one"])
    with tf.control_dependencies([readable]):
        return tf.debugging.Assert(width * height <= max_pixels, [tf.strings.format(
            "the image declares {}x{} pixels, " + TOO_MANY_PIXELS + f"={max_pixels}",
            (width, height))])


def decode_image_bytes(data: tf.Tensor, max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF/WebP bytes -> uint8 RGB image (first frame of a GIF). An
    image whose header declares more than ``max_pixels`` pixels, or whose size cannot be
    read, is refused before decoding (a small file can declare gigabytes of pixels: a
    decompression bomb)."""
    with tf.control_dependencies([size_check(data, max_pixels)]):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


_TRACED: dict[int, tf.types.experimental.ConcreteFunction] = {}
_TRACING = threading.Lock()


def _traced_decoder(max_pixels: int) -> tf.types.experimental.ConcreteFunction:
    """:func:`decode_image_bytes` traced once into a graph (its header check is a score of
    small ops, ten times slower run one by one eagerly than the decode itself). Traced
    under a lock into a concrete function, which no call traces again: the folder scan
    calls it from several threads, and a ``tf.function`` first called from several
    threads at once traces in each of them (TensorFlow then warns of retracing)."""
    with _TRACING:
        if max_pixels not in _TRACED:
            _TRACED[max_pixels] = tf.function(
                lambda data: decode_image_bytes(data, max_pixels)).get_concrete_function(
                    tf.TensorSpec([], tf.string))
        return _TRACED[max_pixels]


def refusal(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Why encoded image bytes are not decoded, in words, or None when they decode: the
    size their header declares over ``max_pixels`` (contains :data:`TOO_MANY_PIXELS`),
    a size that cannot be read (:data:`UNREADABLE_SIZE`), or the decoder's error."""
    if not data:
        return "empty file (0 bytes)"
    try:
        _traced_decoder(max_pixels)(tf.constant(data))
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
        text = str(exc.message)
        declared = re.search(rf"declares \d+x\d+ pixels, {TOO_MANY_PIXELS}=\d+", text)
        if declared:  # refused from its header, before decoding
            return declared[0]
        if UNREADABLE_SIZE in text:  # refused: its size, hence its memory, is unknown
            return (f"{UNREADABLE_SIZE}: not a JPEG, PNG, GIF, BMP or WebP file, or a "
                    "damaged one")
        # "{{function_node ...}} Unknown image file format. ...\n\t [[{{node ...}}]]"
        message = text.split("[Op:")[0].splitlines()[0].split("}}")[-1].strip()
        return "cannot be decoded: " + message[-120:]
    return None
