"""The plain Keras way that the toolkit is measured against: compile and fit."""

from __future__ import annotations

import time

import keras

import tftoolkit
from tftoolkit.data import DataBundle
from tftoolkit.recipe import Recipe

# The training plain_keras_fit does: Adam at a constant rate, plain cross-entropy, no
# gradient clipping or weight average, the last epoch kept. A benchmark of the training
# loop's own cost sets these in its recipe, so that both sides do the same work.
PLAIN_TRAINING = {"train.optimizer": "adam", "train.weight_decay": 0.0,
                  "train.schedule": "constant", "train.warmup_epochs": 0.0,
                  "train.clip_norm": 0.0, "train.ema": 0.0, "train.select_best": "",
                  "regularize.label_smoothing": 0.0}


def plain_keras_fit(recipe: Recipe, data: DataBundle, epochs: int) -> tuple[keras.Model, float]:
    """The recipe's model trained by a hand-written ``compile``/``fit`` on the same data
    and batches; returns the model and the seconds ``fit`` took."""
    keras.utils.set_random_seed(recipe.train.seed)
    model = tftoolkit.build_model(recipe, data.info)
    model.compile(keras.optimizers.Adam(recipe.train.learning_rate),
                  keras.losses.CategoricalCrossentropy(), metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(data.dataset("train", training=True), validation_data=data.dataset("val"),
              steps_per_epoch=data.steps_per_epoch("train", recipe.train.batch_size),
              epochs=epochs, verbose=0)
    return model, time.perf_counter() - start
