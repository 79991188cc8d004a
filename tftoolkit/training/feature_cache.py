"""Training on cached outputs of the frozen part of a model.

With a frozen backbone (feature extraction), every epoch recomputes the same features;
while fine-tuning the top of a backbone (``model.unfreeze``), every epoch recomputes the
same activations of the frozen blocks below it. Here the frozen part runs once over the
training and validation data, and the part that trains (the very layer objects of the
full model: the head, or the unfrozen top and the head) trains on its cached output; the
full model then already holds the trained weights, and evaluation and export use it as
usual. The cached training set goes through the same shuffle and batching as images
would, so the trained part sees the same batches in the same order as the uncached path.
"""

from __future__ import annotations

import json
import sys
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace

import keras
import numpy as np
import tensorflow as tf

from tftoolkit.augment import Augmenter
from tftoolkit.data import DataBundle
from tftoolkit.data.sources import Examples
from tftoolkit.data.splits import shard_positions
from tftoolkit.models.detector import split_detector
from tftoolkit.models.layout import FEATURES, PIXELS, PREPROCESS
from tftoolkit.models.transfer import backbone_of, unfreeze_start
from tftoolkit.training.runtime import verbosity
from tftoolkit.training.stages import CachedArrays, StageInputs

MAX_CACHE_BYTES = 4 * 1024 ** 3


def pixel_columns(model: keras.Model) -> int:
    """How many of the model's pooled features are the image's pixels
    (``model.pixel_features``), the last ones; 0 without them."""
    try:
        return int(model.get_layer(PIXELS).output.shape[-1])
    except ValueError:
        return 0


def split_at_features(model: keras.Model) -> tuple[keras.Model, keras.Model] | None:
    """(frozen extractor: image -> pooled features, head: features -> output) sharing the
    model's layers, or None when the model has no pooled-feature layer."""
    try:
        pool = model.get_layer(FEATURES)
    except ValueError:
        return None
    extractor = keras.Model(model.inputs, pool.output, name="feature_extractor")
    return extractor, _head(model, model.layers.index(pool) + 1, pool.output.shape[1:])


def _joined(tensors: list, name: str):
    """Feature maps flattened and joined into one vector per image (the one array per
    example a cache holds); :func:`_unjoined` splits it again."""
    if len(tensors) == 1:
        return tensors[0]
    flat = [keras.layers.Flatten(name=f"{name}_flatten_{i}")(t) for i, t in enumerate(tensors)]
    return keras.layers.Concatenate(name=name)(flat)


def _unjoined(vector, shapes: list) -> list:
    """The tensors of ``shapes`` (without the batch) that :func:`_joined` joined into
    ``vector``."""
    if len(shapes) == 1:
        return [vector]
    parts, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        parts.append(keras.layers.Reshape(shape)(vector[:, start:start + size]))
        start += size
    return parts


def split_at_feature_maps(model: keras.Model) -> tuple[keras.Model, keras.Model] | None:
    """A detector's (frozen extractor: image -> its tapped feature maps, flattened and
    joined into one vector per image, head: that vector -> predictions, through the
    detection head) sharing the model's layers; None for a model that is not a
    detector."""
    try:
        maps, head = split_detector(model)
    except ValueError:
        return None
    extractor = keras.Model(maps.inputs, _joined(maps.outputs, "joined"),
                            name="feature_extractor")
    features = keras.Input(extractor.output.shape[1:], name="features")
    parts = _unjoined(features, [m.shape[1:] for m in maps.outputs])
    return extractor, keras.Model(features, head(parts), name="head")


@dataclass(frozen=True)
class _PrefixCut:
    """Where a model's frozen prefix ends: its backbone, the index of the backbone's
    first unfrozen layer, the one tensor the unfrozen layers read from below it and
    the ids of every tensor the frozen layers produce."""

    backbone: keras.Model
    start: int
    cut: object
    produced: frozenset[int]


def _prefix_cut(model: keras.Model, unfreeze: int | float | str) -> _PrefixCut | str:
    """The cut below ``unfreeze``, or why the model has none, in words."""
    try:
        backbone = backbone_of(model)
    except ValueError:
        return "the model has no nested backbone"
    if pixel_columns(model):
        return "the head reads the image's pixels too"
    start = unfreeze_start(backbone, unfreeze)
    if start >= len(backbone.layers):
        return "nothing is unfrozen"
    if start <= 1:
        return "nothing below it is frozen"
    produced = frozenset(id(t) for layer in backbone.layers[:start]
                         for t in keras.tree.flatten(layer.output))
    boundary = {id(t): t for layer in backbone.layers[start:]
                for t in keras.tree.flatten(layer.input) if id(t) in produced}
    if len(boundary) != 1:
        return (f"the layers from {backbone.layers[start].name} read {len(boundary)} "
                "outputs of the frozen layers, not one")
    (cut,) = boundary.values()
    return _PrefixCut(backbone, start, cut, produced)


def prefix_refusal(model: keras.Model, unfreeze: int | float | str) -> str | None:
    """Why :func:`split_below_unfrozen` finds no frozen prefix of ``model`` to cache
    below ``unfreeze``, in words; None when it finds one."""
    found = _prefix_cut(model, unfreeze)
    return found if isinstance(found, str) else None


def split_below_unfrozen(model: keras.Model,
                         unfreeze: int | float | str) -> tuple[keras.Model, keras.Model] | None:
    """(frozen prefix: image -> the activations fine-tuning starts from, top: those
    activations -> output, through the unfrozen backbone blocks and the head), sharing
    the model's layers; None (:func:`prefix_refusal` says why) without a nested
    backbone, when nothing below ``unfreeze`` is frozen or nothing above it is, when the
    unfrozen blocks read other than one tensor of the frozen ones, or when the head reads
    the image's pixels too (``model.pixel_features``).

    A detector's backbone has several outputs (its feature-map taps): the prefix also
    outputs the taps below ``unfreeze``, flattened and joined with the activations into
    one vector per image, which the top splits again."""
    found = _prefix_cut(model, unfreeze)
    if isinstance(found, str):
        return None
    backbone, start, cut, produced = found.backbone, found.start, found.cut, found.produced
    outputs = keras.tree.flatten(backbone.output)
    # what the prefix computes: the cut, then the outputs (taps) below it
    kept = [cut] + [t for t in outputs if id(t) in produced and t is not cut]
    # Both halves run the backbone in inference mode, as the full model does.
    image = keras.Input(model.input_shape[1:], name="image")
    below = keras.Model(backbone.input, kept, name="frozen_blocks")
    computed = keras.tree.flatten(below(model.get_layer(PREPROCESS)(image), training=False))
    # named by where it ends: the activation memo tells cuts of one shape apart by it
    prefix = keras.Model(image, _joined(computed, "joined"),
                         name=f"frozen_blocks_below_{backbone.layers[start].name}")
    trained = [t for t in outputs if id(t) not in produced]
    above = keras.Model(cut, trained if len(outputs) > 1 else trained[0],
                        name="unfrozen_blocks")
    activations = keras.Input(prefix.output.shape[1:], name="activations")
    inputs = _unjoined(activations, [t.shape[1:] for t in kept])
    rebuilt = {id(t): x for t, x in zip(kept, inputs)}
    rebuilt.update(zip((id(t) for t in trained),
                       keras.tree.flatten(above(inputs[0], training=False))))
    x = [rebuilt[id(t)] for t in outputs] if len(outputs) > 1 else rebuilt[id(outputs[0])]
    for layer in model.layers[model.layers.index(backbone) + 1:]:
        x = layer(x)
    return prefix, keras.Model(activations, x, name="top")


def _head(model: keras.Model, first: int, input_shape) -> keras.Model:
    """The model's layers from index ``first`` on, as a model of their own."""
    inputs = keras.Input(input_shape, name="features")
    x = inputs
    for layer in model.layers[first:]:
        x = layer(x)
    return keras.Model(inputs, x, name="head")


def cache_plan(augmenter: Augmenter, views: int, cache: str,
               runs_once: str) -> tuple[bool, str]:
    """Whether to cache, and the line that says why (or why not); ``cache`` names the
    cache, ``runs_once`` what it does."""
    if augmenter.per_example is not None and augmenter.per_example.spatial:
        return False, (f"{cache} off: augmentation moves the boxes with the pixels, which "
                       "cached features cannot")
    if augmenter.in_model is None and augmenter.in_pipeline is None and not augmenter.mixers:
        ignored = (f" (augment.cached_views={views} ignored: no pixel augmentation is on, "
                   "so each copy would be the image itself)"
                   if views and not effective_views(augmenter, views) else "")
        return True, f"{cache}: {runs_once}{ignored}"
    if augmenter.mixers:
        return False, f"{cache} off: MixUp/CutMix mix images, not features"
    if views:
        return True, (f"{cache}: {views} augmented copies of each training image "
                      "cached; trained on them")
    return False, (f"{cache} off: augmentation is on (set augment.cached_views=K to "
                   "cache K augmented copies per image)")


# Features computed in this process, by what determines them (a few at a time): runs of
# one recipe that differ only in what trains on the features (search trials, compare)
# share them.
_COMPUTED: OrderedDict[str, np.ndarray] = OrderedDict()
_KEEP = 6


def _memo_key(data: DataBundle, split: str, views: int, batch_size: int,
              extractor: keras.Model, cut: tuple[str, list] | None = None) -> str | None:
    """What the frozen features of ``split`` depend on, or None for a custom model;
    ``cut``: (name, shape) of the outputs, when not the extractor's own."""
    recipe = data.recipe
    if recipe.model_fn is not None:
        return None
    m = recipe.model
    return json.dumps({
        "content": data.splits[split].fingerprint, "split": split,
        "cut": list(cut or (extractor.name, list(extractor.output.shape[1:]))),
        "image_size": data.info.image_size, "resize": data.info.resize.key,
        "backbone": [m.architecture, m.weights, m.backbone_layer],
        "augment": asdict(recipe.augment) if views else None, "views": views,
        "seed": recipe.train.seed, "batch_size": batch_size}, sort_keys=True, default=str)


def _outputs(extractor: keras.Model, images: tf.data.Dataset, count: int, verbose: int,
             passes: int = 1) -> np.ndarray:
    """The extractor's outputs on ``passes`` passes over the ``count`` images of
    ``images``, written into one array batch by batch (Keras' ``predict`` holds every
    batch's outputs until it joins them: twice the memory of the features)."""
    spec = images.element_spec
    run = tf.function(lambda x: extractor(x, training=False), input_signature=[
        tf.TensorSpec([None, *spec.shape[1:]], spec.dtype)])
    total = passes * count
    progress = (keras.utils.Progbar(total, verbose=verbose, unit_name="example")
                if verbose else None)
    outputs = None
    row = 0
    for _ in range(passes):
        for batch in images:
            values = np.asarray(run(batch))
            if row + len(values) > total:
                raise RuntimeError(f"the {extractor.name} ran over more than the {total} "
                                   "examples expected")
            if outputs is None:
                outputs = np.empty((total, *values.shape[1:]), values.dtype)
            outputs[row:row + len(values)] = values
            row += len(values)
            if progress is not None:
                progress.update(row)
    if outputs is None or row != total:
        raise RuntimeError(f"the {extractor.name} ran over {row} examples, {total} expected")
    return outputs


def _features(extractor: keras.Model, data: DataBundle, split: str, batch_size: int,
              augment=None, views: int = 0) -> np.ndarray:
    """Features of ``split`` in example order; with ``augment``, ``views`` augmented
    passes, concatenated. Taken from this process's memo when already computed."""
    key = _memo_key(data, split, views, batch_size, extractor)
    if key is not None and key in _COMPUTED:
        _COMPUTED.move_to_end(key)
        return _COMPUTED[key]
    share = data.share
    if share is None:
        images = data.dataset(split, batch_size=batch_size)
    else:  # this worker's share of the examples (every count-th), as its input pipeline
        images = data.dataset(split, batch_size=batch_size * share.count,
                              input_context=tf.distribute.InputContext(
                                  share.count, share.index, share.count))
    images = images.map(lambda x, *rest: x)
    n = len(data.splits[split])
    verbose = verbosity(data.recipe.train.verbose)
    if verbose:  # the one pass before the first epoch: say what it is
        print(f"tftoolkit: running the {extractor.name.replace('_', ' ')} once over the "
              f"{split} split ({n} examples"
              f"{f', {views} augmented views' if augment is not None else ''})",
              file=sys.stderr, flush=True)
    positions = None if share is None else shard_positions(n, share.index, share.count)
    if augment is not None:
        images = images.map(lambda x: augment(x, training=True))
    features = _outputs(extractor, images, n if positions is None else len(positions),
                        verbose, views if augment is not None else 1)
    if share is not None:  # each worker fills its rows; the sum over workers is the whole
        rows = (np.arange(max(views, 1))[:, None] * n + positions[None, :]).ravel()
        whole = np.zeros((max(views, 1) * n, *features.shape[1:]), features.dtype)
        whole[rows] = features
        features = share.sum_over_workers(whole)
    if key is not None:
        _COMPUTED[key] = features
        pixels = pixel_columns(extractor)
        if pixels:  # the backbone's features alone: those of a model without the pixels
            alone = _memo_key(data, split, views, batch_size, extractor,
                              (extractor.name, [features.shape[1] - pixels]))
            _COMPUTED[alone] = features[:, :-pixels]
        while len(_COMPUTED) > _KEEP:
            _COMPUTED.popitem(last=False)
    return features


def split_features(extractor: keras.Model, data: DataBundle, split: str, batch_size: int,
                   limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The frozen features of ``split`` and its labels: the whole split in example order
    (shared through this process's memo with the stages that train on it), or, when it
    holds more than ``limit`` examples, the first ``limit`` of its seeded stratified
    sample order (:meth:`DataBundle.sample`)."""
    examples = data.splits[split]
    if not limit or len(examples) <= limit:
        return _features(extractor, data, split, batch_size), examples.labels
    images = data.sample(split, limit, batch_size=batch_size).map(lambda x, *rest: x)
    features = np.asarray(extractor.predict(images, verbose=0))
    return features, examples.labels[data.sample_order(split)[:limit]]


def effective_views(augmenter: Augmenter, views: int) -> int:
    """The augmented copies of each training image cached: ``views`` when the augmenter
    has pixel operations to draw them with, else 0 (the images once)."""
    return views if (augmenter.in_model or augmenter.in_pipeline) is not None else 0


def fits_in_memory(extractor: keras.Model, examples: int, views: int) -> bool:
    """Whether the extractor's outputs for ``examples`` training examples (times
    ``views`` copies) fit the cache's memory bound."""
    size = int(np.prod(extractor.output.shape[1:]))
    return examples * max(views, 1) * size * 4 <= MAX_CACHE_BYTES


def cached_datasets(parts: tuple[keras.Model, keras.Model], data: DataBundle,
                    augmenter: Augmenter, views: int, batch_size: int,
                    first_epoch: int = 0) -> StageInputs | None:
    """The trained part of ``parts`` (frozen extractor, trained part) and its training
    and validation datasets on the extractor's cached outputs (and those outputs in
    memory); None when they would not fit in memory. ``views`` augmented copies are
    cached when the augmenter has pixel operations (else the images once)."""
    extractor, head = parts
    train = data.splits["train"]
    pixels = augmenter.in_model or augmenter.in_pipeline
    views = effective_views(augmenter, views)
    if not fits_in_memory(extractor, len(train), views):
        return None
    if views:
        features = _features(extractor, data, "train", batch_size, pixels, views)
        labels = np.tile(train.labels, (views,) + (1,) * (train.labels.ndim - 1))
    else:
        features, labels = _features(extractor, data, "train", batch_size), train.labels
    arrays = CachedArrays(features, labels, unaugmented=(
        (lambda: _features(extractor, data, "train", batch_size)) if views else None))
    # The features are read from these arrays as they are: a data cache would hold a
    # second copy of them.
    recipe = replace(data.recipe, data=replace(data.recipe.data, cache="off"))
    cached = DataBundle(recipe, {"train": Examples(labels, arrays=features)}, data.info,
                        share=data.share)
    if "val" in data.splits:
        arrays.val = _features(extractor, data, "val", batch_size)
        arrays.val_labels = data.splits["val"].labels
        cached.splits["val"] = Examples(arrays.val_labels, arrays=arrays.val)
    # Features are not images: no resizing; labels and class weights as for images.
    cached.info = replace(data.info, image_size=None)
    train_ds = cached.dataset("train", training=True, batch_size=batch_size,
                              first_epoch=first_epoch)
    val_ds = cached.dataset("val", batch_size=batch_size) if "val" in cached.splits else None
    return StageInputs(head, train_ds, val_ds, cached.steps_per_epoch("train", batch_size),
                       lambda: cached.dataset("train", batch_size=batch_size), arrays)
