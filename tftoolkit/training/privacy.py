"""Differentially private training: DP-SGD with Poisson sampling and an RDP accountant.

Each step samples every training example independently with probability ``q = batch /
N`` (Poisson sampling, as the accountant assumes), computes each example's gradient
(``tf.vectorized_map``), clips it to ``privacy.l2_clip`` in global L2 norm, sums, adds
Gaussian noise of standard deviation ``noise_multiplier * l2_clip`` and divides by the
expected batch size ``q * N``. Regularization penalties depend on no example and are
added unclipped. The privacy spent is Google's ``dp-accounting`` RDP accountant's ε for
a Poisson-subsampled Gaussian mechanism composed over the steps taken, at ``δ``.

The noise and the batches' membership are drawn from the operating system's entropy,
never from ``train.seed`` (which is written to the run directory and the model card):
whoever could regenerate them could subtract the noise. No draw is replayed, after a
resume either. ``privacy.insecure_reproducible`` draws them from the seed instead, which
voids the guarantee; it exists for tests and debugging.
The training split is kept in memory (images as uint8) so that any example can be drawn.
"""

from __future__ import annotations

import logging

import dp_accounting
import keras
import numpy as np
import tensorflow as tf
from dp_accounting import rdp

from tftoolkit.errors import RecipeError


def epsilon(sampling_rate: float, noise_multiplier: float, steps: int, delta: float) -> float:
    """ε after ``steps`` Poisson-subsampled Gaussian steps (dp-accounting, RDP)."""
    if steps == 0:
        return 0.0
    accountant_log = logging.getLogger("absl")  # dp-accounting says through absl's logger
    level = accountant_log.level                # that orders which do not converge are
    accountant_log.setLevel(logging.ERROR)      # skipped; that is not the user's concern
    try:
        accountant = rdp.RdpAccountant()
        accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
            sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)), steps))
        return float(accountant.get_epsilon(delta))
    finally:
        accountant_log.setLevel(level)


def noise_for_epsilon(target: float, sampling_rate: float, steps: int, delta: float) -> float:
    """The smallest noise multiplier (to 0.1%) whose ε after ``steps`` is at most
    ``target``."""
    low, high = 0.1, 1.0
    while epsilon(sampling_rate, high, steps, delta) > target:
        low, high = high, high * 2
        if high > 1e4:
            raise RecipeError(f"privacy.target_epsilon={target} cannot be met in {steps} "
                              "steps; allow more epsilon or train fewer steps")
    while high - low > 1e-3 * high:
        middle = (low + high) / 2
        if epsilon(sampling_rate, middle, steps, delta) > target:
            low = middle
        else:
            high = middle
    return high


class PrivateStep:
    """The DP-SGD update of a compiled model: per-example gradients, clipped, summed,
    noised, averaged over the expected batch size, applied by the model's optimizer.
    The noise comes from OS entropy; a ``seed`` makes it reproducible, and worthless.

    Under a MirroredStrategy of R replicas each replica clips its slice of the batch and
    adds noise of standard deviation ``noise_multiplier * l2_clip / sqrt(R)`` from its own
    random stream; the optimizer's all-reduce sums the replicas' gradients, so the step
    carries the clipped sum of the whole batch plus noise of the full standard deviation,
    as on one device.
    """

    def __init__(self, model: keras.Model, *, l2_clip: float, noise_multiplier: float,
                 expected_batch: float, seed: int | None = None,
                 strategy: tf.distribute.Strategy | None = None):
        self.model, self.l2_clip = model, l2_clip
        self.noise_multiplier, self.expected_batch = noise_multiplier, expected_batch
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        loss = model.loss
        self.loss_fn = loss.__class__(**{**loss.get_config(), "reduction": None})
        with self.strategy.scope():  # one random stream per replica
            self.generator = (tf.random.Generator.from_non_deterministic_state()
                              if seed is None else tf.random.Generator.from_seed(seed))
        self.classify = model.output_shape[-1] > 1
        # strategy.run inside one tf.function: traced once for all replicas, so their
        # all-reduces line up
        self._step = tf.function(lambda x, y, mask: self.strategy.run(
            self._replica_step, args=(x, y, mask)), reduce_retracing=True)

    def per_example_gradients(self, x: tf.Tensor, y: tf.Tensor) -> list[tf.Tensor]:
        """One gradient per example: a list (one per trainable variable) of [B, ...]."""
        variables = self.model.trainable_variables

        def one(example):
            xi, yi = example
            with tf.GradientTape() as tape:
                loss = self.loss_fn(yi[None], self.model(xi[None], training=True))[0]
            return tape.gradient(loss, variables)

        return tf.vectorized_map(one, (x, y))

    def clipped_sum(self, x: tf.Tensor, y: tf.Tensor,
                    mask: tf.Tensor | None = None) -> list[tf.Tensor]:
        """The sum over the batch of each example's gradient clipped to ``l2_clip``
        (examples whose ``mask`` is 0, padding, count for nothing)."""
        grads = self.per_example_gradients(x, y)
        norms = tf.sqrt(tf.add_n([tf.reduce_sum(tf.reshape(g, [tf.shape(g)[0], -1]) ** 2,
                                                axis=1) for g in grads]))
        factors = tf.minimum(1.0, self.l2_clip / tf.maximum(norms, 1e-12))
        if mask is not None:
            factors *= mask
        return [tf.tensordot(factors, g, axes=1) for g in grads]

    def noised_average(self, sums: list[tf.Tensor]) -> list[tf.Tensor]:
        """``(sum + N(0, (noise_multiplier * l2_clip)^2 / R)) / expected_batch``: one
        replica's share (R = 1 on one device)."""
        std = self.noise_multiplier * self.l2_clip / self.replicas ** 0.5
        return [(s + std * self.generator.normal(tf.shape(s))) / self.expected_batch
                for s in sums]

    def __call__(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
        """One step on the batch ``(x, y)``, split over the replicas; returns the batch's
        summed loss, correct predictions and size (before the update)."""
        x, y = np.asarray(x, np.float32), np.asarray(y)
        if self.replicas == 1:
            return [float(v) for v in self._step(x, y, np.ones(len(x), np.float32))]
        # Equal shapes on every replica (padding masked out): one trace serves them all.
        size = -(-len(x) // self.replicas)
        slices = []
        for part in np.array_split(np.arange(len(x)), self.replicas):
            pad = size - len(part)
            slices.append((np.concatenate([x[part], np.zeros((pad, *x.shape[1:]), x.dtype)]),
                           np.concatenate([y[part], np.zeros((pad, *y.shape[1:]), y.dtype)]),
                           np.concatenate([np.ones(len(part)), np.zeros(pad)]).astype(
                               np.float32)))
        values = [self.strategy.experimental_distribute_values_from_function(
            lambda context, i=i: tf.constant(slices[context.replica_id_in_sync_group][i]))
            for i in range(3)]
        results = self._step(*values)
        return [float(self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None))
                for v in results]

    def _replica_step(self, x, y, mask):
        if tf.shape(x)[0] > 0:
            sums = self.clipped_sum(x, y, mask)
        else:
            sums = [tf.zeros_like(v) for v in self.model.trainable_variables]
        grads = self.noised_average(sums)
        model = self.model
        if model.losses:  # penalties: the same for every example, not clipped; each
            with tf.GradientTape() as tape:  # replica adds 1/R of them
                penalty = tf.add_n(model.losses) / self.replicas
            grads = [g + (r if r is not None else 0.0) for g, r in
                     zip(grads, tape.gradient(penalty, model.trainable_variables))]
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        predictions = model(x, training=False)
        losses = self.loss_fn(y, predictions) * mask
        hits = (tf.cast(tf.equal(tf.argmax(predictions, -1), tf.argmax(y, -1)), tf.float32)
                * mask if self.classify else tf.zeros_like(losses))
        return tf.reduce_sum(losses), tf.reduce_sum(hits), tf.reduce_sum(mask)


def poisson_batches(n: int, rate: float, steps: int, rng: np.random.Generator):
    """Index arrays of ``steps`` batches, each example in each independently with
    probability ``rate``."""
    for _ in range(steps):
        yield np.flatnonzero(rng.random(n) < rate)


def fit_private(model: keras.Model, x: np.ndarray, y: np.ndarray, *, batch_size: int,
                l2_clip: float, noise_multiplier: float, delta: float, epochs: int,
                initial_epoch: int, steps_before: int, target_epsilon: float,
                validation_data=None, callbacks=(), verbose: int = 1,
                seed: int | None = None,
                strategy: tf.distribute.Strategy | None = None) -> int:
    """DP-SGD on a compiled ``model`` over the training arrays ``(x, y)``; logs ``epsilon``
    after each epoch and stops before an epoch would take ε past ``target_epsilon``.
    Returns the number of private steps taken in all (``steps_before`` included).
    ``seed`` (insecure: for tests only) makes the noise and the batches reproducible,
    as a function of (seed, first epoch)."""
    n = len(x)
    rate = min(batch_size / n, 1.0)
    epoch_steps = steps_per_epoch(n, batch_size)
    stream = None if seed is None else int(np.random.SeedSequence(
        [seed, initial_epoch]).generate_state(1)[0])
    step = PrivateStep(model, l2_clip=l2_clip, noise_multiplier=noise_multiplier,
                       expected_batch=rate * n, seed=stream, strategy=strategy)
    rng = np.random.default_rng(None if seed is None else [seed, initial_epoch])
    callback_list = keras.callbacks.CallbackList(list(callbacks), model=model, epochs=epochs,
                                                 steps=epoch_steps, verbose=verbose)
    taken = steps_before
    model.stop_training = False
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        spent_next = epsilon(rate, noise_multiplier, taken + epoch_steps, delta)
        if target_epsilon and spent_next > target_epsilon:
            print(f"tftoolkit: privacy budget: another epoch would spend ε={spent_next:.3f} "
                  f"> privacy.target_epsilon={target_epsilon}; stopping")
            break
        callback_list.on_epoch_begin(epoch)
        progress = keras.utils.Progbar(epoch_steps, verbose=verbose) if verbose else None
        total = hits = seen = 0.0
        for i, batch in enumerate(poisson_batches(n, rate, epoch_steps, rng)):
            loss_sum, batch_hits, batch_seen = step(x[batch], y[batch])
            total, hits, seen = total + loss_sum, hits + batch_hits, seen + batch_seen
            taken += 1
            logs = {"loss": total / max(seen, 1)}
            if step.classify:
                logs["accuracy"] = hits / max(seen, 1)
            if progress:
                progress.update(i + 1, list(logs.items()))
        logs["epsilon"] = epsilon(rate, noise_multiplier, taken, delta)
        if validation_data is not None:
            values = model.evaluate(validation_data, verbose=0, return_dict=True)
            logs.update({f"val_{k}": float(v) for k, v in values.items()})
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end()
    return taken


def planned_noise(cfg, n: int, batch_size: int, total_epochs: int) -> tuple[float, float]:
    """(noise multiplier, δ) of a run: as set, or found for ``privacy.target_epsilon``
    over the planned epochs."""
    delta = cfg.delta or 1.0 / (10 * n)
    if cfg.noise_multiplier:
        return cfg.noise_multiplier, delta
    steps = total_epochs * steps_per_epoch(n, batch_size)
    return noise_for_epsilon(cfg.target_epsilon, min(batch_size / n, 1.0), steps,
                             delta), delta


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Private steps in one epoch: the expected number of batches, 1 / q (rounded)."""
    return max(int(round(n / max(batch_size, 1))), 1) if batch_size < n else 1


__all__ = ["PrivateStep", "epsilon", "fit_private", "noise_for_epsilon", "planned_noise",
           "poisson_batches"]
