"""EfficientNet-Lite (Google's mobile EfficientNet, Model Maker's default backbone) in Keras.

EfficientNet-Lite is EfficientNet made to quantize well and run fast on phones: no
squeeze-excite, ReLU6 instead of swish, and a stem (32 channels) and head (1280
channels) that are never scaled. ``keras.applications`` has no Lite variant; this builds
one in the shape of its ``EfficientNet`` so that the layer names match theirs
(``stem_conv``, ``block2a_expand_conv``, ..., ``top_conv``): the toolkit's blocks
(``block2a``, ``block6d``) are those names' prefixes. Convolutions use TF's ``same``
padding, which is what the published ImageNet weights were trained with (symmetric
padding moves their logits by up to 1.4). Its weights expect ``(RGB - 127) / 128``.
"""

from __future__ import annotations

import math

import keras
from keras import layers

# (kernel, repeats, filters_in, filters_out, expand_ratio, strides) of each stage at
# width and depth 1.0 (Lite0).
BLOCKS_ARGS = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
STEM_FILTERS, HEAD_FILTERS = 32, 1280  # never scaled in the Lite variants
DEPTH_DIVISOR = 8
DROP_CONNECT_RATE = 0.2  # stochastic depth, rising to this rate at the last block
BN_EPSILON, BN_MOMENTUM = 1e-3, 0.99

# variant -> (width, depth, native input size, classifier dropout): the Lite variants
# whose ImageNet weights can be imported (Lite3 and Lite4 are (1.2, 1.4, 280, 0.3) and
# (1.4, 1.8, 300, 0.3), without published weights in a package registry).
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}

CONV_KERNEL_INITIALIZER = keras.initializers.VarianceScaling(
    scale=2.0, mode="fan_out", distribution="truncated_normal")
DENSE_KERNEL_INITIALIZER = keras.initializers.VarianceScaling(
    scale=1.0 / 3.0, mode="fan_out", distribution="uniform")


def round_filters(filters: int, width: float) -> int:
    """Channels scaled by ``width``, rounded to a multiple of 8, never 10% below."""
    scaled = filters * width
    rounded = max(DEPTH_DIVISOR, int(scaled + DEPTH_DIVISOR / 2) // DEPTH_DIVISOR
                  * DEPTH_DIVISOR)
    return rounded + DEPTH_DIVISOR if rounded < 0.9 * scaled else rounded


def stage_repeats(depth: float) -> list[int]:
    """Blocks per stage: scaled by ``depth`` (rounded up), except the first and last."""
    last = len(BLOCKS_ARGS) - 1
    return [repeats if i in (0, last) else int(math.ceil(depth * repeats))
            for i, (_, repeats, *_) in enumerate(BLOCKS_ARGS)]


def EfficientNetLite(variant: str, *, include_top: bool = False,
                     input_shape: tuple[int, int, int] | None = None, classes: int = 1000,
                     classifier_activation: str | None = "softmax",
                     name: str | None = None) -> keras.Model:
    """EfficientNet-Lite ``variant`` (a key of ``VARIANTS``) with random weights.

    Args:
        include_top: end with average pooling, dropout and the ``classes``-way
            ``predictions`` layer (ImageNet's classifier); else at ``top_activation``.
        input_shape: ``(height, width, 3)``; default the variant's native size.
        classifier_activation: of ``predictions``; None gives logits.
    """
    width, depth, size, dropout_rate = VARIANTS[variant]
    inputs = keras.Input(input_shape or (size, size, 3), name="input_layer")
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False,
                      kernel_initializer=CONV_KERNEL_INITIALIZER, name="stem_conv")(inputs)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                                  name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_activation")(x)

    repeats = stage_repeats(depth)
    total, b = float(sum(repeats)), 0
    for i, ((kernel, _, filters_in, filters_out, expand, strides), count) in enumerate(
            zip(BLOCKS_ARGS, repeats)):
        filters_in = STEM_FILTERS if i == 0 else round_filters(filters_in, width)
        filters_out = round_filters(filters_out, width)
        for j in range(count):
            x = _block(x, filters_in if j == 0 else filters_out, filters_out, kernel,
                       strides if j == 0 else 1, expand, DROP_CONNECT_RATE * b / total,
                       name=f"block{i + 1}{chr(j + 97)}_")
            b += 1

    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False,
                      kernel_initializer=CONV_KERNEL_INITIALIZER, name="top_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name="top_bn")(x)
    x = layers.ReLU(6.0, name="top_activation")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(dropout_rate, name="top_dropout")(x)
        x = layers.Dense(classes, activation=classifier_activation,
                         kernel_initializer=DENSE_KERNEL_INITIALIZER, name="predictions")(x)
    return keras.Model(inputs, x, name=name or variant)


def _block(inputs, filters_in: int, filters_out: int, kernel: int, strides: int,
           expand_ratio: int, drop_rate: float, name: str):
    """An inverted residual block: 1x1 expansion, depthwise conv, 1x1 linear projection."""
    filters = filters_in * expand_ratio
    x = inputs
    if expand_ratio != 1:
        x = layers.Conv2D(filters, 1, padding="same", use_bias=False,
                          kernel_initializer=CONV_KERNEL_INITIALIZER,
                          name=f"{name}expand_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                                      name=f"{name}expand_bn")(x)
        x = layers.ReLU(6.0, name=f"{name}expand_activation")(x)
    x = layers.DepthwiseConv2D(kernel, strides=strides, padding="same", use_bias=False,
                               depthwise_initializer=CONV_KERNEL_INITIALIZER,
                               name=f"{name}dwconv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                                  name=f"{name}bn")(x)
    x = layers.ReLU(6.0, name=f"{name}activation")(x)
    x = layers.Conv2D(filters_out, 1, padding="same", use_bias=False,
                      kernel_initializer=CONV_KERNEL_INITIALIZER,
                      name=f"{name}project_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                                  name=f"{name}project_bn")(x)
    if strides == 1 and filters_in == filters_out:
        if drop_rate > 0:
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{name}drop")(x)
        x = layers.add([x, inputs], name=f"{name}add")
    return x
