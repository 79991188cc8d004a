"""Hyperparameter search: trials are toolkit runs, chosen on validation data only."""

from __future__ import annotations

import csv

import pytest

import tftoolkit
from tftoolkit.errors import RecipeError
from tftoolkit.training import search as search_module

RECIPE_FILE = '''
import numpy as np
from tftoolkit.recipe import DataConfig, ExportConfig, ModelConfig, Recipe, TrainConfig

rng = np.random.default_rng(0)
x = rng.normal(size=(300, 4)).astype("float32")
y = (x[:, 0] + x[:, 1] > 0).astype("int64")
RECIPE = Recipe(name="searchable",
                data=DataConfig(source="arrays", arrays={"train": (x, y)}),
                model=ModelConfig(architecture="mlp", hidden=[8]),
                train=TrainConfig(epochs=3, batch_size=32, verbose=0),
                export=ExportConfig(enabled=False))
'''
SPACE = ["train.learning_rate=1e-3:1e-1:log", "model.hidden=[4]|[16]"]


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "searchable.py"
    path.write_text(RECIPE_FILE)
    return path


@pytest.fixture
def trial_calls(monkeypatch):
    """Every call of train() the search makes: (report_test, metrics)."""
    calls = []
    real = search_module.train

    def recording(recipe, overrides=None, **kw):
        result = real(recipe, overrides, **kw)
        calls.append((kw.get("report_test", True), dict(result.metrics)))
        return result

    monkeypatch.setattr(search_module, "train", recording)
    return calls


def test_a_random_search_writes_the_table_the_plot_and_a_best_recipe(recipe_file,
                                                                      trial_calls):
    result = search_module.search(str(recipe_file), SPACE, trials=3, tuner="random")
    with open(result.folder / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and len(result.trials) == 3
    assert set(rows[0]) == {"trial", "train.learning_rate", "model.hidden", "val_accuracy",
                            "seconds"}
    assert (result.folder / "objective.png").stat().st_size > 0
    best = max(result.trials, key=lambda r: r.objective)
    assert result.best_values == best.values
    tuned = tftoolkit.load_recipe(result.recipe_file)
    assert tuned.name == "searchable_tuned"
    assert tuned.train.learning_rate == pytest.approx(best.values["train.learning_rate"])
    assert tuned.model.hidden == best.values["model.hidden"]
    assert "test_accuracy" in result.final.metrics  # read once, at the end
    assert "trial" in result.render() and "val_accuracy" in result.render()


def test_trials_never_read_the_test_split(recipe_file, trial_calls):
    search_module.search(str(recipe_file), SPACE, trials=2)
    *trials, final = trial_calls
    assert len(trials) == 2
    for report_test, metrics in trials:
        assert report_test is False
        assert not any(key.startswith("test_") for key in metrics)
    assert final[0] is True and "test_accuracy" in final[1]


def test_a_trial_equals_a_train_run_with_the_same_values(recipe_file, trial_calls):
    result = search_module.search(str(recipe_file), ["train.learning_rate=1e-2:1e-1:log"],
                                  trials=1)
    trial = result.trials[0]
    again = tftoolkit.train(str(recipe_file), {**trial.values, "train.run_dir": "again"})
    assert again.metrics["val_accuracy"] == pytest.approx(trial.objective, abs=1e-6)


def test_an_interrupted_search_resumes_without_redoing_finished_trials(recipe_file,
                                                                       monkeypatch):
    real = search_module.train
    trials_run = []

    def dies_on_the_third(recipe, overrides=None, **kw):
        if kw.get("report_test") is False:
            trials_run.append(overrides["train.learning_rate"])
            if len(trials_run) == 3:
                raise KeyboardInterrupt("killed during trial 3")
        return real(recipe, overrides, **kw)

    monkeypatch.setattr(search_module, "train", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        search_module.search(str(recipe_file), SPACE, trials=4)
    first_two = trials_run[:2]
    trials_run.clear()
    monkeypatch.setattr(search_module, "train", real)
    counted = []

    def counting(recipe, overrides=None, **kw):
        if kw.get("report_test") is False:
            counted.append(overrides["train.learning_rate"])
        return real(recipe, overrides, **kw)

    monkeypatch.setattr(search_module, "train", counting)
    result = search_module.search(str(recipe_file), SPACE, trials=4, resume=True)
    assert len(counted) == 2  # trials 3 and 4 only
    assert not set(counted) & set(first_two)
    assert len(result.trials) == 4


@pytest.mark.parametrize("space,message", [
    (["train.learnin_rate=1e-4:1e-2:log"], "did you mean 'train.learning_rate'"),
    (["regularize.dropout=0.0:2.0"], "out of range"),
    (["train.learning_rate=1e-2:1e-4"], "LOW < HIGH"),
    (["train.learning_rate=0:1e-2:log"], "LOW > 0 for log"),
    (["train.optimizer=adam|adagrad"], "adagrad"),
    (["train.epochs"], "KEY=SPEC"),
])
def test_a_bad_space_is_refused_before_anything_runs(recipe_file, monkeypatch, space,
                                                     message):
    monkeypatch.setattr(search_module, "train", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(RecipeError, match=message):
        search_module.search(str(recipe_file), space, trials=2)


def test_the_objective_must_be_a_validation_metric(recipe_file):
    with pytest.raises(RecipeError, match="validation figure"):
        search_module.search(str(recipe_file), SPACE, objective="test_accuracy")


def test_an_objective_the_task_does_not_log_is_refused_before_any_trial_trains(
        recipe_file, tmp_path):
    with pytest.raises(RecipeError, match=r"--objective='val_map' is not a figure a "
                                          r"classification run logs.*val_accuracy"):
        search_module.search(str(recipe_file), SPACE, objective="val_map", trials=2,
                             overrides={"train.run_dir": str(tmp_path / "runs")})
    # refused when the first trial had read its data, before it trained
    assert not list((tmp_path / "runs").rglob("history.csv"))


def test_the_default_objective_is_the_figure_the_task_is_judged_by(recipe_file,
                                                                  trial_calls):
    result = search_module.search(str(recipe_file), ["train.learning_rate=1e-3:1e-1:log"],
                                  trials=1)
    assert result.objective == "val_accuracy"


MULTILABEL_RECIPE_FILE = '''
from conftest import multilabel_recipe

RECIPE = multilabel_recipe({table!r}).with_overrides({{"train.verbose": 0}})
'''


def test_tune_maximises_val_map_on_a_multilabel_recipe(tmp_path, trial_calls, capsys):
    from conftest import make_multilabel_table
    from tftoolkit.cli import main

    recipe_file = tmp_path / "tags_recipe.py"
    recipe_file.write_text(MULTILABEL_RECIPE_FILE.format(
        table=str(make_multilabel_table(tmp_path / "tags", seed=1))))
    assert main(["tune", str(recipe_file), "--space", "train.learning_rate=1e-4:3e-2:log",
                 "--trials", "2", "--objective", "val_map"]) == 0
    printed = capsys.readouterr().out
    folder = next((tmp_path / "runs").glob("tags/search-*"))
    with open(folder / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    maps = [float(r["val_map"]) for r in rows]
    assert len(rows) == 2 and len(set(maps)) > 1
    assert [c[1]["val_map"] for c in trial_calls[:2]] == pytest.approx(maps)
    assert not any(report for report, _ in trial_calls[:2])     # trials never read test
    best = rows[maps.index(max(maps))]                           # direction: max
    tuned = tftoolkit.load_recipe(next(folder.glob("*.py")))
    assert tuned.train.learning_rate == pytest.approx(float(best["train.learning_rate"]))
    assert "best by val_map" in printed and "retrained: test_map" in printed
