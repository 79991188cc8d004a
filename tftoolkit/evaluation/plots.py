"""Evaluation figures: a normalised confusion matrix, a grid of the top losses, and
multi-label precision-recall curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from tftoolkit.detection.drawing import PREDICTED, TRUE, draw_boxes


def plot_confusion_matrix(matrix: np.ndarray, class_names: list[str], path: Path,
                          title: str = "") -> Path:
    """Rows normalised to recall; class names on both axes; counts in the cells."""
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    k = len(class_names)
    fig = Figure(figsize=(1.0 + 0.65 * k, 0.8 + 0.6 * k))
    ax = fig.subplots()
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=9)
    ax.set_yticks(range(k), class_names, fontsize=9)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "confusion matrix (row-normalised)")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{normalised[i, j]:.2f}\n({matrix[i, j]})", ha="center",
                    va="center", fontsize=7,
                    color="white" if normalised[i, j] > 0.6 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_top_losses(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
                    class_names: list[str], path: Path, count: int = 12) -> Path:
    """The ``count`` most confidently wrong images, with true/predicted/probability."""
    predicted = np.argmax(probabilities, axis=1)
    wrong = np.flatnonzero(predicted != labels)
    order = wrong[np.argsort(-probabilities[wrong, predicted[wrong]])][:count]
    cols = 4
    rows = max(1, int(np.ceil(len(order) / cols)))
    fig = Figure(figsize=(3.0 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), order):
        ax.imshow(np.clip(images[i], 0, 255).astype("uint8"))
        ax.set_title(f"true: {class_names[labels[i]]}\npred: {class_names[predicted[i]]} "
                     f"({probabilities[i, predicted[i]]:.0%})", fontsize=9)
    fig.suptitle("top losses: most confidently wrong" if len(order)
                 else "top losses: no misclassified images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_pr_curves(precision: np.ndarray, recall: np.ndarray, per_class: list[dict],
                   path: Path, title: str = "") -> Path:
    """One precision-recall curve per class, its AP in the legend and a dot where its
    threshold puts it."""
    fig = Figure(figsize=(6.5, 5))
    ax = fig.subplots()
    for p, r, row in zip(precision, recall, per_class):
        line, = ax.step(r, p, where="post", label=f"{row['class']} (AP {row['ap']:.3f})")
        ax.plot([row["recall"]], [row["precision"]], "o", color=line.get_color())
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title or "precision-recall per class (dot: at the threshold)")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_detection_pr_curves(precision_50: list[list[float]], per_class: list[dict],
                             path: Path, title: str = "") -> Path:
    """COCO's interpolated precision at 101 recall points, IoU 0.50, one curve per class
    that has true boxes, its AP@0.50 in the legend."""
    fig = Figure(figsize=(6.5, 5))
    ax = fig.subplots()
    recall = np.linspace(0.0, 1.0, 101)
    for curve, row in zip(precision_50, per_class):
        if row["ap_50"] is not None:  # a class without true boxes has no curve
            ax.plot(recall, curve, label=f"{row['class']} (AP@0.5 {row['ap_50']:.3f})")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title or "precision-recall per class, IoU 0.50")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_detection_sheet(images: np.ndarray, tables: np.ndarray, detections: dict,
                         class_names: list[str], path: Path, min_score: float = 0.3,
                         count: int = 16) -> Path:
    """The first ``count`` images with their true boxes (green) and the detections
    scoring ``min_score`` or more (red, with their scores)."""
    shown = min(count, len(images))
    columns = min(4, shown)
    rows = -(-shown // columns)
    fig = Figure(figsize=(2.6 * columns, 2.7 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for i in range(shown):
        ax = axes.ravel()[i]
        height, width = images[i].shape[:2]
        ax.imshow(np.clip(images[i], 0, 255).astype(np.uint8))
        truth = tables[i][tables[i][:, 4] >= 0]
        draw_boxes(ax, truth[:, :4], [class_names[int(c)] for c in truth[:, 4]], height,
                   width, TRUE)
        n = int(detections["num_detections"][i])
        scores = detections["detection_scores"][i, :n]
        keep = scores >= min_score
        draw_boxes(ax, detections["detection_boxes"][i, :n][keep],
                   [class_names[int(c)] for c in detections["detection_classes"][i, :n][keep]],
                   height, width, PREDICTED, scores[keep])
    fig.suptitle(f"true boxes (green), detections scoring {min_score:g} or more (red)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
