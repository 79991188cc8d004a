"""Baselines beside every classification run, and the length of short stages."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from conftest import make_multilabel_table

import tftoolkit
from tftoolkit.data import DataInfo
from tftoolkit.recipe import (DataConfig, ExportConfig, ModelConfig, Recipe, TrainConfig,
                              load_recipe)
from tftoolkit.training import comparison as compare_module
from tftoolkit.training import runner
from tftoolkit.training.baselines import Baseline, shortfalls
from tftoolkit.training.checkpoint import SaveProgress
from tftoolkit.training.runner import TrainResult
from tftoolkit.tasks import SingleLabel


def _cnn(folder, **train) -> Recipe:
    return Recipe(name="small", data=DataConfig(source="folder", dir=str(folder),
                                                image_size=32),
                  model=ModelConfig(architecture="cnn", filters=[8]),
                  train=TrainConfig(**{"epochs": 2, "batch_size": 8, **train}),
                  export=ExportConfig(enabled=False))


def test_a_classification_run_reports_its_baselines_and_any_shortfall(image_folder, quiet):
    result = tftoolkit.train(_cnn(image_folder, epochs=1, learning_rate=1e-6), quiet)
    pixels = result.metrics["baseline_pixels_val_accuracy"]
    assert 0 <= pixels <= 1 and result.metrics["baseline_pixels_seconds"] > 0
    assert "baseline_probe_val_accuracy" not in result.metrics  # no pretrained backbone
    notes = "\n".join(result.notes)
    assert ("baselines, validation accuracy: logistic regression on 16x16 RGB pixels "
            f"{pixels:.4f}") in notes
    saved = json.loads((result.run_dir / "baselines.json").read_text())
    assert saved["baselines"][0]["val_score"] == pixels
    model = result.metrics["val_accuracy"]
    below = [n for n in result.notes if "BELOW" in n]
    assert below == saved["below_baselines"]
    assert len(below) == int(model < pixels)
    if below:
        assert f"({pixels - model:.4f} lower)" in below[0]


def test_a_shortfall_says_which_baseline_and_by_how_much():
    probe = Baseline("probe", "linear probe on the frozen x features", "map", 0.9, 0.1, 1.0,
                     10, 5, False)
    assert shortfalls([probe], {"val_map": 0.95}) == []
    assert shortfalls([probe], {"val_map": 0.85}) == [
        "the model validates BELOW the linear probe on the frozen x features baseline: "
        "map 0.8500 vs 0.9000 (0.0500 lower)"]


def test_a_regression_run_fits_no_baselines(quiet):
    x = np.linspace(-1, 1, 40, dtype="float32")[:, None]
    regression = Recipe(name="line", data=DataConfig(source="arrays", arrays={
        "train": (x, 2 * x), "val": (x, 2 * x)}), model=ModelConfig(architecture="linear"),
        train=TrainConfig(epochs=1, loss="mse"), export=ExportConfig(enabled=False))
    assert not any(k.startswith("baseline_")
                   for k in tftoolkit.train(regression, quiet).metrics)


def test_a_multi_label_head_is_solved_and_its_baselines_are_scored_by_map(tmp_path, quiet):
    table = make_multilabel_table(tmp_path / "tags")
    recipe = Recipe(name="tags", data=DataConfig(
        source="csv", csv=str(table), image_size=32, label_column="tags",
        label_delimiter="|", validation_fraction=0.25, test_fraction=0.25),
        model=ModelConfig(architecture="mobilenet_v2", weights="none",
                          mode="feature_extraction"),
        train=TrainConfig(epochs=1, batch_size=8), export=ExportConfig(enabled=False))
    result = tftoolkit.train(recipe, quiet)
    notes = "\n".join(result.notes)
    assert "head solved on" in notes and "val_map" in notes
    assert "baselines, validation map: logistic regression on 16x16 RGB pixels" in notes
    assert 0 < result.metrics["baseline_pixels_val_map"] <= 1


def test_compare_lists_the_baselines_below_the_modes(monkeypatch, tmp_path):
    def fake_train(recipe):
        run_dir = tmp_path / recipe.model.mode
        run_dir.mkdir()
        (run_dir / "baselines.json").write_text(json.dumps({"baselines": [
            {"name": "pixels", "description": "logistic regression on 16x16 grey pixels",
             "metric": "accuracy", "val_score": 0.61, "l2": 0.1, "seconds": 0.4,
             "train_examples": 8, "val_examples": 2, "sampled": False}]}))
        return TrainResult(recipe, None, {}, run_dir, DataInfo(
            SingleLabel(2), (8, 8, 3), ["a", "b"], 8, "two classes"),
                           {"val_accuracy": 0.7, "test_accuracy": 0.6}, 1.0)

    monkeypatch.setattr(compare_module, "train", fake_train)
    recipe = load_recipe("fashion_transfer", {"export.enabled": False})
    text = compare_module.compare(recipe, ["feature_extraction", "auto"]).render()
    assert text.splitlines()[-1].split() == [
        "baseline:", "pixels", "0.6100", "-", "0.4", "(logistic", "regression", "on",
        "16x16", "grey", "pixels)"]


def test_min_steps_makes_each_epoch_several_passes_and_plans_the_schedule_over_them(
        image_folder, quiet):
    result = tftoolkit.train(_cnn(image_folder, min_steps=12, schedule="cosine",
                                  baselines=False), quiet)
    n = result.info.counts["train"]
    steps_per_pass = -(-n // 8)
    passes = -(-12 // (2 * steps_per_pass))
    assert passes > 1
    assert (f"each epoch is {passes} passes over the training data "
            f"({passes * steps_per_pass} steps)") in " ".join(result.notes)
    optimizer = result.model.optimizer
    assert int(optimizer.iterations) == 2 * passes * steps_per_pass
    assert optimizer._learning_rate.decay_steps == 2 * passes * steps_per_pass
    assert len(result.history["loss"]) == 2
    # train.baselines=false: none fitted
    assert not any(k.startswith("baseline_") for k in result.metrics)
    assert not (result.run_dir / "baselines.json").exists()


def test_a_run_killed_inside_a_stretched_epoch_resumes_to_the_same_weights(
        image_folder, tmp_path, monkeypatch):
    recipe = _cnn(image_folder, epochs=3, min_steps=18, deterministic=True, baselines=False,
                  verbose=0)
    whole = tftoolkit.train(recipe, {"train.run_dir": str(tmp_path / "whole")})
    real_callbacks = runner._callbacks

    def killed_after_the_first_epoch(run, stage, inputs):
        callbacks = real_callbacks(run, stage, inputs)
        saver = next(c for c in callbacks if isinstance(c, SaveProgress))

        class Kill(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                saver._wait()  # the epoch's checkpoint is on disk
                raise KeyboardInterrupt("killed")

        return [*callbacks, Kill()]

    where = {"train.run_dir": str(tmp_path / "killed")}
    monkeypatch.setattr(runner, "_callbacks", killed_after_the_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        tftoolkit.train(recipe, where)
    monkeypatch.setattr(runner, "_callbacks", real_callbacks)
    resumed = tftoolkit.train(recipe, where)
    assert any("resuming" in note and "epoch 1" in note for note in resumed.notes)
    for a, b in zip(whole.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_time_budget_stops_a_stage_after_the_epoch_that_spends_it(image_folder, quiet):
    result = tftoolkit.train(_cnn(image_folder, epochs=4, time_budget=1e-6,
                                  baselines=False), quiet)
    assert len(result.history["loss"]) == 1
    assert "stage 1 (scratch): stopped after epoch 1, train.time_budget=1e-06 s spent" in (
        result.notes)


def test_the_baselines_are_a_validation_read_declared_with_the_others():
    from tftoolkit.unnoised import unnoised_reads

    recipe = tftoolkit.load_recipe("image_folder", {"data.dir": "unused"})
    reads = unnoised_reads(recipe, {"train", "val", "test"})
    assert {use: reads[use].split for use in ("baselines", "head_choice", "mode_choice")} == {
        "baselines": "val", "head_choice": "val", "mode_choice": "val"}
    quiet = recipe.with_overrides({"train.baselines": False, "model.mode": "two_stage"})
    assert "baselines" not in unnoised_reads(quiet, {"train", "val"})
    assert "mode_choice" not in unnoised_reads(quiet, {"train", "val"})
    assert not {"baselines", "head_choice"} & set(unnoised_reads(recipe, {"train"}))
