"""Loading the ``.keras`` files tftoolkit writes."""

from __future__ import annotations

from pathlib import Path

import keras

import tftoolkit.layers  # noqa: F401  (registers the toolkit's layers before any load)


def load_keras_model(path: str | Path) -> keras.Model:
    """The model saved at ``path``, without its training configuration."""
    return keras.models.load_model(path, compile=False)
