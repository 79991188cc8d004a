"""The :class:`Task` interface every kind of target implements, and :class:`Monitor`."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

import keras
import numpy as np
import tensorflow as tf

from tftoolkit.errors import RecipeError, did_you_mean

if TYPE_CHECKING:  # annotations only: tasks never import the recipe
    from tftoolkit.recipe import Recipe

# train.loss -> the target encoding it implies
ENCODING_OF_LOSS = {"mse": "regression", "binary_crossentropy": "binary",
                    "categorical_crossentropy": "categorical",
                    "sparse_categorical_crossentropy": "sparse"}
# Batch size :meth:`Task.measure` feeds arrays to the metrics in.
MEASURE_BATCH = 4096


@dataclass(frozen=True)
class Monitor:
    """A logged validation figure that selects (epochs, stages, runs, trials): its key
    (``val_accuracy``) and whether a higher value is better."""

    key: str
    higher_is_better: bool

    def better(self, value: float, than: float | None) -> bool:
        """Whether ``value`` beats ``than`` (anything beats None)."""
        if than is None:
            return True
        return value > than if self.higher_is_better else value < than

    def best(self, values: dict) -> object:
        """The key of ``values`` (key -> figure) whose figure is best (a NaN is worst);
        ties: the first."""
        sign = 1 if self.higher_is_better else -1

        def rank(key) -> float:
            value = float(values[key])
            return -math.inf if math.isnan(value) else sign * value

        return max(values, key=rank)


class Task(ABC):
    """One kind of target and everything that follows from it (see the package
    docstring). Instances are small immutable descriptions; every method that returns
    Keras objects returns fresh ones."""

    name: ClassVar[str]           # the data description's ``task``
    # figure -> whether higher is better; every one is logged per epoch, and with the
    # ``val_`` prefix on the validation split (``loss`` always, from the loss)
    figures: ClassVar[dict[str, bool]]
    # whether the figures are measured on the training batches too; if not, the
    # training logs hold the loss alone and the figures are validation's
    train_figures: ClassVar[bool] = True
    # the figure a run, a search or a comparison is judged by when none is named, and
    # the one exported files are judged by against the float model
    default_figure: ClassVar[str]
    # whether measuring outside a model traces each metric's update into a graph (worth
    # its tracing for a metric of many small ops, as a detector's decoding and matching)
    traced_updates: ClassVar[bool] = False
    # whether targets are places in the image (boxes), which augmentation must move with
    # the pixels: it then runs in the input pipeline, on each example and its targets
    spatial: ClassVar[bool] = False
    # the export formats besides the SavedModel that serve this task (None: every one)
    formats: ClassVar[tuple[str, ...] | None] = None
    # the MediaPipe Tasks API whose files the ``mediapipe*`` formats are
    mediapipe_task: ClassVar[str] = "ImageClassifier"

    def config(self) -> dict:
        """What rebuilds this task besides its encoding and classes (anchors, ...), kept
        in the data description (:meth:`from_config` reads it back)."""
        return {}

    def check_recipe(self, recipe: "Recipe") -> None:
        """Refuse, before anything runs, recipe settings that have no meaning for this
        kind of target."""

    # --- targets ---------------------------------------------------------------------

    @property
    @abstractmethod
    def encoding(self) -> str:
        """The form of the targets the loss takes (``sparse``, ``categorical``,
        ``binary``, ``multilabel``, ``regression``)."""

    @abstractmethod
    def encode(self, labels: tf.Tensor) -> tf.Tensor:
        """A batch of labels as sources give them (class ids, multi-hot rows, targets) ->
        what the loss takes."""

    def targets(self, encoded: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`encode`: labels as sources give them."""
        return np.asarray(encoded)

    # --- the head, the loss and the figures ------------------------------------------

    @property
    def feature_strides(self) -> tuple[int, ...]:
        """The strides of the backbone feature maps the head takes (a detector's
        pyramid); empty: the head takes the backbone's pooled features."""
        return ()

    def head(self, feature_shapes: list[tuple[int, ...]]) -> keras.Model:
        """The head on feature maps of :attr:`feature_strides` (of those shapes); tasks
        whose head takes pooled features have an output layer instead
        (:attr:`output_units`, :attr:`activation`)."""
        raise NotImplementedError(f"a {self.name} head takes pooled features")

    @property
    def target_dim(self) -> int:
        """Values per target (regression); 1 for classes."""
        return 1

    @property
    @abstractmethod
    def output_units(self) -> int:
        """Units of the model's output layer."""

    @property
    @abstractmethod
    def activation(self) -> str | None:
        """The output layer's activation."""

    @abstractmethod
    def loss(self, label_smoothing: float = 0.0,
             balanced: bool = False) -> keras.losses.Loss:
        """The training loss; ``balanced``: weigh what the data has less of
        (``data.class_weight=balanced``) where the loss itself does it."""

    @abstractmethod
    def metrics(self) -> list[keras.metrics.Metric]:
        """Fresh metric objects, one per figure other than the loss, named as
        :attr:`figures` names them."""

    def example_weights(self, class_counts: list[int]) -> np.ndarray | None:
        """Per-class weights of each example by its label for ``data.class_weight=
        balanced`` (``n / (k * n_c)``), or None where the loss balances itself."""
        return None

    def validation_keys(self) -> list[str]:
        """The validation figures a run logs every epoch."""
        return [f"val_{figure}" for figure in self.figures]

    def monitor(self, key: str = "", asked_by: str = "") -> Monitor:
        """The validation figure ``key`` (default: :attr:`default_figure`'s), refused
        with the choices when this task does not log it; ``asked_by`` names the setting
        that asked for it in the message (``train.select_best``)."""
        key = key or f"val_{self.default_figure}"
        figure = key.removeprefix("val_")
        if not key.startswith("val_") or figure not in self.figures:
            logged = self.validation_keys()
            named = f"{asked_by}={key!r}" if asked_by else repr(key)
            raise RecipeError(f"{named} is not a figure a {self.name} run logs on the "
                              f"validation split{did_you_mean(key, logged)} (it logs: "
                              f"{', '.join(logged)})")
        return Monitor(key, self.figures[figure])

    def measure(self, targets: np.ndarray, predictions: np.ndarray,
                thresholds: np.ndarray | None = None) -> dict[str, float]:
        """Every figure of ``predictions`` (the model's, or what a served file returns)
        against ``targets`` (labels as sources give them): :meth:`measure_batches` of
        them."""
        return self.measure_batches(
            ((targets[i:i + MEASURE_BATCH], predictions[i:i + MEASURE_BATCH])
             for i in range(0, len(targets), MEASURE_BATCH)), thresholds)

    def measure_batches(self, batches: Iterable[tuple[np.ndarray, np.ndarray]],
                        thresholds: np.ndarray | None = None) -> dict[str, float]:
        """Every figure other than the (recipe-dependent) loss over ``(targets,
        predictions)`` batches, by the very metric objects training logs."""
        metrics = self.metrics()
        updates = [tf.function(metric.update_state) if self.traced_updates
                   else metric.update_state for metric in metrics]
        for targets, predictions in batches:
            y = self.encode(tf.constant(np.asarray(targets)))
            p = tf.constant(self.predictions(predictions))
            for update in updates:
                update(y, p)
        return {metric.name: float(metric.result()) for metric in metrics}

    def predictions(self, outputs: np.ndarray) -> np.ndarray:
        """What the model predicts, from its own outputs or from what a served model
        returns (:meth:`scores`)."""
        return np.asarray(outputs, np.float32)

    # --- decisions and served outputs ------------------------------------------------

    @abstractmethod
    def decide(self, predictions: np.ndarray,
               thresholds: np.ndarray | None = None) -> np.ndarray:
        """What a client acts on: class ids, a [N, classes] mask of labels, values."""

    def agreement(self, predictions: np.ndarray, reference: np.ndarray,
                  thresholds: np.ndarray | None = None) -> float:
        """The share of decisions ``predictions`` and ``reference`` (the model's outputs,
        or served scores) agree on."""
        return float(np.mean(self.decide(predictions, thresholds)
                             == self.decide(reference, thresholds)))

    @abstractmethod
    def serving_outputs(self, predictions: tf.Tensor, class_names: tf.Tensor | None = None,
                        thresholds: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        """A serving signature's outputs from the model's predictions."""

    def scores(self, predictions: np.ndarray) -> np.ndarray:
        """What a served model returns as its main output for ``predictions``: one
        probability per class for classifiers (see :class:`~tftoolkit.tasks.SingleLabel`),
        the predictions themselves otherwise."""
        return np.asarray(predictions, np.float32)

    def served_scores(self, predictions):
        """:meth:`scores` inside a served graph, with ``keras.ops`` (a ``tf.Tensor`` or a
        symbolic Keras tensor in, float32 out)."""
        return keras.ops.cast(predictions, "float32")

    @property
    def serving_key(self) -> str:
        """The output of :meth:`serving_outputs` that :meth:`scores` gives."""
        return "outputs"

    @abstractmethod
    def report(self, targets: np.ndarray, predictions: np.ndarray, class_names: list[str],
               thresholds: np.ndarray | None = None) -> dict:
        """The evaluation report of a split: :meth:`measure`'s figures (the same names)
        and the task's own tables (per class, confusion matrix, ...)."""

    @property
    def thresholded(self) -> bool:
        """Whether decisions take per-class thresholds chosen on validation."""
        return False
