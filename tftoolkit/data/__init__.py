"""Data: sources -> splits -> ``tf.data`` pipelines.

``load_data(recipe, image_size)`` reads the source, holds out the stratified test and
validation splits where the source has none, applies ``data.max_examples`` and returns
a :class:`DataBundle`; ``DataBundle.dataset(split, ...)`` builds a batched pipeline.
Which split an example is in depends on the data and ``data.split_seed`` alone: never on
``train.seed``, and ``data.max_examples`` only leaves examples out. Examples of
identical content are held out together, so that no picture is in two splits. Given a
run's :class:`~tftoolkit.data.record.SplitRecord`, ``load_data`` takes the splits from
it instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

from tftoolkit.data.cache import plan_cache
from tftoolkit.data.content import content_groups, duplicate_count
from tftoolkit.data.decode import DEFAULT_MAX_PIXELS
from tftoolkit.data.pipeline import Resize, make_dataset
from tftoolkit.data.record import SplitRecord
from tftoolkit.data.scan import WorkerShare
from tftoolkit.data.sources import Examples, SourceData, load_source
from tftoolkit.data.splits import (proportional_counts, shard_positions, stratified_cap,
                                   stratified_order, stratified_split)
from tftoolkit.detection.anchors import AnchorConfig
from tftoolkit.errors import DataError, bounded_list
from tftoolkit.models.registry import get_architecture
from tftoolkit.recipe import DataConfig, Recipe
from tftoolkit.tasks import ENCODING_OF_LOSS, Detection, Task, make_task

# Sources a test split is held out of (data.test_fraction) when they have none; TFDS
# splits are named by the user, and synthetic data is a teaching example.
SOURCES_WITHOUT_TEST_SPLIT = ("folder", "arrays", "csv", "voc", "coco")
# Representative samples (DataBundle.sample) are drawn with the data seed plus this, so
# that they are not the order of a capped split itself; read in batches of SAMPLE_BATCH.
SAMPLE_SEED_OFFSET, SAMPLE_BATCH = 7919, 64


@dataclass
class DataInfo:
    """What the model and the export need to know about the data."""

    task: Task                         # the kind of target, and all that follows from it
    input_shape: tuple[int, ...]
    class_names: list[str] | None
    image_size: int | None             # square side for images, None for feature vectors
    description: str
    counts: dict[str, int] = field(default_factory=dict)
    class_counts: list[int] | None = None  # training examples of (multi-label: with)
    #                                         each class
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    resize_method: str = "bilinear"    # data.resize_method (the only one before it was kept)
    max_pixels: int = DEFAULT_MAX_PIXELS  # data.max_pixels: every served decode refuses more

    @property
    def resize(self) -> Resize | None:
        """How images reach the model's input, in training and in every served path."""
        return Resize(self.image_size, self.resize_method) if self.image_size else None

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else 0

    @property
    def num_outputs(self) -> int:
        """Units of the model's output layer (what a ``model_fn`` ends with)."""
        return self.task.output_units

    def to_dict(self) -> dict:
        task = self.task
        return {"task": task.name, "encoding": task.encoding,
                "input_shape": list(self.input_shape), "class_names": self.class_names,
                "image_size": self.image_size, "description": self.description,
                "counts": self.counts, "class_counts": self.class_counts,
                "target_dim": task.target_dim, "task_config": task.config(),
                "resize_method": self.resize_method, "max_pixels": self.max_pixels}

    @classmethod
    def from_dict(cls, d: dict) -> "DataInfo":
        task = make_task(d["encoding"], len(d["class_names"] or []),
                         target_dim=d.get("target_dim", 1), class_counts=d.get("class_counts"),
                         examples=d.get("counts", {}).get("train", 0),
                         config=d.get("task_config"))
        return cls(task, tuple(d["input_shape"]), d["class_names"], d["image_size"],
                   d["description"], d.get("counts", {}), d.get("class_counts"),
                   resize_method=d.get("resize_method", "bilinear"),
                   max_pixels=d.get("max_pixels", DEFAULT_MAX_PIXELS))


@dataclass
class DataBundle:
    """Splits of examples plus the recipe settings that shape their pipelines."""

    recipe: Recipe
    splits: dict[str, Examples]
    info: DataInfo
    notes: list[str] = field(default_factory=list)   # warnings about the data, and how
    #                                                  each split is cached
    share: WorkerShare | None = None   # this worker's part in a multi-worker run

    def class_weights(self) -> np.ndarray | None:
        """Per-class weights of each example when ``data.class_weight = 'balanced'``
        (:meth:`~tftoolkit.tasks.Task.example_weights`; none where the loss balances)."""
        if self.recipe.data.class_weight != "balanced" or not self.info.class_counts:
            return None
        return self.info.task.example_weights(self.info.class_counts)

    def steps_per_epoch(self, split: str, batch_size: int) -> int:
        """Batches in one pass over ``split``."""
        return -(-len(self.splits[split]) // max(batch_size, 1))

    def shards_by_worker(self, split: str) -> bool:
        """Whether each worker of a multi-worker run reads its own share of ``split``
        (image files or TFDS records, sharded before decoding). In-memory arrays are
        sharded by tf.data after batching instead, so that the global batches are the
        ones a single process trains on."""
        return self.splits[split].arrays is None

    def dataset(self, split: str, *, training: bool = False, batch_size: int | None = None,
                augment: Callable | None = None, first_epoch: int = 0,
                input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
        """A batched ``tf.data.Dataset`` of ``split``; for training an endless, per-epoch
        shuffled (and augmented) stream starting at ``first_epoch``.

        With ``input_context`` (``distribute_datasets_from_function``), the dataset of
        one worker: only its shard of the examples is read and decoded, in batches of
        the per-replica size. For training, each local replica gets a shard of its own,
        all shards padded to one size so that every replica steps through the same
        number of batches per epoch; evaluation shards are left uneven (tf.distribute
        pads the last steps and the figures are sums).
        """
        batch_size = self.recipe.train.batch_size if batch_size is None else batch_size
        if input_context is None:
            return self._pipeline(split, training, batch_size, augment, first_epoch)
        per_replica = input_context.get_per_replica_batch_size(batch_size)
        workers, worker = input_context.num_input_pipelines, input_context.input_pipeline_id
        if not training:
            return self._pipeline(split, training, per_replica, augment, first_epoch,
                                  shard=(worker, workers))
        replicas = input_context.num_replicas_in_sync // workers
        streams = [self._pipeline(split, training, per_replica, augment, first_epoch,
                                  shard=(worker * replicas + r, workers * replicas),
                                  budget_share=1 / replicas)
                   for r in range(replicas)]
        if replicas == 1:
            return streams[0]
        return tf.data.Dataset.choose_from_datasets(  # one batch per local replica in turn
            streams, tf.data.Dataset.range(replicas).repeat())

    def sample(self, split: str, count: int, *,
               batch_size: int = SAMPLE_BATCH) -> tf.data.Dataset:
        """The evaluation pipeline (no augmentation) of ``count`` examples of ``split``
        drawn in a seeded, stratified order, so that every batch holds the classes in
        their shares of the split (within one example): what
        BatchNorm statistics, int8 calibration, parity inputs and capped measurements are
        computed on. The first examples in file order would be one class (folders are
        read class by class)."""
        return self._pipeline(split, False, batch_size, None, 0, sample=count)

    def sample_order(self, split: str) -> np.ndarray:
        """The seeded, stratified order of ``split`` that :meth:`sample` takes its first
        examples of."""
        return stratified_order(self.splits[split].labels,
                                self.recipe.data.split_seed + SAMPLE_SEED_OFFSET)

    def _pipeline(self, split: str, training: bool, batch_size: int,
                  augment: Callable | None, first_epoch: int,
                  shard: tuple[int, int] | None = None,
                  budget_share: float = 1.0, sample: int = 0) -> tf.data.Dataset:
        """The pipeline of ``split``, or of its shard ``(index, count)``, or of its first
        ``sample`` examples in :meth:`sample_order`, whose cache takes at most
        ``budget_share`` of the memory budget under ``data.cache=auto``."""
        cfg, train = self.recipe.data, self.recipe.train
        examples = self.splits[split]
        order, permutation = "read", None
        if training and examples.dataset is None:  # the rows each epoch permutes, in a
            # seeded random order (TFDS records keep theirs: its files are shuffled),
            # applied when they are read: a cache of the split serves every seed
            permutation = np.random.default_rng(train.seed).permutation(len(examples))
        elif sample:
            examples = examples.subset(self.sample_order(split)[:sample])
            order = (f"sample of {len(examples)}, "
                     f"seed {cfg.split_seed + SAMPLE_SEED_OFFSET}")
        settings = {"resize": self.info.resize.key if self.info.resize else "none",
                    "order": order}
        positions = None  # of the examples in the split (augmentation keys): 0, 1, ...
        if shard is not None:
            if permutation is not None:  # a shard of the seeded order: its own examples
                examples, permutation = examples.subset(permutation), None
                settings["order"] = f"seed {train.seed}"
            try:
                positions = shard_positions(len(examples), *shard, equal=training)
            except ValueError as exc:
                raise DataError(f"split {split!r}: {exc}") from None
            examples = examples.subset(positions)
            settings["shard"] = f"{shard[0] + 1} of {shard[1]}"
        elif self.share is not None:  # a whole split, read by one of several workers
            settings["worker"] = f"{self.share.index + 1} of {self.share.count}"
        # Planned on the split as read (its fingerprint computed once); the training
        # order and the shard (or the worker) are part of the settings, so that workers
        # sharing a filesystem never write one disk cache.
        cache = plan_cache(cfg.cache, self.splits[split], split=split,
                           image_size=self.info.image_size, settings=settings,
                           cache_root=self.cache_root(), budget_mb=cfg.memory_budget_mb,
                           count=len(examples), budget_share=budget_share)
        if not any(n.startswith(cache.subject + ":") for n in self.notes):
            self.notes.append(cache.note)
        return make_dataset(
            examples, batch_size=batch_size, resize=self.info.resize,
            task=self.info.task,
            training=training, seed=train.seed,
            cache=cache.mode, cache_path=cache.path, shuffle_buffer=cfg.shuffle_buffer,
            autotune=cfg.autotune, class_weights=self.class_weights() if training else None,
            augment=augment, first_epoch=first_epoch, max_pixels=cfg.max_pixels,
            positions=positions, order=permutation)

    def arrays(self, split: str, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The inputs of ``split``, as the model takes them, and their class ids (or
        regression targets): all in order, or a :meth:`sample` of ``limit``."""
        inputs, labels, task = [], [], self.info.task
        batches = (self.sample(split, limit) if limit
                   else self.dataset(split, batch_size=SAMPLE_BATCH))
        for batch in batches:
            inputs.append(np.asarray(batch[0]))
            labels.append(task.targets(batch[1]))
        return np.concatenate(inputs), np.concatenate(labels)

    def cache_root(self) -> Path:
        """The folder of this data's disk caches."""
        cfg = self.recipe.data
        if cfg.cache_dir:
            return Path(cfg.cache_dir).expanduser()
        return Path(self.recipe.train.run_dir) / self.recipe.name / "data_cache"


def _label_encoding(recipe: Recipe, kind: str, num_classes: int) -> str:
    """The form of the targets: what ``train.loss`` names, or what the labels of a
    ``kind`` of task (classification, multilabel, regression) train best with."""
    loss = recipe.train.loss
    if kind == "multilabel":
        if loss not in ("auto", "binary_crossentropy"):
            raise DataError(f"train.loss={loss!r}: the labels of {recipe.data.source!r} are "
                            "multi-label (data.label_delimiter), which train with one "
                            "sigmoid per class; use train.loss=auto or binary_crossentropy")
        return "multilabel"
    if loss != "auto":
        encoding = ENCODING_OF_LOSS[loss]
        if kind == "regression" and encoding != "regression":
            raise DataError(f"train.loss={loss!r} needs class labels, but the labels of "
                            f"{recipe.data.source!r} are real-valued targets")
        if encoding == "binary" and num_classes != 2:
            raise DataError(f"train.loss='binary_crossentropy' needs 2 classes, the data "
                            f"has {num_classes}")
        return encoding
    if kind == "regression":
        return "regression"
    tabular = (recipe.model_fn is None
               and get_architecture(recipe.model.architecture).kind == "tabular")
    if num_classes == 2 and tabular:  # one sigmoid unit, as the classic perceptron
        return "binary"
    return "categorical"


def load_data(recipe: Recipe, image_size: int | None = None,
              share: WorkerShare | None = None,
              record: SplitRecord | None = None) -> DataBundle:
    """Read ``recipe.data`` into splits (train/val/test) and describe them.

    ``image_size`` is the square side images are resized to; None keeps feature vectors
    as they are (from-scratch tabular models). ``share``: this worker's part of the
    check of an image folder's files, in a multi-worker run. ``record``: a run's record
    of its splits, which the splits are then taken from (examples it does not list are
    left out; the bundle's notes say what it lists that the data lacks now).
    """
    cfg = recipe.data
    source = load_source(cfg, cfg.split_seed, share)
    notes = list(source.notes)
    if record is None:
        splits = _held_out_splits(source, cfg, notes)
    else:
        splits, match = record.select(Examples.joined(list(source.splits.values())))
        notes += match.notes()
    for name, examples in splits.items():
        if len(examples) == 0:
            raise DataError(f"split {name!r} of {source.description} is empty"
                            + (f" ({'; '.join(notes)})" if record is not None else ""))

    kind = ("detection" if source.detection else "regression" if source.class_names is None
            else "multilabel" if source.multilabel else "classification")
    train = splits["train"]
    is_image = (train.paths is not None or train.dataset is not None
                or (train.arrays is not None and train.arrays.ndim >= 3))
    if is_image and not image_size:
        image_size = int(train.arrays.shape[1]) if train.arrays is not None else 224
    if is_image:
        input_shape: tuple[int, ...] = (image_size, image_size, 3)
    else:
        image_size = None
        input_shape = tuple(train.arrays.shape[1:])
    class_counts = None
    if kind == "classification":
        class_counts = np.bincount(train.labels, minlength=len(source.class_names)).tolist()
    elif kind == "multilabel":
        class_counts = train.labels.sum(axis=0).round().astype(int).tolist()
    elif kind == "detection":  # boxes of each class
        classes = train.labels[..., 4].astype(int).ravel()
        class_counts = np.bincount(classes[classes >= 0],
                                   minlength=len(source.class_names)).tolist()
    if record is None and kind not in ("regression", "detection"):
        notes += _check_classes(splits, source.class_names)
    num_classes = len(source.class_names or [])
    target_dim = (1 if kind != "regression"
                  else int(np.prod(train.labels.shape[1:], dtype=int)))
    if kind == "detection":
        task = _detection_task(recipe, source, num_classes, image_size)
    else:
        task = make_task(_label_encoding(recipe, kind, num_classes), num_classes,
                         target_dim=target_dim, class_counts=class_counts,
                         examples=len(train))
    info = DataInfo(task=task,
                    input_shape=input_shape, class_names=source.class_names,
                    image_size=image_size, description=source.description,
                    counts={k: len(v) for k, v in splits.items()},
                    class_counts=class_counts, bad_files=source.bad_files,
                    resize_method=cfg.resize_method, max_pixels=cfg.max_pixels)
    return DataBundle(recipe, splits, info, notes=notes, share=share)


def _detection_task(recipe: Recipe, source: SourceData, num_classes: int,
                    image_size: int) -> Detection:
    """The detection task of boxes of ``source`` at ``image_size``, its box tables as
    wide as the most boxes of any image; recipe settings that mean nothing for boxes are
    refused."""
    if recipe.train.loss != "auto":
        raise DataError(f"train.loss={recipe.train.loss!r}: {source.description} holds "
                        "boxes, which train with the detector's focal and box loss; set "
                        "train.loss=auto")
    widest = max(examples.labels.shape[1] for examples in source.splits.values())
    anchors = AnchorConfig(strides=tuple(recipe.model.anchor_strides))
    task = Detection(num_classes, image_size, widest, anchors)
    task.check_recipe(recipe)
    return task


def _held_out_splits(source: SourceData, cfg: DataConfig,
                     notes: list[str]) -> dict[str, Examples]:
    """The source's splits, the test and validation splits held out of its training
    split where it has none (each group of identical content kept together), and each
    source split capped to ``data.max_examples``; ``notes`` gets the duplicates."""
    seed = cfg.split_seed
    splits = dict(source.splits)
    made_from = {name: [name] for name in splits}  # source split -> the splits made of it
    hold_test = ("test" not in splits and cfg.test_fraction > 0
                 and cfg.source in SOURCES_WITHOUT_TEST_SPLIT)
    hold_val = "val" not in splits and cfg.validation_fraction > 0
    groups = None
    if hold_test or hold_val:
        groups = content_groups(splits["train"].digests)
        copies, count = duplicate_count(groups)
        if copies:
            notes.append(f"{copies} examples are byte-identical to another ({count} groups "
                         "of identical content): each group is kept in one split")
    if hold_test:
        keep, held = stratified_split(splits["train"].labels, cfg.test_fraction, seed + 1,
                                      groups)
        splits["test"] = splits["train"].subset(held)
        splits["train"] = splits["train"].subset(keep)
        groups = groups[keep]
        made_from["train"].append("test")
    if hold_val:
        keep, held = stratified_split(splits["train"].labels, cfg.validation_fraction, seed,
                                      groups)
        splits["val"] = splits["train"].subset(held)
        splits["train"] = splits["train"].subset(keep)
        made_from["train"].append("val")
    if cfg.max_examples:  # each source split capped; the splits made of it shrink alike
        for parts in made_from.values():
            counts = proportional_counts([len(splits[p]) for p in parts], cfg.max_examples)
            for part, count in zip(parts, counts):
                splits[part] = splits[part].subset(stratified_cap(splits[part].labels,
                                                                  count, seed + 2))
    shared = _shared_across_splits(splits)
    if shared:
        notes.append(f"warning: {shared} picture(s) of {source.description} are in more "
                     f"than one of the splits it gives ({', '.join(source.splits)}), "
                     "byte-identical; a figure on the later split partly measures "
                     "memory of the earlier one")
    return splits


def _shared_across_splits(splits: dict[str, Examples]) -> int:
    """How many contents are in more than one split."""
    names = list(splits)
    groups = content_groups(np.concatenate([splits[n].digests for n in names]))
    split_of = np.repeat(np.arange(len(names)), [len(splits[n]) for n in names])
    pairs = np.unique(np.stack([groups, split_of], axis=1), axis=0)
    return int((np.bincount(pairs[:, 0]) > 1).sum()) if len(pairs) else 0


def _check_classes(splits: dict[str, Examples], class_names: list[str]) -> list[str]:
    """Refuse a multi-label class without a training positive (its threshold could not
    be chosen, and it would be predicted for every image); warnings of a class without
    training examples (single-label) or absent from the validation or test split (too
    few images to hold any out: nothing measures it there)."""
    counts = {split: (np.bincount(e.labels, minlength=len(class_names))
                      if e.labels.ndim == 1 else e.labels.sum(axis=0).round().astype(int))
              for split, e in splits.items()}

    def where(k: int) -> str:
        found = [f"{split} {counts[split][k]}" for split in counts if counts[split][k]]
        return f"{class_names[k]!r} ({', '.join(found) or 'no example'})"

    untrained = [k for k in range(len(class_names)) if not counts["train"][k]]
    if untrained and splits["train"].labels.ndim > 1:
        listing = bounded_list([where(k) for k in untrained], "untrained-labels")
        raise DataError(f"{len(untrained)} label(s) have no training example, so their "
                        "thresholds cannot be chosen and the model cannot learn them "
                        f"(examples per split):{listing}\nAdd training images with them or "
                        "remove them from the table (when a held-out split took their "
                        "only images, another data.split_seed may move one into training).")
    notes = [f"warning: class {where(k)} has no training example: the model cannot learn "
             "it (add training images of it)" for k in untrained]
    for k in range(len(class_names)):
        absent = [split for split in ("val", "test") if split in counts
                  and not counts[split][k] and counts["train"][k]]
        if absent:
            notes.append(f"warning: class {where(k)} has no example in the "
                         f"{' or '.join(absent)} split: nothing measures it there (too few "
                         "images of it to hold any out: add some)")
    return notes


__all__ = ["DataBundle", "DataInfo", "Examples", "WorkerShare", "load_data"]
