"""Run one recipe once per transfer mode on the same data, seed and budget.

The mode exported is chosen on the validation split alone; each row also shows the test
figure, read once per run for the report, never for the choice. The runs must have
recorded the same splits (``splits.csv``). The runs' baselines
(:mod:`tftoolkit.training.baselines`) are listed below the modes, with their
validation figures.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from tftoolkit.data.record import SplitRecord
from tftoolkit.errors import DataError, RecipeError
from tftoolkit.models.registry import AUTO, MODES, check_architecture
from tftoolkit.recipe import Recipe
from tftoolkit.serving import export_run
from tftoolkit.tasks import Monitor
from tftoolkit.training.baselines import Baseline, read_baselines
from tftoolkit.training.privacy import refused_search
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
    """The rows, the validation figure that ranks them, and where the best was exported."""

    monitor: Monitor              # the task's own figure: val_accuracy, val_map, val_mse
    rows: list[ModeRow]
    export_dir: Path | None = None
    baselines: list[Baseline] = field(default_factory=list)

    @property
    def metric_name(self) -> str:
        return self.monitor.key

    @property
    def best(self) -> ModeRow:
        """The row with the best validation figure (of equal ones, the first)."""
        return self.rows[self.monitor.best({i: row.validation
                                            for i, row in enumerate(self.rows)})]

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
        for baseline in self.baselines:
            if f"val_{baseline.metric}" == self.metric_name:
                lines.append(f"{'baseline: ' + baseline.name:20s} {baseline.val_score:14.4f} "
                             f"{'-':>14s} {baseline.seconds:15.1f}  ({baseline.description})")
        return "\n".join(lines)


def _validation_monitor(result: TrainResult) -> Monitor:
    """The figure the task judges runs by, which the run must have on validation."""
    monitor = result.info.task.monitor()
    if monitor.key not in result.metrics:
        raise RecipeError("compare chooses on the validation split, and this recipe has "
                          "none: set data.validation_fraction > 0 (or data.val_split for "
                          "TFDS)")
    return monitor


def _check_same_splits(rows: list[ModeRow]) -> None:
    """Refuse a comparison of runs that recorded other splits (the data changed while
    they trained): their figures would not be comparable. Runs without a record have
    nothing to compare."""
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
    if recipe.privacy.enabled:
        raise RecipeError(refused_search("compare"))
    unknown = [m for m in modes if m not in (*MODES, AUTO)]
    if unknown or not modes:
        raise RecipeError(f"--modes {','.join(modes)}: unknown mode(s) {unknown} "
                          f"(choices: {', '.join((*MODES, AUTO))})")
    for mode in modes:  # before anything trains
        check_architecture(recipe.model.architecture, mode)
    rows, monitor = [], None
    for mode in modes:
        run = dataclasses.replace(
            recipe, model=dataclasses.replace(recipe.model, mode=mode),
            export=dataclasses.replace(recipe.export, enabled=False))
        result = train(run)
        monitor = _validation_monitor(result)
        rows.append(ModeRow(mode, result.metrics[monitor.key],
                            result.metrics.get(monitor.key.replace("val_", "test_")),
                            result.train_seconds, result.run_dir))
    _check_same_splits(rows)
    comparison = Comparison(monitor, rows, baselines=read_baselines(row.run_dir for row in rows))
    if recipe.export.enabled:
        comparison.export_dir = export_run(comparison.best.run_dir)
    return comparison
