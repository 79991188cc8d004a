"""Run one recipe once per transfer mode on the same data, seed and budget.

The mode exported is chosen on the validation split alone; each row also shows the test
figure, read once per run for the report, never for the choice. The runs must have
recorded the same splits (``splits.csv``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from tftoolkit.data.record import SplitRecord
from tftoolkit.errors import DataError, RecipeError
from tftoolkit.models.registry import MODES, check_architecture
from tftoolkit.recipe import Recipe
from tftoolkit.serving import export_run
from tftoolkit.training.runner import TrainResult, train


@dataclass
class ModeRow:
    """One line of the comparison."""

    mode: str
    validation: float             # the metric that chooses
    test: float | None            # reported only
    train_seconds: float
    run_dir: Path


@dataclass
class Comparison:
    """The rows, the validation metric that ranks them, and where the best was exported."""

    metric_name: str              # val_accuracy (higher is better) or val_loss (lower)
    rows: list[ModeRow]
    export_dir: Path | None = None

    @property
    def best(self) -> ModeRow:
        """The row with the best validation figure."""
        if self.metric_name.endswith("loss"):
            return min(self.rows, key=lambda r: r.validation)
        return max(self.rows, key=lambda r: r.validation)

    def render(self) -> str:
        test_name = self.metric_name.replace("val_", "test_")
        head = (f"{'mode':20s} {self.metric_name:>14s} {test_name:>14s} "
                f"{'train time (s)':>15s}")
        lines = [head, "-" * len(head)]
        for row in self.rows:
            test = f"{row.test:14.4f}" if row.test is not None else f"{'-':>14s}"
            mark = "  <- best by " + self.metric_name if row is self.best else ""
            lines.append(f"{row.mode:20s} {row.validation:14.4f} {test} "
                         f"{row.train_seconds:15.1f}{mark}")
        return "\n".join(lines)


def _validation_metric(result: TrainResult) -> str:
    for key in ("val_accuracy", "val_loss"):
        if key in result.metrics:
            return key
    raise RecipeError("compare chooses on the validation split, and this recipe has none: "
                      "set data.validation_fraction > 0 (or data.val_split for TFDS)")


def _check_same_splits(rows: list[ModeRow]) -> None:
    """Refuse a comparison of runs that recorded other splits (the data changed while
    they trained): their figures would not be comparable. (A worker that is not the
    chief of a multi-worker run writes no record: it has nothing to compare.)"""
    records = [SplitRecord.read(row.run_dir) for row in rows]
    if None in records:
        return
    first = records[0].fingerprints()
    for row, record in zip(rows[1:], records[1:]):
        other = record.fingerprints()
        differ = [split for split in first.keys() | other.keys()
                  if first.get(split) != other.get(split)]
        if differ:
            raise DataError(f"the {rows[0].mode} and {row.mode} runs recorded other "
                            f"{' and '.join(sorted(differ))} examples (splits.csv in "
                            f"{rows[0].run_dir} and {row.run_dir}): the data changed while "
                            "compare ran, so their figures do not compare; run it again on "
                            "data that stays as it is")


def compare(recipe: Recipe, modes: list[str]) -> Comparison:
    """Train ``recipe`` once per mode (export off), then export the run with the best
    validation figure."""
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise RecipeError(f"--modes {','.join(modes)}: unknown mode(s) {unknown} "
                          f"(choices: {', '.join(MODES)})")
    for mode in modes:  # before anything trains
        check_architecture(recipe.model.architecture, mode)
    rows, metric_name = [], ""
    for mode in modes:
        run = dataclasses.replace(
            recipe, model=dataclasses.replace(recipe.model, mode=mode),
            export=dataclasses.replace(recipe.export, enabled=False))
        result = train(run)
        metric_name = _validation_metric(result)
        rows.append(ModeRow(mode, result.metrics[metric_name],
                            result.metrics.get(metric_name.replace("val_", "test_")),
                            result.train_seconds, result.run_dir))
    _check_same_splits(rows)
    comparison = Comparison(metric_name, rows)
    if recipe.export.enabled:
        comparison.export_dir = export_run(comparison.best.run_dir)
    return comparison
