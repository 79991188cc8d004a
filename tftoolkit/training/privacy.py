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
The training split is kept in memory (pixels as uint8, features as float32) so that any
example can be drawn, within the memory budget (:func:`check_memory`);
:func:`poisson_dataset` feeds the sampled batches to Keras' ``fit``, whose step
(:class:`~tftoolkit.training.step.TrainStep`) takes its gradients from
:class:`PrivateGradients`.
"""

from __future__ import annotations

import logging
import math

import dp_accounting
import keras
import numpy as np
import tensorflow as tf
from dp_accounting import rdp

from tftoolkit.data.cache import memory_budget
from tftoolkit.errors import RecipeError


def refused_search(verb: str) -> str:
    """Why ``verb`` (``tune``, ``compare``, ``lr-find``) refuses a private recipe."""
    return (f"{verb} on a private recipe (privacy.enabled=true) would train on the same "
            "private examples more than once and keep what it chooses, spending privacy "
            "in every run (or, for lr-find, training without noise) while the model card "
            "reports one run's epsilon; train it once with `tftoolkit train`, or search "
            "with privacy.enabled=false on data that is not private")


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


class PrivateGradients:
    """DP-SGD's gradient transformation, for :class:`~tftoolkit.training.step.TrainStep`:
    per-example gradients, each clipped to ``l2_clip``, summed, noised, averaged over the
    expected batch size. The noise comes from OS entropy; a ``seed`` makes it
    reproducible, and worthless.

    Under a MirroredStrategy of R replicas each replica clips its slice of the batch and
    adds noise of standard deviation ``noise_multiplier * l2_clip / sqrt(R)`` from its own
    random stream; the optimizer's all-reduce sums the replicas' gradients, so the step
    carries the clipped sum of the whole batch plus noise of the full standard deviation,
    as on one device.
    """

    def __init__(self, *, l2_clip: float, noise_multiplier: float, expected_batch: float,
                 seed: int | None = None, strategy: tf.distribute.Strategy | None = None):
        self.l2_clip, self.noise_multiplier = l2_clip, noise_multiplier
        self.expected_batch = expected_batch
        self.replicas = (strategy or tf.distribute.get_strategy()).num_replicas_in_sync
        with (strategy or tf.distribute.get_strategy()).scope():  # a stream per replica
            self.generator = (tf.random.Generator.from_non_deterministic_state()
                              if seed is None else tf.random.Generator.from_seed(seed))

    def per_example_gradients(self, model: keras.Model, loss_fn, x, y, scale=1.0):
        """Each example's loss, prediction and gradient (of its loss times ``scale``): a
        list (one per trainable variable) of [B, ...]."""
        variables = model.trainable_variables

        def one(example):
            xi, yi = example
            with tf.GradientTape() as tape:
                prediction = model(xi[None], training=True)
                loss = loss_fn(yi[None], prediction)[0]
                scaled = loss * tf.cast(scale, loss.dtype)
            return loss, prediction[0], tape.gradient(scaled, variables)

        return tf.vectorized_map(one, (x, y))

    def clipped_sum(self, grads: list[tf.Tensor], mask=None) -> list[tf.Tensor]:
        """The sum over the batch of each example's gradient clipped to ``l2_clip``
        (examples whose ``mask`` is 0, padding, count for nothing)."""
        rows = [tf.reshape(g, [tf.shape(g)[0], -1]) for g in grads]
        norms = tf.sqrt(tf.add_n([tf.reduce_sum(r ** 2, axis=1) for r in rows]))
        factors = tf.minimum(1.0, self.l2_clip / tf.maximum(norms, 1e-12))
        if mask is not None:
            factors *= tf.cast(mask, factors.dtype)
        return [tf.reshape(tf.tensordot(factors, r, axes=1), tf.shape(g)[1:])
                for r, g in zip(rows, grads)]

    def noised_average(self, sums: list[tf.Tensor]) -> list[tf.Tensor]:
        """``(sum + N(0, (noise_multiplier * l2_clip)^2 / R)) / expected_batch``: one
        replica's share (R = 1 on one device)."""
        std = self.noise_multiplier * self.l2_clip / self.replicas ** 0.5
        return [(s + std * self.generator.normal(tf.shape(s))) / self.expected_batch
                for s in sums]

    def __call__(self, model: keras.Model, loss_fn, x, y, mask, scale):
        """This replica's DP-SGD gradient, times the loss ``scale`` (as the optimizer
        expects it), with the per-example losses (masked), predictions and the model's
        penalties (summed; 0 without any)."""
        variables = model.trainable_variables
        mask = tf.ones(tf.shape(x)[:1]) if mask is None else tf.cast(mask, tf.float32)
        losses, predictions, grads = self.per_example_gradients(model, loss_fn, x, y, scale)
        # clipping bounds the true gradient: undo the scale first
        grads = self.noised_average(self.clipped_sum([g / scale for g in grads], mask))
        penalty = 0.0
        if model.losses:  # penalties: the same for every example, not clipped; each
            with tf.GradientTape() as tape:  # replica adds 1/R of them
                penalty = tf.add_n(model.losses)
                share = penalty / self.replicas
            grads = [g + (r if r is not None else 0.0) for g, r in
                     zip(grads, tape.gradient(share, variables))]
        return [g * scale for g in grads], losses * mask, predictions, penalty


def poisson_dataset(x: np.ndarray, y: np.ndarray, rate: float, replicas: int,
                    rng: np.random.Generator) -> tf.data.Dataset:
    """Endless Poisson-sampled batches of ``(x, y)``, as ``(x, y, mask)``: each example in
    each batch independently with probability ``rate``. A batch is padded (mask 0) to a
    multiple of ``replicas``, at least one row each, so every replica gets an equal
    slice; the pixels' uint8 become float32 here."""

    def batches():
        while True:
            chosen = np.flatnonzero(rng.random(len(x)) < rate)
            size = max(-(-len(chosen) // replicas), 1) * replicas
            mask = np.zeros(size, np.float32)
            mask[:len(chosen)] = 1.0
            rows = np.concatenate([chosen, np.zeros(size - len(chosen), np.int64)])
            yield x[rows].astype(np.float32), y[rows], mask

    signature = (tf.TensorSpec((None, *x.shape[1:]), tf.float32),
                 tf.TensorSpec((None, *y.shape[1:]), tf.as_dtype(y.dtype)),
                 tf.TensorSpec((None,), tf.float32))
    return tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(1)


class PrivacySpent(keras.callbacks.Callback):
    """Counts the private steps and logs the ε spent after each epoch as ``epsilon``
    (placed before the callbacks that record the logs)."""

    def __init__(self, spent, steps_per_epoch: int):
        super().__init__()
        self.spent, self.steps_per_epoch = spent, steps_per_epoch

    def on_epoch_end(self, epoch, logs=None):
        self.spent.steps += self.steps_per_epoch
        if logs is not None:
            logs["epsilon"] = self.spent.epsilon


def check_memory(examples: int, example_bytes: int, what: str, budget_mb: int) -> None:
    """Refuse, before they are built, the training arrays DP-SGD keeps in memory (it
    draws its Poisson batches from the whole split) when they exceed the memory budget:
    ``data.memory_budget_mb``, or a quarter of the memory available now."""
    need, budget = examples * example_bytes, memory_budget(budget_mb)
    if need <= budget:
        return
    source = (f"data.memory_budget_mb={budget_mb}" if budget_mb else
              "data.memory_budget_mb=0: a quarter of the memory available now")
    raise RecipeError(
        f"privacy.enabled: DP-SGD samples its batches from the whole training split held "
        f"in memory, and its {examples} examples of {what} take {need / 2 ** 20:.0f} MB, "
        f"more than the memory budget of {budget / 2 ** 20:.0f} MB ({source}). Fix: set "
        f"data.memory_budget_mb={math.ceil(need / 2 ** 20)} or more if the machine has that "
        "much free, lower data.image_size, train on cached backbone features "
        "(model.mode=feature_extraction), or fewer examples (data.max_examples)")


def affordable_end(spent_epsilon, first_epoch: int, end: int, epoch_steps: int,
                   steps_before: int, target_epsilon: float) -> int:
    """The epoch before which a stage must stop so that ε stays within
    ``target_epsilon`` (``end`` with no target); ``spent_epsilon(steps)`` is the ε after
    ``steps`` private steps."""
    if not target_epsilon:
        return end
    for epoch in range(first_epoch, end):
        spent_next = spent_epsilon(steps_before + (epoch - first_epoch + 1) * epoch_steps)
        if spent_next > target_epsilon:
            print(f"tftoolkit: privacy budget: another epoch would spend ε={spent_next:.3f} "
                  f"> privacy.target_epsilon={target_epsilon}; stopping")
            return epoch
    return end


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


__all__ = ["PrivacySpent", "PrivateGradients", "affordable_end", "epsilon",
           "noise_for_epsilon", "planned_noise", "poisson_dataset"]
