"""Export: SavedModel versions that serve exactly what the model predicts, and predict.

``export_run`` exports a finished run directory (right after training, or later);
``predict`` reads only an export (no recipe, no training code).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from tftoolkit.data import DataBundle, DataInfo
from tftoolkit.errors import ExportError
from tftoolkit.models import load_keras_model
from tftoolkit.models.layout import PREPROCESS
from tftoolkit.rundir import RunDir
from tftoolkit.serving.predict import predict
from tftoolkit.serving.savedmodel import export_model

PARITY_EXAMPLES = 16


def _preprocessing(model: keras.Model) -> str:
    try:
        return model.get_layer(PREPROCESS).mode
    except ValueError:
        return "none (raw inputs)"


def _card(model: keras.Model, recipe: dict, info: DataInfo, metrics: dict) -> dict:
    return {"recipe": recipe["name"], "resolved_recipe": recipe, "data_info": info.to_dict(),
            "dataset": info.description, "split_sizes": info.counts,
            "preprocessing": _preprocessing(model),
            "input": "float RGB pixels 0-255, any size (resized inside)"
            if info.image_size else "feature vectors",
            "metrics": metrics, "seed": recipe["train"]["seed"],
            "train_seconds": metrics.get("train_seconds")}


def save_parity_inputs(run: RunDir, data: DataBundle) -> None:
    """Keep a batch of real, un-augmented validation inputs for the export parity check."""
    split = "val" if "val" in data.splits else "train"
    batch = next(iter(data.dataset(split, batch_size=PARITY_EXAMPLES)))
    np.save(run / RunDir.PARITY_INPUTS, np.asarray(batch[0], dtype=np.float32))


def export_run(run_dir: str | Path, to: str | Path | None = None,
               model: keras.Model | None = None) -> Path:
    """Export the model of ``run_dir`` as the next version under ``to`` (default: the
    recipe's ``export.dir/<recipe>``). Returns the version directory."""
    run = RunDir(run_dir)
    missing = run.missing([RunDir.RECIPE, RunDir.DATA_INFO, RunDir.METRICS, RunDir.MODEL,
                           RunDir.PARITY_INPUTS])
    if missing:
        raise ExportError(f"{run} is not a complete run directory: missing "
                          f"{', '.join(missing)}")
    recipe = run.read_json(RunDir.RECIPE)
    info, metrics = run.read_info(), run.read_metrics()
    if model is None:
        model = load_keras_model(run / RunDir.MODEL)
    root = Path(to) if to else Path(recipe["export"]["dir"]) / recipe["name"]
    card = {**_card(model, recipe, info, metrics), "run_dir": str(run)}
    return export_model(model, info, root, parity_inputs=np.load(run / RunDir.PARITY_INPUTS),
                        card=card, tolerance=recipe["export"]["tolerance"],
                        mixed_precision=recipe["train"]["precision"] != "float32",
                        formats=recipe["export"].get("formats", []))


__all__ = ["export_model", "export_run", "predict", "save_parity_inputs"]
