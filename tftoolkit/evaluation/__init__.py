"""Evaluation and interpretability of a run directory or an export.

``evaluate`` writes the task's report (:meth:`~tftoolkit.tasks.Task.report`) to an
``eval`` folder: metrics as JSON and, for classifiers, a per-class CSV and figures (a
confusion matrix and a top-losses grid; multi-label: per class AP, precision, recall and
F1 at the thresholds chosen on validation, and precision-recall curves), on the examples
of the split the run recorded (``splits.csv``); ``explain`` writes one Grad-CAM overlay
per image (multi-label: one per predicted label).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import keras
import numpy as np
from matplotlib.figure import Figure

from tftoolkit.augment.tta import MAX_VIEWS, predict_tta
from tftoolkit.data import DataBundle, DataInfo, load_data
from tftoolkit.data.record import SPLITS_FILE, SplitRecord
from tftoolkit.errors import DataError, TftoolkitError
from tftoolkit.evaluation.gradcam import NO_FEATURE_MAP, grad_cam, has_feature_map
from tftoolkit.evaluation.metrics import render_report
from tftoolkit.evaluation.plots import (plot_confusion_matrix, plot_detection_pr_curves,
                                        plot_detection_sheet, plot_pr_curves, plot_top_losses)
from tftoolkit.models import load_keras_model
from tftoolkit.multilabel import Thresholds, precision_recall_curve, score_histograms
from tftoolkit.recipe import Recipe, recipe_from_dict
from tftoolkit.rundir import RunDir
from tftoolkit.serving.litert import LiteRTModel
from tftoolkit.serving.predict import read_images
from tftoolkit.serving.savedmodel import MODEL_CARD


def load_trained(path: str | Path) -> tuple[keras.Model | LiteRTModel, Recipe, DataInfo, Path]:
    """Model, recipe and data description of a run directory, an export version or a
    LiteRT file in one, and the default folder for evaluation output."""
    path = Path(path)
    if path.suffix == ".tflite":  # a LiteRT file of an export version
        if not (path.parent / MODEL_CARD).is_file():
            raise TftoolkitError(f"{path} is not inside an export version (no {MODEL_CARD} "
                                 "beside it)")
        card = json.loads((path.parent / MODEL_CARD).read_text())
        return (LiteRTModel(path), recipe_from_dict(card["resolved_recipe"]),
                DataInfo.from_dict(card["data_info"]),
                path.parent.parent / f"{path.parent.name}-{path.stem}-eval")
    if (path / MODEL_CARD).is_file():  # an export version
        card = json.loads((path / MODEL_CARD).read_text())
        recipe, info = recipe_from_dict(card["resolved_recipe"]), DataInfo.from_dict(
            card["data_info"])
        out = path.parent / f"{path.name}-eval"
    elif RunDir.is_run_dir(path):
        run = RunDir(path)
        recipe, info, out = run.read_recipe(), run.read_info(), run / RunDir.EVAL
    else:
        raise TftoolkitError(f"{path} is neither a run directory ({RunDir.RECIPE}) nor an "
                             f"export version ({MODEL_CARD})")
    if not (path / RunDir.MODEL).is_file():
        raise TftoolkitError(f"{path} has no {RunDir.MODEL}")
    return load_keras_model(path / RunDir.MODEL), recipe, info, out


def thresholds_of(path: str | Path, info: DataInfo) -> np.ndarray:
    """A multi-label model's thresholds: its run's, or its export's model card's."""
    path = Path(path)
    card = (path.parent if path.suffix == ".tflite" else path) / MODEL_CARD
    if card.is_file():
        return np.array([json.loads(card.read_text())["thresholds"][n]
                         for n in info.class_names], np.float32)
    return Thresholds.from_dict(RunDir(path).read_json(RunDir.THRESHOLDS),
                                info.class_names).values


def _run_behind(path: str | Path) -> tuple[Path, dict, Path]:
    """The folder of ``path`` (a run directory, an export version or a LiteRT file in
    one), its model card (empty for a run directory) and the run directory behind it."""
    path = Path(path)
    folder = path.parent if path.suffix == ".tflite" else path
    card = (json.loads((folder / MODEL_CARD).read_text())
            if (folder / MODEL_CARD).is_file() else {})
    return folder, card, folder if RunDir.is_run_dir(folder) else Path(card.get("run_dir",
                                                                               folder))


def trained_on(path: str | Path) -> list[str]:
    """The held-out splits that trained the model behind ``path`` as well (``val`` after
    ``train.refit_head``), as its model card or run recorded."""
    _, card, run_dir = _run_behind(path)
    record = card.get("refit")
    if record is None and (run_dir / RunDir.REFIT).is_file():
        record = json.loads((run_dir / RunDir.REFIT).read_text())
    return [s for s in record["splits"] if s != "train"] if record else []


def recorded_data(path: str | Path, recipe: Recipe, info: DataInfo) -> DataBundle:
    """The data of the run behind ``path`` (a run directory, an export version or a
    LiteRT file in one), its splits those the run recorded in its ``splits.csv``; the
    bundle's notes say what the record lists that the data lacks now, and what it
    leaves out. Without the record (an export whose run directory is gone) the splits
    are derived again and must have the content the model card fingerprints."""
    folder, card, run_dir = _run_behind(path)
    record = SplitRecord.read(run_dir) if run_dir.is_dir() else None
    data = load_data(recipe, info.image_size, record=record)
    if record is not None:
        return data
    recorded = card.get("split_fingerprints", {})
    now = SplitRecord.of(data.splits).fingerprints()
    differ = [split for split in recorded if now.get(split) != recorded[split]]
    if differ:
        raise DataError(f"{run_dir / SPLITS_FILE} is gone, and the data now gives other "
                        f"{' and '.join(differ)} examples than the model card of {folder} "
                        "records (split_fingerprints): its figures cannot be repeated. "
                        "Restore the run directory, or the data as it was")
    data.notes.append(f"no {SPLITS_FILE} in {run_dir}: the splits are derived from the data "
                      "as it is now" + (", and their content is the one the model card "
                                        "fingerprints" if recorded else ""))
    return data


def _split_arrays(path: str | Path, recipe: Recipe, info: DataInfo,
                  split: str) -> tuple[str, np.ndarray, np.ndarray, list[str]]:
    """The split evaluated (validation when the data has no test split and the test split
    was asked for), its images and class ids, and the notes about its examples."""
    data = recorded_data(path, recipe, info)
    notes = list(data.notes)
    if split == "test" and split not in data.splits and "val" in data.splits:
        split = "val"
    if split not in data.splits:
        raise DataError(f"split {split!r} does not exist for {data.info.description} "
                        f"(splits: {', '.join(data.splits)})")
    return split, *data.arrays(split), notes


def evaluate(path: str | Path, split: str = "test", tta: int = 0,
             out: str | Path | None = None) -> tuple[dict, Path]:
    """Evaluate on ``split``; write into ``out`` (default: ``RUN_DIR/eval`` or
    ``EXPORT-eval``) ``metrics.json``, the task's report: its figures, and for
    classifiers ``per_class.csv`` and figures (a confusion matrix and the top losses of a
    single-label classifier; the precision-recall curves of a multi-label one, whose
    decisions are at the thresholds chosen on validation; a detector's COCO AP per class
    by pycocotools, its precision-recall curves at IoU 0.50 and ``detections.png``, a
    sheet of images with their true and detected boxes). With ``tta`` views, the
    figures of the predictions averaged over them too."""
    if not 0 <= tta <= MAX_VIEWS:  # before anything is evaluated or written
        raise TftoolkitError(f"--tta {tta}: test-time augmentation takes 1 to {MAX_VIEWS} "
                             "views (0: none)")
    model, recipe, info, default_out = load_trained(path)
    task = info.task
    if tta and task.spatial:
        raise TftoolkitError(f"--tta {tta}: test-time augmentation averages the predictions "
                             f"of flipped views, which for a {task.name} model are boxes in "
                             "other places; evaluate without --tta")
    out = Path(out) if out else default_out
    out.mkdir(parents=True, exist_ok=True)
    evaluated, images, targets, notes = _split_arrays(path, recipe, info, split)
    thresholds = thresholds_of(path, info) if task.thresholded else None
    predictions = np.asarray(model.predict(images, batch_size=64, verbose=0))
    report = {"split": evaluated,
              **task.report(targets, predictions, info.class_names or [], thresholds)}
    if notes:
        report["notes"] = notes
    if evaluated != split:
        report["note"] = (f"the data has no {split} split (data.test_fraction=0?); "
                          f"evaluated on the {evaluated} split instead")
    if evaluated in trained_on(path):
        report.setdefault("notes", []).append(
            f"the {evaluated} split trained this model's head too (train.refit_head): "
            "these figures are no held-out estimate; the run's metrics.json keeps the "
            "ones measured before the refit")
    if tta:
        report["tta"] = {"views": tta, **task.measure(
            targets, predict_tta(model, images, tta), thresholds)}
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    _write_tables(report, out)
    title = f"{recipe.name} ({evaluated})"
    if "confusion_matrix" in report:
        plot_confusion_matrix(np.array(report["confusion_matrix"]), info.class_names,
                              out / "confusion_matrix.png",
                              f"{title}: confusion matrix, row-normalised")
        plot_top_losses(images, targets, task.scores(predictions), info.class_names,
                        out / "top_losses.png")
    if "precision_50" in report:  # a detector's
        plot_detection_pr_curves(report["precision_50"], report["per_class"],
                                 out / "pr_curves.png",
                                 f"{title}: precision-recall per class, IoU 0.50")
        plot_detection_sheet(images, targets, task.decide(predictions),
                             info.class_names, out / "detections.png")
    if task.thresholded:
        precision, recall = precision_recall_curve(*(h.numpy() for h in score_histograms(
            targets, predictions)))
        plot_pr_curves(precision, recall, report["per_class"], out / "pr_curves.png",
                       f"{title}: precision-recall per class (dot: at its threshold)")
    return report, out


def _write_tables(report: dict, out: Path) -> None:
    """``per_class.csv``: the report's per-class rows, when it has them."""
    if not report.get("per_class"):
        return
    with open(out / "per_class.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(report["per_class"][0]))
        writer.writeheader()
        writer.writerows(report["per_class"])


def explain(path: str | Path, images: list[str | Path], out: str | Path) -> list[Path]:
    """One Grad-CAM overlay PNG per image file, titled with the predicted class (a
    multi-label model: one per label at or above its threshold, or for the most probable
    one when none is)."""
    model, recipe, info, _ = load_trained(path)
    if isinstance(model, LiteRTModel):
        raise TftoolkitError(f"{path}: Grad-CAM needs gradients, which a LiteRT file does not "
                             "give; explain the export version folder instead")
    if not info.image_size:
        raise TftoolkitError(f"{path}: explain draws heatmaps over images, and this model "
                             f"takes feature vectors ({info.description})")
    if not has_feature_map(model):
        raise TftoolkitError(f"{path} (model.architecture={recipe.model.architecture!r}): "
                             f"{NO_FEATURE_MAP}")
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        raise TftoolkitError(f"image file(s) not found: {', '.join(missing)}")
    batch = read_images(images, info.max_pixels, info.resize)
    task = info.task
    predictions = np.asarray(model.predict(batch, verbose=0))
    scores = task.scores(predictions)  # one column per class
    rows = np.arange(len(batch))
    if task.thresholded:  # (image, label) pairs: each predicted label explained
        marked = task.decide(predictions, thresholds_of(path, info))
        marked[rows, scores.argmax(axis=1)] |= ~marked.any(axis=1)
        rows, classes = np.nonzero(marked)
    else:
        classes = task.decide(predictions)
    heatmaps, predicted = grad_cam(model, batch[rows], classes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for row, heat, cls in zip(rows, heatmaps, predicted):
        image_path, image, probs = images[row], batch[row], scores[row]
        fig = Figure(figsize=(7, 3.8))
        axes = fig.subplots(1, 2)
        axes[0].imshow(image.astype("uint8"))
        axes[0].set_title("input")
        axes[1].imshow(image.astype("uint8"))
        overlay = axes[1].imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        axes[1].set_title(f"Grad-CAM: {info.class_names[cls]} ({probs[cls]:.0%})")
        for ax in axes:
            ax.axis("off")
        fig.colorbar(overlay, ax=axes[1], fraction=0.046, pad=0.04, label="relevance")
        fig.suptitle(Path(image_path).name)
        fig.tight_layout()
        label = f"_{_file_safe(info.class_names[cls])}" if task.thresholded else ""
        target = out / f"{Path(image_path).stem}{label}_gradcam.png"
        fig.savefig(target, dpi=100)
        written.append(target)
    return written


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


__all__ = ["evaluate", "explain", "grad_cam", "load_trained", "render_report"]
