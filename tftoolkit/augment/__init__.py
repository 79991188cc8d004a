"""Augmentation: an ``augment`` policy turned into Keras preprocessing layers.

Augmentation exists only for training, by construction: :func:`training_model` wraps the
inference model (``augment -> model``) and the input pipeline applies the rest to
training examples only. Evaluation, prediction and export use the inference model.
Each layer draws its parameters per image from its own seeded generator; in the
pipeline, a policy of flips, crops, contrast and brightness is instead drawn per example
from a stateless key (:mod:`tftoolkit.augment.stateless`), so it runs in parallel.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from tftoolkit.augment.boxes import BoxAugment
from tftoolkit.augment.stateless import ExampleAugment, PipelineAugment
from tftoolkit.layers import FusedGeometric, RandomResizedCrop
from tftoolkit.recipe import AugmentConfig


def _pixel_layers(cfg: AugmentConfig, image_size: int, seed: int) -> list[keras.layers.Layer]:
    """Per-image layers in policy order; each gets its own seed."""
    layers: list[keras.layers.Layer] = []
    seeds = iter(range(seed, seed + 100))
    geometric = any((cfg.flip != "none", cfg.crop, cfg.rotation, cfg.zoom, cfg.translation))
    if cfg.fused and geometric:
        layers.append(FusedGeometric(flip=cfg.flip, crop=cfg.crop, rotation=cfg.rotation,
                                     zoom=cfg.zoom, translation=cfg.translation,
                                     seed=next(seeds), name="fused_geometric"))
    else:
        if cfg.flip != "none":
            layers.append(keras.layers.RandomFlip(cfg.flip, seed=next(seeds)))
        if cfg.crop:
            # Keras' RandomCrop draws one offset per batch; this draws one per image.
            keep = (1.0 - cfg.crop) ** 2
            layers.append(RandomResizedCrop(image_size, scale=(keep, keep), ratio=(1.0, 1.0),
                                            seed=next(seeds)))
        if cfg.rotation:
            layers.append(keras.layers.RandomRotation(cfg.rotation, seed=next(seeds)))
        if cfg.zoom:
            layers.append(keras.layers.RandomZoom(cfg.zoom, seed=next(seeds)))
        if cfg.translation:
            layers.append(keras.layers.RandomTranslation(cfg.translation, cfg.translation,
                                                         seed=next(seeds)))
    if cfg.resized_crop_scale:
        layers.append(RandomResizedCrop(image_size, scale=(cfg.resized_crop_scale, 1.0),
                                        seed=next(seeds)))
    if cfg.contrast:
        layers.append(keras.layers.RandomContrast(cfg.contrast, value_range=(0, 255),
                                                  seed=next(seeds)))
    if cfg.brightness:
        layers.append(keras.layers.RandomBrightness(cfg.brightness, value_range=(0, 255),
                                                    seed=next(seeds)))
    if cfg.erasing:
        layers.append(keras.layers.RandomErasing(factor=cfg.erasing, value_range=(0, 255),
                                                 seed=next(seeds)))
    if cfg.rand_augment:
        layers.append(keras.layers.RandAugment(value_range=(0, 255), seed=next(seeds)))
    return layers


@dataclass
class Augmenter:
    """The training-only transforms of a recipe, split by where they run."""

    in_model: keras.Sequential | None      # pixel ops inside the training graph
    in_pipeline: keras.Sequential | None   # pixel ops in the tf.data map
    mixers: list[keras.layers.Layer]       # MixUp / CutMix: they also mix labels
    per_example: ExampleAugment | BoxAugment | None = None  # in_pipeline's policy, drawn
    #                           per example from stateless keys where it can be; a spatial
    #                           task's whole policy

    def pipeline_fn(self) -> PipelineAugment | None:
        """What the input pipeline applies to training examples, or None: the pixel ops
        per example when :attr:`per_example` draws them, else as layers on batches;
        the mixers on batches."""
        layers = self.in_pipeline if self.per_example is None else None
        if self.per_example is None and layers is None and not self.mixers:
            return None

        def apply(images, labels):
            if layers is not None:
                images = layers(images, training=True)
            for mixer in self.mixers:
                out = mixer({"images": images, "labels": labels}, training=True)
                images, labels = out["images"], out["labels"]
            return images, labels

        return PipelineAugment(self.per_example,
                               apply if layers is not None or self.mixers else None)


def build_augmenter(cfg: AugmentConfig, image_size: int | None, seed: int,
                    spatial: bool = False) -> Augmenter:
    """Turn the ``augment`` section into layers; empty when disabled or not images.
    ``spatial``: the targets are places in the image (boxes), which every op must move
    with the pixels: the policy runs in the input pipeline on each example and its
    targets (:class:`~tftoolkit.augment.boxes.BoxAugment`), whatever
    ``augment.placement``."""
    if not cfg.enabled or not image_size:
        return Augmenter(None, None, [])
    if spatial:
        return Augmenter(None, None, [], BoxAugment.from_config(cfg))
    layers = _pixel_layers(cfg, image_size, seed)
    pixels = keras.Sequential(layers, name="augment") if layers else None
    mixers: list[keras.layers.Layer] = []
    if cfg.mixup:
        mixers.append(keras.layers.MixUp(alpha=cfg.mixup, seed=seed + 101))
    if cfg.cutmix:
        mixers.append(keras.layers.CutMix(factor=cfg.cutmix, seed=seed + 102))
    if cfg.placement == "model":
        return Augmenter(pixels, None, mixers)
    return Augmenter(None, pixels, mixers,
                     ExampleAugment.from_config(cfg) if pixels is not None else None)


def training_model(model: keras.Model, augmenter: Augmenter) -> keras.Model:
    """``augment -> model`` sharing the model's weights; ``model`` itself stays clean."""
    if augmenter.in_model is None:
        return model
    inputs = keras.Input(model.input_shape[1:], name="image")
    return keras.Model(inputs, model(augmenter.in_model(inputs)), name="training_graph")


__all__ = ["Augmenter", "BoxAugment", "ExampleAugment", "PipelineAugment", "build_augmenter",
           "training_model"]
