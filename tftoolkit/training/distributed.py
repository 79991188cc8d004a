"""Fitting and evaluating under any strategy: Keras' own, or a loop where it fails.

:func:`fit`, :func:`evaluate` and :func:`per_worker` are the one place where a
multi-worker run differs from a single-process one. With :func:`per_worker`, each
worker reads and decodes only its own shard of image files or TFDS records; in-memory
arrays are sharded by data, so that every global batch is the one a single process
would train on.

Under ``MultiWorkerMirroredStrategy`` Keras 3's ``fit`` raises on ``PerReplica`` values
(keras-team/keras#20585). This loop does the same work with ``strategy.run`` of the
training step (:class:`~tftoolkit.training.step.TrainStep`: the loss averaged over the
*global* batch, loss scaling for mixed precision, the global-norm clip of the whole
batch's gradient, the model's Keras optimizer). It keeps what ``fit`` gives: a progress
bar, the same callbacks (CSV history, checkpoints, early stopping, progress for resume),
per-epoch ``loss`` and the task's figures (its own Keras metrics, updated on every
replica and summed over them; validation's alone for a task without
:attr:`~tftoolkit.tasks.Task.train_figures`), validation figures, and the weights'
moving average put in place at the end (``train.ema``).
"""

from __future__ import annotations

import weakref
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from tftoolkit.data import WorkerShare
from tftoolkit.tasks import Task
from tftoolkit.training.step import TrainStep, per_example_loss, use_in_fit


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes run directories, checkpoints and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())


def worker_share(strategy: tf.distribute.Strategy) -> WorkerShare | None:
    """This worker's part of work the workers of a multi-worker run split among them,
    with a collective sum over the workers; None in a single process."""
    if not needs_own_loop(strategy):
        return None
    resolver = strategy.cluster_resolver
    tasks = resolver.cluster_spec().as_dict()
    chiefs = len(tasks.get("chief", []))
    workers = chiefs + len(tasks.get("worker", []))
    index = resolver.task_id if resolver.task_type == "chief" else chiefs + resolver.task_id
    local_replicas = strategy.num_replicas_in_sync // workers

    def sum_over_workers(array: np.ndarray) -> np.ndarray:
        value = tf.constant(array)

        def first_local_replica_gives():  # the others give zeros: the sum stays exact
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            return value * tf.cast(replica % local_replicas == 0, value.dtype)

        return strategy.reduce(tf.distribute.ReduceOp.SUM,
                               strategy.run(first_local_replica_gives), axis=None).numpy()

    return WorkerShare(index, workers, sum_over_workers)


Input = tf.data.Dataset | tf.distribute.DistributedDataset


def _distribute(strategy, data: Input) -> tf.distribute.DistributedDataset:
    """``data`` as the strategy iterates it: a dataset of global batches is sharded by
    data (each worker keeps its slice of every global batch); a distributed dataset
    (each worker's own shard, from :func:`per_worker`) is used as it is."""
    if isinstance(data, tf.distribute.DistributedDataset):
        return data
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return strategy.experimental_distribute_dataset(data.with_options(options))


def per_worker(strategy, make: Callable[[tf.distribute.InputContext | None], tf.data.Dataset],
               sharded: bool) -> Input:
    """The input of a split: under the multi-worker loop with ``sharded`` data, each
    worker builds its own pipeline, ``make(input_context)``, that reads only its shard;
    otherwise ``make(None)``, a dataset of global batches."""
    if sharded and needs_own_loop(strategy):
        return strategy.distribute_datasets_from_function(make)
    return make(None)


class _Steps:
    """Replica steps of one compiled model: a training step and an evaluation step,
    each returning global sums (loss, examples); the task's metrics (one set for
    training, none if the task measures on validation only, one for evaluation, each
    replica updating its own share) give the other figures."""

    def __init__(self, model: keras.Model, strategy, task: Task):
        self.model, self.strategy = model, strategy
        self.loss_fn = per_example_loss(model)
        self.step = TrainStep(model)
        with strategy.scope():
            if not model.optimizer.built:  # before tracing, as Keras' fit: the step reads
                model.optimizer.build(model.trainable_variables)  # the loss scale
            self.train_metrics = task.metrics() if task.train_figures else []
            self.eval_metrics = task.metrics()
        self.train = tf.function(lambda it: self._reduce(
            strategy.run(self._train_step, args=(next(it),))))
        self.evaluate = tf.function(lambda batch: self._reduce(
            strategy.run(self._eval_step, args=(batch,))))

    def _train_step(self, batch):
        x, y, *weight = batch
        per_example, predictions, penalty = self.step(x, y, *weight)
        for metric in self.train_metrics:  # weighted, as compiled (optim.compile_model)
            metric.update_state(y, predictions, *weight)
        # the penalties in the logged loss, as Keras' fit logs it (once per example)
        examples = tf.cast(tf.shape(per_example)[0], tf.float32)
        return tf.reduce_sum(per_example) + penalty * examples, examples

    def _eval_step(self, batch):
        x, y, *weight = batch
        model = self.model
        predictions = model(x, training=False)
        per_example = self.loss_fn(y, predictions)
        if weight:
            per_example = per_example * tf.cast(weight[0], per_example.dtype)
        for metric in self.eval_metrics:
            metric.update_state(y, predictions, *weight)
        # the penalties in the loss, as Keras' evaluate reports it (once per example)
        penalty = tf.add_n(model.losses) if model.losses else 0.0
        examples = tf.cast(tf.shape(per_example)[0], tf.float32)
        return tf.reduce_sum(per_example) + penalty * examples, examples

    def _reduce(self, values):
        return [self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                for v in values]

    @staticmethod
    def results(metrics: list[keras.metrics.Metric]) -> dict[str, float]:
        """The metrics' figures over every replica and worker (their variables are summed
        when read)."""
        return {metric.name: float(metric.result()) for metric in metrics}

    def evaluate_dataset(self, dataset: Input) -> dict[str, float]:
        """Mean loss and the task's figures over a whole dataset, across all workers."""
        for metric in self.eval_metrics:
            metric.reset_state()
        loss_sum = examples = 0.0
        for batch in _distribute(self.strategy, dataset):
            batch_loss, batch_examples = self.evaluate(batch)
            loss_sum, examples = loss_sum + float(batch_loss), examples + float(batch_examples)
        return {"loss": loss_sum / examples, **self.results(self.eval_metrics)}


# The steps evaluate_distributed built for a model (EMA validation evaluates every epoch):
# model -> (its optimizer then, the task, the steps)
_EVALUATORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def evaluate_distributed(model: keras.Model, dataset: Input, strategy,
                         task: Task) -> dict[str, float]:
    """``model.evaluate`` for strategies where Keras' own fails."""
    optimizer, known_task, steps = _EVALUATORS.get(model, (None, None, None))
    if steps is None or optimizer is not model.optimizer or known_task != task:
        steps = _Steps(model, strategy, task)
        _EVALUATORS[model] = (model.optimizer, task, steps)
    return steps.evaluate_dataset(dataset)


def fit_distributed(model: keras.Model, train_ds: Input, *, strategy, task: Task,
                    epochs: int, initial_epoch: int,
                    steps_per_epoch: int, validation_data: Input | None = None,
                    callbacks: list[keras.callbacks.Callback] = (), verbose: int = 1) -> None:
    """Train a compiled ``model`` (built in ``strategy.scope()``) with ``strategy.run``."""
    steps = _Steps(model, strategy, task)
    callback_list = keras.callbacks.CallbackList(list(callbacks), model=model,
                                                 epochs=epochs, steps=steps_per_epoch,
                                                 verbose=verbose)
    iterator = iter(_distribute(strategy, train_ds))
    model.stop_training = False
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        callback_list.on_epoch_begin(epoch)
        progress = keras.utils.Progbar(steps_per_epoch, verbose=verbose) if verbose else None
        for metric in steps.train_metrics:
            metric.reset_state()
        loss_sum = seen = 0.0
        for step in range(steps_per_epoch):
            batch_loss, batch_seen = steps.train(iterator)
            loss_sum += float(batch_loss)  # the mean per example, as Keras logs it
            seen += float(batch_seen)
            logs = {"loss": loss_sum / seen, **steps.results(steps.train_metrics)}
            callback_list.on_train_batch_end(step, logs)
            if progress:
                progress.update(step + 1, list(logs.items()))
        if validation_data is not None:
            logs.update({f"val_{k}": v
                         for k, v in steps.evaluate_dataset(validation_data).items()})
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    # as Keras' fit: the weights' moving average replaces them (train.ema), then the
    # callbacks' end (a kept best epoch is put back after it)
    model.optimizer.finalize_variable_values(model.trainable_variables)
    callback_list.on_train_end()


def needs_own_loop(strategy: tf.distribute.Strategy) -> bool:
    """Whether Keras' ``fit``/``evaluate``/``predict`` fail under ``strategy``."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def fit(model: keras.Model, train_ds: Input, *, strategy, task: Task, epochs: int,
        initial_epoch: int, steps_per_epoch: int,
        validation_data: Input | None = None,
        callbacks: list[keras.callbacks.Callback] = (), verbose: int = 1) -> None:
    """``model.fit`` (endless training datasets, ``steps_per_epoch`` steps an epoch), or
    :func:`fit_distributed` where Keras' ``fit`` fails."""
    if needs_own_loop(strategy):
        fit_distributed(model, train_ds, strategy=strategy, task=task, epochs=epochs,
                        initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
                        validation_data=validation_data, callbacks=callbacks,
                        verbose=verbose)
    else:
        if ((strategy.num_replicas_in_sync > 1 or not task.train_figures)
                and "train_step" not in vars(model)):
            # Keras' own step clips each replica's share of the gradient and measures
            # every compiled metric; this one clips the whole batch's, and leaves a
            # task's figures to validation if so (a private run has put its DP-SGD step
            # in place already)
            use_in_fit(model, TrainStep(model), figures=task.train_figures)
        model.fit(train_ds, validation_data=validation_data, epochs=epochs,
                  initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
                  callbacks=list(callbacks), verbose=verbose, shuffle=False)


def evaluate(model: keras.Model, dataset: Input, *, strategy, task: Task) -> dict[str, float]:
    """Loss and ``task``'s figures of a compiled ``model`` over ``dataset``, under any
    strategy."""
    if needs_own_loop(strategy):
        return evaluate_distributed(model, dataset, strategy, task)
    values = model.evaluate(dataset, verbose=0, return_dict=True)
    return {k: float(v) for k, v in values.items()}
