"""Loading the ``.keras`` files tftoolkit writes, and those a recipe names."""

from __future__ import annotations

import re
from pathlib import Path

import keras

import tftoolkit.layers  # noqa: F401  (registers the toolkit's layers before any load)
from tftoolkit.errors import RecipeError, TftoolkitError

# What keras.models.load_model says of a Lambda layer (refused: its code could be anything)
LAMBDA_REFUSED = "deserialization of a `Lambda` layer"
UNKNOWN_CLASS = re.compile(r"Could not locate class '([^']+)'")
REGISTER = ("a layer class registered with @keras.saving.register_keras_serializable(), "
            "defined or imported in the recipe file")


def load_keras_model(path: str | Path, recipe_key: str = "") -> keras.Model:
    """The model saved at ``path``, without its training configuration. A file Keras does
    not load is refused with why and the fix, naming ``recipe_key`` (such as
    ``model.architecture``) when a recipe names the file: a Lambda layer (its Python code
    is not loaded from a file, which could run anything), a layer class unknown here, a
    file that is not a ``.keras`` archive."""
    try:
        return keras.models.load_model(path, compile=False)
    except (ValueError, TypeError) as exc:
        text = str(exc)
        where = f"{recipe_key}={str(path)!r}" if recipe_key else str(path)
        error = RecipeError if recipe_key else TftoolkitError
        unknown = UNKNOWN_CLASS.search(text)
        if LAMBDA_REFUSED in text:
            raise error(f"{where}: the model holds a Lambda layer, whose Python code Keras "
                        "does not load from a file (it could run anything); replace it with "
                        f"{REGISTER}, and save the model again") from None
        if unknown:
            raise error(f"{where}: the model uses the layer class {unknown[1]!r}, which is "
                        f"not known here; make it {REGISTER}") from None
        if "zip file" in text:
            raise error(f"{where}: not a .keras file (the zip archive model.save writes)"
                        ) from None
        detail = text.strip().splitlines()[0][:300] if text.strip() else ""
        raise error(f"{where}: Keras cannot load the model: {type(exc).__name__}: {detail}"
                    ) from exc
