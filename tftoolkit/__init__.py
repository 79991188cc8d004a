"""tftoolkit: transfer learning and image augmentation recipes for Keras 3 / TensorFlow.

The public API follows the data flow: a recipe is loaded, its data read, its model
built and trained, and the result exported for serving.
"""

__version__ = "0.1.0"

from tftoolkit.errors import (DataError, ExportError, RecipeError,  # noqa: E402
                              TftoolkitError, WeightsError)
from tftoolkit.recipe import Recipe, load_recipe  # noqa: E402


def build_model(recipe, info=None):
    """The inference ``keras.Model`` of ``recipe`` (see :func:`tftoolkit.models.build_model`)."""
    from tftoolkit.models import build_model as _build

    return _build(load_recipe(recipe), info)


def train(recipe, overrides=None):
    """Train ``recipe`` (a Recipe, name or path); see :func:`tftoolkit.training.train`."""
    from tftoolkit.training import train as _train

    return _train(recipe, overrides)


def export(run_dir, to=None):
    """Export a run directory as a new SavedModel version; returns its path."""
    from tftoolkit.serving import export_run

    return export_run(run_dir, to)


def evaluate(path, split="test", tta=0, out=None):
    """Evaluate a run directory or export; see :func:`tftoolkit.evaluation.evaluate`."""
    from tftoolkit.evaluation import evaluate as _evaluate

    return _evaluate(path, split, tta, out)


__all__ = ["DataError", "ExportError", "Recipe", "RecipeError", "TftoolkitError",
           "WeightsError", "build_model", "evaluate", "export", "load_recipe", "train"]
