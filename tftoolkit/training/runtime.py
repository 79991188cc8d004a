"""Runtime set-up: seeds and determinism, compute precision, ``tf.distribute`` strategy."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Iterator

import keras
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from tftoolkit.errors import RecipeError
from tftoolkit.recipe import TrainConfig


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy, TensorFlow and Keras; optionally make TF ops deterministic."""
    keras.utils.set_random_seed(seed)
    # tf.data's shuffle with a tensor seed (the per-epoch seeds of the input pipeline)
    # fails in TF when the global seed is 0: it compares the seed pair to (0, 0) in Python.
    tf.random.set_seed(seed or 0x5EED)
    if deterministic:
        os.environ["TF_DETERMINISTIC_OPS"] = "1"
        tf.config.experimental.enable_op_determinism()
    elif tf_config.is_op_determinism_enabled():  # an earlier run in this process turned it
        os.environ.pop("TF_DETERMINISTIC_OPS", None)  # on: TF's switch is process-wide,
        tf_config.disable_op_determinism()            # and has no public way back


def verbosity(setting: int | str) -> int:
    """Keras' ``verbose`` for ``train.verbose``: ``auto`` is the progress bar (1) on a
    terminal and one line per epoch (2) when stdout is a file or a pipe, where the bar's
    per-step redraws would fill a log."""
    if setting != "auto":
        return int(setting)
    return 1 if hasattr(sys.stdout, "isatty") and sys.stdout.isatty() else 2


@contextlib.contextmanager
def precision_policy(precision: str) -> Iterator[None]:
    """Keras' global dtype policy set to ``precision`` (output layers stay float32)
    inside the block, and restored after it."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _tf_config_workers() -> int:
    """How many workers (chief included) ``TF_CONFIG`` describes."""
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}").get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def _tpu_strategy() -> tf.distribute.Strategy:
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=os.environ.get("TPU_NAME", ""))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as exc:
        raise RecipeError(f"train.distribute='tpu' but no TPU could be reached: {exc}; set "
                          "TPU_NAME or use train.distribute=auto") from None
    return tf.distribute.TPUStrategy(resolver)


def choose_strategy(cfg: TrainConfig) -> tf.distribute.Strategy:
    """The strategy for ``train.distribute``.

    ``auto`` picks MultiWorkerMirroredStrategy when ``TF_CONFIG`` names more than one
    worker, TPUStrategy when a TPU is attached (``TPU_NAME`` or local TPU devices),
    MirroredStrategy when several GPUs are visible, else the default strategy.
    ``mirrored`` mirrors over every GPU, or every logical CPU device when there is none.
    """
    choice = cfg.distribute
    if choice == "multi_worker" or (choice == "auto" and _tf_config_workers() > 1):
        # Decided before anything initialises TensorFlow's runtime: collective ops
        # must be configured at program start.
        if _tf_config_workers() < 1:
            raise RecipeError("train.distribute='multi_worker' needs TF_CONFIG describing "
                              "the cluster (cluster.worker addresses and this task)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if choice == "auto":
        if os.environ.get("TPU_NAME") or tf.config.list_logical_devices("TPU"):
            choice = "tpu"
        else:
            choice = "mirrored" if len(gpus) > 1 else "default"
    if choice == "default":
        return tf.distribute.get_strategy()
    if choice == "tpu":
        return _tpu_strategy()
    devices = gpus or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in devices])


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """A person's name for a strategy and its size: ``single device``, ``MirroredStrategy
    over 2 GPUs``, ``MultiWorkerMirroredStrategy, 2 workers``."""
    replicas = strategy.num_replicas_in_sync
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        workers = strategy.extended._num_workers  # noqa: SLF001 (no public accessor)
        return f"MultiWorkerMirroredStrategy, {workers} worker{'s' * (workers != 1)}"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        devices = strategy.extended.worker_devices
        kind = "GPU" if any("GPU" in d.upper() for d in devices) else "CPU device"
        return f"MirroredStrategy over {replicas} {kind}{'s' * (replicas != 1)}"
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return f"TPUStrategy over {replicas} TPU cores"
    return "single device"
