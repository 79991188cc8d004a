"""A picture of what an augmentation policy does: originals and augmented views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from matplotlib.figure import Figure

from tftoolkit.augment import build_augmenter
from tftoolkit.data import load_data
from tftoolkit.data.pipeline import Resize, example_key
from tftoolkit.detection.drawing import TRUE, draw_boxes
from tftoolkit.models import input_size
from tftoolkit.recipe import Recipe


def augmented_views(images: np.ndarray, labels: np.ndarray, recipe: Recipe,
                    views: int) -> np.ndarray:
    """``views`` augmented versions of each image: array [views, n, H, W, 3]."""
    size = images.shape[1]
    augmenter = build_augmenter(recipe.augment, size, recipe.train.seed)
    pixels = augmenter.in_model or augmenter.in_pipeline
    out = []
    for _ in range(views):
        x, y = tf.constant(images), tf.constant(labels)
        if pixels is not None:
            x = pixels(x, training=True)
        for mixer in augmenter.mixers:
            x = mixer({"images": x, "labels": y}, training=True)["images"]
        out.append(np.asarray(x))
    return np.stack(out)


def augmented_box_views(images: np.ndarray, tables: np.ndarray, recipe: Recipe,
                        views: int, resize: Resize) -> tuple[np.ndarray, np.ndarray]:
    """``views`` augmented versions of each image and of its box table, as the training
    pipeline draws them (one key per view and image): arrays [views, n, H, W, 3] and
    [views, n, max_boxes, 5]."""
    augmenter = build_augmenter(recipe.augment, images.shape[1], recipe.train.seed,
                                spatial=True)
    pixels, boxes = [], []
    for view in range(views):
        pairs = [augmenter.per_example.augment_example(
            tf.constant(image), tf.constant(table),
            example_key(recipe.train.seed, view, row), resize)
                 for row, (image, table) in enumerate(zip(images, tables))]
        pixels.append(np.stack([np.asarray(image) for image, _ in pairs]))
        boxes.append(np.stack([np.asarray(table) for _, table in pairs]))
    return np.stack(pixels), np.stack(boxes)


def _label_text(target: np.ndarray, names: list[str]) -> str:
    """The class name(s) of one example's target: a class id, or a multi-hot row."""
    if not names:
        return ""
    chosen = np.flatnonzero(target) if np.ndim(target) else [int(target)]
    return ", ".join(names[i] for i in chosen)


def augment_preview(recipe: Recipe, out: str | Path, images: int = 4,
                    views: int = 6) -> Path:
    """Write a grid PNG: one row per training image, the original then ``views``
    augmented versions, so the policy can be checked by eye (a detector's images with
    their boxes, moved as the pixels are)."""
    data = load_data(recipe, input_size(recipe))
    x, y = next(iter(data.dataset("train", batch_size=images)))
    x, y = np.asarray(x), np.asarray(y)
    names = data.info.class_names or []
    targets = data.info.task.targets(y)
    tables = None
    if data.info.task.spatial:
        grid, tables = augmented_box_views(x, targets, recipe, views, data.info.resize)
    else:
        grid = augmented_views(x, y, recipe, views)
    fig = Figure(figsize=(1.8 * (views + 1), 1.9 * len(x)))
    axes = fig.subplots(len(x), views + 1, squeeze=False)
    for row in range(len(x)):
        label = "" if tables is not None else _label_text(targets[row], names)
        for col in range(views + 1):
            ax = axes[row, col]
            image = x[row] if col == 0 else grid[col - 1, row]
            ax.imshow(np.clip(image, 0, 255).astype("uint8"))
            if tables is not None:
                table = targets[row] if col == 0 else tables[col - 1, row]
                table = table[table[:, 4] >= 0]
                draw_boxes(ax, table[:, :4], [names[int(c)] for c in table[:, 4]],
                           image.shape[0], image.shape[1], TRUE)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title("original" if col == 0 else f"augmented {col}", fontsize=9)
        axes[row, 0].set_ylabel(label, fontsize=9)
    where = ("in the pipeline, boxes moved with the pixels" if tables is not None else
             f"{recipe.augment.placement} placement{', fused' if recipe.augment.fused else ''}")
    fig.suptitle(f"{recipe.name}: augmentation ({where})", fontsize=11)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
