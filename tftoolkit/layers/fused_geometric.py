"""Flip, crop, rotation, zoom and translation fused into one projective transform.

The Keras chain ``RandomFlip -> RandomCrop(+resize) -> RandomRotation -> RandomZoom ->
RandomTranslation`` resamples the image five times. Each of those layers maps output
pixel coordinates to input ones by an affine map whose parameters it draws per image;
their product is one affine map, drawn from the same distributions, applied with a
single ``ImageProjectiveTransformV3`` per batch.
"""

from __future__ import annotations

import math
from typing import Callable

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tftoolkit")
class FusedGeometric(keras.layers.Layer):
    """Per-image random flip/crop/rotation/zoom/translation as one resampling.

    Parameters follow the Keras layers: ``rotation`` is a fraction of a full turn,
    ``zoom`` and ``translation`` fractions of the image side. ``crop_to`` crops a
    square window of that side (Keras ``RandomCrop``); ``crop`` instead cuts that
    fraction of each side away and resizes back. Identity when not training.
    """

    def __init__(self, flip: str = "horizontal", crop: float = 0.0, rotation: float = 0.0,
                 zoom: float = 0.0, translation: float = 0.0, crop_to: int = 0,
                 seed: int | None = None, fill_mode: str = "REFLECT", **kwargs):
        super().__init__(**kwargs)
        self.flip, self.crop, self.rotation = flip, crop, rotation
        self.zoom, self.translation, self.crop_to = zoom, translation, crop_to
        self.seed, self.fill_mode = seed, fill_mode
        self.generator = keras.random.SeedGenerator(seed)

    def _uniform(self, n, low, high):
        return keras.random.uniform((n,), low, high, seed=self.generator)

    def sample_matrices(self, n, height, width, uniform: Callable | None = None) -> tf.Tensor:
        """``n`` 3x3 maps from output to input pixel coordinates (homogeneous).

        ``uniform(n, low, high)`` draws the parameters (default: the layer's seeded
        generator); a caller that moves boxes with the pixels draws from its own keys.
        """
        uniform = uniform or self._uniform
        h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
        out_h, out_w = (float(self.crop_to),) * 2 if self.crop_to else (h, w)
        one, zero = tf.ones((n,)), tf.zeros((n,))

        def about(cx, cy, a, b, c, d, tx, ty):
            # p_in = center + [[a, b], [c, d]] (p_out - center) + t
            return tf.stack([
                tf.stack([a, b, cx - a * cx - b * cy + tx], 1),
                tf.stack([c, d, cy - c * cx - d * cy + ty], 1),
                tf.stack([zero, zero, one], 1)], 1)

        def at_input(*args):
            return about((w - 1) / 2, (h - 1) / 2, *args)

        def at_output(*args):
            return about((out_w - 1) / 2, (out_h - 1) / 2, *args)

        def coin():
            return tf.where(uniform(n, 0.0, 1.0) < 0.5, -one, one)

        sx = coin() if self.flip in ("horizontal", "horizontal_and_vertical") else one
        sy = coin() if self.flip in ("vertical", "horizontal_and_vertical") else one
        matrix = at_input(sx, zero, zero, sy, zero, zero)
        if self.crop_to:
            # RandomCrop: a crop_to x crop_to window at a uniform offset, no resize.
            ox = uniform(n, 0.0, 1.0) * (w - out_w)
            oy = uniform(n, 0.0, 1.0) * (h - out_h)
            matrix = matrix @ about(zero, zero, one, zero, zero, one, ox, oy)
        elif self.crop:
            # RandomCrop of (1 - crop) of each side at a uniform offset, resized back.
            keep = 1.0 - self.crop
            ox = uniform(n, -0.5, 0.5) * w * self.crop
            oy = uniform(n, -0.5, 0.5) * h * self.crop
            matrix = matrix @ at_input(keep * one, zero, zero, keep * one, ox, oy)
        if self.rotation:
            angle = uniform(n, -2 * math.pi * self.rotation, 2 * math.pi * self.rotation)
            cos, sin = tf.cos(angle), tf.sin(angle)
            matrix = matrix @ at_output(cos, -sin, sin, cos, zero, zero)
        if self.zoom:
            z = 1.0 + uniform(n, -self.zoom, self.zoom)
            matrix = matrix @ at_output(z, zero, zero, z, zero, zero)
        if self.translation:
            dx = uniform(n, -self.translation, self.translation) * out_w
            dy = uniform(n, -self.translation, self.translation) * out_h
            matrix = matrix @ at_output(one, zero, zero, one, -dx, -dy)
        return matrix

    def call(self, images, training=True):
        if not training:
            return images
        images = tf.convert_to_tensor(images)
        shape = tf.shape(images)
        return self.transform(images, self.sample_matrices(shape[0], shape[1], shape[2]))

    def transform(self, images: tf.Tensor, matrices: tf.Tensor) -> tf.Tensor:
        """``images`` [n, H, W, C] resampled by ``matrices`` (:meth:`sample_matrices`)."""
        shape = tf.shape(images)
        n, height, width = shape[0], shape[1], shape[2]
        transforms = tf.concat([tf.reshape(matrices[:, :2, :], (-1, 6)), tf.zeros((n, 2))],
                               axis=1)
        output_shape = (tf.constant([self.crop_to, self.crop_to]) if self.crop_to
                        else tf.stack([height, width]))
        out = tf.raw_ops.ImageProjectiveTransformV3(
            images=tf.cast(images, tf.float32), transforms=transforms,
            output_shape=output_shape, fill_value=0.0,
            interpolation="BILINEAR", fill_mode=self.fill_mode)
        return tf.cast(out, images.dtype)

    def compute_output_shape(self, input_shape):
        if self.crop_to:
            return (input_shape[0], self.crop_to, self.crop_to, input_shape[-1])
        return input_shape

    def get_config(self):
        return {**super().get_config(), "flip": self.flip, "crop": self.crop,
                "rotation": self.rotation, "zoom": self.zoom,
                "translation": self.translation, "crop_to": self.crop_to, "seed": self.seed,
                "fill_mode": self.fill_mode}
