"""model.mode=auto: candidates tried in order, chosen on validation, within the budget."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

import tftoolkit
from tftoolkit.data import DataInfo
from tftoolkit.errors import RecipeError, TrainingDiverged
from tftoolkit.recipe import Recipe
from tftoolkit.tasks import SingleLabel
from tftoolkit.training import auto
from tftoolkit.training.runner import TrainResult


CLASSES = DataInfo(SingleLabel(2), (8, 8, 3), ["a", "b"], 8, "two classes")


def _candidate(recipe: Recipe) -> str:
    return "cnn" if recipe.model.architecture == "cnn" else recipe.model.mode


def _fake_train(tmp_path, figures: dict, baselines: dict | None = None, seconds: float = 0.0,
                failing: str = ""):
    """A stand-in for the runner's train: each candidate's (val, test) figures; the
    first run writes ``baselines`` (name -> validation accuracy) as a run does."""
    calls = []

    def train_one(recipe, *, report_test, judged_by, deadline):
        name = _candidate(recipe)
        calls.append((name, recipe))
        if name == failing:
            raise TrainingDiverged("training diverged: the training loss is nan; lower it")
        time.sleep(seconds)
        run_dir = tmp_path / name
        run_dir.mkdir()
        if baselines and recipe.train.baselines:
            (run_dir / "baselines.json").write_text(json.dumps({"baselines": [
                {"name": key, "description": key, "metric": "accuracy",
                 "val_score": value, "l2": 0.1, "seconds": 0.5, "train_examples": 10,
                 "val_examples": 4, "sampled": False} for key, value in baselines.items()]}))
        val, test = figures[name]
        return TrainResult(recipe, None, {}, run_dir, CLASSES,
                           {"val_accuracy": val, "test_accuracy": test}, 1.0,
                           notes=[f"{name} trained"])

    return train_one, calls


def _recipe(**train) -> Recipe:
    recipe = tftoolkit.load_recipe("image_folder", {"data.dir": "unused",
                                                    "export.enabled": False})
    return dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, **train))


def test_auto_chooses_on_validation_never_on_test(tmp_path):
    train_one, calls = _fake_train(
        tmp_path, {"feature_extraction": (0.80, 0.95), "two_stage": (0.85, 0.60)},
        baselines={"pixels": 0.50, "probe": 0.80})
    result = auto.choose(_recipe(), train_one)
    assert [name for name, _ in calls] == ["feature_extraction", "two_stage"]
    assert result.run_dir == tmp_path / "two_stage"
    assert result.notes[0].startswith("model.mode=auto tried, by val_accuracy: linear probe "
                                      "(feature_extraction) 0.8000 in")
    assert "chose probe + fine-tuning (two_stage): the best val_accuracy (0.8500)" in (
        result.notes[1])
    assert "look like photos to the backbone" in result.notes[0]
    choice = json.loads((tmp_path / "two_stage" / "auto.json").read_text())
    assert choice["chosen"] == "probe + fine-tuning"
    assert [c["validation"] for c in choice["candidates"]] == [0.80, 0.85, None]
    # the first run's baselines travel with the winner; the later runs fit none
    assert result.metrics["baseline_probe_val_accuracy"] == 0.80
    assert json.loads((tmp_path / "two_stage" / "metrics.json").read_text())[
        "baseline_pixels_val_accuracy"] == 0.50
    assert calls[1][1].train.baselines is False
    # fine-tuning keeps its best epoch and stage by the figure that chooses
    assert calls[1][1].train.select_best == "val_accuracy"
    assert all(recipe.export.enabled is False for _, recipe in calls)


def test_a_tie_goes_to_the_earlier_simpler_mode(tmp_path):
    train_one, _ = _fake_train(
        tmp_path, {"feature_extraction": (0.80, 0.70), "two_stage": (0.80, 0.99)})
    assert auto.choose(_recipe(), train_one).run_dir == tmp_path / "feature_extraction"


def test_a_small_cnn_is_tried_when_pixels_validate_like_the_probe(tmp_path):
    train_one, calls = _fake_train(
        tmp_path, {"feature_extraction": (0.70, 0.7), "two_stage": (0.75, 0.7),
                   "cnn": (0.90, 0.5)}, baselines={"pixels": 0.72, "probe": 0.70})
    result = auto.choose(_recipe(), train_one)
    name, scratch = calls[2]
    assert name == "cnn" and scratch.model.mode == "scratch"
    assert scratch.model.filters == auto.SCRATCH_FILTERS
    assert scratch.data.image_size == auto.SCRATCH_SIZE
    assert result.run_dir == tmp_path / "cnn"
    assert any("a small CNN from scratch was tried: the pixels baseline validates at least "
               "as well as the linear probe (0.7200 vs 0.7000)" in n for n in result.notes)
    # the winner says it validates below no baseline: 0.90 is above both
    assert not any("BELOW" in n for n in result.notes)


def test_no_candidate_starts_once_the_budget_is_spent(tmp_path):
    train_one, calls = _fake_train(
        tmp_path, {"feature_extraction": (0.80, 0.70), "two_stage": (0.99, 0.99)},
        seconds=0.3)
    result = auto.choose(_recipe(time_budget=0.1), train_one)
    assert [name for name, _ in calls] == ["feature_extraction"]
    assert result.run_dir == tmp_path / "feature_extraction"
    assert "probe + fine-tuning (two_stage) not trained: train.time_budget=0.1 s spent" in (
        result.notes[0])


def test_a_diverged_candidate_is_reported_and_passed_over(tmp_path):
    train_one, _ = _fake_train(tmp_path, {"feature_extraction": (0.80, 0.70)},
                               failing="two_stage")
    result = auto.choose(_recipe(), train_one)
    assert result.run_dir == tmp_path / "feature_extraction"
    assert "not trained: diverged (training diverged: the training loss is nan)" in (
        result.notes[0])


def test_without_pretrained_weights_there_is_nothing_to_choose():
    for overrides in ({"model.architecture": "cnn"}, {"model.weights": "none"}):
        recipe = tftoolkit.load_recipe("image_folder", overrides)
        assert recipe.model.mode == "auto"
        assert auto.without_choice(recipe).model.mode == "scratch"
    assert auto.without_choice(tftoolkit.load_recipe("image_folder")) is None
    assert auto.without_choice(tftoolkit.load_recipe("mlp")).model.mode == "scratch"
    fixed = tftoolkit.load_recipe("image_folder", {"model.mode": "fine_tune"})
    assert auto.without_choice(fixed) is fixed


def test_auto_without_a_validation_split_is_refused_before_training(tmp_path):
    train_one, calls = _fake_train(tmp_path, {})
    with pytest.raises(RecipeError, match="model.mode=auto chooses the mode on the "
                                          "validation split"):
        auto.choose(tftoolkit.load_recipe(_recipe(), {"data.validation_fraction": 0.0}),
                    train_one)
    assert calls == []


def test_the_default_image_folder_run_chooses_exports_and_reports(image_folder, quiet,
                                                                  imported_mobilenet):
    result = tftoolkit.train("image_folder", {
        **quiet, "data.dir": str(image_folder), "data.image_size": 32,
        "train.epochs": 1, "train.fine_tune_epochs": 1, "train.min_steps": 4,
        "train.batch_size": 8})
    notes = "\n".join(result.notes)
    assert "model.mode=auto tried, by val_accuracy: linear probe (feature_extraction)" in notes
    assert "probe + fine-tuning (two_stage)" in notes and "chose " in notes
    assert "baselines, validation accuracy: logistic regression on 16x16 RGB pixels" in notes
    card = json.loads((result.export_dir / "model_card.json").read_text())
    assert card["mode_choice"]["chosen"] in ("linear probe", "probe + fine-tuning")
    assert [b["name"] for b in card["baselines"]["baselines"]] == ["pixels", "probe"]
    assert "baseline_probe_val_accuracy" in card["metrics"]


def test_lr_find_asks_for_a_mode_when_auto_would_choose_one():
    with pytest.raises(RecipeError, match="lr-find sweeps the first stage of one mode.*"
                                          "set model.mode"):
        tftoolkit.lr_find("image_folder")


def test_a_nan_validation_figure_never_wins(tmp_path):
    train_one, _ = _fake_train(
        tmp_path, {"feature_extraction": (float("nan"), 0.9), "two_stage": (0.5, 0.4)},
        baselines={"pixels": 0.2, "probe": 0.5})
    assert auto.choose(_recipe(), train_one).run_dir == tmp_path / "two_stage"


def test_the_cnn_skip_names_why_the_baselines_were_not_compared(tmp_path):
    train_one, calls = _fake_train(
        tmp_path, {"feature_extraction": (0.8, 0.7), "two_stage": (0.7, 0.6)})
    result = auto.choose(_recipe(baselines=False), train_one)
    assert [name for name, _ in calls] == ["feature_extraction", "two_stage"]
    skipped = json.loads((result.run_dir / "auto.json").read_text())["candidates"][2]
    assert skipped["skipped"] == ("no pixel and probe baselines to compare "
                                  "(train.baselines=false)")
