"""Boxes drawn on images with matplotlib: what ``predict --out``, ``augment-preview``
and ``evaluate``'s sheet of test images show."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

PREDICTED, TRUE = "#ff3b30", "#34c759"   # red: detections; green: true boxes


def draw_boxes(ax: Axes, boxes: np.ndarray, labels: list[str], height: int, width: int,
               colour: str = PREDICTED, scores: np.ndarray | None = None) -> None:
    """Normalised ``(ymin, xmin, ymax, xmax)`` boxes on axes showing an image of
    ``height`` x ``width`` pixels, each with its label (and score)."""
    for i, (box, label) in enumerate(zip(np.asarray(boxes).reshape(-1, 4), labels)):
        ymin, xmin, ymax, xmax = (float(v) for v in box)
        # pixel edges: a box [0, 1] spans the image, whose pixel centres imshow puts at 0..
        left, top = xmin * width - 0.5, ymin * height - 0.5
        ax.add_patch(Rectangle((left, top), (xmax - xmin) * width, (ymax - ymin) * height,
                               fill=False, edgecolor=colour, linewidth=1.5))
        text = label if scores is None else f"{label} {float(scores[i]):.2f}"
        ax.text(left, top, text, color="white", fontsize=7, va="bottom",
                bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "edgecolor": "none"})


def save_with_boxes(image: np.ndarray, out: str | Path, boxes: np.ndarray,
                    labels: list[str], scores: np.ndarray | None = None) -> Path:
    """``image`` (``[H, W, 3]`` 0-255) at its own size with ``boxes`` drawn, as a PNG."""
    height, width = image.shape[:2]
    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(np.clip(image, 0, 255).astype(np.uint8))
    ax.set_axis_off()
    draw_boxes(ax, boxes, labels, height, width, scores=scores)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
