"""``train(recipe)``: data -> model -> one or two stages of fitting -> evaluate -> export.

A run is a readable sequence: :func:`_open_run` prepares the data, the model and the
run directory (or finds the unfinished run to resume); :func:`_run_stage` fits each
stage planned by :func:`~tftoolkit.training.stages.plan_stages`; :func:`_finish`
evaluates, saves, plots and exports.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tftoolkit.augment import Augmenter, build_augmenter, training_model
from tftoolkit.augment.tta import predict_tta
from tftoolkit.data import SAMPLE_BATCH, DataBundle, DataInfo, load_data
from tftoolkit.data.record import SplitRecord, check_resumable
from tftoolkit.errors import DataError, RecipeError
from tftoolkit.models import build_model, get_architecture, input_size, preprocessing_of
from tftoolkit.models.transfer import set_trainable
from tftoolkit.multilabel import report_at, split_histograms, validation_thresholds
from tftoolkit.recipe import Recipe, load_recipe
from tftoolkit.rundir import Progress, RunDir
from tftoolkit.serving import export_run, save_parity_inputs
from tftoolkit.serving.formats import check_formats
from tftoolkit.training import auto, distributed, privacy
from tftoolkit.training.baselines import (Baseline, baseline_metrics, fit_baselines,
                                          from_dicts, record, shortfalls)
from tftoolkit.training.baselines import applies as baselines_apply
from tftoolkit.training.baselines import describe as describe_baselines
from tftoolkit.training.batchnorm import (RECALIBRATION_BATCHES, recalibrate_batchnorm,
                                          trainable_batchnorms)
from tftoolkit.training.callbacks import (EarlyStopping, EmaValidation, EpochTensorBoard,
                                          KeepBest, RecalibrateBeforeValidation,
                                          StopAtDeadline,
                                          StopOnNonFiniteLoss)
from tftoolkit.training.checkpoint import (SaveProgress, finish_stage, readable_progress,
                                           restore_stage_weights, restore_state,
                                           resume_callbacks, trim_history)
from tftoolkit.training.distributed import is_chief
from tftoolkit.training.feature_cache import (cache_plan, cached_datasets, effective_views,
                                              fits_in_memory, pixel_columns, prefix_refusal,
                                              split_at_feature_maps, split_at_features,
                                              split_below_unfrozen)
from tftoolkit.training.lr_find import LrFindResult, sweep
from tftoolkit.training.optim import compile_model, learning_rate_schedule
from tftoolkit.training.plots import plot_history
from tftoolkit.training.runtime import (choose_strategy, precision_policy, seed_everything,
                                        strategy_name, verbosity)
from tftoolkit.training.solved_head import (refit_with_validation, refits, solve_stage,
                                            why_not_solved)
from tftoolkit.training.step import TrainStep, use_in_fit
from tftoolkit.training.stages import Stage, StageInputs, plan_stages, stage_modes
from tftoolkit.tasks import Monitor
from tftoolkit.unnoised import unnoised_reads


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


@dataclass
class Privacy:
    """A private run's noise and budget, and the private steps taken so far."""

    noise_multiplier: float
    delta: float
    sampling_rate: float
    steps: int = 0

    @property
    def epsilon(self) -> float:
        return privacy.epsilon(self.sampling_rate, self.noise_multiplier, self.steps,
                               self.delta)


@dataclass
class _Setup:
    """The data and the models of a run, before any run directory."""

    recipe: Recipe
    strategy: tf.distribute.Strategy
    data: DataBundle
    batch_size: int
    model: keras.Model              # the inference model
    graph: keras.Model              # augmentation -> model, what trains on images
    augmenter: Augmenter
    notes: list[str]


@dataclass
class _Run(_Setup):
    """Everything the stages of one run share."""

    run: RunDir | None = None       # where this process writes (always set by _open_run)
    resume_from: RunDir | None = None   # the unfinished run continued, if any
    progress: Progress | None = None
    cached_head: StageInputs | None = None  # the last stage, when it trained on features
    private: Privacy | None = None          # DP-SGD's noise, delta and steps taken
    baselines: list[Baseline] = field(default_factory=list)
    deadline: float | None = None           # perf_counter() past which stages stop

    def resumes(self, stage: Stage) -> bool:
        """Whether ``stage`` continues from a saved epoch of the resumed run."""
        return (self.progress is not None and stage.index == self.progress.stage
                and self.progress.next_epoch > stage.first_epoch)

    def finished_before(self, stage: Stage) -> bool:
        return self.progress is not None and stage.index < self.progress.stage


def train(recipe: Recipe | str, overrides: dict | list[str] | None = None, *,
          report_test: bool = True, judged_by: str = "",
          deadline: float | None = None) -> TrainResult:
    """Train ``recipe`` end to end and return the model, history and run directory;
    ``model.mode=auto`` hands the recipe to :func:`tftoolkit.training.auto.choose`,
    which trains each mode it tries through this function.

    An unfinished run of the same resolved recipe is resumed from its last completed
    epoch unless ``train.resume`` is false.

    Args:
        judged_by: the validation figure the caller judges the run by (a search's
            objective); refused before training when the task does not log it.
        report_test: False leaves the test split out of the run entirely (a search
            trial: nothing is chosen by looking at it).
        deadline: a ``time.perf_counter()`` value after which stages stop at the end of
            their epoch, if ``train.time_budget`` does not stop them before (the budget
            ``model.mode=auto`` has left).
    """
    recipe = load_recipe(recipe, overrides)
    fixed = auto.without_choice(recipe)
    if fixed is None:  # model.mode=auto with modes to choose among
        return auto.choose(recipe, train, report_test=report_test, judged_by=judged_by)
    recipe = fixed
    t = recipe.train
    strategy = choose_strategy(t)  # first: a multi-worker strategy must precede any TF op
    with precision_policy(t.precision):
        seed_everything(t.seed, t.deterministic)
        run = _open_run(recipe, strategy, report_test, judged_by)
        if recipe.model.pixel_features and not pixel_columns(run.model):  # as built
            run.notes.append(f"model.pixel_features={recipe.model.pixel_features} not used: "
                             "the pixels join a frozen backbone's solved head "
                             f"(feature_extraction), and this run is {recipe.model.mode}")
        run.baselines = _baselines(run)
        lr_scale = strategy.num_replicas_in_sync if t.scale_lr else 1
        if lr_scale > 1:
            run.notes.append(f"learning rates scaled by {lr_scale} replicas (train.scale_lr)")
        start = time.perf_counter()
        ends = [end for end in (deadline, start + t.time_budget if t.time_budget else None)
                if end is not None]
        run.deadline = min(ends, default=None)
        if run.deadline is not None and distributed.needs_own_loop(strategy):
            raise RecipeError("train.time_budget stops a stage at a time each worker "
                              "measures on its own clock, so the workers of a multi-worker "
                              "run could stop at different epochs; set train.time_budget=0 "
                              "and train.epochs instead")
        if t.learning_rate == "auto":
            run.recipe = _found_learning_rate(run)
        stages = plan_stages(run.recipe, lr_scale)
        if recipe.privacy.enabled:
            run.private = _plan_privacy(run, stages)
        for stage in stages:
            if not run.finished_before(stage):
                _run_stage(run, stage, last=stage is stages[-1])
        if _keep_best_stage(run, stages):
            run.cached_head = None  # an earlier stage's weights: evaluate the whole model
        if _recalibrates(run):
            used = recalibrate_batchnorm(run.model, _recalibration_batches(run))
            if used:
                run.notes.append(f"BatchNorm statistics recalibrated on {used} training "
                                 "batches")
        return _finish(run, time.perf_counter() - start)


def _recalibrates(run: _Run) -> bool:
    """Whether BatchNorm statistics are re-estimated: a from-scratch network that has
    BatchNorm layers (building the batches for one that has none would cost time)."""
    return run.recipe.model.mode == "scratch" and bool(trainable_batchnorms(run.model))


def _recalibration_batches(run: _Run) -> tf.data.Dataset:
    """The un-augmented training batches BatchNorm statistics are re-estimated on."""
    return run.data.sample("train", RECALIBRATION_BATCHES * run.batch_size,
                           batch_size=run.batch_size)


def _batch_size(recipe: Recipe, data: DataBundle) -> int:
    """The batch size to use; gd is full-batch gradient descent."""
    t, n = recipe.train, len(data.splits["train"])
    if t.optimizer != "gd":
        return t.batch_size
    if t.batch_size and t.batch_size < n:
        raise RecipeError(f"train.optimizer='gd' is full-batch gradient descent, but "
                          f"train.batch_size={t.batch_size} < {n} training examples; "
                          "set train.batch_size=0 or use train.optimizer=sgd")
    return n


def _prepare(recipe: Recipe, strategy: tf.distribute.Strategy,
             report_test: bool = True) -> _Setup:
    """Load the data; build the augmentation, the inference model and the training graph."""
    data = load_data(recipe, input_size(recipe), distributed.worker_share(strategy))
    if not report_test:
        data.splits.pop("test", None)
        data.info.counts.pop("test", None)
    augmenter = build_augmenter(recipe.augment, data.info.image_size, recipe.train.seed,
                                spatial=data.info.task.spatial)
    with strategy.scope():
        model = build_model(recipe, data.info)
        graph = training_model(model, augmenter)
    return _Setup(recipe, strategy, data, _batch_size(recipe, data), model, graph, augmenter,
                  [f"strategy: {strategy_name(strategy)}"])


def _check_selection(setup: _Setup) -> None:
    """Refuse, before training, a ``train.select_best`` that could never select: no
    validation split, or a figure the task does not log."""
    key, recipe = setup.recipe.train.select_best, setup.recipe
    if not key:
        return
    if "val" not in setup.data.splits:
        raise RecipeError(
            f"train.select_best={key!r} selects epochs on the validation split, but "
            f"{setup.data.info.description} has none and data.validation_fraction="
            f"{recipe.data.validation_fraction:g}; set data.validation_fraction (for "
            "example 0.2) or data.val_split, or leave train.select_best empty")
    setup.data.info.task.monitor(key, asked_by="train.select_best")


def _open_run(recipe: Recipe, strategy: tf.distribute.Strategy,
              report_test: bool = True, judged_by: str = "") -> _Run:
    """Prepare data and model, and create the run directory or find the one to resume.
    Only the chief writes the run directory; the other workers of a multi-worker run
    resume from the chief's (a shared filesystem) and write scratch files elsewhere."""
    t = recipe.train
    setup = _prepare(recipe, strategy, report_test)
    _check_selection(setup)
    if recipe.export.enabled:  # a format's missing package, before any training
        check_formats(recipe.export.formats, setup.data.info)
    if judged_by:
        setup.data.info.task.monitor(judged_by, asked_by="--objective")
    info, notes = setup.data.info, setup.notes
    record = SplitRecord.of(setup.data.splits)
    resume_from = RunDir.find_resumable(t.run_dir, recipe) if t.resume else None
    if resume_from is not None and is_chief(strategy):
        resume_from.lock()  # first: until then its live writer may still move it on
        if resume_from.finished:  # its writer finished it meanwhile
            resume_from.release()
            notes.append(f"{resume_from} finished while this run started; training a new "
                         "run")
            resume_from = None
    try:  # the data must give the splits the run recorded
        unchecked = resume_from and check_resumable(resume_from.path, record)
    except DataError:
        resume_from.release()
        raise
    if unchecked:
        notes.append(unchecked)
    progress, fallback = readable_progress(resume_from) if resume_from else (None, None)
    if fallback:
        notes.append(fallback)
    if progress:
        notes.append(f"resuming {resume_from} at epoch {progress.next_epoch} "
                     f"(stage {progress.stage + 1})")
    if not is_chief(strategy):
        run = RunDir.scratch(recipe.name)
        record.write(run.path)  # the splits this worker holds, to compare with the chief's
        notes.append(f"not the chief: writing nothing but scratch files in {run}")
    elif resume_from is not None:
        run = resume_from
        if unchecked:
            record.write(run.path)
    else:
        run = RunDir.create(t.run_dir, recipe.name)
        run.lock()
        run.write_json(RunDir.RECIPE, recipe.to_dict())
        record.write(run.path)
        run.write_json(RunDir.DATA_INFO, info.to_dict())
        preprocessing, pretrained = preprocessing_of(setup.model)
        run.write_json(RunDir.RUNTIME, {
            "strategy": strategy_name(strategy), "replicas": strategy.num_replicas_in_sync,
            "precision": t.precision, "seed": t.seed, "deterministic": t.deterministic,
            "pretrained_weights": pretrained or None, "preprocessing": preprocessing})
        if info.bad_files:
            (run / RunDir.SKIPPED_FILES).write_text(
                "".join(f"{path}\t{why}\n" for path, why in info.bad_files))
            notes.append(f"skipped {len(info.bad_files)} unreadable file(s); list in "
                         f"{run / RunDir.SKIPPED_FILES}")
    if progress and progress.stage > 0:
        restore_stage_weights(resume_from, progress.stage - 1, setup.model)
    return _Run(**vars(setup), run=run, resume_from=resume_from, progress=progress)


def _pretrained_backbone(recipe: Recipe) -> str | None:
    """The name of the model's pretrained backbone, which stays frozen at first; None
    for a model trained from scratch or built by ``model_fn``."""
    m = recipe.model
    if recipe.model_fn is not None or m.mode == "scratch" or m.weights == "none":
        return None
    return Path(m.architecture).stem if get_architecture(
        m.architecture).kind == "backbone" else None


def _baselines(run: _Run) -> list[Baseline]:
    """The run's baselines (``train.baselines``), fitted before any stage changes the
    backbone, or read back when the run resumes; none for a private run (they would
    release figures of the private data outside the guarantee) or without a validation
    split to score them on."""
    reads = unnoised_reads(run.recipe, run.data.splits, run.data.info.task.thresholded)
    if "baselines" not in reads or not baselines_apply(run.data):
        return []
    saved = run.resume_from and (run.resume_from / RunDir.BASELINES).is_file()
    if saved:
        found = from_dicts(run.resume_from.read_json(RunDir.BASELINES)["baselines"])
    else:
        found = fit_baselines(run.model, run.data, run.batch_size,
                              pretrained=_pretrained_backbone(run.recipe))
        run.run.write_json(RunDir.BASELINES, record(found))
    run.notes.append(describe_baselines(found))
    return found


def _frozen_part(run: _Setup, stage: Stage) -> tuple[tuple, str, str] | None:
    """How the stage can train on cached outputs of the frozen part of the model: the
    (frozen, trained) halves, the cache's name and what it does; None when it cannot."""
    if run.recipe.train.cache_features != "auto":
        return None
    pyramid = bool(run.data.info.task.feature_strides)  # a head on feature maps
    if stage.mode == "feature_extraction":
        parts = split_at_feature_maps(run.model) if pyramid else split_at_features(run.model)
        return parts and (parts, "feature cache",
                          "frozen backbone run once; head trained on cached features")
    if stage.mode == "fine_tune":
        parts = split_below_unfrozen(run.model, run.recipe.model.unfreeze)
        if parts is None:
            unfreeze = run.recipe.model.unfreeze
            _note_once(run, f"frozen-prefix cache off at model.unfreeze={unfreeze!r}: "
                            f"{prefix_refusal(run.model, unfreeze)}; the stage trains on "
                            "images")
            return None
        first = parts[1].get_layer("unfrozen_blocks").layers[1].name
        return (parts, "frozen-prefix cache",
                f"the frozen backbone layers below {first} run once; the "
                "unfrozen blocks and the head train on their cached output")
    return None


@dataclass
class _CachedPart:
    """How a stage trains on cached outputs of the frozen part of the model."""

    parts: tuple[keras.Model, keras.Model]   # (frozen part, the part that trains)
    views: int                               # augmented copies cached (0: images once)


def _cached_part(run: _Setup, stage: Stage) -> _CachedPart | None:
    """Whether the stage trains on cached outputs of the frozen part (the head on
    backbone features, or the unfrozen top on the frozen blocks' activations), noted
    with why or why not; None: it trains on images."""
    frozen = _frozen_part(run, stage)
    if frozen is None:
        return None
    parts, name, runs_once = frozen
    data = run.data
    use_cache, why = cache_plan(run.augmenter, run.recipe.augment.cached_views, name,
                                runs_once)
    views = effective_views(run.augmenter, run.recipe.augment.cached_views)
    if use_cache and not fits_in_memory(parts[0], len(data.splits["train"]), views):
        use_cache, why = False, f"{name} off: the cached outputs would not fit in memory"
    elif use_cache and data.share is not None:
        why += (f"; each of {data.share.count} workers ran the frozen part on its share "
                "of the images")
    _note_once(run, why)
    return _CachedPart(parts, views) if use_cache else None


def _note_once(run: _Setup, note: str) -> None:
    """Add ``note`` unless the run has it already (the learning-rate sweep and its
    stage plan the same cache)."""
    if note not in run.notes:
        run.notes.append(note)


def _stage_inputs(run: _Setup, stage: Stage, first_pass: int,
                  cached: _CachedPart | None) -> StageInputs:
    """The training graph on images, or the part that trains on ``cached`` outputs of
    the frozen part; the training stream starts at pass ``first_pass`` over the data."""
    data = run.data
    if cached is not None:
        return cached_datasets(cached.parts, data, run.augmenter, cached.views, run.batch_size,
                               first_epoch=first_pass)
    return StageInputs(
        run.graph,
        _input(run.strategy, data, "train", training=True, batch_size=run.batch_size,
               augment=run.augmenter.pipeline_fn(), first_epoch=first_pass),
        _input(run.strategy, data, "val", batch_size=run.batch_size)
        if "val" in data.splits else None,
        data.steps_per_epoch("train", run.batch_size),
        lambda: data.dataset("train", batch_size=run.batch_size))


def _passes_per_epoch(min_steps: int, epochs: int, steps_per_pass: int) -> int:
    """Passes over the training data per epoch so that the stage takes at least
    ``min_steps`` steps (``train.min_steps``): 1 unless the stage is shorter."""
    return max(1, math.ceil(min_steps / max(epochs * steps_per_pass, 1)))


def _input(strategy: tf.distribute.Strategy, data: DataBundle, split: str,
           **kwargs) -> distributed.Input:
    """``data.dataset(split, **kwargs)``; in a multi-worker run on files or TFDS
    records, each worker's own shard of it, which no other worker reads."""
    return distributed.per_worker(
        strategy, lambda context: data.dataset(split, input_context=context, **kwargs),
        data.shards_by_worker(split))


def _monitor(run: _Run) -> Monitor:
    """The validation figure that keeps epochs, which early stopping watches too:
    ``train.select_best``; with early stopping alone, ``val_loss``; for comparing the
    weights with their average alone, the task's own (``val_accuracy``, multi-label
    ``val_map``)."""
    t, task = run.recipe.train, run.data.info.task
    if t.select_best:
        return task.monitor(t.select_best)
    return task.monitor("val_loss" if t.early_stopping else "")


def _callbacks(run: _Run, stage: Stage, inputs: StageInputs) -> list[keras.callbacks.Callback]:
    """The stop at a non-finite loss, then callbacks that change the logs (EMA validation,
    best-epoch keeping), then those that record them, then the per-epoch resume state.
    What reads the validation split is :func:`~tftoolkit.unnoised.unnoised_reads`'s to
    decide."""
    t = run.recipe.train
    reads = unnoised_reads(run.recipe, run.data.splits, run.data.info.task.thresholded)
    learning_rate_key = ("train.fine_tune_learning_rate" if stage.mode == "fine_tune"
                         else "train.learning_rate")
    # First: a diverged step ends training before any other callback sees its epoch.
    callbacks: list[keras.callbacks.Callback] = [StopOnNonFiniteLoss(
        f"stage {stage.index + 1} ({stage.mode})", learning_rate_key, stage.learning_rate,
        run.run)]
    if _recalibrates(run) and inputs.val is not None:
        callbacks.append(RecalibrateBeforeValidation(run.model, _recalibration_batches(run)))
    if "ema" in reads:
        callbacks.append(EmaValidation(inputs.val, lambda model, data: distributed.evaluate(
            model, data, strategy=run.strategy, task=run.data.info.task)))
    # KeepBest is the one owner of which epoch is kept: it alone puts weights back, so
    # early stopping, on the same metric, only ends the stage.
    resumables: dict[str, KeepBest | EarlyStopping] = {}
    if "selection" in reads or "ema" in reads:
        resumables["keep_best"] = KeepBest(run.run, stage.index, _monitor(run),
                                           ema="ema" in reads,
                                           across_epochs="selection" in reads)
        callbacks.append(resumables["keep_best"])
    callbacks += [keras.callbacks.CSVLogger(str(run.run / RunDir.HISTORY), append=True),
                  EpochTensorBoard(str(run.run / RunDir.LOGS))]
    if "early_stopping" in reads:
        resumables["early_stopping"] = EarlyStopping(_monitor(run), t.early_stopping)
        callbacks.append(resumables["early_stopping"])
    if run.deadline is not None:
        callbacks.append(StopAtDeadline(run.deadline, f"stage {stage.index + 1} "
                                        f"({stage.mode})", t.time_budget, run.notes))
    if run.resumes(stage):  # the best epoch so far and the patience, as of that epoch
        resume_callbacks(run.resume_from, run.progress, resumables)
    # Last: the per-epoch state of what trains (the whole graph, or the head on cached
    # features), with optimizer and random-generator states and those of the callbacks
    # above, that a rerun resumes from.
    callbacks.append(SaveProgress(run.run, stage.index, resumables))
    return callbacks


def _run_stage(run: _Run, stage: Stage, last: bool) -> None:
    """Freeze or unfreeze for the stage's mode, compile, restore a saved epoch if this
    stage is being resumed, fit (or solve a linear head on cached features), and keep
    the stage's end state; ``last``: the run's last stage."""
    recipe = run.recipe
    t = recipe.train
    first_epoch = run.progress.next_epoch if run.resumes(stage) else stage.first_epoch
    trim_history(run.run, first_epoch)
    set_trainable(run.model, stage.mode, recipe.model.unfreeze)
    cached = _cached_part(run, stage)
    n = len(run.data.splits["train"])
    # DP-SGD's epoch is its expected number of Poisson batches (train.steps_per_epoch and
    # train.min_steps are refused with privacy)
    if run.private is not None:
        steps_per_pass, passes = privacy.steps_per_epoch(n, run.batch_size), 1
    else:
        examples = n * max(cached.views, 1) if cached is not None else n
        steps_per_pass = t.steps_per_epoch or math.ceil(examples / max(run.batch_size, 1))
        passes = _passes_per_epoch(t.min_steps, stage.epochs, steps_per_pass)
    # The input stream counts passes over the data: with several per epoch, a stage
    # resumed at an epoch starts at that epoch's first pass.
    inputs = _stage_inputs(run, stage,
                           stage.first_epoch + (first_epoch - stage.first_epoch) * passes,
                           cached)
    if stage.mode == "feature_extraction":
        why_not = why_not_solved(recipe, run.data, inputs, run.private is not None)
        if why_not is None:
            _solve_stage(run, stage, inputs, last)
            return
        if t.solve_head == "auto":
            run.notes.append(f"stage {stage.index + 1} ({stage.mode}): head trained by "
                             f"the optimizer, not solved: {why_not}")
    steps = steps_per_pass * passes
    if passes > 1:
        run.notes.append(f"stage {stage.index + 1} ({stage.mode}): each epoch is {passes} "
                         f"passes over the training data ({steps} steps), so that the "
                         f"stage takes at least train.min_steps={t.min_steps} steps")
    # The schedule spans the whole stage; a resumed stage continues it from the
    # optimizer's restored step count.
    learning_rate = learning_rate_schedule(t, stage.learning_rate, stage.epochs * steps, steps)
    fine_tuning = stage.mode == "fine_tune"  # on images, or the top on cached activations
    with run.strategy.scope():
        compile_model(inputs.model, recipe, run.data.info, learning_rate,
                      layer_decay_model=run.model if fine_tuning else None)
        if run.resumes(stage):
            restore_state(run.resume_from, run.progress, inputs.model)
    if run.private is not None:
        _fit_private(run, stage, inputs, first_epoch)
    else:
        distributed.fit(inputs.model, inputs.train, strategy=run.strategy,
                        task=run.data.info.task, epochs=stage.end,
                        initial_epoch=first_epoch, steps_per_epoch=steps,
                        validation_data=inputs.val, callbacks=_callbacks(run, stage, inputs),
                        verbose=verbosity(t.verbose))
    best = run.run.best_record(stage.index)
    if best is not None:
        source = "the weights' moving average" if best["weights"] == "ema" else "the weights"
        run.notes.append(f"stage {stage.index + 1} ({stage.mode}): kept epoch "
                         f"{best['epoch']} ({source}), {best['metric']} {best['value']:.4f}")
    finish_stage(run.run, stage.index, stage.end, run.model)
    run.cached_head = inputs if inputs.model is not run.graph else None


def _solve_stage(run: _Run, stage: Stage, inputs: StageInputs, last: bool) -> None:
    """The stage's linear head solved on its cached features (``train.solve_head``);
    its validation figures, measured as after an epoch, are its best record. In the
    run's last stage, the head is then refitted with the validation rows
    (``train.refit_head``), and those figures are kept as the run's."""
    with run.strategy.scope():
        compile_model(inputs.model, run.recipe, run.data.info, 0.0)
        solved = solve_stage(run.recipe, run.data, inputs, pixel_columns(run.model))
    figures = ({f"val_{k}": v for k, v in distributed.evaluate(
        inputs.model, inputs.val, strategy=run.strategy, task=run.data.info.task).items()}
               if inputs.val is not None else {})
    refitted = None
    if refits(run.recipe, inputs, solved, last):
        solution = refit_with_validation(run.recipe, inputs, solved)
        refitted = {"stage": stage.index, "splits": ["train", "val"],
                    "rows": solved.rows + len(inputs.arrays.val), "l2": solution.l2,
                    "iterations": solution.iterations, "unconverged": solution.unconverged,
                    **({"blend": solution.blend.to_dict()} if solution.blend else {}),
                    "validation_figures": figures}
        run.run.write_json(RunDir.REFIT, refitted)
    monitor = run.recipe.train.select_best
    if monitor in figures:
        run.run.write_json(f"{RunDir.CHECKPOINTS}/best-{stage.index}.json", {
            "stage": stage.index, "epoch": stage.end, "weights": "solved",
            "metric": monitor, "value": figures[monitor],
            **({"refitted_on": refitted["splits"]} if refitted else {})})
    shown = ", ".join(f"{k} {v:.4f}" for k, v in figures.items())
    kept = f" ({solved.kept}, chosen on validation)" if solved.kept else ""
    run.notes.append(f"stage {stage.index + 1} ({stage.mode}): head solved on {solved.rows} "
                     f"cached feature rows{kept}, {solved.solution.describe()}"
                     + (f"; {shown}" if shown else ""))
    if refitted:
        run.notes.append(_refit_note(refitted))
    finish_stage(run.run, stage.index, stage.end, run.model)
    run.cached_head = inputs


def _refit_note(refitted: dict) -> str:
    limit = (f", {refitted['unconverged']} solve(s) stopped at the iteration limit"
             if refitted["unconverged"] else "")
    return (f"stage {refitted['stage'] + 1} (feature_extraction): head refitted at L2 "
            f"{refitted['l2']:g} on {refitted['rows']} rows, the training and validation "
            f"splits (train.refit_head; {refitted['iterations']} L-BFGS iterations{limit}); "
            "the validation figures are the head's before the refit")


def _refit_record(run: _Run) -> dict | None:
    """What ``refit.json`` says about the head's refit with the validation rows (written
    by this run, or by the run it resumes); None when the head was not refitted."""
    for folder in (run.run, run.resume_from):
        if folder is not None and (folder / RunDir.REFIT).is_file():
            return folder.read_json(RunDir.REFIT)
    return None


def _plan_privacy(run: _Run, stages: list[Stage]) -> Privacy:
    """The noise for the whole run (every stage spends the same budget), and the private
    steps a resumed run had already taken."""
    if distributed.needs_own_loop(run.strategy) or isinstance(run.strategy,
                                                              tf.distribute.TPUStrategy):
        raise RecipeError("privacy.enabled runs DP-SGD on one machine (one device or "
                          f"MirroredStrategy); {strategy_name(run.strategy)} is not "
                          "supported: set train.distribute=default or mirrored")
    n = len(run.data.splits["train"])
    epochs = sum(stage.epochs for stage in stages)
    noise, delta = privacy.planned_noise(run.recipe.privacy, n, run.batch_size, epochs)
    done = run.progress.next_epoch if run.progress else 0
    plan = Privacy(noise, delta, min(run.batch_size / n, 1.0),
                   done * privacy.steps_per_epoch(n, run.batch_size))
    run.notes.append(f"DP-SGD: noise multiplier {noise:.4g}, clip "
                     f"{run.recipe.privacy.l2_clip:g}, Poisson sampling rate "
                     f"{plan.sampling_rate:.4g}, delta {delta:.3g}, {epochs} epochs planned")
    return plan


def _training_arrays(inputs: StageInputs, on_images: bool, examples: int,
                     budget_mb: int) -> tuple[np.ndarray, np.ndarray]:
    """What the stage trains on, in memory, and the encoded labels: pixels as uint8 (the
    pipeline's pixels are whole numbers) when it trains on images, else the features or
    activations of the frozen part as they are; refused first when they would exceed the
    memory budget."""
    batches = inputs.plain_train()
    spec = batches.element_spec[0]
    shape = "x".join(map(str, spec.shape[1:]))
    privacy.check_memory(examples, int(np.prod(spec.shape[1:])) * (
        1 if on_images else spec.dtype.size),
        f"{shape} uint8 pixels" if on_images else f"{shape} {spec.dtype.name} values",
        budget_mb)
    xs, ys = [], []
    for batch in batches:
        x = np.asarray(batch[0])
        xs.append(x.astype(np.uint8) if on_images else x)
        ys.append(np.asarray(batch[1]))
    return np.concatenate(xs), np.concatenate(ys)


def _fit_private(run: _Run, stage: Stage, inputs: StageInputs, first_epoch: int) -> None:
    """DP-SGD for one stage: Keras' ``fit`` on Poisson-sampled batches of what the stage
    trains on, its step taking DP-SGD's gradients; ε is logged each epoch, and the stage
    ends before an epoch would take it past ``privacy.target_epsilon``."""
    cfg, t = run.recipe.privacy, run.recipe.train
    on_images = inputs.model is run.graph and bool(run.data.info.image_size)
    x, y = _training_arrays(inputs, on_images, len(run.data.splits["train"]),
                            run.recipe.data.memory_budget_mb)
    n, spent = len(x), run.private
    epoch_steps = privacy.steps_per_epoch(n, run.batch_size)
    spent.steps = first_epoch * epoch_steps  # every epoch before this one, all stages
    end = privacy.affordable_end(
        lambda steps: dataclasses.replace(spent, steps=steps).epsilon, first_epoch,
        stage.end, epoch_steps, spent.steps, cfg.target_epsilon)
    # With no affordable epoch left (a resumed stage) fit still runs, for no epoch: its
    # callbacks end the stage as after any other fit, KeepBest putting the best back.
    # insecure_reproducible: a function of (seed, first epoch), so nothing repeats after
    # a resume either; otherwise OS entropy
    seed = ([t.seed, first_epoch] if cfg.insecure_reproducible else None)
    replicas = run.strategy.num_replicas_in_sync
    gradients = privacy.PrivateGradients(
        l2_clip=cfg.l2_clip, noise_multiplier=spent.noise_multiplier,
        expected_batch=spent.sampling_rate * n, strategy=run.strategy,
        seed=seed and int(np.random.SeedSequence(seed).generate_state(1)[0]))
    use_in_fit(inputs.model, TrainStep(inputs.model, gradients),
               figures=run.data.info.task.train_figures)
    batches = privacy.poisson_dataset(x, y, spent.sampling_rate, replicas,
                                      np.random.default_rng(seed))
    distributed.fit(inputs.model, batches, strategy=run.strategy, task=run.data.info.task,
                    epochs=end,
                    initial_epoch=first_epoch, steps_per_epoch=epoch_steps,
                    validation_data=inputs.val,
                    callbacks=[privacy.PrivacySpent(spent, epoch_steps),
                               *_callbacks(run, stage, inputs)], verbose=verbosity(t.verbose))


def _keep_best_stage(run: _Run, stages: list[Stage]) -> bool:
    """With ``train.select_best``, end with the best stage's weights: fine-tuning that
    validates worse than the stage before it is not kept. Returns whether an earlier
    stage's weights were put back."""
    if not run.recipe.train.select_best or len(stages) < 2:
        return False
    records = {s.index: run.run.best_record(s.index) for s in stages}
    records = {i: r for i, r in records.items() if r is not None}
    if len(records) < 2:
        return False
    monitor = run.data.info.task.monitor(run.recipe.train.select_best)
    # the best figure; of equal ones the later stage
    best = monitor.best({i: records[i]["value"] for i in sorted(records, reverse=True)})
    last = stages[-1].index
    if best != last:
        restore_stage_weights(run.run, best, run.model)
        run.notes.append(f"kept stage {best + 1} ({stages[best].mode}): its "
                         f"{records[best]['metric']} {records[best]['value']:.4f} beats the "
                         f"last stage's {records[last]['value']:.4f}")
    return best != last


def _found_learning_rate(run: _Run) -> Recipe:
    """``train.learning_rate=auto``: the finder's suggestion (found once per run and kept
    in the run directory, so a resumed run uses the same)."""
    if distributed.needs_own_loop(run.strategy):
        raise RecipeError("train.learning_rate=auto sweeps with Keras' fit, which fails "
                          "under MultiWorkerMirroredStrategy: run `tftoolkit lr-find` on one "
                          "machine and set train.learning_rate to its suggestion")
    saved = run.resume_from and (run.resume_from / RunDir.LR_FIND).is_file()
    if saved:
        found = run.resume_from.read_json(RunDir.LR_FIND)
    else:
        finder = _sweep_first_stage(run)
        found = finder.to_dict()
        run.run.write_json(RunDir.LR_FIND, found)
        finder.plot(run.run / RunDir.LR_FIND_PLOT)
    suggestion, t = found["suggestion"], run.recipe.train
    run.notes.append(f"train.learning_rate=auto: {suggestion:.3g} (learning-rate "
                     f"finder, {len(found['learning_rates'])} steps)")
    fine_tune_rate = t.fine_tune_learning_rate
    if run.recipe.model.mode == "fine_tune":  # the sweep measured the fine-tuning itself
        if fine_tune_rate and fine_tune_rate != suggestion:
            run.notes.append(f"the finder's {suggestion:.3g} replaces "
                             f"train.fine_tune_learning_rate={fine_tune_rate:g}: "
                             "model.mode=fine_tune sweeps the fine-tuning stage itself")
        fine_tune_rate = suggestion
    return dataclasses.replace(run.recipe, train=dataclasses.replace(
        t, learning_rate=suggestion, fine_tune_learning_rate=fine_tune_rate))


def _sweep_first_stage(setup: _Setup, steps: int = 100) -> LrFindResult:
    """The learning-rate sweep on what the first stage trains (the head alone on cached
    features when the backbone is frozen); the models' weights are put back after."""
    stage = Stage(0, stage_modes(setup.recipe)[0], 0, setup.recipe.train.epochs, 0.0)
    set_trainable(setup.model, stage.mode, setup.recipe.model.unfreeze)
    inputs = _stage_inputs(setup, stage, 0, _cached_part(setup, stage))
    weights = inputs.model.get_weights()
    with setup.strategy.scope():
        compile_model(inputs.model, setup.recipe, setup.data.info, 1e-7)
    try:
        return sweep(inputs.model, inputs.train, steps=steps)
    finally:
        inputs.model.set_weights(weights)


def lr_find(recipe: Recipe | str, overrides: dict | list[str] | None = None, *,
            steps: int = 100, out: str | Path | None = None) -> LrFindResult:
    """Sweep the learning rate over ``steps`` batches of the recipe's first stage and
    suggest one (writes the loss-vs-rate plot to ``out`` when given)."""
    recipe = load_recipe(recipe, overrides)
    if recipe.privacy.enabled:
        raise RecipeError(privacy.refused_search("lr-find"))
    recipe = auto.without_choice(recipe)
    if recipe is None:
        raise RecipeError("lr-find sweeps the first stage of one mode, and model.mode=auto "
                          "chooses the mode while training: set model.mode (for example "
                          "--set model.mode=fine_tune)")
    strategy = choose_strategy(recipe.train)
    with precision_policy(recipe.train.precision):
        seed_everything(recipe.train.seed, recipe.train.deterministic)
        result = _sweep_first_stage(_prepare(recipe, strategy), steps)
    if out is not None:
        result.plot(out)
    return result


def evaluate_model(model: keras.Model, data: DataBundle, recipe: Recipe, batch_size: int,
                   strategy: tf.distribute.Strategy | None = None,
                   cached_head: StageInputs | None = None) -> dict[str, float]:
    """The task's figures of the inference model on the val and test splits (with
    ``train.tta``, those of the predictions averaged over the views beside them).

    Args:
        cached_head: when the model's last stage trained its head on cached features of
            a frozen backbone, the head and those validation features: the same figures
            without running the backbone again.
    """
    strategy = strategy or tf.distribute.get_strategy()
    task = data.info.task
    if not getattr(model, "compiled", False):  # trained inside an augmentation graph
        compile_model(model, recipe, data.info, 0.0)
    metrics: dict[str, float] = {}
    for split in ("val", "test"):
        if split not in data.splits:
            continue
        on_features = (split == "val" and cached_head is not None
                       and cached_head.val is not None)
        evaluated, dataset = ((cached_head.model, cached_head.val) if on_features else
                              (model, _input(strategy, data, split, batch_size=batch_size)))
        values = distributed.evaluate(evaluated, dataset, strategy=strategy, task=task)
        metrics.update({f"{split}_{k}": v for k, v in values.items()})
        if (recipe.train.tta and data.info.image_size
                and not distributed.needs_own_loop(strategy)):
            averaged = ((task.targets(batch[1]),
                         predict_tta(model, np.asarray(batch[0]), recipe.train.tta))
                        for batch in data.dataset(split, batch_size=SAMPLE_BATCH))
            metrics.update({f"{split}_{k}_tta": v
                            for k, v in task.measure_batches(averaged).items()})
    return metrics


def read_history(path: Path) -> dict[str, list[float]]:
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


def _choose_thresholds(run: _Run) -> dict[str, float]:
    """Multi-label: the thresholds chosen on validation (kept in the run), and the val
    and test figures at them."""
    data, info = run.data, run.data.info
    thresholds = validation_thresholds(run.model, data, run.recipe.train.threshold)
    run.run.write_json(RunDir.THRESHOLDS, thresholds.to_dict(info.class_names))
    run.notes.append(f"thresholds: {thresholds.chosen_by} (mean "
                     f"{thresholds.values.mean():.3f}; {RunDir.THRESHOLDS})")
    figures = {}
    for split in ("val", "test"):
        if split in data.splits:
            histograms = split_histograms(run.model, data.dataset(split, batch_size=64))
            figures.update({f"{split}_{k}_at_thresholds": v for k, v in
                            report_at(*histograms, thresholds.values).items() if k != "map"})
    return figures


def _finish(run: _Run, train_seconds: float) -> TrainResult:
    """Evaluate, save the model, history plot and parity inputs, mark the run finished
    (metrics last), and export."""
    recipe, model = run.recipe, run.model
    metrics = evaluate_model(model, run.data, recipe, run.batch_size, run.strategy,
                             run.cached_head)
    refitted = _refit_record(run)
    if refitted is not None:  # validation trained the head: its figures from before
        if any(k.startswith("val_") and k.endswith("_tta") for k in metrics):
            run.notes.append("no validation figures of test-time augmentation: the "
                             "validation split trained the head (train.refit_head)")
        metrics = {k: v for k, v in metrics.items() if not k.startswith("val_")}
        metrics.update(refitted["validation_figures"])
        if _refit_note(refitted) not in run.notes:  # (a resumed run)
            run.notes.append(_refit_note(refitted))
    if run.data.info.task.thresholded:
        metrics.update(_choose_thresholds(run))
    metrics["train_seconds"] = train_seconds
    if run.baselines:
        metrics.update(baseline_metrics(run.baselines))
        run.notes.extend(shortfalls(run.baselines, metrics))
        run.run.write_json(RunDir.BASELINES, record(run.baselines, metrics))
    if run.private is not None:
        metrics.update(epsilon=run.private.epsilon, delta=run.private.delta)
    model.save(run.run / RunDir.MODEL)
    history = read_history(run.run / RunDir.HISTORY)
    plot_history(history, run.run / RunDir.CURVES, title=recipe.name)
    save_parity_inputs(run.run, run.data)
    run.run.write_json(RunDir.METRICS, metrics)
    run.run.release()
    run.notes.extend(note for note in run.data.notes if note not in run.notes)
    result = TrainResult(recipe, model, history, run.run.path, run.data.info, metrics,
                         train_seconds, notes=run.notes)
    if recipe.export.enabled and is_chief(run.strategy):
        result.export_dir = export_run(run.run.path, model=model, data=run.data)
    return result
