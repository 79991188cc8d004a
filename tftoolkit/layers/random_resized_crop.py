"""Random resized crop with a box drawn per image (Keras' RandomCrop draws one per batch)."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tftoolkit")
class RandomResizedCrop(keras.layers.Layer):
    """Crop a random area fraction in ``scale`` with aspect ratio in ``ratio`` (log-uniform),
    resize back to ``size`` x ``size``; a different box per image. Identity at inference."""

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), seed=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.size, self.scale, self.ratio, self.seed = size, tuple(scale), tuple(ratio), seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        n = tf.shape(images)[0]
        area = keras.random.uniform((n,), *self.scale, seed=self.generator)
        log_r = keras.random.uniform((n,), tf.math.log(self.ratio[0]),
                                     tf.math.log(self.ratio[1]), seed=self.generator)
        r = tf.exp(log_r)
        h = tf.clip_by_value(tf.sqrt(area / r), 0.0, 1.0)
        w = tf.clip_by_value(tf.sqrt(area * r), 0.0, 1.0)
        y0 = keras.random.uniform((n,), seed=self.generator) * (1.0 - h)
        x0 = keras.random.uniform((n,), seed=self.generator) * (1.0 - w)
        boxes = tf.stack([y0, x0, y0 + h, x0 + w], axis=1)
        return tf.image.crop_and_resize(tf.cast(images, tf.float32), boxes, tf.range(n),
                                        (self.size, self.size))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "size": self.size, "scale": self.scale,
                "ratio": self.ratio, "seed": self.seed}
