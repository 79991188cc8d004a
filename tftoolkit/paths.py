"""Folders outside a run that tftoolkit reads and writes: Keras' cache and what lives in it."""

from __future__ import annotations

import os
from pathlib import Path


def keras_home() -> Path:
    """Keras' cache root (``$KERAS_HOME``, default ``~/.keras``)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))


def keras_datasets_dir() -> Path:
    """Where Keras' dataset loaders look for downloaded files."""
    return keras_home() / "datasets"


def keras_models_dir() -> Path:
    """Where Keras caches pretrained weights files."""
    return keras_home() / "models"


def imported_weights_dir() -> Path:
    """Where weights imported by ``tftoolkit weights import`` live."""
    return keras_models_dir() / "tftoolkit"
