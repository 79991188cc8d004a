"""The one training step: loss scaling under mixed_float16, clipping of the whole batch's
gradient, moving averages, in the multi-worker loop and the DP-SGD step."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tftoolkit.tasks import SingleLabel
from tftoolkit.training import distributed, privacy
from tftoolkit.training.callbacks import EmaValidation
from tftoolkit.training.runtime import precision_policy
from tftoolkit.training.step import TrainStep, use_in_fit


THREE_CLASSES = SingleLabel(3)


def _data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, n)]
    return x, y


def _model(precision="float32", **optimizer) -> keras.Model:
    with precision_policy(precision):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="tanh"),
                                  keras.layers.Dense(3, activation="softmax",
                                                     dtype="float32")])
        model.compile(keras.optimizers.SGD(0.5, **optimizer),
                      keras.losses.CategoricalCrossentropy())
    return model


def _update(model, before) -> list[np.ndarray]:
    return [after - start for after, start in zip(model.get_weights(), before)]


def _loop_once(model, x, y, callbacks=(), validation=None):
    with precision_policy(model.dtype_policy.name):
        distributed.fit_distributed(
            model, tf.data.Dataset.from_tensors((x, y)).repeat(),
            strategy=tf.distribute.get_strategy(), task=THREE_CLASSES, epochs=1,
            initial_epoch=0, steps_per_epoch=1, validation_data=validation,
            callbacks=list(callbacks),
            verbose=0)


@pytest.mark.parametrize("figures", [True, False])
def test_the_logged_training_loss_holds_the_penalties_as_keras_logs_them(figures):
    """A weight penalty and an activity penalty (a loss of the forward pass itself)."""
    x, y = _data()
    logged = {}
    for own_step in (False, True):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(
            3, activation="softmax", kernel_regularizer=keras.regularizers.L2(0.5),
            activity_regularizer=keras.regularizers.L1(0.3))])
        model.compile(keras.optimizers.SGD(0.1), keras.losses.CategoricalCrossentropy())
        if own_step:
            use_in_fit(model, TrainStep(model), figures=figures)
        logged[own_step] = model.fit(x, y, batch_size=16, epochs=2, verbose=0,
                                     shuffle=False).history["loss"]
    assert logged[True] == pytest.approx(logged[False], rel=1e-5)


def test_mixed_float16_updates_in_the_multi_worker_loop_match_float32():
    x, y = _data()
    updates = []
    for precision in ("float32", "mixed_float16"):
        model = _model(precision)
        before = model.get_weights()
        _loop_once(model, x, y)
        updates.append(_update(model, before))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    for full, mixed in zip(*updates):
        assert np.abs(full).max() > 1e-3
        np.testing.assert_allclose(mixed, full, rtol=0.02, atol=2e-3 * np.abs(full).max())


def test_the_dp_sgd_step_under_mixed_float16_matches_float32():
    x, y = _data()
    updates = []
    for precision in ("float32", "mixed_float16"):
        model = _model(precision)
        before = model.get_weights()
        with precision_policy(precision):
            use_in_fit(model, TrainStep(model, privacy.PrivateGradients(
                l2_clip=1e6, noise_multiplier=0.0, expected_batch=len(x))))
            model.fit(tf.data.Dataset.from_tensors((x, y, np.ones(len(x), np.float32))),
                      epochs=1, verbose=0)
        updates.append(_update(model, before))
    for full, mixed in zip(*updates):
        assert np.abs(full).max() > 1e-3
        np.testing.assert_allclose(mixed, full, rtol=0.02, atol=2e-3 * np.abs(full).max())


def test_ema_of_a_mixed_float16_model_is_validated_and_put_in_place():
    x, y = _data()
    model = _model("mixed_float16", use_ema=True, ema_momentum=0.5)
    before = model.get_weights()
    validation = tf.data.Dataset.from_tensors((x, y))
    history = keras.callbacks.History()
    _loop_once(model, x, y, [EmaValidation(validation, lambda m, d: distributed.evaluate(
        m, d, strategy=tf.distribute.get_strategy(), task=THREE_CLASSES)), history],
        validation)
    assert "val_ema_loss" in history.history
    averages = model.optimizer.inner_optimizer._model_variables_moving_average
    # finalised as Keras' fit does: the weights are now their moving average
    for variable, average in zip(model.trainable_variables, averages):
        np.testing.assert_allclose(variable.numpy(), average.numpy())
    assert any(np.abs(a - b).max() > 0 for a, b in zip(model.get_weights(), before))


# What each two-replica script below starts from: two logical CPUs, a MirroredStrategy
# over them, and 16 examples of 5 features and 3 classes (8 on each replica).
TWO_REPLICAS = """
import json
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from tftoolkit.tasks import SingleLabel
from tftoolkit.training import distributed
from tftoolkit.training.runtime import precision_policy

rng = np.random.default_rng(0)
x = rng.normal(size=(16, 5)).astype("float32")
y = np.eye(3, dtype="float32")[rng.integers(0, 3, 16)]
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
"""


def _on_two_replicas(script: str) -> dict:
    """Run ``script`` after :data:`TWO_REPLICAS` in a fresh process; its last line's JSON."""
    proc = subprocess.run([sys.executable, "-c", TWO_REPLICAS + script],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


MIRRORED_MIXED = """
with precision_policy("mixed_float16"), mirrored.scope():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(3, activation="softmax", dtype="float32")])
    model.compile(keras.optimizers.SGD(1.0, global_clipnorm=1e-3),
                  keras.losses.CategoricalCrossentropy())
before = model.get_weights()
with precision_policy("mixed_float16"):
    distributed.fit_distributed(model, tf.data.Dataset.from_tensors((x, y)).repeat(),
                                strategy=mirrored, task=SingleLabel(3), epochs=1,
                                initial_epoch=0, steps_per_epoch=1, verbose=0)
update = np.sqrt(sum(float(np.sum((a - b) ** 2))
                     for a, b in zip(model.get_weights(), before)))
print(json.dumps({"update_norm": update, "wrapped": type(model.optimizer).__name__}))
"""


def test_clipping_holds_for_a_mixed_float16_model_over_two_replicas():
    out = _on_two_replicas(MIRRORED_MIXED)
    assert out["wrapped"] == "LossScaleOptimizer"
    # learning rate 1 times the whole batch's gradient clipped to 1e-3
    assert out["update_norm"] == pytest.approx(1e-3, rel=0.02)


MIRRORED_FIT = """
with mirrored.scope():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(keras.optimizers.SGD(1.0, global_clipnorm=1e-3),
                  keras.losses.CategoricalCrossentropy())
before = model.get_weights()
distributed.fit(model, tf.data.Dataset.from_tensors((x, y)).repeat(), strategy=mirrored,
                task=SingleLabel(3), epochs=1, initial_epoch=0, steps_per_epoch=1, verbose=0)
update = np.sqrt(sum(float(np.sum((a - b) ** 2))
                     for a, b in zip(model.get_weights(), before)))
print(json.dumps({"update_norm": update}))
"""


def test_keras_fit_over_two_replicas_clips_the_whole_batch_gradient():
    out = _on_two_replicas(MIRRORED_FIT)
    # learning rate 1 times the whole batch's gradient clipped to 1e-3 (each replica's
    # share clipped to 1e-3 would move the weights by up to 2e-3)
    assert out["update_norm"] == pytest.approx(1e-3, rel=0.02)


MIRRORED_OVERFLOW = """
x[12] = 3e4  # on the second replica's half
with precision_policy("mixed_float16"), mirrored.scope():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8),
                              keras.layers.Dense(3, activation="softmax", dtype="float32")])
    model.compile(keras.optimizers.SGD(1.0), keras.losses.CategoricalCrossentropy())
before = model.get_weights()
with precision_policy("mixed_float16"):
    distributed.fit(model, tf.data.Dataset.from_tensors((x, y)).repeat(),
                    strategy=mirrored, task=SingleLabel(3), epochs=1, initial_epoch=0,
                    steps_per_epoch=1, verbose=0)
v = model.trainable_variables[0]
a, b = (np.asarray(t) for t in mirrored.experimental_local_results(v.value))
scales = mirrored.experimental_local_results(model.optimizer.dynamic_scale.value)
print(json.dumps({"finite": bool(np.isfinite(a).all() and np.isfinite(b).all()),
                  "scales": [float(s) for s in scales],
                  "moved": float(max(np.abs(p - q).max()
                                     for p, q in zip(model.get_weights(), before)))}))
"""


def test_a_float16_overflow_on_one_replica_skips_the_step_on_every_replica():
    out = _on_two_replicas(MIRRORED_OVERFLOW)
    # one loss-scale decision for both replicas: skipped, scale halved, weights kept
    assert out["finite"] and out["moved"] == 0.0
    assert out["scales"] == [16384.0, 16384.0]
