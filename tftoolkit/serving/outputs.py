"""What a served classifier returns, in one place for every format and for evaluation.

A model with one sigmoid unit predicts P(class 1); served and evaluated, it has one
probability column per class like every other classifier. A multi-label model serves
each class's sigmoid probability and a boolean mask of the labels predicted.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def class_probabilities(predictions: np.ndarray) -> np.ndarray:
    """One column per class: a single sigmoid column P(1) becomes [P(0), P(1)]."""
    predictions = np.asarray(predictions, dtype=np.float32)
    if predictions.shape[-1] == 1:
        return np.concatenate([1 - predictions, predictions], axis=-1)
    return predictions


def served_probabilities(predictions: tf.Tensor) -> tf.Tensor:
    """:func:`class_probabilities` inside a served graph (float32)."""
    probabilities = tf.cast(predictions, tf.float32)
    if probabilities.shape[-1] == 1:
        probabilities = tf.concat([1.0 - probabilities, probabilities], axis=-1)
    return probabilities


def classifier_outputs(predictions: tf.Tensor, class_names: tf.Tensor) -> dict[str, tf.Tensor]:
    """The serving signature's outputs: ``probabilities``, ``class_id``, ``class_name``."""
    probabilities = served_probabilities(predictions)
    class_id = tf.argmax(probabilities, axis=-1)
    return {"probabilities": probabilities, "class_id": class_id,
            "class_name": tf.gather(class_names, class_id)}


def multilabel_outputs(predictions: tf.Tensor, thresholds: tf.Tensor) -> dict[str, tf.Tensor]:
    """A multi-label signature's outputs: ``probabilities`` [batch, classes] float32 and
    ``labels`` [batch, classes] bool, true where a probability is at least its class's
    threshold (the class names, in column order, are ``labels.txt``)."""
    probabilities = tf.cast(predictions, tf.float32)
    return {"probabilities": probabilities, "labels": probabilities >= thresholds}


def served_key(outputs) -> str:
    """The output that carries the prediction: ``probabilities`` or ``outputs``."""
    return "probabilities" if "probabilities" in outputs else "outputs"


def expected_output(model, inputs: np.ndarray, key: str) -> np.ndarray:
    """What a served ``key`` must equal: the Keras model in inference mode."""
    predictions = np.asarray(model(inputs, training=False), dtype=np.float32)
    return class_probabilities(predictions) if key == "probabilities" else predictions
