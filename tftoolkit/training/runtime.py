"""Runtime set-up: seeds and determinism, compute precision, ``tf.distribute`` strategy."""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from tftoolkit.recipe import TrainConfig


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy, TensorFlow and Keras; optionally make TF ops deterministic."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        os.environ["TF_DETERMINISTIC_OPS"] = "1"
        tf.config.experimental.enable_op_determinism()


def set_precision(precision: str) -> None:
    """Set Keras' global dtype policy (the output layers stay float32)."""
    keras.mixed_precision.set_global_policy(precision)


def choose_strategy(cfg: TrainConfig) -> tf.distribute.Strategy:
    """The strategy for ``train.distribute``.

    ``auto`` picks MirroredStrategy when several GPUs are visible, else the default
    single-device strategy. ``mirrored`` mirrors over every GPU, or over every logical
    CPU device when there is no GPU.
    """
    gpus = tf.config.list_logical_devices("GPU")
    choice = cfg.distribute
    if choice == "auto":
        choice = "mirrored" if len(gpus) > 1 else "default"
    if choice == "default":
        return tf.distribute.get_strategy()
    devices = gpus or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in devices])
