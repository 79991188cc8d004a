"""Optimizers, learning-rate schedules and the loss a stage trains with.

- ``train.optimizer``: ``gd``/``sgd`` (momentum option; gd on full batches), ``adam``,
  ``adamw``, ``rmsprop``. ``train.weight_decay`` is decoupled decay (AdamW's, and Keras'
  ``weight_decay`` for the others), never applied to 1-D weights: BatchNorm scales and
  offsets, biases. ``train.clip_norm`` clips the global gradient norm.
- ``train.schedule``: ``constant``, ``cosine`` (to 0) or ``one_cycle``, stepped every
  batch, after a linear warmup of ``train.warmup_epochs``; every stage has its own.
- ``train.layer_decay``: while fine-tuning, the k-th unfrozen backbone block from the top
  learns at ``lr * d**k`` (the head, above them all, at ``lr``), and its decoupled
  weight decay is scaled alike, as timm's layer decay.
- ``train.ema``: the optimizer keeps an exponential moving average of the trainable
  weights (Keras' ``use_ema``).
"""

from __future__ import annotations

import math

import keras

from tftoolkit.data import DataInfo
from tftoolkit.models.layout import BACKBONE
from tftoolkit.models.transfer import block_of
from tftoolkit.recipe import Recipe, TrainConfig


@keras.saving.register_keras_serializable(package="tftoolkit")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """fastai's one-cycle: cosine from ``peak / div`` up to ``peak`` over the first
    ``warmup_steps``, then cosine down to ``peak / (div * final_div)`` at ``total_steps``."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int, div: float = 25.0,
                 final_div: float = 1e4):
        self.peak, self.total_steps, self.warmup_steps = peak, total_steps, warmup_steps
        self.div, self.final_div = div, final_div

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        start, end = self.peak / self.div, self.peak / (self.div * self.final_div)
        up = keras.ops.minimum(step / max(self.warmup_steps, 1), 1.0)
        down = keras.ops.clip((step - self.warmup_steps)
                              / max(self.total_steps - self.warmup_steps, 1), 0.0, 1.0)

        def cosine(a, b, t):
            return b + (a - b) * (1 + keras.ops.cos(math.pi * t)) / 2

        return keras.ops.where(step < self.warmup_steps, cosine(start, self.peak, up),
                               cosine(self.peak, end, down))

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "div": self.div,
                "final_div": self.final_div}


def learning_rate_schedule(cfg: TrainConfig, peak: float, total_steps: int,
                           steps_per_epoch: int):
    """The per-step learning rate of one stage (a float when it is constant)."""
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    if cfg.schedule == "one_cycle":
        return OneCycle(peak, total_steps, warmup or int(0.25 * total_steps))
    if cfg.schedule == "constant" and not warmup:
        return peak
    alpha = 1.0 if cfg.schedule == "constant" else 0.0
    if not warmup:
        return keras.optimizers.schedules.CosineDecay(peak, decay_steps, alpha=alpha)
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps, alpha=alpha,
                                                  warmup_target=peak, warmup_steps=warmup)


class _LayerwiseLearningRate:
    """Mixin: each variable's update, and its decoupled weight decay, use the learning
    rate times the variable's multiplier (as timm's layer-decay parameter groups, whose
    scaled rate scales both)."""

    def set_learning_rate_multipliers(self, multipliers: list[tuple]) -> None:
        """``[(variable, factor), ...]``; variables not named keep factor 1."""
        self._lr_multipliers = {self._var_key(v): f for v, f in multipliers}

    def _multiplier(self, variable) -> float:
        return getattr(self, "_lr_multipliers", {}).get(self._var_key(variable), 1.0)

    def _use_weight_decay(self, variable) -> bool:
        # Keras decays every variable at the base rate before the update; a variable with
        # its own rate decays in update_step instead, at that rate.
        return self._multiplier(variable) == 1.0 and super()._use_weight_decay(variable)

    def update_step(self, gradient, variable, learning_rate):
        factor = self._multiplier(variable)
        if factor != 1.0:
            learning_rate = keras.ops.cast(learning_rate, variable.dtype) * factor
            if self.weight_decay and super()._use_weight_decay(variable):
                decay = keras.ops.cast(self.weight_decay, variable.dtype)
                self.assign_sub(variable, variable * decay * learning_rate)
        return super().update_step(gradient, variable, learning_rate)


def _layerwise(cls: type) -> type:
    return keras.saving.register_keras_serializable(package="tftoolkit")(
        type(f"Layerwise{cls.__name__}", (_LayerwiseLearningRate, cls), {}))


OPTIMIZERS = {name: _layerwise(cls) for name, cls in (
    ("sgd", keras.optimizers.SGD), ("gd", keras.optimizers.SGD),
    ("adam", keras.optimizers.Adam), ("adamw", keras.optimizers.AdamW),
    ("rmsprop", keras.optimizers.RMSprop))}


def make_optimizer(cfg: TrainConfig, learning_rate) -> keras.optimizers.Optimizer:
    """The recipe's optimizer at ``learning_rate`` (a float or a schedule)."""
    options: dict = {"learning_rate": learning_rate}
    if cfg.optimizer in ("gd", "sgd", "rmsprop"):
        options["momentum"] = cfg.momentum
    if cfg.weight_decay:
        options["weight_decay"] = cfg.weight_decay
    elif cfg.optimizer == "adamw":
        options["weight_decay"] = 0.0
    if cfg.clip_norm:
        options["global_clipnorm"] = cfg.clip_norm
    if cfg.ema:
        options.update(use_ema=True, ema_momentum=cfg.ema)
    return OPTIMIZERS[cfg.optimizer](**options)


def block_learning_rate_multipliers(model: keras.Model, decay: float) -> list[tuple]:
    """``[(variable, decay**k), ...]`` for the trainable variables of the k-th trainable
    block of the backbone, counted from the top (k = 1); empty without backbone or decay."""
    if decay >= 1.0:
        return []
    try:
        backbone = model.get_layer(BACKBONE)
    except ValueError:
        return []
    blocks: list[str] = []
    for layer in reversed(backbone.layers):
        if layer.trainable_weights and block_of(layer.name) not in blocks:
            blocks.append(block_of(layer.name))
    return [(variable, decay ** (blocks.index(block_of(layer.name)) + 1))
            for layer in backbone.layers for variable in layer.trainable_weights]


def compile_model(model: keras.Model, recipe: Recipe, info: DataInfo, learning_rate=1e-3,
                  layer_decay_model: keras.Model | None = None) -> None:
    """Compile with the recipe's optimizer and the task's loss and metrics.

    Args:
        learning_rate: a float or a schedule.
        layer_decay_model: the inference model whose backbone blocks get
            ``train.layer_decay`` multipliers (None: one rate for every variable).
    """
    optimizer = make_optimizer(recipe.train, learning_rate)
    if recipe.train.weight_decay:
        optimizer.exclude_from_weight_decay(
            var_list=[v for v in model.trainable_variables if len(v.shape) <= 1])
    if layer_decay_model is not None:
        optimizer.set_learning_rate_multipliers(
            block_learning_rate_multipliers(layer_decay_model, recipe.train.layer_decay))
    loss = info.task.loss(recipe.regularize.label_smoothing,
                          balanced=recipe.data.class_weight == "balanced")
    model.compile(optimizer=optimizer, loss=loss, metrics=info.task.metrics())
