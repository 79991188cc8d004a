"""Head training on cached backbone features.

With a frozen backbone (feature extraction), every epoch recomputes the same features.
Here the frozen part runs once over the training and validation data; the head layers
(the very layer objects of the full model) train on those features; the full model
then already holds the trained head, and evaluation and export use it as usual.
The cached training set goes through the same shuffle and batching as images would,
so the head sees the same batches in the same order as the uncached path.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict, replace

import keras
import numpy as np
import tensorflow as tf

from tftoolkit.augment import Augmenter
from tftoolkit.data import DataBundle
from tftoolkit.data.sources import Examples
from tftoolkit.data.splits import shard_positions
from tftoolkit.models.layout import FEATURES
from tftoolkit.training.stages import StageInputs

MAX_CACHE_BYTES = 4 * 1024 ** 3


def split_at_features(model: keras.Model) -> tuple[keras.Model, keras.Model] | None:
    """(frozen extractor: image -> pooled features, head: features -> output) sharing the
    model's layers, or None when the model has no pooled-feature layer."""
    try:
        pool = model.get_layer(FEATURES)
    except ValueError:
        return None
    extractor = keras.Model(model.inputs, pool.output, name="feature_extractor")
    inputs = keras.Input(pool.output.shape[1:], name="features")
    x = inputs
    for layer in model.layers[model.layers.index(pool) + 1:]:
        x = layer(x)
    return extractor, keras.Model(inputs, x, name="head")


def cache_plan(augmenter: Augmenter, views: int) -> tuple[bool, str]:
    """Whether to cache, and the line that says why (or why not)."""
    if augmenter.in_model is None and augmenter.in_pipeline is None and not augmenter.mixers:
        return True, "feature cache: frozen backbone run once; head trained on cached features"
    if augmenter.mixers:
        return False, "feature cache off: MixUp/CutMix mix images, not features"
    if views:
        return True, (f"feature cache: {views} augmented copies of each training image "
                      "cached; head trained on them")
    return False, ("feature cache off: augmentation is on (set augment.cached_views=K to "
                   "cache K augmented copies per image)")


# Features computed in this process, by what determines them (a few at a time): runs of
# one recipe that differ only in what trains on the features (search trials, compare)
# share them.
_COMPUTED: OrderedDict[str, np.ndarray] = OrderedDict()
_KEEP = 4


def _memo_key(data: DataBundle, split: str, views: int, batch_size: int) -> str | None:
    """What the frozen features of ``split`` depend on, or None for a custom model."""
    recipe = data.recipe
    if recipe.model_fn is not None:
        return None
    m = recipe.model
    return json.dumps({
        "content": data.splits[split].fingerprint, "split": split,
        "image_size": data.info.image_size, "resize": recipe.data.resize_method,
        "backbone": [m.architecture, m.weights, m.backbone_layer],
        "augment": asdict(recipe.augment) if views else None, "views": views,
        "seed": recipe.train.seed, "batch_size": batch_size}, sort_keys=True, default=str)


def _features(extractor: keras.Model, data: DataBundle, split: str, batch_size: int,
              augment=None, views: int = 0) -> np.ndarray:
    """Features of ``split`` in example order; with ``augment``, ``views`` augmented
    passes, concatenated. Taken from this process's memo when already computed."""
    key = _memo_key(data, split, views, batch_size)
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
    if augment is None:
        features = np.asarray(extractor.predict(images, verbose=0))
    else:
        augmented = images.map(lambda x: augment(x, training=True))
        features = np.concatenate([np.asarray(extractor.predict(augmented, verbose=0))
                                   for _ in range(views)])
    if share is not None:  # each worker fills its rows; the sum over workers is the whole
        n = len(data.splits[split])
        rows = (np.arange(max(views, 1))[:, None] * n
                + shard_positions(n, share.index, share.count)[None, :]).ravel()
        whole = np.zeros((max(views, 1) * n, features.shape[1]), features.dtype)
        whole[rows] = features
        features = share.sum_over_workers(whole)
    if key is not None:
        _COMPUTED[key] = features
        while len(_COMPUTED) > _KEEP:
            _COMPUTED.popitem(last=False)
    return features


def cached_datasets(model: keras.Model, data: DataBundle, augmenter: Augmenter, views: int,
                    batch_size: int, first_epoch: int = 0) -> StageInputs | None:
    """The head and its training and validation datasets on cached features; None when
    the features would not fit in memory."""
    extractor, head = split_at_features(model)
    train = data.splits["train"]
    dim = int(extractor.output.shape[-1])
    if len(train) * max(views, 1) * dim * 4 > MAX_CACHE_BYTES:
        return None
    pixels = augmenter.in_model or augmenter.in_pipeline
    if views:
        features = _features(extractor, data, "train", batch_size, pixels, views)
        labels = np.tile(train.labels, views)
    else:
        features, labels = _features(extractor, data, "train", batch_size), train.labels
    cached = DataBundle(data.recipe, {"train": Examples(labels, arrays=features)}, data.info,
                        share=data.share)
    if "val" in data.splits:
        cached.splits["val"] = Examples(data.splits["val"].labels,
                                        arrays=_features(extractor, data, "val", batch_size))
    # Features are vectors: no resizing; labels and class weights as for images.
    cached.info = replace(data.info, image_size=None)
    train_ds = cached.dataset("train", training=True, batch_size=batch_size,
                              first_epoch=first_epoch)
    val_ds = cached.dataset("val", batch_size=batch_size) if "val" in cached.splits else None
    return StageInputs(head, train_ds, val_ds, cached.steps_per_epoch("train", batch_size),
                       cached.dataset("train", batch_size=batch_size))
