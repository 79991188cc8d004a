"""Transfer models: raw pixels -> preprocessing -> backbone -> new head.

Modes (``model.mode``):
- ``feature_extraction``: the backbone is frozen and called with ``training=False``,
  so BatchNorm uses its moving statistics; only the head trains.
- ``fine_tune``: the top of the backbone (whole blocks) trains too, at a lower learning
  rate; BatchNorm layers stay frozen and in inference mode.
- ``two_stage``: feature extraction first, then fine-tuning (the runner switches).
- ``scratch``: the same architecture from random weights, all trainable.
"""

from __future__ import annotations

import re
from pathlib import Path

import keras

from tftoolkit.errors import RecipeError, WeightsError
from tftoolkit.layers import GreyPixels, Preprocess
from tftoolkit.models.layout import (BACKBONE, BACKBONE_POOL, FEATURES, HEAD_DROPOUT, PIXELS,
                                     PREPROCESS)
from tftoolkit.models.registry import ArchitectureSpec
from tftoolkit.models.saving import load_keras_model
from tftoolkit.models.scratch import output_layer
from tftoolkit.models.weights import build_backbone
from tftoolkit.tasks import Task

# Block prefixes of keras.applications layer names: block_13_expand, block6a_se,
# conv5_block3_1_conv, convnext_tiny_stage_3_block_2_..., mixed7, block14_sepconv2,
# MobileNetV3's expanded_conv_8_squeeze_excite_relu (its first block: expanded_conv_...).
_BLOCK = re.compile(
    r"^(.*?(?:stage_\d+_block_\d+|block_?\d+[a-z]?|mixed\d+|expanded_conv(?:_\d+)?))(?:_|$)")


# Layers Keras names by their class alone (MobileNetV3's activation_12 and re_lu_8,
# Xception's add_2, inside their blocks): they belong to the block of the layer before.
_UNNAMED = re.compile(r"^(activation|re_lu|multiply|add)(_\d+)?$")


def block_of(layer_name: str) -> str:
    """The block a layer belongs to (the layer's own name when it is in no block)."""
    match = _BLOCK.match(layer_name)
    return match.group(1) if match else layer_name


def _blocks(layers: list) -> list[str]:
    """The block of each of ``layers`` in order, a layer named by its class alone in
    the block of the layer before it."""
    blocks: list[str] = []
    for layer in layers:
        unnamed = blocks and _UNNAMED.match(layer.name)
        blocks.append(blocks[-1] if unnamed else block_of(layer.name))
    return blocks


def _load_keras_backbone(path: Path, layer_name: str) -> keras.Model:
    """A backbone cut from a saved ``.keras`` model (a named layer, or all but the last)."""
    if not path.is_file():
        raise WeightsError(f"model.architecture={str(path)!r}: no such .keras file")
    model = load_keras_model(path, recipe_key="model.architecture")
    if layer_name:
        try:
            output = model.get_layer(layer_name).output
        except ValueError:
            names = [layer.name for layer in model.layers]
            raise RecipeError(f"model.backbone_layer={layer_name!r} is not a layer of {path} "
                              f"(layers: {', '.join(names)})") from None
    else:
        output = model.layers[-2].output
    return keras.Model(model.inputs, output, name=BACKBONE)


def build_transfer_model(spec: ArchitectureSpec, *, weights: str, mode: str,
                         unfreeze: int | float | str, input_shape: tuple[int, int, int],
                         task: Task, dropout: float = 0.0,
                         backbone_layer: str = "", pixel_features: int = 0) -> keras.Model:
    """The inference model: raw RGB 0-255 in, ``task``'s predictions out.

    Args:
        spec: the backbone's registry entry (or that of a ``.keras`` file).
        weights: ``model.weights`` (ignored for ``scratch``: random initialisation).
        mode: ``model.mode``; the backbone is frozen for the first stage.
        unfreeze: ``model.unfreeze``, the top of the backbone that fine-tuning trains.
        backbone_layer: for a ``.keras`` file, the layer whose output is the backbone's.
        pixel_features: N > 0 (``feature_extraction`` only): the features are the pooled
            backbone output followed by the image's N x N grey pixels (``GreyPixels``).
    """
    if pixel_features and mode != "feature_extraction":
        raise RecipeError(f"model.pixel_features={pixel_features} is for a frozen backbone "
                          f"(feature_extraction), not {mode}")
    if spec.name.endswith(".keras"):
        backbone = _load_keras_backbone(Path(spec.name), backbone_layer)
        preprocess = Preprocess("none", source=f"the layers of {spec.name}", name=PREPROCESS)
    else:
        backbone, preprocess = build_backbone(
            spec, "none" if mode == "scratch" else weights, input_shape)
    inputs = keras.Input(input_shape, name="image")
    x = preprocess(inputs)
    # Frozen or fine-tuned backbones always run in inference mode (BatchNorm statistics
    # stay as pretrained); a scratch backbone follows the training flag.
    x = backbone(x, training=False) if mode != "scratch" else backbone(x)
    pooled = BACKBONE_POOL if pixel_features else FEATURES
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name=pooled)(x)
    elif len(x.shape) == 3:  # a transformer's tokens (KerasHub ViT, DINOv2): their mean
        x = keras.layers.GlobalAveragePooling1D(name=pooled)(x)
    if pixel_features:
        x = keras.layers.Concatenate(name=FEATURES)(
            [x, GreyPixels(pixel_features, name=PIXELS)(inputs)])
    if dropout:
        x = keras.layers.Dropout(dropout, name=HEAD_DROPOUT)(x)
    model = keras.Model(inputs, output_layer(task)(x),
                        name=f"{Path(spec.name).stem}_{mode}")
    set_trainable(model, "feature_extraction" if mode == "two_stage" else mode, unfreeze)
    return model


def backbone_of(model: keras.Model) -> keras.Model:
    """The nested backbone model of a transfer model."""
    return model.get_layer(BACKBONE)


def unfreeze_start(backbone: keras.Model, unfreeze: int | float | str) -> int:
    """Index of the first backbone layer that fine-tuning trains, on a block boundary."""
    layers = backbone.layers
    n = len(layers)
    if isinstance(unfreeze, str):
        hits = [i for i, layer in enumerate(layers)
                if layer.name == unfreeze or block_of(layer.name) == unfreeze]
        if not hits:
            blocks = sorted({block_of(layer.name) for layer in layers}, key=len)
            raise RecipeError(f"model.unfreeze={unfreeze!r} is no layer or block of the "
                              f"backbone (blocks include: {', '.join(blocks[-8:])})")
        start = hits[0]
    elif isinstance(unfreeze, float):
        if not 0 <= unfreeze <= 1:
            raise RecipeError(f"model.unfreeze={unfreeze}: a fraction must be in [0, 1]")
        start = n - int(round(unfreeze * n))
    else:
        count = int(unfreeze)
        if count < 0:
            raise RecipeError(f"model.unfreeze={unfreeze}: a layer count must be >= 0")
        start = max(n - count, 0)
    # Never half a block: move the boundary down to the start of its block.
    blocks = _blocks(layers)
    while 0 < start < n and blocks[start] == blocks[start - 1]:
        start -= 1
    return start


def set_trainable(model: keras.Model, mode: str, unfreeze: int | float | str = 0) -> None:
    """Freeze/unfreeze the backbone of ``model`` for ``mode``; the head always trains."""
    try:
        backbone = backbone_of(model)
    except ValueError:
        return
    if mode == "scratch":
        backbone.trainable = True
        return
    if mode == "feature_extraction":
        backbone.trainable = False
        return
    backbone.trainable = True
    start = unfreeze_start(backbone, unfreeze)
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= start and not isinstance(layer,
                                                        keras.layers.BatchNormalization)
