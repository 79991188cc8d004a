"""Optimizers, learning rates and the loss a recipe trains with."""

from __future__ import annotations

import keras

from tftoolkit.data import DataInfo
from tftoolkit.recipe import Recipe, TrainConfig


def make_optimizer(cfg: TrainConfig, learning_rate: float) -> keras.optimizers.Optimizer:
    """``gd``/``sgd`` (plain or momentum SGD; gd runs on full batches) or ``adam``."""
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate)
    return keras.optimizers.SGD(learning_rate, momentum=cfg.momentum)


def compile_model(model: keras.Model, recipe: Recipe, info: DataInfo,
                  learning_rate: float) -> None:
    """Compile with the recipe's optimizer, the data's loss and its metric."""
    encoding = info.label_encoding
    model.compile(optimizer=make_optimizer(recipe.train, learning_rate),
                  loss=encoding.loss(recipe.regularize.label_smoothing),
                  metrics=[encoding.metric])
