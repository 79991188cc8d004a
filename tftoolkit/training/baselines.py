"""Cheap baselines beside every classification model: what a user could get in seconds.

- ``pixels``: logistic regression on the training images downsampled to
  :data:`PIXEL_SIDE` pixels a side (one channel when the images are grey); for feature
  vectors, on the inputs themselves (``inputs``).
- ``probe``: the linear probe, logistic regression on the pooled features of the model's
  frozen pretrained backbone, for a model that has one.

Each is fitted by :func:`tftoolkit.training.probe.solve` (the solver of solved heads) on
the training split, its L2 strength chosen on the validation split, and scored there: the
accuracy, or a multi-label model's mAP. Larger splits are sampled (seeded, stratified: at
most :data:`TRAIN_LIMIT` training and :data:`VALIDATION_LIMIT` validation examples), so a
baseline takes seconds. The run reports them in its notes, ``metrics.json``
(``baseline_<name>_val_<metric>``), ``baselines.json`` and the model card, and says by
how much the model validates below any of them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tftoolkit.data import SAMPLE_BATCH, DataBundle
from tftoolkit.rundir import RunDir
from tftoolkit.training.feature_cache import pixel_columns, split_at_features, split_features
from tftoolkit.training.probe import LinearProblem, Solution, head_kind, solve

PIXEL_SIDE = 16
TRAIN_LIMIT, VALIDATION_LIMIT = 2000, 2000
DESCRIPTIONS = {"pixels": "logistic regression on {side}x{side} {colour} pixels",
                "inputs": "logistic regression on the input features",
                "probe": "linear probe on the frozen {backbone} features"}


@dataclass
class Baseline:
    """One baseline's validation figure and cost."""

    name: str              # pixels | inputs | probe
    description: str
    metric: str            # accuracy | map
    val_score: float
    l2: float
    seconds: float         # features and solver
    train_examples: int
    val_examples: int
    sampled: bool          # the splits were sampled down to the limits

    @property
    def key(self) -> str:
        """Its figure's name in ``metrics.json``."""
        return f"baseline_{self.name}_val_{self.metric}"

    def to_dict(self) -> dict:
        return asdict(self)


def applies(data: DataBundle) -> bool:
    """Baselines are fitted for classification (single- and multi-label) with a
    validation split to score them on."""
    return head_kind(data.info.task) is not None and "val" in data.splits


def _problem(data: DataBundle) -> LinearProblem:
    """Plain logistic regression of the data's kind of label (no smoothing, no weights):
    what a user would fit."""
    kind = head_kind(data.info.task)
    return LinearProblem(kind, data.info.num_outputs)


def _downsampled(data: DataBundle, split: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """``split``'s inputs as the model takes them (a sample beyond ``limit``), images
    area-averaged to :data:`PIXEL_SIDE` a side; and the split's labels."""
    examples = data.splits[split]
    sample = len(examples) > limit
    batches = data.sample(split, limit) if sample else data.dataset(split,
                                                                     batch_size=SAMPLE_BATCH)
    side = min(PIXEL_SIDE, data.info.image_size or PIXEL_SIDE)
    rows = []
    for batch in batches:
        x = batch[0]
        if data.info.image_size:
            x = tf.image.resize(x, (side, side), method="area")
        rows.append(np.asarray(x, np.float32))
    labels = examples.labels[data.sample_order(split)[:limit]] if sample else examples.labels
    return np.concatenate(rows), labels


def _pixels(data: DataBundle) -> Baseline:
    start = time.perf_counter()
    train, train_labels = _downsampled(data, "train", TRAIN_LIMIT)
    val, val_labels = _downsampled(data, "val", VALIDATION_LIMIT)
    if data.info.image_size:
        grey = (np.array_equal(train[..., 0], train[..., 1])
                and np.array_equal(train[..., 0], train[..., 2]))
        if grey:
            train, val = train[..., :1], val[..., :1]
        side = train.shape[1]
        name = "pixels"
        description = DESCRIPTIONS[name].format(side=side, colour="grey" if grey else "RGB")
    else:
        name = "inputs"
        description = DESCRIPTIONS[name]
    solution = solve(_problem(data), train.reshape(len(train), -1), train_labels,
                     val.reshape(len(val), -1), val_labels)
    return _baseline(name, description, solution, start, data, len(train), len(val))


def _probe(model: keras.Model, data: DataBundle, batch_size: int,
           backbone: str) -> Baseline | None:
    parts = split_at_features(model)
    if parts is None:
        return None
    start = time.perf_counter()
    train, train_labels = split_features(parts[0], data, "train", batch_size, TRAIN_LIMIT)
    val, val_labels = split_features(parts[0], data, "val", batch_size, VALIDATION_LIMIT)
    backbone_only = train.shape[1] - pixel_columns(parts[0])  # (model.pixel_features)
    solution = solve(_problem(data), train[:, :backbone_only], train_labels,
                     val[:, :backbone_only], val_labels)
    return _baseline("probe", DESCRIPTIONS["probe"].format(backbone=backbone), solution,
                     start, data, len(train), len(val))


def _baseline(name: str, description: str, solution: Solution, start: float,
              data: DataBundle, train_examples: int, val_examples: int) -> Baseline:
    sampled = (train_examples < len(data.splits["train"])
               or val_examples < len(data.splits["val"]))
    return Baseline(name, description, solution.metric, float(solution.val_score),
                    solution.l2, time.perf_counter() - start, train_examples, val_examples,
                    sampled)


def fit_baselines(model: keras.Model, data: DataBundle, batch_size: int, *,
                  pretrained: str | None) -> list[Baseline]:
    """The baselines of a run: pixels (or inputs) always, and the linear probe when
    ``pretrained`` names the model's frozen pretrained backbone (its weights must be the
    pretrained ones when this runs: before any fine-tuning)."""
    baselines = [_pixels(data)]
    if pretrained:
        probe = _probe(model, data, batch_size, pretrained)
        if probe is not None:
            baselines.append(probe)
    return baselines


def describe(baselines: list[Baseline]) -> str:
    """One line: each baseline's validation figure and seconds."""
    parts = [f"{b.description} {b.val_score:.4f} ({b.seconds:.1f} s"
             + (f"; a sample of {b.train_examples} training and {b.val_examples} "
                "validation examples" if b.sampled else "") + ")" for b in baselines]
    return f"baselines, validation {baselines[0].metric}: " + "; ".join(parts)


def shortfalls(baselines: list[Baseline], metrics: dict[str, float]) -> list[str]:
    """A line for each baseline that validates above the model, saying by how much."""
    lines = []
    for b in baselines:
        model_score = metrics.get(f"val_{b.metric}")
        if model_score is not None and model_score < b.val_score:
            lines.append(f"the model validates BELOW the {b.description} baseline: "
                         f"{b.metric} {model_score:.4f} vs {b.val_score:.4f} "
                         f"({b.val_score - model_score:.4f} lower)")
    return lines


def baseline_metrics(baselines: list[Baseline]) -> dict[str, float]:
    """The baselines' figures as ``metrics.json`` keys."""
    out: dict[str, float] = {}
    for b in baselines:
        out[b.key] = b.val_score
        out[f"baseline_{b.name}_seconds"] = b.seconds
    return out


def record(baselines: list[Baseline], metrics: dict[str, float] | None = None) -> dict:
    """What ``baselines.json`` holds: the baselines and, once the model is measured, its
    validation figure and the lines that say which baselines it falls below."""
    out: dict = {"baselines": [b.to_dict() for b in baselines]}
    if metrics is not None and baselines:
        key = f"val_{baselines[0].metric}"
        out.update(model={key: metrics.get(key)},
                   below_baselines=shortfalls(baselines, metrics))
    return out


def from_dicts(rows: list[dict]) -> list[Baseline]:
    """Baselines read back from ``baselines.json``'s list."""
    return [Baseline(**row) for row in rows]


def read_baselines(run_dirs: Iterable[str | Path]) -> list[Baseline]:
    """The baselines that runs on the same data fitted, each kind once (the first run's
    that has it); runs without ``baselines.json`` give none."""
    found: dict[str, Baseline] = {}
    for run_dir in run_dirs:
        run = RunDir(run_dir)
        if (run / RunDir.BASELINES).is_file():
            for baseline in from_dicts(run.read_json(RunDir.BASELINES)["baselines"]):
                found.setdefault(baseline.name, baseline)
    return list(found.values())


__all__ = ["Baseline", "applies", "baseline_metrics", "describe", "fit_baselines",
           "from_dicts", "read_baselines", "record", "shortfalls"]
