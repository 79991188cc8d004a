"""Linear heads solved, not sampled: logistic regression on fixed features, to convergence.

A linear head on features that do not change (a frozen backbone's, or downsampled pixels)
is logistic regression: multinomial (softmax) for single-label classes, one sigmoid for
binary labels, one sigmoid per class for multi-label. Its loss is convex, so it is solved
here by full-batch L-BFGS (``scipy.optimize``) instead of being sampled by a few epochs of
SGD. The features are standardized for the solver (which then converges in tens of
iterations) and the solution is folded back into a kernel and bias for the raw features,
so the result is an ordinary ``Dense`` layer's weights.

The L2 strength is chosen on the validation split (never on test) from :data:`L2_GRID`,
solved from the strongest to the weakest with warm starts: the best validation accuracy
(multi-label: mAP, as the ``map`` metric computes it), ties going to the lower
validation log-loss. The loss is the training loss of the head as Keras computes it:
label smoothing, class weights (single-label, per example) and positive-term weights
(multi-label, per class) included, averaged over the examples, plus ``l2 * sum(kernel**2)``
(a Keras ``l2`` kernel regularizer's penalty) on the standardized kernel, or on the raw
kernel when the recipe fixes the strength.

:func:`head_kind` is the one place that maps a form of label to the head's kind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from tftoolkit.multilabel import mean_average_precision, score_histograms
from tftoolkit.tasks import MultiLabel, SingleLabel, Task

SOFTMAX, SIGMOID, MULTILABEL = "softmax", "sigmoid", "multilabel"
# L2 strengths tried, strongest first (each warm-starts the next, weaker one)
L2_GRID = (3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4, 1e-4)
MAX_ITERATIONS = 1000
# Two experts (the backbone's features, the image's grey pixels): the weights of their
# logits tried, the backbone alone first (equal figures and log-losses go to it).
BLENDS = ((1.0, 0.0), (1.0, 0.5), (1.0, 1.0), (0.5, 1.0), (0.0, 1.0))
# A feature's scale is at least this share of the mean feature scale: a feature almost
# constant on the training split (a near-dead channel) is not blown up.
SCALE_FLOOR = 0.01


def head_kind(task: Task) -> str | None:
    """The logistic regression a task's head is: ``softmax`` (one-hot or sparse class
    ids), ``sigmoid`` (binary labels, one output) or ``multilabel`` (one sigmoid per
    class); None for any other task (regression)."""
    if isinstance(task, MultiLabel):
        return MULTILABEL
    if not isinstance(task, SingleLabel):
        return None
    return SIGMOID if task.encoding == "binary" else SOFTMAX


def metric_name(kind: str) -> str:
    """The validation figure that chooses the L2 strength (and names it in reports)."""
    return "map" if kind == MULTILABEL else "accuracy"


@dataclass
class LinearProblem:
    """What the solver fits: labels (class ids, or multi-hot rows), the kind of head, its
    number of outputs, and the loss's label smoothing and weights."""

    kind: str
    outputs: int
    label_smoothing: float = 0.0
    class_weights: np.ndarray | None = None      # single-label: per class, per example
    positive_weights: np.ndarray | None = None   # multi-label: per class positive term

    def targets(self, labels: np.ndarray) -> np.ndarray:
        """Smoothed targets ``[n, outputs]`` as the Keras loss sees them."""
        eps = self.label_smoothing
        if self.kind == SOFTMAX:
            onehot = np.eye(self.outputs, dtype=np.float64)[np.asarray(labels, int)]
            return onehot * (1 - eps) + eps / self.outputs
        rows = np.asarray(labels, np.float64).reshape(len(labels), self.outputs)
        return rows * (1 - eps) + 0.5 * eps

    def example_weights(self, labels: np.ndarray) -> np.ndarray:
        if self.kind == MULTILABEL or self.class_weights is None:
            return np.ones(len(labels))
        return np.asarray(self.class_weights, np.float64)[np.asarray(labels, int).ravel()]


@dataclass
class Solution:
    """A solved head: kernel and bias for the raw features, the chosen L2 strength, its
    validation figure, and every strength tried."""

    kernel: np.ndarray                 # [features, outputs] float32
    bias: np.ndarray                   # [outputs] float32
    l2: float
    metric: str                        # accuracy | map
    val_score: float | None            # None without a validation split
    val_loss: float | None
    tried: list[tuple[float, float, float]] = field(default_factory=list)
    #                                    (l2, val score, val log-loss), in order tried
    iterations: int = 0
    seconds: float = 0.0
    unconverged: int = 0               # strengths whose solve hit the iteration limit
    blend: "Blend | None" = None       # two experts: how they were combined

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Logits of raw features."""
        return np.asarray(features, np.float32) @ self.kernel + self.bias

    def describe(self) -> str:
        chosen = (f"L2 {self.l2:g} chosen on validation from {len(self.tried)} strengths"
                  if len(self.tried) > 1 else f"L2 {self.l2:g}")
        stopped = (f"; {self.unconverged} of {max(len(self.tried), 1)} strengths stopped at "
                   f"the limit of {MAX_ITERATIONS} iterations before converging"
                   if self.unconverged else "")
        blended = "" if self.blend is None else f"; {self.blend.describe()}"
        return (f"{chosen}, {self.iterations} L-BFGS iterations in {self.seconds:.1f} s"
                + stopped + blended)


@dataclass
class Blend:
    """Two experts solved apart, their logits added with weights chosen on validation:
    the features before column ``split`` and the pixels from it on."""

    split: int
    weights: tuple[float, float]       # (features, pixels)
    pixel_l2: float                    # the pixel expert's L2 strength (chosen on validation)
    tried: list[tuple[float, float, float, float]] = field(default_factory=list)
    #                                    (features weight, pixels weight, val score, loss)

    def describe(self) -> str:
        a, b = self.weights
        what = ("the backbone's features alone" if not b else "the pixels alone" if not a
                else f"the backbone's features x {a:g} + the pixels x {b:g}")
        if not self.tried:
            return f"experts' logits: {what} (no validation split to choose a blend on)"
        return (f"experts' logits: {what} (pixel expert L2 {self.pixel_l2:g}), chosen on "
                f"validation from {len(self.tried)} blends")

    def to_dict(self) -> dict:
        return {"weights": list(self.weights), "pixel_l2": self.pixel_l2}


@dataclass
class _Standardizer:
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> "_Standardizer":
        mean = x.mean(axis=0, dtype=np.float64)
        scale = x.std(axis=0, dtype=np.float64)
        return cls(mean, np.maximum(scale, SCALE_FLOOR * scale.mean()) if scale.any()
                   else np.ones_like(scale))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.mean) / self.scale).astype(np.float32)


def _logits(x: np.ndarray, theta: np.ndarray, d: int, k: int) -> tuple[np.ndarray, ...]:
    kernel = theta[:d * k].reshape(d, k)
    return (x @ kernel.astype(np.float32)).astype(np.float64) + theta[d * k:], kernel


def _loss_and_gradient(theta, x, targets, weights, problem: LinearProblem,
                       penalty_rows: np.ndarray) -> tuple[float, np.ndarray]:
    n, d = x.shape
    k = problem.outputs
    z, kernel = _logits(x, theta, d, k)
    if problem.kind == SOFTMAX:
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        per_example = -(targets * log_p).sum(axis=1)
        dz = np.exp(log_p) * targets.sum(axis=1, keepdims=True) - targets
    else:
        positive = (np.ones(k) if problem.positive_weights is None
                    else np.asarray(problem.positive_weights, np.float64))
        # -(w t log s(z) + (1 - t) log(1 - s(z))), with log s(z) = -softplus(-z)
        per_class = (positive * targets * np.logaddexp(0, -z)
                     + (1 - targets) * np.logaddexp(0, z))
        per_example = per_class.mean(axis=1)
        s = 0.5 * (1 + np.tanh(0.5 * z))
        dz = (s * (positive * targets + 1 - targets) - positive * targets) / k
    loss = float((weights * per_example).sum() / n)
    dz *= (weights / n)[:, None]
    penalized = kernel * penalty_rows[:, None]
    loss += float((kernel * penalized).sum())
    grad_kernel = (x.T @ dz.astype(np.float32)).astype(np.float64) + 2 * penalized
    return loss, np.concatenate([grad_kernel.ravel(), dz.sum(axis=0)])


def _scores(problem: LinearProblem, logits: np.ndarray, labels: np.ndarray
            ) -> tuple[float, float]:
    """(accuracy or mAP, log-loss without smoothing or weights) of logits."""
    if problem.kind == MULTILABEL:
        rows = np.asarray(labels, np.float64)
        positives, negatives = score_histograms(rows, 1 / (1 + np.exp(-logits)))
        loss = np.mean(rows * np.logaddexp(0, -logits) + (1 - rows) * np.logaddexp(0, logits))
        return float(mean_average_precision(positives, negatives)), float(loss)
    ids = np.asarray(labels, int).ravel()
    if problem.kind == SIGMOID:
        z = logits[:, 0]
        loss = np.mean(np.where(ids == 1, np.logaddexp(0, -z), np.logaddexp(0, z)))
        return float(np.mean((z >= 0) == (ids == 1))), float(loss)
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return (float(np.mean(logits.argmax(axis=1) == ids)),
            float(-np.mean(log_p[np.arange(len(ids)), ids])))


def _initial(problem: LinearProblem, targets: np.ndarray, d: int) -> np.ndarray:
    """Zero kernel; biases at the training prior (log-odds)."""
    prior = np.clip(targets.mean(axis=0), 1e-6, 1 - 1e-6)
    bias = np.log(prior) if problem.kind == SOFTMAX else np.log(prior / (1 - prior))
    return np.concatenate([np.zeros(d * problem.outputs), bias])


def _path(problem: LinearProblem, x: np.ndarray, targets: np.ndarray, weights: np.ndarray,
          penalty_rows: np.ndarray, val: np.ndarray | None, val_labels: np.ndarray | None,
          grid: tuple[float, ...]) -> tuple[tuple, list, int, int]:
    """Solve for each strength of ``grid``, strongest first, each from the previous
    solution; returns ((val score, val loss, l2, parameters) of the best, the strengths
    tried with their figures, the iterations taken, the solves that hit the iteration
    limit)."""
    d, k = x.shape[1], problem.outputs
    theta = _initial(problem, targets, d)
    best, tried, iterations, unconverged = None, [], 0, 0
    for l2 in sorted(grid, reverse=True):
        result = minimize(_loss_and_gradient, theta, jac=True, method="L-BFGS-B",
                          args=(x, targets, weights, problem, l2 * penalty_rows),
                          options={"maxiter": MAX_ITERATIONS, "gtol": 1e-6})
        theta, iterations = result.x, iterations + result.nit
        unconverged += int(not result.success)
        if val is None:
            best = (None, None, l2, theta)
            continue
        score, loss = _scores(problem, _logits(val, theta, d, k)[0], val_labels)
        tried.append((l2, score, loss))
        if best is None or (score, -loss) > (best[0], -best[1]):
            best = (score, loss, l2, theta)
    return best, tried, iterations, unconverged


def solve(problem: LinearProblem, train_x: np.ndarray, train_labels: np.ndarray,
          val_x: np.ndarray | None = None, val_labels: np.ndarray | None = None, *,
          grid: tuple[float, ...] = L2_GRID, raw_penalty: bool = False) -> Solution:
    """Fit the head on ``train_x`` for each L2 strength of ``grid`` (strongest first,
    warm-started) and keep the one that validates best; without validation data, the
    grid must hold one strength. ``raw_penalty``: the penalty is on the raw kernel (a
    recipe's own ``regularize.kernel=l2``) rather than the standardized one."""
    if val_x is None and len(grid) > 1:
        raise ValueError("choosing the L2 strength needs validation data")
    start = time.perf_counter()
    standardize = _Standardizer.fit(np.asarray(train_x))
    x = standardize(train_x)
    val = None if val_x is None else standardize(val_x)
    targets = problem.targets(train_labels)
    rows = 1 / standardize.scale ** 2 if raw_penalty else np.ones(x.shape[1])
    # One BLAS thread: with a pool of two, L-BFGS's many small vector operations ran 15x
    # slower in wall-clock time on a busy 2-core machine (its threads waiting on each other).
    with threadpool_limits(limits=1, user_api="blas"):
        (score, loss, l2, theta), tried, iterations, unconverged = _path(
            problem, x, targets, problem.example_weights(train_labels), rows, val,
            val_labels, grid)
    d, k = x.shape[1], problem.outputs
    kernel = theta[:d * k].reshape(d, k) / standardize.scale[:, None]
    bias = theta[d * k:] - standardize.mean @ kernel
    return Solution(kernel.astype(np.float32), bias.astype(np.float32), l2,
                    metric_name(problem.kind), score, loss, tried, iterations,
                    time.perf_counter() - start, unconverged)


def solve_experts(problem: LinearProblem, train_x: np.ndarray, train_labels: np.ndarray,
                  val_x: np.ndarray | None, val_labels: np.ndarray | None, *, split: int,
                  grid: tuple[float, ...] = L2_GRID, raw_penalty: bool = False) -> Solution:
    """Two experts on the columns of ``train_x`` before ``split`` (a backbone's features)
    and from it on (the image's pixels), each solved by :func:`solve` with its own L2
    strength chosen on validation, their logits added with the weights of :data:`BLENDS`
    that validate best (ties to the earlier: the features alone first). Without
    validation data, the features alone (the pixels' kernel rows zero)."""
    start = time.perf_counter()
    features = solve(problem, train_x[:, :split], train_labels,
                     None if val_x is None else val_x[:, :split], val_labels, grid=grid,
                     raw_penalty=raw_penalty)
    if val_x is None:
        pixels = Solution(np.zeros((train_x.shape[1] - split, problem.outputs), np.float32),
                          np.zeros(problem.outputs, np.float32), 0.0, features.metric,
                          None, None)
        return _combined(features, pixels, Blend(split, (1.0, 0.0), 0.0), start)
    pixels = solve(problem, train_x[:, split:], train_labels, val_x[:, split:], val_labels,
                   grid=grid, raw_penalty=raw_penalty)
    on_features, on_pixels = features.predict(val_x[:, :split]), pixels.predict(val_x[:, split:])
    blend = Blend(split, (1.0, 0.0), pixels.l2)
    best = None
    for a, b in BLENDS:
        score, loss = _scores(problem, a * on_features + b * on_pixels, val_labels)
        blend.tried.append((a, b, score, loss))
        if best is None or (score, -loss) > (best[0], -best[1]):
            best, blend.weights = (score, loss), (a, b)
    solution = _combined(features, pixels, blend, start)
    solution.val_score, solution.val_loss = best
    return solution


def refit(problem: LinearProblem, x: np.ndarray, labels: np.ndarray, chosen: Solution,
          raw_penalty: bool = False) -> Solution:
    """``chosen`` solved again on ``x`` (more rows) at its L2 strengths, with its blend."""
    if chosen.blend is None:
        return solve(problem, x, labels, grid=(chosen.l2,), raw_penalty=raw_penalty)
    start, split = time.perf_counter(), chosen.blend.split
    features = solve(problem, x[:, :split], labels, grid=(chosen.l2,), raw_penalty=raw_penalty)
    pixels = solve(problem, x[:, split:], labels, grid=(chosen.blend.pixel_l2,),
                   raw_penalty=raw_penalty)
    return _combined(features, pixels, chosen.blend, start)


def _combined(features: Solution, pixels: Solution, blend: Blend, start: float) -> Solution:
    """One kernel and bias for the two experts' weighted logits."""
    a, b = blend.weights
    return Solution(np.concatenate([a * features.kernel, b * pixels.kernel]).astype(np.float32),
                    (a * features.bias + b * pixels.bias).astype(np.float32), features.l2,
                    features.metric, features.val_score, features.val_loss, features.tried,
                    features.iterations + pixels.iterations, time.perf_counter() - start,
                    features.unconverged + pixels.unconverged, blend)
