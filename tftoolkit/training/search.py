"""Hyperparameter search over any recipe keys, both transfer stages included, on
KerasTuner's oracles.

A trial is a normal toolkit run of the recipe with the trial's values as overrides (both
stages, schedules, caches, determinism), so its result is what ``tftoolkit train``
gives for the same values and seed; only the test split is left out. KerasTuner owns
the trial bookkeeping, the choice of the next values and the resumption of an
interrupted search (``resume=True``); its files live in the search folder beside a
table of the trials, a plot of the objective per trial and the best recipe written as a
recipe module. That recipe is then trained once more and evaluated on the test split:
the one time the search reads it.
"""

from __future__ import annotations

import ast
import csv
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import keras_tuner as kt
from matplotlib.figure import Figure

from tftoolkit.data import load_data
from tftoolkit.errors import RecipeError, TftoolkitError
from tftoolkit.models import input_size
from tftoolkit.recipe import Recipe, bundled_recipes, load_recipe, parse_overrides
from tftoolkit.tasks import any_monitor
from tftoolkit.training.privacy import refused_search
from tftoolkit.training.runner import TrainResult, train

TUNERS = ("random", "bayesian", "hyperband")


@dataclass(frozen=True)
class Dimension:
    """One searched recipe key: a float or int range (linear or log), or choices."""

    key: str
    kind: str                    # float | int | choice
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[str, ...] = ()   # as written: "adam", "0.1", "[4, 8]"

    def declare(self, hp: kt.HyperParameters):
        """The recipe value KerasTuner draws for this trial."""
        sampling = "log" if self.log else "linear"
        if self.kind == "choice":  # the oracle sees the choices' text (lists included)
            return self.value(hp.Choice(self.key, list(self.choices)))
        if self.kind == "int":
            return hp.Int(self.key, int(self.low), int(self.high), sampling=sampling)
        return hp.Float(self.key, self.low, self.high, sampling=sampling)

    def value(self, drawn):
        """The recipe value of a value the oracle holds."""
        if self.kind == "choice":
            return parse_overrides([f"x={drawn}"])["x"]
        return drawn

    def extremes(self) -> list:
        """Values that must all be valid recipe values."""
        if self.kind == "choice":
            return [self.value(c) for c in self.choices]
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]


def parse_space(items: list[str]) -> list[Dimension]:
    """``KEY=SPEC`` items: ``1e-4:1e-2:log``, ``0.0:0.5``, ``8:64:int``, ``a|b|c``."""
    dimensions = []
    for item in items:
        key, sep, spec = item.partition("=")
        key, spec = key.strip(), spec.strip()
        if not sep or not key or not spec:
            raise RecipeError(f"--space {item!r} is not of the form KEY=SPEC (for example "
                              "train.learning_rate=1e-4:1e-2:log)")
        if "|" in spec:
            choices = tuple(c.strip() for c in spec.split("|") if c.strip())
            dimensions.append(Dimension(key, "choice", choices=choices))
            continue
        parts = spec.split(":")
        flags = set(parts[2:])
        if len(parts) < 2 or not flags <= {"log", "int"}:
            raise RecipeError(f"--space {item!r}: SPEC is LOW:HIGH[:log][:int] or a|b|c")
        try:
            low, high = (ast.literal_eval(p) for p in parts[:2])
        except (ValueError, SyntaxError):
            raise RecipeError(f"--space {item!r}: {parts[0]!r} and {parts[1]!r} must be "
                              "numbers") from None
        if not low < high or ("log" in flags and low <= 0):
            raise RecipeError(f"--space {item!r}: needs LOW < HIGH"
                              f"{' and LOW > 0 for log sampling' if 'log' in flags else ''}")
        dimensions.append(Dimension(key, "int" if "int" in flags else "float", low, high,
                                    "log" in flags))
    return dimensions


def check_space(recipe: Recipe, dimensions: list[Dimension]) -> None:
    """Refuse, before anything runs, a key that is no recipe key or a range the key does
    not allow (each end and choice is validated as ``--set`` would)."""
    if not dimensions:
        raise RecipeError("tune needs at least one --space KEY=SPEC")
    for dimension in dimensions:
        for value in dimension.extremes():
            try:
                load_recipe(recipe, {dimension.key: value})
            except RecipeError as exc:
                raise RecipeError(f"--space {dimension.key}: {exc}") from None


@dataclass
class TrialRow:
    """One trial: its values, objective and time."""

    trial_id: str
    values: dict
    objective: float
    seconds: float
    run_dir: Path


@dataclass
class SearchResult:
    """The trials, the best values, the best recipe module and its test figures."""

    folder: Path
    objective: str
    trials: list[TrialRow]
    best_values: dict
    recipe_file: Path
    final: TrainResult | None

    def render(self) -> str:
        keys = list(self.best_values)
        head = " ".join([f"{'trial':>5s}", *(f"{k:>24s}" for k in keys),
                         f"{self.objective:>14s}", f"{'seconds':>8s}"])
        lines = [head, "-" * len(head)]
        for row in self.trials:
            cells = [f"{row.trial_id:>5s}", *(f"{_fmt(row.values.get(k)):>24s}" for k in keys),
                     f"{row.objective:14.4f}", f"{row.seconds:8.1f}"]
            lines.append(" ".join(cells))
        return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class _StopSearch(kt.errors.FatalError):
    """A toolkit error inside a trial (a bad recipe value, data, an objective the task
    does not log): the search stops with it, where KerasTuner would retry the trial."""

    def __init__(self, error: TftoolkitError):
        super().__init__(str(error))
        self.error = error


class _RecipeTuner(kt.Tuner):
    """A KerasTuner tuner whose trial is a toolkit training run."""

    def __init__(self, recipe: Recipe, dimensions: list[Dimension], objective: str,
                 folder: Path, **kwargs):
        super().__init__(**kwargs)
        self.recipe, self.dimensions, self.objective_name = recipe, dimensions, objective
        self.folder = folder
        self.rows: list[TrialRow] = []

    def run_trial(self, trial, *args, **kwargs):
        hp = trial.hyperparameters
        values = {d.key: d.declare(hp) for d in self.dimensions}
        if "tuner/epochs" in hp.values:  # Hyperband's budget for this bracket
            values["train.epochs"] = hp.values["tuner/epochs"]
        start = time.perf_counter()
        try:
            result = train(self.recipe, {
                **values, "export.enabled": False, "train.resume": False,
                "train.run_dir": str(self.folder / "trials" / trial.trial_id)},
                report_test=False, judged_by=self.objective_name)
        except TftoolkitError as exc:
            raise _StopSearch(exc) from exc
        if self.objective_name not in result.metrics:
            raise _StopSearch(RecipeError(
                f"--objective {self.objective_name}: the run reports "
                f"{', '.join(result.metrics)} (a search needs a validation split)"))
        value = result.metrics[self.objective_name]
        self.rows.append(TrialRow(trial.trial_id, values, value,
                                  time.perf_counter() - start, result.run_dir))
        return {self.objective_name: value}


def _oracle(tuner: str, objective: kt.Objective, trials: int, seed: int,
            dimensions: list[Dimension]):
    if tuner == "random":
        return kt.oracles.RandomSearchOracle(objective, max_trials=trials, seed=seed)
    if tuner == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(objective, max_trials=trials, seed=seed)
    if any(d.key == "train.epochs" for d in dimensions):
        raise RecipeError("--tuner hyperband chooses train.epochs itself; do not search it")
    return kt.oracles.HyperbandOracle(objective, max_epochs=max(trials, 2), seed=seed)


def search(recipe: Recipe | str, space: list[str], *, trials: int = 10,
           tuner: str = "random", objective: str = "",
           overrides: dict | list[str] | None = None, resume: bool = False) -> SearchResult:
    """Search the recipe keys of ``space`` (``KEY=SPEC`` strings) for the best
    ``objective`` (a validation figure the task logs; default: the one it is judged by,
    ``val_accuracy``, multi-label ``val_map``, regression ``val_loss``) over ``trials``
    trials.

    With ``resume``, the latest search of this recipe continues where it stopped:
    finished trials are not run again.
    """
    source = _recipe_source(recipe)
    recipe = load_recipe(recipe, overrides)
    if recipe.privacy.enabled:
        raise RecipeError(refused_search("tune"))
    if tuner not in TUNERS:
        raise RecipeError(f"--tuner {tuner!r}: choices {', '.join(TUNERS)}")
    if objective and not objective.startswith("val_"):
        raise RecipeError(f"--objective {objective!r}: a search chooses on a validation "
                          "figure (val_accuracy, val_loss, ...), never on test figures")
    dimensions = parse_space(space)
    check_space(recipe, dimensions)
    # named: its direction (every trial checks that its task logs it before training);
    # else the figure the data's task is judged by
    monitor = (any_monitor(objective) if objective
               else load_data(recipe, input_size(recipe)).info.task.monitor())
    objective = monitor.key
    folder = _search_folder(recipe, resume)
    kt_objective = kt.Objective(objective, "max" if monitor.higher_is_better else "min")
    runner = _RecipeTuner(recipe, dimensions, objective, folder,
                          oracle=_oracle(tuner, kt_objective, trials, recipe.train.seed,
                                         dimensions),
                          directory=str(folder), project_name="keras_tuner",
                          overwrite=not resume)
    try:
        runner.search()
    except _StopSearch as stop:
        raise stop.error from None
    rows = _all_trials(runner, dimensions, objective)
    best = runner.oracle.get_best_trials(1)[0]
    best_values = {d.key: d.value(best.hyperparameters.values[d.key]) for d in dimensions}
    if "tuner/epochs" in best.hyperparameters.values:
        best_values["train.epochs"] = best.hyperparameters.values["tuner/epochs"]
    _write_table(folder / "trials.csv", rows, objective)
    _plot(folder / "objective.png", rows, objective)
    recipe_file = _write_recipe(folder, recipe, source,
                                {**_overrides_dict(overrides), **best_values})
    final = train(load_recipe(recipe_file), {"train.run_dir": str(folder / "best"),
                                             "export.enabled": False})
    return SearchResult(folder, objective, rows, best_values, recipe_file, final)


def _overrides_dict(overrides) -> dict:
    if not overrides:
        return {}
    return parse_overrides(overrides) if isinstance(overrides, (list, tuple)) else dict(overrides)


def _search_folder(recipe: Recipe, resume: bool) -> Path:
    root = Path(recipe.train.run_dir) / recipe.name
    if resume:
        previous = sorted(root.glob("search-*"))
        if not previous:
            raise RecipeError(f"--resume: no earlier search of {recipe.name!r} under {root}")
        return previous[-1]
    folder = root / f"search-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True)
    return folder


def _all_trials(tuner: _RecipeTuner, dimensions: list[Dimension],
                objective: str) -> list[TrialRow]:
    """Every finished trial, from KerasTuner's records (earlier sessions included)."""
    timed = {row.trial_id: row for row in tuner.rows}
    rows = []
    for trial_id, trial in sorted(tuner.oracle.trials.items()):
        if trial.score is None:
            continue
        values = {d.key: d.value(trial.hyperparameters.values.get(d.key))
                  for d in dimensions}
        earlier = timed.get(trial_id)
        rows.append(TrialRow(trial_id, values, float(trial.score),
                             earlier.seconds if earlier else float("nan"),
                             earlier.run_dir if earlier else
                             tuner.folder / "trials" / trial_id))
    return rows


def _write_table(path: Path, rows: list[TrialRow], objective: str) -> None:
    keys = list(rows[0].values) if rows else []
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", *keys, objective, "seconds"])
        for row in rows:
            writer.writerow([row.trial_id, *(row.values[k] for k in keys), row.objective,
                             row.seconds])


def _plot(path: Path, rows: list[TrialRow], objective: str) -> None:
    fig = Figure(figsize=(6, 3.8))
    ax = fig.subplots()
    ax.plot(range(1, len(rows) + 1), [r.objective for r in rows], marker="o")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.set_title("search: objective per trial")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _recipe_source(recipe: Recipe | str) -> str:
    """How the best recipe module will load the base recipe: a bundled name or a path."""
    if isinstance(recipe, Recipe):
        if recipe.name not in bundled_recipes():
            raise RecipeError("tune writes the best recipe on top of its base recipe: give "
                              "a bundled recipe name or a recipe file's path")
        return recipe.name
    text = str(recipe)
    return text if text in bundled_recipes() else str(Path(text).resolve())


def _write_recipe(folder: Path, recipe: Recipe, base: str, values: dict) -> Path:
    """The best recipe as a module that ``tftoolkit show``/``train`` load."""
    path = folder / f"{recipe.name}_tuned.py"
    path.write_text(
        f'"""{recipe.name} with the values a search chose on validation data '
        f'({folder.name})."""\n\n'
        "import dataclasses\n\nfrom tftoolkit.recipe import load_recipe\n\n"
        f"RECIPE = dataclasses.replace(load_recipe({base!r}, {values!r}),\n"
        f"                             name={recipe.name + '_tuned'!r})\n")
    return path


__all__ = ["Dimension", "SearchResult", "check_space", "parse_space", "search"]
