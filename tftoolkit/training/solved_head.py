"""A frozen-feature stage whose head is solved instead of trained (``train.solve_head``).

When a stage trains only a linear head (dropout, then the model's own ``Dense`` output
layer) on cached features of a frozen backbone, its loss is convex: the head is fitted to
convergence by :func:`tftoolkit.training.probe.solve`, with the stage's loss (label
smoothing, class weights) and its L2 strength chosen on the validation split, and the
solution is written into the output layer. Exports and serving see an ordinary model.
With ``augment.cached_views`` and a validation split, the head is solved on the images
as they are and on the images with their cached augmented copies, and the better kept
(without validation: on the copies). With ``model.pixel_features``, the features end
with the image's grey pixels, and the head is two experts solved apart, the backbone's
features and the pixels, their logits added with weights chosen on validation
(:func:`tftoolkit.training.probe.solve_experts`): on images a backbone describes poorly
(digits, drawings), the pixels carry what it misses. The runner
then measures the stage's validation figures with Keras on the cached validation
features, as after an epoch, and keeps them as the stage's best record (what
``train.select_best`` compares a later fine-tuning stage with).

With ``train.refit_head``, the head of a run's last stage is then solved once more, at
the L2 strength chosen on validation, on the rows it was fitted to and the validation
rows together (:func:`refit_with_validation`): with ten images per class, the fifth that
validation holds out is worth about two points of accuracy. The figures measured before
the refit remain the run's validation figures; after it, the validation split has
trained the model and is no held-out estimate (the run records so in ``refit.json``).
Multi-label heads are not refitted: their thresholds are chosen on validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from tftoolkit.data import DataBundle
from tftoolkit.models.layout import OUTPUT
from tftoolkit.recipe import Recipe
from tftoolkit.training.probe import (L2_GRID, MULTILABEL, LinearProblem, Solution, head_kind,
                                      refit, solve, solve_experts)
from tftoolkit.training.stages import StageInputs

# The L2 strength of a head solved without a validation split to choose one on (the
# standardized features' scale; about scikit-learn's default C=1 for 50 examples).
UNVALIDATED_L2 = 0.01


def linear_output(head: keras.Model) -> keras.layers.Dense | None:
    """The output layer of ``head`` when the head is linear (dropout layers, then the
    output ``Dense`` reading the features), else None."""
    layers = [layer for layer in head.layers if not isinstance(layer, keras.layers.InputLayer)]
    if not layers or not all(isinstance(layer, keras.layers.Dropout) for layer in layers[:-1]):
        return None
    last = layers[-1]
    return last if isinstance(last, keras.layers.Dense) and last.name == OUTPUT else None


def why_not_solved(recipe: Recipe, data: DataBundle, inputs: StageInputs,
                   private: bool) -> str | None:
    """Why the stage's head is trained by the optimizer instead (None: it is solved)."""
    if recipe.train.solve_head != "auto":
        return "train.solve_head=off"
    if inputs.arrays is None:
        return "the features are not cached"
    if private:
        return "DP-SGD trains it (a solved head would not be private)"
    if head_kind(data.info.task) is None:
        return f"the {data.info.task.name} task's head is no logistic regression"
    if linear_output(inputs.model) is None:
        return "the head is not one linear layer"
    if recipe.regularize.kernel not in ("none", "l2"):
        return f"regularize.kernel={recipe.regularize.kernel} is not smooth"
    return None


@dataclass
class SolvedHead:
    """A head solved for a stage: the solution, the training rows it was fitted to and,
    with cached augmented copies, which fit was kept."""

    solution: Solution
    problem: LinearProblem
    x: np.ndarray         # the training rows the kept fit was solved on, and their labels
    labels: np.ndarray
    kept: str = ""        # which fit was kept, when there were two

    @property
    def rows(self) -> int:
        return len(self.x)


def solve_stage(recipe: Recipe, data: DataBundle, inputs: StageInputs,
                pixels: int = 0) -> SolvedHead:
    """Solve the head of ``inputs`` on its cached features and put the solution in the
    model's output layer. With cached augmented copies and a validation split, the head
    is solved on the images as they are and on the images with their copies, and the one
    that validates better is kept, a tie going to the images alone: an augmentation that
    does not suit the images then costs nothing. ``pixels``: how many of the features, the
    last ones, are the image's pixels (``model.pixel_features``; two experts then)."""
    info, arrays = data.info, inputs.arrays
    kind = head_kind(info.task)
    balanced = recipe.data.class_weight == "balanced"
    problem = LinearProblem(
        kind, info.num_outputs, recipe.regularize.label_smoothing,
        class_weights=data.class_weights(),
        positive_weights=(np.asarray(info.task.positive_weights())
                          if balanced and kind == MULTILABEL else None))
    own_penalty = recipe.regularize.kernel == "l2"
    if own_penalty:
        grid = (recipe.regularize.strength,)
    else:
        grid = L2_GRID if arrays.val is not None else (UNVALIDATED_L2,)
    fits = [("", arrays.train, arrays.train_labels)]
    if arrays.unaugmented is not None and arrays.val is not None:
        plain, labels = arrays.unaugmented(), data.splits["train"].labels
        fits = [("the images as they are", plain, labels),
                ("the images and their augmented copies", np.concatenate([plain, arrays.train]),
                 np.concatenate([labels, arrays.train_labels]))]
    if pixels:  # the features end with the image's pixels: two experts
        def fit(x, labels):
            return solve_experts(problem, x, labels, arrays.val, arrays.val_labels,
                                 split=x.shape[1] - pixels, grid=grid, raw_penalty=own_penalty)
    else:
        def fit(x, labels):
            return solve(problem, x, labels, arrays.val, arrays.val_labels, grid=grid,
                         raw_penalty=own_penalty)
    solved = [SolvedHead(fit(x, labels), problem, x, labels, kept) for kept, x, labels in fits]
    best = max(solved, key=lambda s: (s.solution.val_score, -s.solution.val_loss)
               ) if len(solved) > 1 else solved[0]
    _set_head(inputs.model, best.solution)
    return best


def refits(recipe: Recipe, inputs: StageInputs, solved: SolvedHead, last_stage: bool) -> bool:
    """Whether ``solved`` is refitted with the validation rows: the head of the run's
    last stage, with ``train.refit_head`` and a validation split, and no multi-label
    head."""
    return (recipe.train.refit_head and last_stage and inputs.arrays.val is not None
            and solved.problem.kind != MULTILABEL)


def refit_with_validation(recipe: Recipe, inputs: StageInputs, solved: SolvedHead) -> Solution:
    """Solve the head again at the L2 strength (and blend of experts) ``solved`` chose on
    validation, on its training rows and the validation rows, and put it in the model's
    output layer."""
    arrays = inputs.arrays
    x = np.concatenate([solved.x, arrays.val])
    labels = np.concatenate([np.asarray(solved.labels), np.asarray(arrays.val_labels)])
    solution = refit(solved.problem, x, labels, solved.solution,
                     raw_penalty=recipe.regularize.kernel == "l2")
    _set_head(inputs.model, solution)
    return solution


def _set_head(head: keras.Model, solution: Solution) -> None:
    dense = linear_output(head)
    dense.set_weights([solution.kernel.reshape(dense.kernel.shape),
                       solution.bias.reshape(dense.bias.shape)])
