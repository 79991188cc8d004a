"""``train(recipe)``: data -> model -> fit (one or two stages) -> evaluate -> export.

Every run writes a run directory: the resolved recipe, the data description, the
history CSV, loss/metric curves, per-epoch checkpoints, final metrics and the trained
inference model (``model.keras``).
"""

from __future__ import annotations

import csv
import json
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tftoolkit.augment import build_augmenter, training_model
from tftoolkit.augment.tta import predict_tta
from tftoolkit.data import DataBundle, DataInfo, load_data
from tftoolkit.errors import RecipeError
from tftoolkit.models import build_model, input_size
from tftoolkit.models.transfer import set_trainable
from tftoolkit.recipe import Recipe, load_recipe
from tftoolkit.serving import export_run, save_parity_inputs
from tftoolkit.training.batchnorm import recalibrate_batchnorm
from tftoolkit.training.callbacks import EpochTensorBoard
from tftoolkit.training.checkpoint import (SaveProgress, find_resumable, finish_stage,
                                           load_progress, restore_stage_weights,
                                           restore_state)
from tftoolkit.training.distributed import evaluate_distributed, fit_distributed, is_chief
from tftoolkit.training.feature_cache import cache_plan, cached_datasets, split_at_features
from tftoolkit.training.plots import plot_history
from tftoolkit.training.runtime import (choose_strategy, seed_everything, set_precision,
                                        strategy_name)


@dataclass
class TrainResult:
    """What a training run produced."""

    recipe: Recipe
    model: keras.Model                  # the inference model (no augmentation)
    history: dict[str, list[float]]
    run_dir: Path
    info: DataInfo
    metrics: dict[str, float]
    train_seconds: float
    export_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


def make_loss(info: DataInfo, label_smoothing: float = 0.0) -> keras.losses.Loss:
    """The loss for the data's label encoding."""
    if info.encoding == "regression":
        return keras.losses.MeanSquaredError()
    if info.encoding == "binary":
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
    if info.encoding == "sparse":
        if label_smoothing:
            raise RecipeError("regularize.label_smoothing needs one-hot labels; use "
                              "train.loss=categorical_crossentropy (or auto)")
        return keras.losses.SparseCategoricalCrossentropy()
    return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)


def make_optimizer(name: str, learning_rate: float, momentum: float = 0.0):
    """``gd``/``sgd`` (plain or momentum SGD; gd runs on full batches) or ``adam``."""
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    return keras.optimizers.SGD(learning_rate, momentum=momentum)


def _metrics(info: DataInfo) -> list:
    return ["mae"] if info.task == "regression" else ["accuracy"]


def compile_model(model: keras.Model, recipe: Recipe, info: DataInfo,
                  learning_rate: float) -> None:
    """Compile with the recipe's optimizer, the data's loss and its metric."""
    t = recipe.train
    model.compile(optimizer=make_optimizer(t.optimizer, learning_rate, t.momentum),
                  loss=make_loss(info, recipe.regularize.label_smoothing),
                  metrics=_metrics(info))


def stages(recipe: Recipe) -> list[tuple[str, int, float]]:
    """``(mode, epochs, learning_rate)`` per training stage."""
    t, mode = recipe.train, recipe.model.mode
    ft_lr = t.fine_tune_learning_rate or t.learning_rate / 10
    if mode == "two_stage":
        return [("feature_extraction", t.epochs, t.learning_rate),
                ("fine_tune", t.fine_tune_epochs or t.epochs, ft_lr)]
    if mode == "fine_tune":
        return [("fine_tune", t.epochs, ft_lr)]
    return [(mode, t.epochs, t.learning_rate)]


def new_run_dir(recipe: Recipe) -> Path:
    """A fresh ``<train.run_dir>/<recipe>/<timestamp>`` directory."""
    root = Path(recipe.train.run_dir) / recipe.name
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        run_dir = root / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            continue
    raise RecipeError(f"cannot create a run directory under {root}")


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, default=str) + "\n")


def _check_batching(recipe: Recipe, data: DataBundle) -> int:
    """The batch size to use; gd is full-batch gradient descent."""
    t, n = recipe.train, len(data.splits["train"])
    if t.optimizer == "gd":
        if t.batch_size not in (0,) and t.batch_size < n:
            raise RecipeError(f"train.optimizer='gd' is full-batch gradient descent, but "
                              f"train.batch_size={t.batch_size} < {n} training examples; "
                              "set train.batch_size=0 or use train.optimizer=sgd")
        return n
    if t.batch_size == 0:
        raise RecipeError("train.batch_size=0 (whole training set) is only for "
                          "train.optimizer='gd'")
    return t.batch_size


def evaluate_model(model: keras.Model, data: DataBundle, recipe: Recipe,
                   batch_size: int) -> dict[str, float]:
    """Loss and metric of the inference model on the val and test splits."""
    if not getattr(model, "compiled", False):  # trained inside an augmentation graph
        compile_model(model, recipe, data.info, recipe.train.learning_rate)
    metrics: dict[str, float] = {}
    strategy = model.distribute_strategy
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    for split in ("val", "test"):
        if split in data.splits:
            dataset = data.dataset(split, batch_size=batch_size)
            if multi_worker:
                values = evaluate_distributed(model, dataset, strategy, batch_size)
            else:
                values = model.evaluate(dataset, verbose=0, return_dict=True)
            metrics.update({f"{split}_{k}": float(v) for k, v in values.items()})
            if (recipe.train.tta and data.info.encoding in ("categorical", "sparse")
                    and not multi_worker):
                metrics[f"{split}_accuracy_tta"] = _tta_accuracy(model, data, split,
                                                                 recipe.train.tta)
    return metrics


def _tta_accuracy(model: keras.Model, data: DataBundle, split: str, views: int) -> float:
    """Accuracy of predictions averaged over ``views`` test-time augmentations."""
    correct = total = 0
    for batch in data.dataset(split, batch_size=64):
        labels = np.asarray(batch[1])
        labels = labels.argmax(axis=1) if labels.ndim == 2 else labels
        predicted = predict_tta(model, np.asarray(batch[0]), views).argmax(axis=1)
        correct += int((predicted == labels).sum())
        total += len(labels)
    return correct / total


def _read_history(path: Path) -> dict[str, list[float]]:
    """Per-epoch history from the CSV log (the last row of an epoch logged twice wins)."""
    rows: dict[int, dict[str, str]] = {}
    if path.is_file():
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                rows[int(row.pop("epoch"))] = row
    history: dict[str, list[float]] = {}
    for epoch in sorted(rows):
        for key, value in rows[epoch].items():
            if value not in ("", "NA"):  # CSVLogger's mark for a metric not computed
                history.setdefault(key, []).append(float(value))
    return history


def _start_run(recipe: Recipe, info: DataInfo,
               strategy) -> tuple[Path, Path, dict | None, list[str]]:
    """The run directory to write, the one to resume from (the latest unfinished run of
    this recipe, if any), its progress, and the first notes of the run. Only the chief
    writes the run directory; the other workers of a multi-worker run resume from the
    chief's (a shared filesystem) and write scratch files into a temporary one."""
    t = recipe.train
    notes = [f"strategy: {strategy_name(strategy)} with "
             f"{strategy.num_replicas_in_sync} replica(s)"]
    resolved = recipe.to_dict()
    resumable = find_resumable(Path(t.run_dir) / recipe.name, resolved) if t.resume else None
    progress = load_progress(resumable) if resumable else None
    if progress:
        notes.append(f"resuming {resumable} at epoch {progress['next_epoch']} "
                     f"(stage {progress['stage'] + 1})")
    if not is_chief(strategy):
        run_dir = Path(tempfile.mkdtemp(prefix=f"tftoolkit-{recipe.name}-worker-"))
        (run_dir / "checkpoints").mkdir()
        notes.append(f"not the chief: writing nothing but scratch files in {run_dir}")
        return run_dir, resumable or run_dir, progress, notes
    if resumable is not None:
        return resumable, resumable, progress, notes
    run_dir = new_run_dir(recipe)
    (run_dir / "checkpoints").mkdir()
    _write_json(run_dir / "recipe.json", resolved)
    _write_json(run_dir / "data_info.json", info.to_dict())
    _write_json(run_dir / "runtime.json", {
        "strategy": strategy_name(strategy), "replicas": strategy.num_replicas_in_sync,
        "precision": t.precision, "seed": t.seed, "deterministic": t.deterministic})
    if info.bad_files:
        (run_dir / "skipped_files.txt").write_text(
            "".join(f"{path}\t{why}\n" for path, why in info.bad_files))
        notes.append(f"skipped {len(info.bad_files)} unreadable file(s); list in "
                     f"{run_dir / 'skipped_files.txt'}")
    return run_dir, run_dir, None, notes


def train(recipe: Recipe | str, overrides: dict | list[str] | None = None) -> TrainResult:
    """Train ``recipe`` end to end and return the model, history and run directory.

    An unfinished run of the same resolved recipe is resumed from its last completed
    epoch unless ``train.resume`` is false.
    """
    recipe = load_recipe(recipe, overrides)
    t = recipe.train
    strategy = choose_strategy(t)  # first: a multi-worker strategy must precede any TF op
    seed_everything(t.seed, t.deterministic)
    set_precision(t.precision)
    data = load_data(recipe, input_size(recipe))
    info = data.info
    batch_size = _check_batching(recipe, data)
    run_dir, resume_dir, progress, notes = _start_run(recipe, info, strategy)
    augmenter = build_augmenter(recipe.augment, info.image_size, t.seed)
    with strategy.scope():
        model = build_model(recipe, info)
        graph = training_model(model, augmenter)
    if progress and progress["stage"] > 0:
        restore_stage_weights(resume_dir, model)
    val_ds = data.dataset("val", batch_size=batch_size) if "val" in data.splits else None
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        EpochTensorBoard(str(run_dir / "logs"))]
    if t.early_stopping and val_ds is not None:
        callbacks.append(keras.callbacks.EarlyStopping(
            patience=t.early_stopping, restore_best_weights=True))
    epoch, start = 0, time.perf_counter()
    lr_scale = strategy.num_replicas_in_sync if t.scale_lr else 1
    if lr_scale > 1:
        notes.append(f"learning rates scaled by {lr_scale} replicas (train.scale_lr)")
    for stage, (mode, epochs, learning_rate) in enumerate(stages(recipe)):
        learning_rate *= lr_scale
        stage_end = epoch + epochs
        if progress and stage < progress["stage"]:
            epoch = stage_end
            continue
        resume = bool(progress) and stage == progress["stage"] and progress["next_epoch"] > epoch
        first = progress["next_epoch"] if resume else epoch
        set_trainable(model, mode, recipe.model.unfreeze)
        cached = None
        if mode == "feature_extraction" and t.cache_features == "auto" and split_at_features(
                model):
            use_cache, why = cache_plan(augmenter, recipe.augment.cached_views)
            cached = use_cache and cached_datasets(model, data, augmenter,
                                                   recipe.augment.cached_views, batch_size,
                                                   first_epoch=first)
            if use_cache and not cached:
                why = "feature cache off: the features would not fit in memory"
            notes.append(why)
        if cached:
            fit_model, stage_train, stage_val, steps = cached
        else:
            fit_model, stage_val = graph, val_ds
            stage_train = data.dataset("train", training=True, batch_size=batch_size,
                                       augment=augmenter.pipeline_fn(), first_epoch=first)
            steps = data.steps_per_epoch("train", batch_size)
        with strategy.scope():
            compile_model(fit_model, recipe, info, learning_rate)
            if resume:
                restore_state(resume_dir, progress, fit_model)
        # Per-epoch checkpoint of what trains (the whole graph, or the head on cached
        # features) with optimizer and RNG states: what a rerun resumes from.
        stage_callbacks = [*callbacks, SaveProgress(run_dir, stage)]
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            fit_distributed(fit_model, stage_train, strategy=strategy,
                            global_batch_size=batch_size, epochs=stage_end,
                            initial_epoch=first, steps_per_epoch=t.steps_per_epoch or steps,
                            validation_data=stage_val, callbacks=stage_callbacks,
                            verbose=t.verbose)
        else:
            fit_model.fit(stage_train, validation_data=stage_val, epochs=stage_end,
                          initial_epoch=first, steps_per_epoch=t.steps_per_epoch or steps,
                          callbacks=stage_callbacks, verbose=t.verbose, shuffle=False)
        finish_stage(run_dir, stage, stage_end, model)
        epoch = stage_end
    if recipe.model.mode == "scratch":
        used = recalibrate_batchnorm(model, data.dataset("train", batch_size=batch_size))
        if used:
            notes.append(f"BatchNorm statistics recalibrated on {used} training batches")
    train_seconds = time.perf_counter() - start
    metrics = evaluate_model(model, data, recipe, batch_size)
    metrics["train_seconds"] = train_seconds
    model.save(run_dir / "model.keras")
    history = _read_history(run_dir / "history.csv")
    plot_history(history, run_dir / "curves.png", title=recipe.name)
    save_parity_inputs(run_dir, data)
    _write_json(run_dir / "metrics.json", metrics)  # marks the run finished
    result = TrainResult(recipe, model, history, run_dir, info, metrics, train_seconds,
                         notes=notes)
    if recipe.export.enabled and is_chief(strategy):
        result.export_dir = export_run(run_dir, model=model)
    return result
