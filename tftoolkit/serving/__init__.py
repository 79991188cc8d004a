"""Export: SavedModel versions that serve exactly what the model predicts, and predict.

``export_run`` exports a finished run directory (right after training, or later);
``predict`` reads only an export (no recipe, no training code).
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np

from tftoolkit.data import DataBundle, DataInfo, load_data
from tftoolkit.data.record import SplitRecord
from tftoolkit.errors import ExportError
from tftoolkit.models import load_keras_model, preprocessing_of
from tftoolkit.multilabel import Thresholds
from tftoolkit.recipe import recipe_from_dict
from tftoolkit.rundir import RunDir
from tftoolkit.serving.predict import FoundObject, detect, is_detector, predict
from tftoolkit.serving.savedmodel import MEASURED, MODEL_CARD, Quantization, export_model
from tftoolkit.tasks import task_class
from tftoolkit.unnoised import not_private, unnoised_reads

PARITY_EXAMPLES = 16


def _card(model: keras.Model, recipe: dict, info: DataInfo, metrics: dict) -> dict:
    private = recipe.get("privacy", {}).get("enabled", False)
    data_info = info.to_dict()
    if private:  # per-class counts of the private split are not released
        data_info["class_counts"] = None
    preprocessing, pretrained = preprocessing_of(model)
    card = {"recipe": recipe["name"], "resolved_recipe": recipe, "data_info": data_info,
            "dataset": info.description, "split_sizes": info.counts,
            "preprocessing": preprocessing, "pretrained_weights": pretrained or None,
            "input": "float RGB pixels 0-255, any size (resized inside)"
            if info.image_size else "feature vectors",
            "metrics": metrics, "seed": recipe["train"]["seed"],
            "train_seconds": metrics.get("train_seconds")}
    if private:
        card["privacy"] = _privacy_card(recipe, info, metrics)
    return card


def _privacy_card(recipe: dict, info: DataInfo, metrics: dict) -> dict:
    """What a private run's guarantee is (or that it has none), and what the run released
    outside it (:func:`~tftoolkit.unnoised.unnoised_reads`)."""
    cfg = recipe["privacy"]
    if cfg.get("insecure_reproducible"):
        guarantee = ("NONE: privacy.insecure_reproducible drew the noise and the batches "
                     "from the seed above, so they can be regenerated and removed; this "
                     "model is not differentially private")
    else:
        guarantee = (f"({metrics.get('epsilon', 0.0):.4g}, {metrics.get('delta', 0.0):.3g})"
                     "-differential privacy of the training examples, DP-SGD with noise "
                     "and Poisson sampling from OS entropy")
    return {"guarantee": guarantee, "epsilon": metrics.get("epsilon"),
            "delta": metrics.get("delta"), "l2_clip": cfg.get("l2_clip"),
            "not_private": not_private(unnoised_reads(
                recipe_from_dict(recipe), info.counts, info.task.thresholded))}


def save_parity_inputs(run: RunDir, data: DataBundle) -> None:
    """Keep a batch of real, un-augmented inputs (a seeded sample, classes mixed) of the
    split :func:`~tftoolkit.unnoised.unnoised_reads` names for the export parity check
    (validation; else training; a private run never reads its training split for it and
    is checked on seeded random inputs instead)."""
    recipe = data.recipe
    split = unnoised_reads(recipe, data.splits)["parity"].split
    if split:
        inputs = np.asarray(next(iter(data.sample(split, PARITY_EXAMPLES)))[0], np.float32)
    else:
        rng = np.random.default_rng(recipe.data.split_seed)
        shape = (PARITY_EXAMPLES, *data.info.input_shape)
        inputs = (rng.integers(0, 256, shape) if data.info.image_size  # pixels
                  else rng.normal(size=shape)).astype(np.float32)   # features
    np.save(run / RunDir.PARITY_INPUTS, inputs)


def quantization_inputs(data: DataBundle) -> Quantization:
    """What quantized and MediaPipe LiteRT files are judged (validation split) and reported
    (test split) on, and calibrated on: a seeded sample of training images (of the split
    a private run declares public) through the evaluation pipeline;
    ``export.eval_examples`` caps each split with a seeded sample too."""
    cfg = data.recipe.export
    if "val" not in data.splits:
        raise ExportError("quantized and MediaPipe LiteRT formats are judged on the "
                          "validation split, and this data has none: set "
                          "data.validation_fraction above 0 (or data.val_split for TFDS), or "
                          "drop the tflite_* and mediapipe* formats")
    splits = {s: data.arrays(s, cfg.eval_examples) for s in ("val", "test")
              if s in data.splits}
    batch_size = data.recipe.train.batch_size or 32
    # (a private run calibrates on the split it declares public: the recipe checks it)
    reads = unnoised_reads(data.recipe, data.splits)
    calibration = [np.asarray(b[0]) for b in data.sample(
        reads["calibration"].split, cfg.calibration_steps * batch_size,
        batch_size=batch_size)] if "calibration" in reads else []
    return Quantization(splits, calibration, cfg.int8_io, cfg.max_accuracy_drop)


def export_run(run_dir: str | Path, to: str | Path | None = None,
               model: keras.Model | None = None, data: DataBundle | None = None) -> Path:
    """Export the model of ``run_dir`` as the next version under ``to`` (default: the
    recipe's ``export.dir/<recipe>``). Returns the version directory.

    Args:
        model: the trained model, when it is in memory (else read from the run).
        data: the run's data, when it is in memory (else read again, for quantized
            formats only: the splits the run recorded).
    """
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
    record = SplitRecord.read(run.path)  # None: a run from before records
    if record is not None:  # a private run's training examples are not released
        private = recipe.get("privacy", {}).get("enabled", False)
        card["split_fingerprints"] = {split: digest for split, digest in
                                      record.fingerprints().items()
                                      if not (private and split == "train")}
    for key, name in (("baselines", RunDir.BASELINES), ("mode_choice", RunDir.AUTO),
                      ("refit", RunDir.REFIT)):
        if (run / name).is_file():  # the cheap baselines; what model.mode=auto tried;
            card[key] = run.read_json(name)  # the validation rows that trained the head
    if "refit" in card:
        card["refit"]["note"] = (
            "the validation split trained the head after its L2 strength was chosen "
            "(train.refit_head): the metrics' validation figures are the head's before; "
            "the exported files' validation figures are on rows the head trained on, so "
            "only their comparison with the float model is meaningful")
    formats = recipe["export"].get("formats", [])
    thresholds = None
    if info.task.thresholded:
        card["thresholds_chosen_by"] = run.read_json(RunDir.THRESHOLDS)["chosen_by"]
        thresholds = Thresholds.from_dict(run.read_json(RunDir.THRESHOLDS),
                                          info.class_names).values
    quantization = None
    if any(f in MEASURED for f in formats):
        if data is None:
            data = load_data(run.read_recipe(), info.image_size, record=record)
            if data.notes:
                card["data_notes"] = list(data.notes)
        quantization = quantization_inputs(data)
    return export_model(model, info, root, parity_inputs=np.load(run / RunDir.PARITY_INPUTS),
                        card=card, tolerance=recipe["export"]["tolerance"],
                        mixed_precision=recipe["train"]["precision"] != "float32",
                        formats=formats, quantization=quantization, thresholds=thresholds)


def formats_table(version: Path) -> str:
    """The extra formats of an export version as a table (refused variants included):
    accuracy, or a multi-label model's mAP, or a regression model's loss."""
    card = json.loads((version / MODEL_CARD).read_text())
    rows = {f: row for f, row in {**card.get("formats", {}),
                                   **card.get("formats_refused", {})}.items() if f in MEASURED}
    if not rows:
        return ""
    score = task_class(card.get("task", "classification")).default_figure
    short = {"accuracy": "acc", "map": "mAP"}.get(score, score)
    lines = [f"{'format':16s} {'size (KB)':>10s} {'x float':>8s} {'val ' + short:>8s} "
             f"{'test ' + short:>9s} {'agree':>7s} {'ms/img':>7s} {'x float':>8s}  file"]
    for fmt, row in rows.items():
        lines.append(
            f"{fmt:16s} {row['size_bytes'] / 1024:10.0f} {row['size_vs_float_tflite']:8.2f} "
            f"{row.get(f'val_{score}', float('nan')):8.4f} "
            f"{row.get(f'test_{score}', float('nan')):9.4f} "
            f"{row.get('test_agreement', row.get('val_agreement', float('nan'))):7.4f} "
            f"{row['latency_ms']:7.2f} {row['latency_vs_float_tflite']:8.2f}  "
            f"{row['file'] or 'not written: ' + row['reason']}")
    return "\n".join(lines)


__all__ = ["FoundObject", "detect", "export_model", "export_run", "formats_table",
           "is_detector", "predict", "save_parity_inputs"]
