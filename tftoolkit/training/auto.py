"""``model.mode=auto``: the transfer mode chosen on validation, within a time budget.

With pretrained weights, these candidates are tried in order, cheapest and simplest
first:

1. ``linear probe`` (``feature_extraction``): the head solved on the frozen backbone's
   cached features (``train.solve_head``; cached augmented views when augmentation is
   on), with ``model.pixel_features`` blended with an expert on the image's pixels;
2. ``probe + fine-tuning`` (``two_stage``): the same solved head, then the top of the
   backbone (``model.unfreeze``) fine-tuned from it, the best epoch and stage kept on
   validation;
3. ``small CNN from scratch`` (``cnn``, filters :data:`SCRATCH_FILTERS`, at most
   :data:`SCRATCH_SIZE` px), only for images unlike the backbone's photos: when the
   logistic regression on pixels validates at least as well as the linear probe (the
   run's baselines, :mod:`tftoolkit.training.baselines`).

Each candidate is an ordinary run of the recipe with its mode (its own run directory,
export off), so frozen features computed by one are reused by the next (the feature
memo of :mod:`tftoolkit.training.feature_cache`); the first fits the baselines. The
best validation figure wins (the task's own: accuracy, a multi-label model's mAP, a
regression's mean squared error), ties going to the earlier candidate; the test split
never takes part. A candidate starts only while ``train.time_budget`` has time left, and
its stages stop when the budget is spent. The winner's run is the result: its notes open
with what was tried, each one's validation figure and seconds, and why the winner won
(also in its ``auto.json``); it carries the baselines, and it is what is exported.

Without pretrained weights to transfer (``linear``, ``mlp``, ``cnn``, ``model.weights=none``,
a recipe's ``model_fn``) there is nothing to choose: the run trains from scratch.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from tftoolkit.errors import RecipeError, TrainingDiverged
from tftoolkit.models.registry import mode_without_choice
from tftoolkit.recipe import Recipe
from tftoolkit.rundir import RunDir
from tftoolkit.serving import export_run
from tftoolkit.tasks import Monitor
from tftoolkit.training.baselines import (baseline_metrics, read_baselines, record,
                                          shortfalls)

if TYPE_CHECKING:  # the runner calls this module; it passes its train function in
    from tftoolkit.training.runner import TrainResult

SCRATCH_FILTERS = [32, 64, 128]
SCRATCH_SIZE = 64


@dataclass
class Candidate:
    """One mode tried (or not) and how it validated."""

    name: str
    mode: str
    architecture: str
    validation: float | None = None
    seconds: float = 0.0
    run_dir: str | None = None
    skipped: str = ""             # why it was not trained

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def without_choice(recipe: Recipe) -> Recipe | None:
    """``recipe`` with the one mode it can train in (``model.mode=auto`` without
    pretrained weights: ``scratch``); None when ``auto`` has modes to choose among."""
    m = recipe.model
    mode = mode_without_choice(m.architecture, m.mode, m.weights, recipe.model_fn is not None)
    if mode is None or mode == m.mode:
        return recipe if mode is not None else None
    return dataclasses.replace(recipe, model=dataclasses.replace(m, mode=mode))


def _variant(recipe: Recipe, mode: str, select_best: str = "", **model) -> Recipe:
    """A candidate's recipe: export off; after the first, no baselines of its own (the
    first run's serve every candidate) and its best epoch and stage kept by
    ``select_best`` unless the recipe names its own."""
    first = not select_best
    train = dataclasses.replace(recipe.train, select_best=recipe.train.select_best
                                or select_best, baselines=recipe.train.baselines and first)
    return dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, mode=mode,
                                                                 **model),
                               train=train,
                               export=dataclasses.replace(recipe.export, enabled=False))


def _scratch_variant(recipe: Recipe, metric: str) -> Recipe:
    size = min(recipe.data.image_size or SCRATCH_SIZE, SCRATCH_SIZE)
    variant = _variant(recipe, "scratch", metric, architecture="cnn", filters=SCRATCH_FILTERS,
                       pixel_features=0)
    return dataclasses.replace(variant, data=dataclasses.replace(recipe.data, image_size=size))


def _unlike_photos(result: "TrainResult") -> tuple[bool, str]:
    """Whether the pixel baseline of the probe's run validates at least as well as the
    linear probe baseline, and the sentence that says so (or why they were not
    compared)."""
    found = {b.name: b for b in read_baselines([result.run_dir])}
    pixels, probe = found.get("pixels"), found.get("probe")
    if pixels is None or probe is None:
        why = ("train.baselines=false" if not result.recipe.train.baselines else
               f"the {result.info.task.name} task fits none")
        return False, f"no pixel and probe baselines to compare ({why})"
    unlike = pixels.val_score >= probe.val_score
    relation = "at least as well as" if unlike else "below"
    looks = "" if unlike else "the images look like photos to the backbone: "
    return unlike, (f"{looks}the {pixels.description} baseline validates {relation} the "
                    f"linear probe ({pixels.val_score:.4f} vs {probe.val_score:.4f})")


def _check_validation(recipe: Recipe) -> None:
    d = recipe.data
    if not d.validation_fraction and not d.val_split and not d.split_column:
        raise RecipeError("model.mode=auto chooses the mode on the validation split, and "
                          "data.validation_fraction=0 holds none out: set "
                          "data.validation_fraction (for example 0.2), or model.mode")


def choose(recipe: Recipe, train_one: Callable[..., "TrainResult"], *,
           report_test: bool = True, judged_by: str = "") -> "TrainResult":
    """Train the candidates of ``recipe`` (``model.mode=auto``) with ``train_one`` (the
    runner's ``train``) and return the winner's result, exported when the recipe
    exports. The candidates are judged by the task's own validation figure
    (``val_accuracy``, ``val_map``, ``val_mse``), or ``judged_by`` when a search names
    one."""
    _check_validation(recipe)
    budget = recipe.train.time_budget
    start = time.perf_counter()
    deadline = start + budget if budget else None
    candidates: list[Candidate] = []
    results: dict[str, "TrainResult"] = {}

    def attempt(name: str, variant: Recipe) -> None:
        candidate = Candidate(name, variant.model.mode, variant.model.architecture)
        candidates.append(candidate)
        if results and deadline is not None and time.perf_counter() >= deadline:
            candidate.skipped = f"train.time_budget={budget:g} s spent"
            return
        began = time.perf_counter()
        try:
            result = train_one(variant, report_test=report_test, judged_by=judged_by,
                               deadline=deadline)
        except TrainingDiverged as exc:
            if not results:  # nothing to fall back on
                raise
            candidate.skipped = f"diverged ({str(exc).split(';')[0]})"
            return
        candidate.seconds = time.perf_counter() - began
        candidate.run_dir = str(result.run_dir)
        results[name] = result

    attempt("linear probe", _variant(recipe, "feature_extraction"))
    first = results["linear probe"]
    monitor = first.info.task.monitor(judged_by)
    metric = monitor.key
    if metric not in first.metrics:
        raise RecipeError(f"model.mode=auto chooses the mode on the validation split, and "
                          f"{first.info.description} has none: set "
                          "data.validation_fraction (or data.val_split), or model.mode")
    # (model.pixel_features is the linear probe's alone: fine-tuning trains the backbone)
    attempt("probe + fine-tuning", _variant(recipe, "two_stage", metric, pixel_features=0))
    unlike, why = _unlike_photos(first)
    if unlike:
        attempt("small CNN from scratch", _scratch_variant(recipe, metric))
    else:
        candidates.append(Candidate("small CNN from scratch", "scratch", "cnn", skipped=why))
    for candidate in candidates:
        if candidate.name in results:
            candidate.validation = results[candidate.name].metrics.get(metric)
    # the best figure (a NaN is worst); of equal ones, the earlier candidate
    trained = {i: c.validation for i, c in enumerate(candidates) if c.validation is not None}
    winner = candidates[monitor.best(trained)]
    return _finish(recipe, results[winner.name], winner, candidates, monitor, results,
                   time.perf_counter() - start, why)


def _finish(recipe: Recipe, result: "TrainResult", winner: Candidate,
            candidates: list[Candidate], monitor: Monitor, results: dict, seconds: float,
            pixels_vs_probe: str) -> "TrainResult":
    """The winner's result with the choice in its notes, ``auto.json`` and metrics, every
    candidate's baselines, and its export."""
    run = RunDir(result.run_dir)
    tried = "; ".join(
        f"{c.name} ({c.mode}) " + (f"{c.validation:.4f} in {c.seconds:.1f} s"
                                   if c.validation is not None else f"not trained: {c.skipped}")
        for c in candidates)
    metric = monitor.key
    direction = "best" if monitor.higher_is_better else "lowest"
    why = (f"chose {winner.name} ({winner.mode}): the {direction} {metric} "
           f"({winner.validation:.4f}); ties go to the earlier, simpler mode")
    notes = [f"model.mode=auto tried, by {metric}: {tried}", why]
    if any(c.name.endswith("scratch") and not c.skipped for c in candidates):
        notes.insert(1, f"a small CNN from scratch was tried: {pixels_vs_probe}")
    baselines = read_baselines(r.run_dir for r in results.values())
    metrics = dict(result.metrics)
    if baselines:
        metrics.update(baseline_metrics(baselines))
        notes += [line for line in shortfalls(baselines, metrics) if line not in result.notes]
        run.write_json(RunDir.BASELINES, record(baselines, metrics))
    metrics["auto_seconds"] = seconds
    run.write_json(RunDir.AUTO, {"metric": metric, "chosen": winner.name, "why": why,
                                 "candidates": [c.to_dict() for c in candidates],
                                 "seconds": seconds})
    run.write_json(RunDir.METRICS, metrics)
    result = dataclasses.replace(result, recipe=recipe, metrics=metrics,
                                 notes=notes + result.notes)
    if recipe.export.enabled:
        result.export_dir = export_run(result.run_dir, model=result.model)
    return result

