"""Grad-CAM: where in the image the model looked for its predicted class.

The model is split at its last 4-D (convolutional) output, the gradient of the class
probability flows back to that feature map, and its spatially averaged gradients
weight the channels (Selvaraju et al., 2017).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def grad_cam(model: keras.Model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps in [0, 1] at the image size, and the predicted class of each image.

    The model's top-level layers are applied in order (tftoolkit's models are chains:
    preprocessing, backbone or conv blocks, pooling, head); the last 4-D output is the
    feature map the class score is differentiated against.
    """
    x = tf.constant(images, tf.float32)
    with tf.GradientTape() as tape:
        out, features = x, None
        for layer in model.layers[1:]:
            out = layer(out, training=False)
            if len(out.shape) == 4:
                features = out
                tape.watch(features)
        predicted = tf.argmax(out, axis=1)
        score = tf.gather(out, predicted, batch_dims=1)
    if features is None:
        raise ValueError(f"model {model.name} has no convolutional feature map")
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1, keepdims=True))
    cam = tf.image.resize(cam, images.shape[1:3])[..., 0].numpy()
    peak = cam.max(axis=(1, 2), keepdims=True)
    cam = np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)
    return cam, predicted.numpy()
