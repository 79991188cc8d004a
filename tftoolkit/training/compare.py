"""Run one recipe once per transfer mode on the same data, seed and budget."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from tftoolkit.errors import RecipeError
from tftoolkit.recipe import Recipe
from tftoolkit.serving import export_run
from tftoolkit.training.runner import TrainResult, train

MODES = ("scratch", "feature_extraction", "fine_tune", "two_stage")


@dataclass
class ModeRow:
    """One line of the comparison."""

    mode: str
    metric: float
    train_seconds: float
    run_dir: Path


@dataclass
class Comparison:
    """The rows, the metric they are ranked by, and where the best was exported."""

    metric_name: str
    rows: list[ModeRow]
    export_dir: Path | None = None

    @property
    def best(self) -> ModeRow:
        return max(self.rows, key=lambda r: r.metric)

    def render(self) -> str:
        head = f"{'mode':20s} {self.metric_name:>14s} {'train time (s)':>15s}"
        lines = [head, "-" * len(head)]
        for row in self.rows:
            lines.append(f"{row.mode:20s} {row.metric:14.4f} {row.train_seconds:15.1f}")
        return "\n".join(lines)


def _score(result: TrainResult) -> tuple[str, float]:
    for key in ("test_accuracy", "val_accuracy"):
        if key in result.metrics:
            return key, result.metrics[key]
    raise RecipeError("compare needs a classification recipe (no accuracy was measured)")


def compare(recipe: Recipe, modes: list[str]) -> Comparison:
    """Train ``recipe`` once per mode (export off), then export the best run."""
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise RecipeError(f"--modes {','.join(modes)}: unknown mode(s) {unknown} "
                          f"(choices: {', '.join(MODES)})")
    rows, metric_name = [], ""
    for mode in modes:
        run = dataclasses.replace(
            recipe, model=dataclasses.replace(recipe.model, mode=mode),
            export=dataclasses.replace(recipe.export, enabled=False))
        result = train(run)
        metric_name, value = _score(result)
        rows.append(ModeRow(mode, value, result.train_seconds, result.run_dir))
    comparison = Comparison(metric_name, rows)
    if recipe.export.enabled:
        comparison.export_dir = export_run(comparison.best.run_dir)
    return comparison
