"""Grad-CAM: where in the image the model looked for its predicted class.

The model is split at its last 4-D (convolutional) output, the gradient of the class
probability flows back to that feature map, and its spatially averaged gradients
weight the channels (Selvaraju et al., 2017).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def _split_at_last_feature_map(model: keras.Model):
    """(features model, layers applied after it) for a chain-shaped functional model."""
    layers = model.layers
    index = max(i for i, layer in enumerate(layers)
                if i > 0 and len(layer.output.shape) == 4)
    features = keras.Model(model.inputs, layers[index].output)
    return features, layers[index + 1:]


def grad_cam(model: keras.Model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps in [0, 1] at the image size, and the predicted class of each image."""
    features_model, head = _split_at_last_feature_map(model)
    x = tf.constant(images, tf.float32)
    with tf.GradientTape() as tape:
        features = features_model(x, training=False)
        tape.watch(features)
        out = features
        for layer in head:
            out = layer(out, training=False)
        predicted = tf.argmax(out, axis=1)
        score = tf.gather(out, predicted, batch_dims=1)
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1, keepdims=True))
    cam = tf.image.resize(cam, images.shape[1:3])[..., 0].numpy()
    peak = cam.max(axis=(1, 2), keepdims=True)
    cam = np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)
    return cam, predicted.numpy()
