"""Test-time augmentation: average predictions over fixed flips and crops."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

# Crop boxes (y0, x0, y1, x1) keeping 90% of each side: centre, then the four corners.
_CROPS = [(0.05, 0.05, 0.95, 0.95), (0.0, 0.0, 0.9, 0.9), (0.0, 0.1, 0.9, 1.0),
          (0.1, 0.0, 1.0, 0.9), (0.1, 0.1, 1.0, 1.0)]
MAX_VIEWS = 2 + len(_CROPS)


def tta_view(images: tf.Tensor, view: int) -> tf.Tensor:
    """View ``view`` of a batch: 0 identity, 1 horizontal flip, 2.. crops resized back."""
    if view == 0:
        return images
    if view == 1:
        return tf.image.flip_left_right(images)
    n, size = tf.shape(images)[0], images.shape[1:3]
    boxes = tf.tile(tf.constant([_CROPS[view - 2]], tf.float32), [n, 1])
    return tf.image.crop_and_resize(images, boxes, tf.range(n), size)


def predict_tta(model: keras.Model, images: np.ndarray, views: int,
                batch_size: int = 64) -> np.ndarray:
    """Mean predicted probabilities over the first ``views`` views (inference mode)."""
    if not 1 <= views <= MAX_VIEWS:
        raise ValueError(f"tta views must be in 1..{MAX_VIEWS}, got {views}")
    x = tf.constant(images, tf.float32)
    total = sum(model.predict(tta_view(x, v), batch_size=batch_size, verbose=0)
                for v in range(views))
    return np.asarray(total, dtype=np.float32) / views
