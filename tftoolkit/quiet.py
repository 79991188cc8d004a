"""What tftoolkit keeps out of TensorFlow's log, and why.

Keras builds one ``tf.function`` per model for each of ``fit``, ``evaluate`` and
``predict``, all from the same code; TensorFlow's check for frequent retracing counts
the traces of a function by its code, so it counts those of every model together. A
run fits, validates and predicts with a few models (the head on cached features, the
whole model, the frozen part of a model over the training and validation splits, the
model for test-time augmentation; one per trial in a search), each of whose functions
traces once (a prediction twice: its first batch's shape, then the batch dimension
relaxed for a smaller last batch); the check reports that as "triggered tf.function
retracing" though nothing retraces needlessly. :func:`install` drops that
warning for Keras' per-model functions alone; a retracing function of any other code is
still reported.
"""

from __future__ import annotations

import logging
import re

# The functions Keras builds per model, as TensorFlow's warning names them.
KERAS_STEP_FUNCTION = re.compile(
    r"TensorFlowTrainer\.(_make_function|make_predict_function)\.<locals>")


class _KerasPerModelRetracing(logging.Filter):
    """Drops TensorFlow's retracing warning when it names a Keras per-model function."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("triggered tf.function retracing" in message
                    and KERAS_STEP_FUNCTION.search(message))


def install() -> None:
    """Drop TensorFlow's retracing warning about Keras' per-model step functions (once)."""
    logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _KerasPerModelRetracing) for f in logger.filters):
        logger.addFilter(_KerasPerModelRetracing())
