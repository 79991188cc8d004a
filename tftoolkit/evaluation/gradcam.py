"""Grad-CAM: where in the image the model looked for its predicted class.

The model is split at its last 4-D (convolutional) output, the gradient of the class
score (the output layer's pre-activation logit, not the softmax probability, which
saturates on a confident prediction and mixes in the other classes) flows back to that
feature map, and its spatially averaged gradients weight the channels (Selvaraju et
al., 2017).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tftoolkit.errors import TftoolkitError
from tftoolkit.layers import GreyPixels
from tftoolkit.models.layout import FEATURES

NO_FEATURE_MAP = ("Grad-CAM weighs the channels of a convolutional feature map, and this "
                  "model has none (its layers turn the image into a vector first): explain "
                  "a model with convolutional layers (model.architecture=cnn or a "
                  "pretrained backbone)")


def has_feature_map(model: keras.Model) -> bool:
    """Whether a layer of the model's chain before its output layer outputs a 4-D
    (convolutional) feature map, which :func:`grad_cam` needs."""
    *body, _ = model.layers[1:]
    return any(len(layer.output.shape) == 4 for layer in body)


def _logits(layer: keras.layers.Layer, inputs: tf.Tensor) -> tf.Tensor | None:
    """The pre-activation output of a Dense output layer; None for any other layer."""
    if not isinstance(layer, keras.layers.Dense):
        return None
    x = tf.cast(inputs, layer.kernel.dtype)
    z = tf.matmul(x, layer.kernel)
    return z + layer.bias if layer.use_bias else z


def _class_scores(logits: tf.Tensor,
                  classes: np.ndarray | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """The class of each row (``classes``, or the predicted one) and its score: the
    logit of the class (for one sigmoid unit z = log-odds of class 1, the score of class
    0 is -z)."""
    if logits.shape[-1] == 1:
        z = logits[:, 0]
        chosen = (tf.cast(z > 0, tf.int64) if classes is None
                  else tf.constant(classes, tf.int64))
        return chosen, tf.where(chosen == 1, z, -z)
    chosen = tf.argmax(logits, axis=1) if classes is None else tf.constant(classes, tf.int64)
    return chosen, tf.gather(logits, chosen, batch_dims=1)


def grad_cam(model: keras.Model, images: np.ndarray,
             classes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps in [0, 1] at the image size, and the class explained for each image:
    ``classes`` (one per image; a multi-label model's labels) or the predicted one.

    The model's top-level layers are applied in order (tftoolkit's models are chains:
    preprocessing, backbone or conv blocks, pooling, head; with ``model.pixel_features``
    the image's pixels join the pooled features); the last 4-D output is the
    feature map the class score is differentiated against, and the score is the output
    layer's logit (its output itself when it is not a Dense layer).
    """
    x = tf.constant(images, tf.float32)
    *body, head = model.layers[1:]
    with tf.GradientTape() as tape:
        out, features, pixels = x, None, None
        for layer in body:
            # model.pixel_features: a branch reads the image, and the features join it
            if isinstance(layer, GreyPixels):
                pixels = layer(x)
                continue
            out = layer([out, pixels] if layer.name == FEATURES and pixels is not None
                        else out, training=False)
            if len(out.shape) == 4:
                features = out
                tape.watch(features)
        logits = _logits(head, out)
        if logits is None:
            logits = head(out, training=False)
        predicted, score = _class_scores(tf.cast(logits, tf.float32), classes)
    if features is None:
        raise TftoolkitError(f"model {model.name}: {NO_FEATURE_MAP}")
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1, keepdims=True))
    cam = tf.image.resize(cam, images.shape[1:3])[..., 0].numpy()
    peak = cam.max(axis=(1, 2), keepdims=True)
    cam = np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)
    return cam, predicted.numpy()
