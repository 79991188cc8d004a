"""Keras callbacks the training loop adds to runs: a stop at the first non-finite loss,
epoch-only TensorBoard, validation of the weights' moving average, best-epoch keeping,
early stopping that resumes, honest validation of scratch BatchNorm."""

from __future__ import annotations

import time

import keras
import numpy as np

from tftoolkit.errors import TrainingDiverged
from tftoolkit.tasks import Monitor
from tftoolkit.training.batchnorm import recalibrate_batchnorm
from tftoolkit.training.checkpoint import CallbackState
from tftoolkit.training.step import base_optimizer


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Keras' ``TerminateOnNaN``, as an error: the first training step whose loss is
    infinite or NaN ends training (every loop calls it after each step), and so does an
    epoch that leaves a weight non-finite. It raises :class:`TrainingDiverged` before any
    later callback sees the epoch's end, so no checkpoint of diverged weights is written,
    the run is not marked finished and nothing is exported.

    Args:
        stage: what the message calls the stage, e.g. ``"stage 1 (fine_tune)"``.
        learning_rate_key: the recipe key of the stage's learning rate.
        learning_rate: its value.
        run_dir: the run directory, named in the message.
    """


    def __init__(self, stage: str, learning_rate_key: str, learning_rate: float, run_dir):
        super().__init__()
        self.stage, self.key, self.learning_rate = stage, learning_rate_key, learning_rate
        self.run_dir = run_dir
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            raise TrainingDiverged(self._message(f"the training loss is {float(loss)}", batch))

    def on_epoch_end(self, epoch, logs=None):
        self.on_train_batch_end(None, logs)
        for variable in self.model.trainable_variables:
            if not np.isfinite(variable.numpy()).all():
                raise TrainingDiverged(self._message(
                    f"weight {variable.path} is no longer finite", None))

    def _message(self, what: str, batch: int | None) -> str:
        where = f"epoch {self.epoch + 1}" + ("" if batch is None else f", step {batch + 1}")
        kept = (f"keeps the checkpoint of epoch {self.epoch}, the last finite one"
                if self.epoch else "has no finished epoch")
        return (f"training diverged: {what} at {where} of {self.stage}; the likely cause is "
                f"a learning rate too high ({self.key}={self.learning_rate:g}): lower it, or "
                f"set train.clip_norm. The run stopped: {self.run_dir} {kept}, is not "
                "marked finished, and nothing was exported")


class StopAtDeadline(keras.callbacks.Callback):
    """``train.time_budget``: the stage stops after the epoch that ends past ``deadline``
    (a ``time.perf_counter()`` value), and ``notes`` say so."""

    def __init__(self, deadline: float, stage: str, budget: float, notes: list[str]):
        super().__init__()
        self.deadline, self.stage, self.budget, self.notes = deadline, stage, budget, notes

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 >= self.params.get("epochs", epoch + 1)
        if time.perf_counter() >= self.deadline and not last and not self.model.stop_training:
            self.model.stop_training = True
            self.notes.append(f"{self.stage}: stopped after epoch {epoch + 1}, "
                              f"train.time_budget={self.budget:g} s spent")


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """``keras.callbacks.TensorBoard`` writing once per epoch, with no per-batch hooks.

    At ``update_freq="epoch"`` the stock callback records nothing per batch, yet its batch
    hooks still build a ``tf.summary.scalar`` call for every metric after every step
    (about 1 ms each on a CPU): 25% of the training time of a small MLP on
    Fashion-MNIST. Profiling (``profile_batch``) is the one feature that needs these
    hooks, so it is not offered here.
    """

    on_train_batch_begin = keras.callbacks.Callback.on_train_batch_begin
    on_train_batch_end = keras.callbacks.Callback.on_train_batch_end
    on_test_batch_begin = keras.callbacks.Callback.on_test_batch_begin
    on_test_batch_end = keras.callbacks.Callback.on_test_batch_end

    def __init__(self, log_dir: str):
        super().__init__(log_dir, write_graph=False, update_freq="epoch", profile_batch=0)


def _ema_values(model: keras.Model) -> dict[int, object]:
    """id(variable) -> its moving average, for the variables the optimizer averages."""
    optimizer = base_optimizer(model.optimizer)  # a LossScaleOptimizer's inner one
    return {id(v): avg for v, avg in zip(optimizer._trainable_variables,
                                         optimizer._model_variables_moving_average)
            if avg is not None}


class EmaValidation(keras.callbacks.Callback):
    """After each epoch, validate the weights' moving average too: logs ``val_ema_<k>``
    beside the ``val_<k>`` of the weights themselves."""

    def __init__(self, validation_data, evaluate):
        super().__init__()
        self.validation_data, self.evaluate = validation_data, evaluate

    def on_epoch_end(self, epoch, logs=None):
        averages = _ema_values(self.model)
        variables = [v for v in self.model.trainable_variables if id(v) in averages]
        current = [v.value.numpy() for v in variables]
        for variable in variables:
            variable.assign(averages[id(variable)])
        try:
            figures = self.evaluate(self.model, self.validation_data)
        finally:
            for variable, value in zip(variables, current):
                variable.assign(value)
        if logs is not None:
            logs.update({f"val_ema_{k}": v for k, v in figures.items()})


class KeepBest(keras.callbacks.Callback):
    """Keep the weights (or their moving average) that score best on ``monitor``.

    After each epoch the candidates are the weights (``monitor``) and, with EMA, their
    average (``val_ema_...``). The best so far, with its weights, is part of each
    epoch's checkpoint (:class:`~tftoolkit.training.checkpoint.SaveProgress` writes it
    into the state file), so a resumed stage knows the best of the very epochs it
    resumes after; at the end of the stage the best is put back into the model and its
    record written to ``checkpoints/best-<stage>.json``. ``across_epochs=False``
    compares only the last epoch's weights with their average.
    """

    def __init__(self, run, stage: int, monitor: Monitor, *, ema: bool, across_epochs: bool):
        super().__init__()
        self.run, self.stage, self.monitor = run, stage, monitor
        self.ema, self.across_epochs = ema, across_epochs
        self.best: dict | None = None
        self._weights: list | None = None

    def checkpoint_state(self) -> CallbackState:
        return CallbackState({"best": self.best}, list(self._weights or []))

    def resume(self, state: CallbackState) -> None:
        self.best, self._weights = state.record["best"], state.arrays or None

    def on_train_end(self, logs=None):
        if self._weights is not None:
            self.model.set_weights(self._weights)
        self.run.write_best_record(self.stage, self.best)

    def _better(self, value: float) -> bool:
        return self.monitor.better(value, None if self.best is None else self.best["value"])

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not self.across_epochs:
            self.best = self._weights = None
        candidates = [("weights", self.monitor.key)]
        if self.ema:
            candidates.append(("ema", self.monitor.key.replace("val_", "val_ema_", 1)))
        for source, key in candidates:
            value = logs.get(key)
            if value is None or not np.isfinite(value) or not self._better(float(value)):
                continue
            self.best = {"stage": self.stage, "epoch": epoch + 1, "weights": source,
                         "metric": self.monitor.key, "value": float(value)}
            self._weights = self._snapshot(source)

    def _snapshot(self, source: str) -> list[np.ndarray]:
        if source == "weights":
            return self.model.get_weights()
        averages = _ema_values(self.model)
        return [np.asarray(averages[id(v)].numpy() if id(v) in averages else v.numpy())
                for v in self.model.weights]


class EarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' ``EarlyStopping`` on ``monitor``, in its direction, whose count of epochs
    without improvement, and best value, are part of each epoch's checkpoint: a resumed
    stage stops where the uninterrupted one would. It only ends the stage;
    :class:`KeepBest` decides which weights are kept."""

    def __init__(self, monitor: Monitor, patience: int):
        super().__init__(monitor=monitor.key, patience=patience,
                         mode="max" if monitor.higher_is_better else "min")
        self._resumed: dict | None = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._resumed is not None:
            self.wait, self.best = self._resumed["wait"], self._resumed["best"]
            self.best_epoch = self._resumed["best_epoch"]

    def checkpoint_state(self) -> CallbackState:
        return CallbackState({"wait": self.wait, "best_epoch": self.best_epoch,
                              "best": None if self.best is None else float(self.best)})

    def resume(self, state: CallbackState) -> None:
        self._resumed = state.record


class RecalibrateBeforeValidation(keras.callbacks.Callback):
    """Before each validation pass, re-estimate the BatchNorm statistics of ``model`` from
    un-augmented training batches, so a from-scratch network validates honestly while its
    moving averages still lag behind its weights."""

    def __init__(self, model: keras.Model, batches):
        super().__init__()
        self.inference_model, self.batches = model, batches

    def on_test_begin(self, logs=None):
        recalibrate_batchnorm(self.inference_model, self.batches)
