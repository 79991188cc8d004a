"""Loss and metric curves of a training history, as a PNG."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure


def plot_history(history: dict[str, list[float]], path: Path, title: str = "") -> Path:
    """One panel per quantity (loss, then each metric): train, validation and the
    weights' moving average on validation (``train.ema``) together, as far as logged (a
    detector's mAP: validation alone)."""
    names = [name for name in dict.fromkeys(k.removeprefix("val_") for k in history)
             if not name.startswith("ema_")]  # val_ema_*: the moving average's figures
    if not names:  # no epoch was trained (a privacy budget spent before the first)
        fig = Figure(figsize=(5, 3.8))
        fig.text(0.5, 0.5, f"{title}: no epoch trained", ha="center", va="center")
        fig.savefig(path, dpi=100)
        return path
    fig = Figure(figsize=(5 * len(names), 3.8))
    axes = fig.subplots(1, len(names), squeeze=False)
    for ax, name in zip(axes[0], names):
        for split, key in (("train", name), ("val", f"val_{name}"),
                           ("val, moving average", f"val_ema_{name}")):
            if key in history:  # a task may measure a figure on validation only
                ax.plot(range(1, len(history[key]) + 1), history[key], marker="o", ms=3,
                        label=f"{split} {name}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(f"{title}: {name}" if title else name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
