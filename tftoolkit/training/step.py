"""The training step every custom loop runs: forward, loss, gradients, update.

:class:`TrainStep` is one step on one replica's slice of a batch: the per-example losses,
their gradients (a tape over the batch's mean loss, or DP-SGD's clipped and noised
per-example gradients), the global-norm clip of the *whole* batch's gradient, and the
optimizer's update. Mixed precision is the optimizer's: the loss is multiplied by
``optimizer.scale_loss`` before differentiating and a ``LossScaleOptimizer`` divides the
gradients by the scale again (skipping steps whose gradients overflow), so clipping
works on scaled gradients against a scaled bound. The multi-worker loop runs it under
``strategy.run``; Keras' ``fit`` runs it as the model's ``train_step``
(:func:`use_in_fit`) for private runs, for every run over several replicas and for a
task whose figures are measured on validation only (a detector's), so they keep fit's
callbacks, progress bar, validation and EMA finalisation.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import tensorflow as tf


def per_example_loss(model: keras.Model) -> keras.losses.Loss:
    """The compiled loss without reduction: one value per example."""
    loss = model.loss
    return loss.__class__(**{**loss.get_config(), "reduction": None})


def base_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer that owns the update (clip norm, moving averages): the one a
    ``LossScaleOptimizer`` wraps, or ``optimizer`` itself."""
    return getattr(optimizer, "inner_optimizer", optimizer)


class StepOutput(NamedTuple):
    """What one training step computed before its update: the per-example losses
    (weighted), the predictions, and the model's penalties (``model.losses`` summed, 0
    without any) of the same forward pass."""

    per_example: tf.Tensor
    predictions: tf.Tensor
    penalty: tf.Tensor | float


class TrainStep:
    """One training step of a compiled model, called in a replica context.

    Args:
        gradients: DP-SGD's gradient transformation
            (:class:`~tftoolkit.training.privacy.PrivateGradients`); None: the gradient of
            the mean loss over the global batch.
    """

    def __init__(self, model: keras.Model, gradients=None):
        self.model, self.gradients = model, gradients
        self.loss_fn = per_example_loss(model)

    def __call__(self, x, y, sample_weight=None) -> StepOutput:
        """Update the model on ``(x, y)``; returns what it computed before the update.
        Under DP-SGD ``sample_weight`` is the mask of a padded Poisson batch (0:
        padding)."""
        model = self.model
        variables = model.trainable_variables
        scale = model.optimizer.scale_loss(tf.constant(1.0))
        if self.gradients is not None:
            grads, per_example, predictions, penalty = self.gradients(
                model, self.loss_fn, x, y, sample_weight, scale)
        else:
            context = tf.distribute.get_replica_context()
            with tf.GradientTape() as tape:
                predictions = model(x, training=True)
                per_example = self.loss_fn(y, predictions)
                if sample_weight is not None:
                    per_example *= tf.cast(sample_weight, per_example.dtype)
                # the mean over the examples of this step on all replicas, as Keras' fit
                # takes it (a last, partial batch too)
                examples = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(
                    tf.shape(per_example)[0], tf.float32))
                loss = tf.reduce_sum(per_example) / examples
                penalty = tf.add_n(model.losses) if model.losses else 0.0
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(penalty)
                scaled = model.optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, variables)
        model.optimizer.apply_gradients(zip(self._clipped(grads, scale), variables))
        return StepOutput(per_example, predictions, penalty)

    def _clipped(self, grads: list, scale) -> list:
        """``train.clip_norm`` on the global batch's gradient. Keras clips the gradient it
        is given, before its all-reduce: with several replicas that is each one's share.
        So sum the replicas' gradients, clip (to the bound times the loss scale: the
        gradients are scaled), and hand the optimizer this replica's 1/R of the result,
        whose norm is below the bound, so Keras leaves it. With several replicas the sum
        is taken without a clip too, so that every replica's loss-scale check (finite or
        not) sees the same gradient and all of them skip a step or none."""
        clip = base_optimizer(self.model.optimizer).global_clipnorm
        context = tf.distribute.get_replica_context()
        if context.num_replicas_in_sync == 1:
            return grads  # the optimizer clips the whole gradient itself, unscaled
        grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        if clip:
            grads, _ = tf.clip_by_global_norm(grads, clip * scale)
        return [g / context.num_replicas_in_sync for g in grads]


def use_in_fit(model: keras.Model, step: TrainStep, figures: bool = True) -> None:
    """Make ``step`` the ``train_step`` that Keras' ``fit`` runs on ``model``, with fit's
    loss and metric logs (``figures=False``: the loss alone; the compiled metrics then
    measure validation only). It is an attribute of the model: compiling again keeps it
    (in place of the class's ``train_step``) until another call replaces it."""

    def train_step(data):
        x, y, weight = keras.utils.unpack_x_y_sample_weight(data)
        per_example, predictions, penalty = step(x, y, weight)
        examples = (tf.cast(tf.shape(per_example)[0], tf.float32) if weight is None
                    else tf.reduce_sum(tf.cast(weight, tf.float32)))
        # the mean loss with the penalties once, as Keras' fit logs it on one device
        model._loss_tracker.update_state(
            tf.math.divide_no_nan(tf.reduce_sum(per_example), examples) + penalty,
            sample_weight=examples)
        if not figures:
            compiled = model._compile_metrics  # built as Keras builds them, not updated:
            if compiled is not None and not compiled.built:  # fit reads every result
                compiled.build(y, predictions)
            return {"loss": model._loss_tracker.result()}
        return model.compute_metrics(x, y, predictions, sample_weight=weight)

    model.train_step = train_step
    model.train_function = None  # fit builds its function again, around this step
