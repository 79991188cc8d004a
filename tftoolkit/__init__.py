"""tftoolkit: transfer learning and image augmentation recipes for Keras 3 / TensorFlow.

The public API follows the data flow: a recipe is loaded, its data read, its model
built and trained, and the result exported for serving. Importing the package
registers the toolkit's Keras layers and training objects, so ``keras.models.load_model``
reads every ``.keras`` file the toolkit writes.
"""

__version__ = "0.1.0"

from pathlib import Path

import keras

import tftoolkit.detection.losses  # noqa: F401  (registers the detector's losses)
import tftoolkit.layers  # noqa: F401  (registers the custom layers)
from tftoolkit import quiet
from tftoolkit.data import DataInfo, load_data
from tftoolkit.errors import DataError, ExportError, RecipeError, TftoolkitError, WeightsError
from tftoolkit.evaluation import evaluate, explain
from tftoolkit.models import build_model as _build_model
from tftoolkit.models import input_size
from tftoolkit.recipe import Recipe, load_recipe
from tftoolkit.serving import export_run, predict
from tftoolkit.training import TrainResult, compare, lr_find, train

quiet.install()


def build_model(recipe: Recipe | str, info: DataInfo | None = None) -> keras.Model:
    """The inference ``keras.Model`` of ``recipe`` (a Recipe, name or path).

    Args:
        recipe: the recipe.
        info: the data description; read from the recipe's data when not given.
    """
    recipe = load_recipe(recipe)
    if info is None:
        info = load_data(recipe, input_size(recipe)).info
    return _build_model(recipe, info)


def export(run_dir: str | Path, to: str | Path | None = None) -> Path:
    """Export a run directory as a new SavedModel version; returns its path."""
    return export_run(run_dir, to)


__all__ = ["DataError", "ExportError", "Recipe", "RecipeError", "TftoolkitError",
           "TrainResult", "WeightsError", "build_model", "compare", "evaluate", "explain",
           "export", "load_recipe", "lr_find", "predict", "train"]
