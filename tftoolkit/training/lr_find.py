"""The learning-rate finder: an exponential sweep, stopped when the loss diverges.

As fastai's ``lr_find``: the learning rate grows from ``start`` to ``end`` over
``steps`` batches; the loss of each batch is smoothed (exponential average, bias
corrected); the sweep stops once the smoothed loss exceeds 4x its minimum. The
suggestion is fastai's "valley": the point 1/3 + 1/6 of the way down the longest
stretch over which the loss keeps falling.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
from matplotlib.figure import Figure


@dataclass
class LrFindResult:
    """The sweep's learning rates, smoothed losses and suggestion."""

    learning_rates: list[float]
    losses: list[float]
    suggestion: float
    diverged: bool

    def to_dict(self) -> dict:
        return asdict(self)

    def plot(self, path: str | Path) -> Path:
        """Loss against learning rate (log scale), the suggestion marked."""
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        ax.plot(self.learning_rates, self.losses)
        ax.axvline(self.suggestion, color="tab:red", linestyle="--",
                   label=f"valley: {self.suggestion:.2g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("smoothed training loss")
        ax.set_title("learning-rate finder")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        return Path(path)


def valley(losses: list[float]) -> int:
    """Index of fastai's "valley" suggestion in ``losses``."""
    n = len(losses)
    lengths = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lengths[i] < lengths[j] + 1:
                lengths[i] = lengths[j] + 1
            if lengths[max_end] < lengths[i]:
                max_end = i
                max_start = max_end - lengths[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


class _Sweep(keras.callbacks.Callback):
    def __init__(self, start: float, end: float, steps: int, beta: float = 0.98):
        super().__init__()
        self.start, self.end, self.steps, self.beta = start, end, steps, beta
        self.learning_rates: list[float] = []
        self.losses: list[float] = []
        self.diverged = False
        self._total = self._average = 0.0

    def _rate(self, batch: int) -> float:
        return self.start * (self.end / self.start) ** (batch / max(self.steps - 1, 1))

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate.assign(self._rate(batch))

    def on_train_batch_end(self, batch, logs=None):
        total = float(logs["loss"]) * (batch + 1)  # logs hold the epoch's running mean
        loss, self._total = total - self._total, total
        self._average = self.beta * self._average + (1 - self.beta) * loss
        smoothed = self._average / (1 - self.beta ** (batch + 1))
        if not math.isfinite(smoothed) or (self.losses and smoothed > 4 * min(self.losses)
                                           and batch > 10):
            self.diverged = True
            self.model.stop_training = True
            return
        self.learning_rates.append(self._rate(batch))
        self.losses.append(smoothed)


def sweep(model: keras.Model, dataset, *, steps: int = 100, start: float = 1e-7,
          end: float = 10.0) -> LrFindResult:
    """Run the sweep on a compiled ``model`` (its optimizer's rate a variable) over an
    endless training ``dataset``. The model's weights are changed: restore them after."""
    finder = _Sweep(start, end, steps)
    model.fit(dataset, epochs=1, steps_per_epoch=steps, callbacks=[finder], verbose=0,
              shuffle=False)
    if len(finder.losses) < 3:
        raise ValueError(f"the learning-rate sweep diverged within {len(finder.losses)} "
                         f"steps from {start:g}; lower the start")
    index = valley(finder.losses)
    return LrFindResult(finder.learning_rates, finder.losses,
                        float(finder.learning_rates[index]), finder.diverged)
