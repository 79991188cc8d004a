"""Tasks: what a kind of target means for the model, its training, its figures and its
served outputs.

One :class:`Task` per kind of target owns everything that depends on it:

- target encoding: how the input pipeline turns a batch of labels into what the loss
  takes (:meth:`Task.encode`), and back (:meth:`Task.targets`);
- the head: the output layer's units and activation;
- the loss (:meth:`Task.loss`) and the metrics (:meth:`Task.metrics`): Keras metric
  objects whose state adds up over batches and replicas, the one implementation of every
  figure. Keras' ``fit``, the multi-worker loop, test-time augmentation, ``evaluate``
  and the measurements of exported files all use them (:meth:`Task.measure` runs them
  over arrays);
- the figures it logs and which way is better (:meth:`Task.monitor`): exactly what
  ``train.select_best``, early stopping, ``tune --objective`` and ``compare`` accept;
- decisions from predictions (:meth:`Task.decide`: class ids, the labels at or above
  their thresholds, values) and what a served model returns
  (:meth:`Task.serving_outputs`).

The tasks are single-label classification (:mod:`~tftoolkit.tasks.classification`:
integer ids, one-hot, or one sigmoid unit for two classes), multi-label classification
(:mod:`~tftoolkit.tasks.multilabel`), regression (:mod:`~tftoolkit.tasks.regression`) and
object detection (:mod:`~tftoolkit.tasks.detection`). :func:`make_task` builds the one a
run's data describes.
"""

from __future__ import annotations

from tftoolkit.errors import RecipeError, did_you_mean
from tftoolkit.tasks.base import ENCODING_OF_LOSS, Monitor, Task
from tftoolkit.tasks.classification import SingleLabel
from tftoolkit.tasks.detection import Detection
from tftoolkit.tasks.multilabel import MultiLabel
from tftoolkit.tasks.regression import Regression

# data description's encoding -> the task class that owns it
TASK_OF_ENCODING: dict[str, type[Task]] = {
    "sparse": SingleLabel, "categorical": SingleLabel, "binary": SingleLabel,
    "multilabel": MultiLabel, "regression": Regression, "detection": Detection}


def task_class(name: str) -> type[Task]:
    """The task class of a task ``name`` (``classification``, ``multilabel``, ...), as a
    model card or a data description names it."""
    for cls in TASK_OF_ENCODING.values():
        if cls.name == name:
            return cls
    raise ValueError(f"unknown task {name!r}")


def any_monitor(key: str) -> Monitor:
    """The validation figure ``key`` of whichever task logs it (its direction is the same
    in every task), refused with the choices when none does; whether a given run's task
    logs it is :meth:`Task.monitor`'s to say."""
    figure = key.removeprefix("val_")
    for cls in dict.fromkeys(TASK_OF_ENCODING.values()):
        if key.startswith("val_") and figure in cls.figures:
            return Monitor(key, cls.figures[figure])
    logged = sorted({f"val_{name}" for cls in TASK_OF_ENCODING.values()
                     for name in cls.figures})
    raise RecipeError(f"{key!r} is not a validation figure any task logs"
                      f"{did_you_mean(key, logged)} (choices: {', '.join(logged)})")


def make_task(encoding: str, num_classes: int = 0, *, target_dim: int = 1,
              class_counts: list[int] | None = None, examples: int = 0,
              config: dict | None = None) -> Task:
    """The task of targets of ``encoding`` (``sparse``, ``categorical``, ``binary``,
    ``multilabel``, ``regression`` or ``detection``); ``class_counts`` and ``examples``
    are the training split's (a multi-label task weighs each class's positives by them
    when asked to balance); ``config``: what else rebuilds it (:meth:`Task.config`)."""
    cls = TASK_OF_ENCODING.get(encoding)
    if cls is Detection:
        return Detection.from_config(num_classes, config or {})
    if cls is SingleLabel:
        return SingleLabel(num_classes, encoding)
    if cls is MultiLabel:
        return MultiLabel(num_classes, tuple(class_counts or ()), examples)
    if cls is Regression:
        return Regression(target_dim)
    raise ValueError(f"unknown target encoding {encoding!r} "
                     f"(choices: {', '.join(TASK_OF_ENCODING)})")


__all__ = ["ENCODING_OF_LOSS", "Detection", "Monitor", "MultiLabel", "Regression",
           "SingleLabel", "Task", "any_monitor", "make_task", "task_class"]
