"""Flip, crop, rotation, zoom and translation fused into one projective transform.

The Keras chain ``RandomFlip -> RandomCrop(+resize) -> RandomRotation -> RandomZoom ->
RandomTranslation`` resamples the image five times. Each of those layers maps output
pixel coordinates to input ones by an affine map whose parameters it draws per image;
their product is one affine map, drawn from the same distributions, applied with a
single ``ImageProjectiveTransformV3`` per batch.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tftoolkit")
class FusedGeometric(keras.layers.Layer):
    """Per-image random flip/crop/rotation/zoom/translation as one resampling.

    Parameters follow the Keras layers: ``rotation`` is a fraction of a full turn,
    ``zoom`` and ``translation`` fractions of the image side, ``crop`` the fraction of
    each side cut away before resizing back. Identity when not training.
    """

    def __init__(self, flip: str = "horizontal", crop: float = 0.0, rotation: float = 0.0,
                 zoom: float = 0.0, translation: float = 0.0, seed: int | None = None,
                 fill_mode: str = "REFLECT", **kwargs):
        super().__init__(**kwargs)
        self.flip, self.crop, self.rotation = flip, crop, rotation
        self.zoom, self.translation, self.seed, self.fill_mode = zoom, translation, seed, fill_mode
        self.generator = keras.random.SeedGenerator(seed)

    def _uniform(self, n, low, high):
        return keras.random.uniform((n,), low, high, seed=self.generator)

    def sample_matrices(self, n, height, width) -> tf.Tensor:
        """``n`` 3x3 maps from output to input pixel coordinates (homogeneous)."""
        h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
        one, zero = tf.ones((n,)), tf.zeros((n,))

        def about_center(a, b, c, d, tx, ty):
            # p_in = center + [[a, b], [c, d]] (p_out - center) + t
            cx, cy = (w - 1) / 2, (h - 1) / 2
            return tf.stack([
                tf.stack([a, b, cx - a * cx - b * cy + tx], 1),
                tf.stack([c, d, cy - c * cx - d * cy + ty], 1),
                tf.stack([zero, zero, one], 1)], 1)

        def coin():
            return tf.where(self._uniform(n, 0.0, 1.0) < 0.5, -one, one)

        sx = coin() if self.flip in ("horizontal", "horizontal_and_vertical") else one
        sy = coin() if self.flip in ("vertical", "horizontal_and_vertical") else one
        matrix = about_center(sx, zero, zero, sy, zero, zero)
        if self.crop:
            keep = 1.0 - self.crop
            # RandomCrop offset uniform over the valid range, then resize back.
            ox = self._uniform(n, -0.5, 0.5) * w * self.crop
            oy = self._uniform(n, -0.5, 0.5) * h * self.crop
            matrix = matrix @ about_center(keep * one, zero, zero, keep * one, ox, oy)
        if self.rotation:
            angle = self._uniform(n, -2 * math.pi * self.rotation, 2 * math.pi * self.rotation)
            cos, sin = tf.cos(angle), tf.sin(angle)
            matrix = matrix @ about_center(cos, -sin, sin, cos, zero, zero)
        if self.zoom:
            z = 1.0 + self._uniform(n, -self.zoom, self.zoom)
            matrix = matrix @ about_center(z, zero, zero, z, zero, zero)
        if self.translation:
            dx = self._uniform(n, -self.translation, self.translation) * w
            dy = self._uniform(n, -self.translation, self.translation) * h
            matrix = matrix @ about_center(one, zero, zero, one, -dx, -dy)
        return matrix

    def call(self, images, training=True):
        if not training:
            return images
        images = tf.convert_to_tensor(images)
        shape = tf.shape(images)
        n, height, width = shape[0], shape[1], shape[2]
        m = self.sample_matrices(n, height, width)
        transforms = tf.concat([tf.reshape(m[:, :2, :], (-1, 6)), tf.zeros((n, 2))], axis=1)
        out = tf.raw_ops.ImageProjectiveTransformV3(
            images=tf.cast(images, tf.float32), transforms=transforms,
            output_shape=tf.stack([height, width]), fill_value=0.0,
            interpolation="BILINEAR", fill_mode=self.fill_mode)
        return tf.cast(out, images.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "flip": self.flip, "crop": self.crop,
                "rotation": self.rotation, "zoom": self.zoom,
                "translation": self.translation, "seed": self.seed,
                "fill_mode": self.fill_mode}
