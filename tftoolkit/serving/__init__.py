"""Export: SavedModel versions that serve exactly what the model predicts, and predict.

``export_result`` exports a finished training run; ``export_run`` re-exports a run
directory later; ``predict`` reads only an export (no recipe, no training code).
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np

from tftoolkit.data import DataBundle, DataInfo
from tftoolkit.errors import ExportError
from tftoolkit.models import load_keras_model
from tftoolkit.serving.predict import predict
from tftoolkit.serving.savedmodel import export_model

PARITY_FILE = "parity_inputs.npy"
PARITY_EXAMPLES = 16


def _preprocessing(model: keras.Model) -> str:
    try:
        return model.get_layer("preprocess").mode
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


def save_parity_inputs(run_dir: Path, data: DataBundle) -> None:
    """Keep a batch of real, un-augmented validation inputs for the export parity check."""
    split = "val" if "val" in data.splits else "train"
    batch = next(iter(data.dataset(split, batch_size=PARITY_EXAMPLES)))
    np.save(run_dir / PARITY_FILE, np.asarray(batch[0], dtype=np.float32))


def export_run(run_dir: str | Path, to: str | Path | None = None,
               model: keras.Model | None = None) -> Path:
    """Export the model of ``run_dir`` as the next version under ``to`` (default: the
    recipe's ``export.dir/<recipe>``). Returns the version directory."""
    run_dir = Path(run_dir)
    needed = ["recipe.json", "data_info.json", "metrics.json", "model.keras", PARITY_FILE]
    missing = [name for name in needed if not (run_dir / name).is_file()]
    if missing:
        raise ExportError(f"{run_dir} is not a complete run directory: missing "
                          f"{', '.join(missing)}")
    recipe = json.loads((run_dir / "recipe.json").read_text())
    info = DataInfo.from_dict(json.loads((run_dir / "data_info.json").read_text()))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if model is None:
        model = load_keras_model(run_dir / "model.keras")
    root = Path(to) if to else Path(recipe["export"]["dir"]) / recipe["name"]
    card = _card(model, recipe, info, metrics)
    card["run_dir"] = str(run_dir)
    return export_model(model, info, root, parity_inputs=np.load(run_dir / PARITY_FILE),
                        card=card, tolerance=recipe["export"]["tolerance"],
                        mixed_precision=recipe["train"]["precision"] != "float32",
                        formats=recipe["export"].get("formats", []))


__all__ = ["export_model", "export_run", "predict", "save_parity_inputs"]
