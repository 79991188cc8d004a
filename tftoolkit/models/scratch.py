"""From-scratch builders: linear model, multi-layer perceptron, small CNN (registered)."""

from __future__ import annotations

import keras

from tftoolkit.errors import RecipeError
from tftoolkit.tasks import Task
from tftoolkit.models.layout import FEATURES, OUTPUT
from tftoolkit.models.registry import ArchitectureSpec, register_architecture


def output_layer(task: Task) -> keras.layers.Dense:
    """The output layer of ``task``'s head (float32 even under mixed precision)."""
    return keras.layers.Dense(task.output_units, activation=task.activation, dtype="float32",
                              name=OUTPUT)


def linear(*, input_shape: tuple[int, ...], task: Task, **_) -> keras.Model:
    """y = Wx + b (logistic/softmax regression for class labels)."""
    inputs = keras.Input(input_shape, name="features")
    return keras.Model(inputs, output_layer(task)(inputs), name="linear")


def mlp(*, input_shape: tuple[int, ...], task: Task,
        hidden: list[int], activation: str, dropout: float = 0.0, **_) -> keras.Model:
    """Fully connected layers of sizes ``hidden`` with ``activation``, then the output."""
    inputs = keras.Input(input_shape, name="features")
    x = keras.layers.Flatten()(inputs) if len(input_shape) > 1 else inputs
    for i, units in enumerate(hidden):
        x = keras.layers.Dense(units, activation=activation, name=f"hidden_{i}")(x)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    return keras.Model(inputs, output_layer(task)(x), name="mlp")


def cnn(*, input_shape: tuple[int, ...], task: Task,
        filters: list[int], activation: str, dropout: float = 0.0, **_) -> keras.Model:
    """Conv-BatchNorm-activation-pool blocks on raw 0-255 pixels, pooled, then the output."""
    if len(input_shape) != 3:
        raise RecipeError(f"model.architecture='cnn' needs images, got inputs of shape "
                          f"{input_shape}")
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    for i, n in enumerate(filters):
        x = keras.layers.Conv2D(n, 3, padding="same", use_bias=False, name=f"conv_{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn_{i}")(x)
        x = keras.layers.Activation(activation)(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D(name=FEATURES)(x)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    return keras.Model(inputs, output_layer(task)(x), name="cnn")


SCRATCH_ARCHITECTURES = tuple(register_architecture(spec).name for spec in (
    ArchitectureSpec("linear", "tabular", None, ("scratch",), linear),
    ArchitectureSpec("mlp", "tabular", None, ("scratch",), mlp),
    ArchitectureSpec("cnn", "image", 0, ("scratch",), cnn),
))
