"""The detector: an anchor-based single-stage network on any registry backbone.

``raw RGB 0-255 -> Preprocess (the backbone's own) -> backbone taps -> detection head``.
The backbone is cut at the last layer of each output stride the task's head takes
(:attr:`~tftoolkit.tasks.Task.feature_strides`; for MobileNetV2 at 8/16/32:
``block_6_expand_relu``, ``block_13_expand_relu``, ``out_relu``), so the same rule fits
every backbone of the registry; the head is the task's
(:mod:`tftoolkit.detection.head`).

Modes follow classifiers (:mod:`tftoolkit.models.transfer`): the backbone is frozen and
runs in inference mode (``feature_extraction``), or its top blocks train with BatchNorm
still in inference mode (``fine_tune``, :func:`~tftoolkit.models.transfer.set_trainable`);
``scratch`` trains it all from random weights.
"""

from __future__ import annotations

import keras

from tftoolkit.detection.head import HEAD
from tftoolkit.errors import RecipeError
from tftoolkit.models.layout import BACKBONE, PREPROCESS
from tftoolkit.models.registry import ArchitectureSpec
from tftoolkit.models.transfer import set_trainable
from tftoolkit.models.weights import build_backbone
from tftoolkit.tasks import Task


def feature_taps(backbone: keras.Model, strides: tuple[int, ...], image_size: int
                 ) -> list[str]:
    """The layer of ``backbone`` whose output is the last feature map at each stride
    (``image_size / stride`` cells a side)."""
    last: dict[int, str] = {}
    for layer in backbone.layers:
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):  # several outputs or calls: not a tap
            continue
        if len(shape) == 4 and shape[1] == shape[2] and shape[1]:
            last[image_size // shape[1] if image_size % shape[1] == 0 else -1] = layer.name
    missing = [s for s in strides if s not in last]
    if missing:
        found = sorted(s for s in last if s > 0)
        raise RecipeError(f"backbone {backbone.name!r} at {image_size} px has no feature map "
                          f"at stride(s) {missing} (it has strides {found}); choose "
                          "model.anchor_strides among those")
    return [last[s] for s in strides]


def build_detector(spec: ArchitectureSpec, *, weights: str, mode: str, image_size: int,
                   task: Task, unfreeze: int | float | str = 0) -> keras.Model:
    """The inference model: raw RGB 0-255 ``[batch, image_size, image_size, 3]`` in,
    the head's predictions out (see the module docstring).

    Args:
        spec: a registry backbone; ``weights``, ``mode`` and ``unfreeze`` mean what the
            ``model`` keys of the same names mean for classifiers.
        task: what the head is: its :attr:`~tftoolkit.tasks.Task.feature_strides` and
            :meth:`~tftoolkit.tasks.Task.head`.
    """
    if spec.kind != "backbone" or spec.name.endswith(".keras"):
        raise RecipeError(f"model.architecture={spec.name!r}: a detector needs a registry "
                          "backbone (mobilenet_v2, resnet50, ...)")
    strides = task.feature_strides
    input_shape = (image_size, image_size, 3)
    backbone, preprocess = build_backbone(
        spec, "none" if mode == "scratch" else weights, input_shape)
    taps = feature_taps(backbone, strides, image_size)
    ordered = sorted(zip(strides, taps))
    tapped = keras.Model(backbone.inputs, [backbone.get_layer(name).output
                                           for _, name in ordered], name=BACKBONE)
    inputs = keras.Input(input_shape, name="image")
    x = preprocess(inputs)
    features = tapped(x, training=False) if mode != "scratch" else tapped(x)
    head = task.head([tuple(f.shape[1:]) for f in features])
    model = keras.Model(inputs, head(features), name=f"{spec.name}_detector")
    set_trainable(model, "feature_extraction" if mode == "two_stage" else mode, unfreeze)
    return model


def split_detector(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """The detector as two models sharing its layers: raw pixels -> the tapped feature
    maps (preprocessing and backbone in inference mode), and the head, feature maps ->
    predictions."""
    inputs = keras.Input(model.input_shape[1:], name="image")
    features = model.get_layer(BACKBONE)(model.get_layer(PREPROCESS)(inputs), training=False)
    return keras.Model(inputs, features, name="detector_features"), model.get_layer(HEAD)
