"""Per-example augmentation for the input pipeline, drawn from a key.

Every random draw of :class:`ExampleAugment` is a stateless op keyed by the example's
``key`` (the pipeline makes it from the run's seed, the epoch and the example's index),
so the pipeline may run it on many examples at once, in any order, and a resumed run
draws what an uninterrupted one would. The crop is a window of the source image, chosen
before decoding: the pipeline decodes only that window of a JPEG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import tensorflow as tf

from tftoolkit.recipe import AugmentConfig

RATIO = (3 / 4, 4 / 3)       # random resized crop: aspect ratios (torchvision's, Keras')
MAX_ATTEMPTS = 10            # windows tried before the whole image is taken
DRAWS = ("crop", "resized_crop", "horizontal_flip", "vertical_flip", "contrast",
         "brightness")


def _draw_keys(key: tf.Tensor) -> dict[str, tf.Tensor]:
    """One independent stateless key per kind of draw, from the example's key."""
    keys = tf.unstack(tf.random.experimental.stateless_split(key, len(DRAWS)))
    return dict(zip(DRAWS, keys))


@dataclass(frozen=True)
class ExampleAugment:
    """Flip, crop, random resized crop, contrast and brightness of one example.

    Parameters mean what the ``augment`` keys of the same names mean.
    """

    flip: str = "none"
    crop: float = 0.0
    resized_crop_scale: float = 0.0
    contrast: float = 0.0
    brightness: float = 0.0

    # The policy keys drawn here; a policy with any other pixel op runs as Keras layers.
    KEYS = ("flip", "crop", "resized_crop_scale", "contrast", "brightness")
    spatial = False  # the pipeline gives it images alone
    OTHER_OPS = ("rotation", "zoom", "translation", "erasing", "rand_augment")

    @classmethod
    def from_config(cls, cfg: AugmentConfig) -> "ExampleAugment | None":
        """The policy's pixel ops, or None when it has one this class does not draw."""
        if any(getattr(cfg, op) for op in cls.OTHER_OPS):
            return None
        return cls(**{key: getattr(cfg, key) for key in cls.KEYS})

    @property
    def crops(self) -> bool:
        return bool(self.crop or self.resized_crop_scale)

    def window(self, shape: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
        """The crop window ``[y, x, height, width]`` (int32) of an image of ``shape``
        (``[height, width, ...]``): ``crop``'s window at a uniform offset, then a random
        resized crop's window inside it."""
        keys = _draw_keys(key)
        height, width = tf.unstack(tf.cast(shape[:2], tf.int32))
        y = x = tf.constant(0, tf.int32)
        if self.crop:
            keep_h = tf.maximum(tf.cast(tf.round(tf.cast(height, tf.float32)
                                                 * (1.0 - self.crop)), tf.int32), 1)
            keep_w = tf.maximum(tf.cast(tf.round(tf.cast(width, tf.float32)
                                                 * (1.0 - self.crop)), tf.int32), 1)
            offset = tf.random.stateless_uniform([2], keys["crop"])
            y = tf.cast(offset[0] * tf.cast(height - keep_h + 1, tf.float32), tf.int32)
            x = tf.cast(offset[1] * tf.cast(width - keep_w + 1, tf.float32), tf.int32)
            y, x = tf.minimum(y, height - keep_h), tf.minimum(x, width - keep_w)
            height, width = keep_h, keep_w
        if self.resized_crop_scale:
            begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
                tf.stack([height, width, 3]), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
                seed=keys["resized_crop"], min_object_covered=self.resized_crop_scale,
                aspect_ratio_range=RATIO, area_range=(self.resized_crop_scale, 1.0),
                max_attempts=MAX_ATTEMPTS, use_image_if_no_bounding_boxes=True)
            y, x = y + begin[0], x + begin[1]
            height, width = size[0], size[1]
        return tf.stack([y, x, height, width])

    def window_fn(self, key: tf.Tensor) -> Callable[[tf.Tensor], tf.Tensor] | None:
        """``shape -> window`` for this example, or None when the policy does not crop."""
        return (lambda shape: self.window(shape, key)) if self.crops else None

    def recolor(self, image: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
        """Flip, contrast and brightness of a cropped, resized uint8 image -> float32."""
        keys = _draw_keys(key)
        image = tf.cast(image, tf.float32)
        for axis, direction in ((1, "horizontal"), (0, "vertical")):
            if self.flip in (direction, "horizontal_and_vertical"):
                flipped = tf.random.stateless_uniform([], keys[f"{direction}_flip"]) < 0.5
                image = tf.cond(flipped, lambda: tf.reverse(image, [axis]), lambda: image)
        if self.contrast:  # Keras RandomContrast: scale each channel about its mean
            factor = tf.random.stateless_uniform([], keys["contrast"], 1.0 - self.contrast,
                                                 1.0 + self.contrast)
            mean = tf.reduce_mean(image, axis=(0, 1), keepdims=True)
            image = tf.clip_by_value((image - mean) * factor + mean, 0.0, 255.0)
        if self.brightness:  # Keras RandomBrightness: add a fraction of the value range
            delta = tf.random.stateless_uniform([], keys["brightness"], -self.brightness,
                                                self.brightness) * 255.0
            image = tf.clip_by_value(image + delta, 0.0, 255.0)
        return image


@dataclass(frozen=True)
class PipelineAugment:
    """What the input pipeline applies to training examples and batches."""

    per_example: ExampleAugment | None   # keyed stateless draws, run in parallel (for
    #                                      targets that are places, a BoxAugment)
    per_batch: Callable | None           # ``(images, labels) -> (images, labels)``: Keras
    #                                      layers with their own generators, run in order
