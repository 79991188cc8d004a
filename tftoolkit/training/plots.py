"""Loss and metric curves of a training history, as a PNG."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure


def plot_history(history: dict[str, list[float]], path: Path, title: str = "") -> Path:
    """One panel per quantity (loss, then each metric), train and validation together."""
    names = [k for k in history if not k.startswith("val_")]
    if not names:  # no epoch was trained (a privacy budget spent before the first)
        fig = Figure(figsize=(5, 3.8))
        fig.text(0.5, 0.5, f"{title}: no epoch trained", ha="center", va="center")
        fig.savefig(path, dpi=100)
        return path
    fig = Figure(figsize=(5 * len(names), 3.8))
    axes = fig.subplots(1, len(names), squeeze=False)
    for ax, name in zip(axes[0], names):
        epochs = range(1, len(history[name]) + 1)
        ax.plot(epochs, history[name], marker="o", ms=3, label=f"train {name}")
        if f"val_{name}" in history:
            ax.plot(epochs, history[f"val_{name}"], marker="o", ms=3, label=f"val {name}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(f"{title}: {name}" if title else name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
