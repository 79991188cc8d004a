"""What a served model's outputs must equal, in one place for every format's check.

What each task serves is the task's (:meth:`~tftoolkit.tasks.Task.serving_outputs`); a
model of feature vectors serves its predictions as they are, as ``outputs``.
"""

from __future__ import annotations

import numpy as np

from tftoolkit.tasks import Task


def served_key(outputs, task: Task) -> str:
    """The output that carries the prediction: ``probabilities``, the task's own
    (:attr:`~tftoolkit.tasks.Task.serving_key`: a detector's ``detection_boxes``) or
    ``outputs``."""
    for key in ("probabilities", task.serving_key):
        if key in outputs:
            return key
    return "outputs"


def expected_output(model, inputs: np.ndarray, task: Task, key: str) -> np.ndarray:
    """What a served ``key`` must equal: the Keras model in inference mode, as ``task``
    serves its main output (:meth:`~tftoolkit.tasks.Task.scores`) when ``key`` is it."""
    predictions = np.asarray(model(inputs, training=False), dtype=np.float32)
    return task.scores(predictions) if key == task.serving_key else predictions
