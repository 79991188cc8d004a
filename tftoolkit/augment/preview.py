"""A picture of what an augmentation policy does: originals and augmented views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from matplotlib.figure import Figure

from tftoolkit.augment import build_augmenter
from tftoolkit.data import load_data
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


def _label_text(target: np.ndarray, names: list[str]) -> str:
    """The class name(s) of one example's target: a class id, or a multi-hot row."""
    if not names:
        return ""
    chosen = np.flatnonzero(target) if np.ndim(target) else [int(target)]
    return ", ".join(names[i] for i in chosen)


def augment_preview(recipe: Recipe, out: str | Path, images: int = 4,
                    views: int = 6) -> Path:
    """Write a grid PNG: one row per training image, the original then ``views``
    augmented versions, so the policy can be checked by eye."""
    data = load_data(recipe, input_size(recipe))
    x, y = next(iter(data.dataset("train", batch_size=images)))
    x, y = np.asarray(x), np.asarray(y)
    grid = augmented_views(x, y, recipe, views)
    names = data.info.class_names or []
    targets = data.info.task.targets(y)
    fig = Figure(figsize=(1.8 * (views + 1), 1.9 * len(x)))
    axes = fig.subplots(len(x), views + 1, squeeze=False)
    for row in range(len(x)):
        label = _label_text(targets[row], names)
        for col in range(views + 1):
            ax = axes[row, col]
            image = x[row] if col == 0 else grid[col - 1, row]
            ax.imshow(np.clip(image, 0, 255).astype("uint8"))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title("original" if col == 0 else f"augmented {col}", fontsize=9)
        axes[row, 0].set_ylabel(label, fontsize=9)
    fig.suptitle(f"{recipe.name}: augmentation ({recipe.augment.placement} placement"
                 f"{', fused' if recipe.augment.fused else ''})", fontsize=11)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
