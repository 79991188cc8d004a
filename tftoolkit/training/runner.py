"""``train(recipe)``: data -> model -> fit (one or two stages) -> evaluate -> export.

Every run writes a run directory: the resolved recipe, the data description, the
history CSV, loss/metric curves, per-epoch checkpoints, final metrics and the trained
inference model (``model.keras``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tftoolkit.augment import build_augmenter, training_model
from tftoolkit.augment.tta import predict_tta
from tftoolkit.data import DataBundle, DataInfo, load_data
from tftoolkit.errors import RecipeError
from tftoolkit.models import build_model, input_size
from tftoolkit.models.transfer import set_trainable
from tftoolkit.recipe import Recipe, load_recipe
from tftoolkit.serving import export_run, save_parity_inputs
from tftoolkit.training.batchnorm import recalibrate_batchnorm
from tftoolkit.training.feature_cache import cache_plan, cached_datasets, split_at_features
from tftoolkit.training.plots import plot_history
from tftoolkit.training.runtime import choose_strategy, seed_everything, set_precision


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
    for split in ("val", "test"):
        if split in data.splits:
            values = model.evaluate(data.dataset(split, batch_size=batch_size), verbose=0,
                                    return_dict=True)
            metrics.update({f"{split}_{k}": float(v) for k, v in values.items()})
            if recipe.train.tta and data.info.encoding in ("categorical", "sparse"):
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


def train(recipe: Recipe | str, overrides: dict | list[str] | None = None) -> TrainResult:
    """Train ``recipe`` end to end and return the model, history and run directory."""
    recipe = load_recipe(recipe, overrides)
    t = recipe.train
    seed_everything(t.seed, t.deterministic)
    set_precision(t.precision)
    strategy = choose_strategy(t)
    data = load_data(recipe, input_size(recipe))
    info = data.info
    batch_size = _check_batching(recipe, data)
    run_dir = new_run_dir(recipe)
    _write_json(run_dir / "recipe.json", recipe.to_dict())
    _write_json(run_dir / "data_info.json", info.to_dict())
    notes = [f"strategy: {type(strategy).__name__} with "
             f"{strategy.num_replicas_in_sync} replica(s)"]
    _write_json(run_dir / "runtime.json", {
        "strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
        "precision": t.precision, "seed": t.seed, "deterministic": t.deterministic})
    if info.bad_files:
        (run_dir / "skipped_files.txt").write_text(
            "".join(f"{path}\t{why}\n" for path, why in info.bad_files))
        notes.append(f"skipped {len(info.bad_files)} unreadable file(s); list in "
                     f"{run_dir / 'skipped_files.txt'}")
    augmenter = build_augmenter(recipe.augment, info.image_size, t.seed)
    with strategy.scope():
        model = build_model(recipe, info)
        graph = training_model(model, augmenter)
    train_ds = data.dataset("train", training=True, batch_size=batch_size,
                            augment=augmenter.pipeline_fn(), repeat=bool(t.steps_per_epoch))
    val_ds = data.dataset("val", batch_size=batch_size) if "val" in data.splits else None
    (run_dir / "checkpoints").mkdir()
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
    ]
    if t.early_stopping and val_ds is not None:
        callbacks.append(keras.callbacks.EarlyStopping(
            patience=t.early_stopping, restore_best_weights=True))
    history: dict[str, list[float]] = {}
    epoch, start = 0, time.perf_counter()
    for mode, epochs, learning_rate in stages(recipe):
        set_trainable(model, mode, recipe.model.unfreeze)
        fit_model, stage_train, stage_val = graph, train_ds, val_ds
        if mode == "feature_extraction" and t.cache_features == "auto" and split_at_features(
                model):
            use_cache, why = cache_plan(augmenter, recipe.augment.cached_views)
            cached = use_cache and cached_datasets(model, data, augmenter,
                                                   recipe.augment.cached_views, batch_size,
                                                   repeat=bool(t.steps_per_epoch))
            if use_cache and not cached:
                why = "feature cache off: the features would not fit in memory"
            notes.append(why)
            if cached:
                fit_model, stage_train, stage_val = cached
        with strategy.scope():
            compile_model(fit_model, recipe, info, learning_rate)
        # Per-epoch weights of what trains: the whole graph, or the head on cached features.
        checkpoint = keras.callbacks.ModelCheckpoint(
            str(run_dir / "checkpoints" / f"{fit_model.name}.weights.h5"),
            save_weights_only=True)
        fit = fit_model.fit(stage_train, validation_data=stage_val, epochs=epoch + epochs,
                            initial_epoch=epoch, steps_per_epoch=t.steps_per_epoch or None,
                            callbacks=[*callbacks, checkpoint], verbose=t.verbose,
                            shuffle=False)
        for key, values in fit.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        epoch += epochs
    if recipe.model.mode == "scratch":
        used = recalibrate_batchnorm(model, data.dataset("train", batch_size=batch_size))
        if used:
            notes.append(f"BatchNorm statistics recalibrated on {used} training batches")
    train_seconds = time.perf_counter() - start
    metrics = evaluate_model(model, data, recipe, batch_size)
    metrics["train_seconds"] = train_seconds
    _write_json(run_dir / "metrics.json", metrics)
    model.save(run_dir / "model.keras")
    plot_history(history, run_dir / "curves.png", title=recipe.name)
    result = TrainResult(recipe, model, history, run_dir, info, metrics, train_seconds,
                         notes=notes)
    save_parity_inputs(run_dir, data)
    if recipe.export.enabled:
        result.export_dir = export_run(run_dir, model=model)
    return result
