"""Models: from-scratch builders and pretrained backbones adapted by transfer learning.

``build_model(recipe, info)`` returns the *inference model* (what is evaluated and
exported). Augmentation never goes in it: training wraps it (see ``tftoolkit.augment``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tftoolkit.errors import RecipeError
from tftoolkit.models.backbones import BACKBONES
from tftoolkit.recipe import Recipe, _suggest

if TYPE_CHECKING:
    import keras

    from tftoolkit.data import DataInfo

SCRATCH_ARCHITECTURES = ("linear", "mlp", "cnn")


def check_architecture(recipe: Recipe) -> None:
    """Fail early on an unknown architecture or a mode it does not support."""
    arch, mode = recipe.model.architecture, recipe.model.mode
    if arch in SCRATCH_ARCHITECTURES:
        if mode != "scratch":
            raise RecipeError(f"model.mode={mode!r} needs a pretrained backbone; "
                              f"model.architecture={arch!r} is built from scratch "
                              "(use model.mode=scratch)")
        return
    if arch in BACKBONES or arch.endswith(".keras"):
        return
    known = list(SCRATCH_ARCHITECTURES) + list(BACKBONES)
    raise RecipeError(f"model.architecture={arch!r} is unknown{_suggest(arch, known)} "
                      f"(choices: {', '.join(known)}, or a path to a .keras model)")


def input_size(recipe: Recipe) -> int | None:
    """Square image side the model takes; None for feature-vector models."""
    if recipe.data.image_size:
        return recipe.data.image_size
    if recipe.model.architecture in ("linear", "mlp"):
        return None
    if recipe.model.architecture == "cnn":
        return 0  # native size of the data
    from tftoolkit.models.transfer import default_input_size

    return default_input_size(recipe.model.architecture)


def build_model(recipe: Recipe, info: "DataInfo | None" = None) -> "keras.Model":
    """Build the inference model of ``recipe`` (loads the data description if not given)."""
    from tftoolkit.models import scratch
    from tftoolkit.models.regularize import apply_kernel_regularizer
    from tftoolkit.models.transfer import build_transfer_model

    if info is None:
        from tftoolkit.data import load_data

        info = load_data(recipe, input_size(recipe)).info
    m, dropout = recipe.model, recipe.regularize.dropout
    shape, outputs, encoding = info.input_shape, info.num_outputs, info.encoding
    if recipe.model_fn is not None:
        model = recipe.model_fn(recipe, info)
    elif m.architecture == "linear":
        model = scratch.linear(shape, outputs, encoding)
    elif m.architecture == "mlp":
        model = scratch.mlp(shape, outputs, encoding, m.hidden, m.activation, dropout)
    elif m.architecture == "cnn":
        model = scratch.cnn(shape, outputs, encoding, m.filters, m.activation, dropout)
    else:
        if info.image_size is None:
            raise RecipeError(f"model.architecture={m.architecture!r} needs image data; "
                              f"{info.description} holds feature vectors")
        model = build_transfer_model(m.architecture, m.weights, m.mode, m.unfreeze, shape,
                                     outputs, encoding, dropout, m.backbone_layer)
    apply_kernel_regularizer(model, recipe.regularize.kernel, recipe.regularize.strength)
    return model


def load_keras_model(path) -> "keras.Model":
    """Load a ``.keras`` model saved by tftoolkit, its custom layers registered first."""
    import keras

    import tftoolkit.augment  # noqa: F401  (registers RandomResizedCrop, FusedGeometric)
    import tftoolkit.models.backbones  # noqa: F401  (registers Preprocess)

    return keras.models.load_model(path, compile=False)


__all__ = ["BACKBONES", "SCRATCH_ARCHITECTURES", "build_model", "check_architecture",
           "input_size", "load_keras_model"]
