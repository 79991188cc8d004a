"""Models: from-scratch builders and pretrained backbones adapted by transfer learning.

``build_model(recipe, info)`` returns the *inference model* (what is evaluated and
exported). Augmentation never goes in it: training wraps it (see ``tftoolkit.augment``).
Which architectures exist, and what each needs, is the registry's
(``tftoolkit.models.registry``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras

from tftoolkit.errors import RecipeError
from tftoolkit.models.backbones import BACKBONES
from tftoolkit.models.detector import build_detector
from tftoolkit.models.hub import HUB_PREFIX  # registers hub:PRESET architectures
from tftoolkit.models.layout import PREPROCESS
from tftoolkit.models.registry import (ARCHITECTURES, MODES, ArchitectureSpec,
                                       check_architecture, get_architecture,
                                       mode_without_choice)
from tftoolkit.models.regularize import apply_kernel_regularizer
from tftoolkit.models.saving import load_keras_model
from tftoolkit.models.scratch import SCRATCH_ARCHITECTURES
from tftoolkit.models.transfer import build_transfer_model
from tftoolkit.models.weights import INPUT_TOO_SMALL

if TYPE_CHECKING:  # annotations only: models never import the stages before them
    from tftoolkit.data import DataInfo
    from tftoolkit.recipe import Recipe


def input_size(recipe: "Recipe") -> int | None:
    """Square image side the model takes (0: the data's own); None for feature vectors."""
    if recipe.data.image_size:
        return recipe.data.image_size
    return get_architecture(recipe.model.architecture).default_size


def preprocessing_of(model: keras.Model) -> tuple[str, str]:
    """The model's in-graph preprocessing, and the pretrained weights it belongs to ("" for
    a model without pretrained weights)."""
    try:
        layer = model.get_layer(PREPROCESS)
    except ValueError:
        return "none (raw inputs)", ""
    return layer.mode, layer.source


def build_model(recipe: "Recipe", info: "DataInfo") -> keras.Model:
    """Build the inference model of ``recipe`` for data described by ``info``
    (``model.mode=auto`` with pretrained weights: as for feature extraction, where
    training starts; training itself chooses the mode)."""
    m, dropout = recipe.model, recipe.regularize.dropout
    if recipe.model_fn is not None:
        model = recipe.model_fn(recipe, info)
    else:
        mode = mode_without_choice(m.architecture, m.mode, m.weights) or "feature_extraction"
        spec = check_architecture(m.architecture, mode)
        if spec.kind == "backbone":
            if info.image_size is None:
                raise RecipeError(f"model.architecture={m.architecture!r} needs image data; "
                                  f"{info.description} holds feature vectors")
            try:
                if info.task.feature_strides:  # a head on feature maps (a detector)
                    model = build_detector(spec, weights=m.weights, mode=mode,
                                           image_size=info.image_size, task=info.task,
                                           unfreeze=m.unfreeze)
                else:
                    model = build_transfer_model(
                        spec, weights=m.weights, mode=mode, unfreeze=m.unfreeze,
                        input_shape=info.input_shape, task=info.task, dropout=dropout,
                        backbone_layer=m.backbone_layer,
                        pixel_features=m.pixel_features if mode == "feature_extraction"
                        else 0)
            except ValueError as exc:
                smallest = INPUT_TOO_SMALL.search(str(exc))
                if smallest is None:
                    raise
                raise RecipeError(
                    f"data.image_size={info.image_size} is too small for "
                    f"model.architecture={m.architecture!r}, which takes images of at least "
                    f"{smallest[1]}x{smallest[1]} pixels: --set data.image_size="
                    f"{smallest[1]} or more (0: its default, {spec.default_size})") from None
        elif info.task.feature_strides:
            raise RecipeError(f"model.architecture={m.architecture!r}: a {info.task.name} "
                              "model needs a registry backbone (mobilenet_v2, resnet50, ...)")
        else:
            model = spec.build(input_shape=info.input_shape, task=info.task, hidden=m.hidden,
                               filters=m.filters, activation=m.activation, dropout=dropout)
    apply_kernel_regularizer(model, recipe.regularize.kernel, recipe.regularize.strength)
    return model


__all__ = ["ARCHITECTURES", "BACKBONES", "HUB_PREFIX", "MODES", "SCRATCH_ARCHITECTURES",
           "ArchitectureSpec", "build_model", "check_architecture", "get_architecture",
           "input_size", "load_keras_model", "preprocessing_of"]
