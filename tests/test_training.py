"""Training: stages, model selection, early stopping, losses, resume, saved files."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

import tftoolkit
from tftoolkit.data import DataInfo
from tftoolkit.tasks import Regression, SingleLabel
from tftoolkit.errors import RecipeError
from tftoolkit.recipe import (DataConfig, ExportConfig, ModelConfig, Recipe, RegularizeConfig,
                              TrainConfig)
from tftoolkit.training import comparison as compare_module
from tftoolkit.training import runner
from tftoolkit.training.runner import TrainResult
from tftoolkit.training.stages import plan_stages


def _tiny_two_stage(folder: Path, **train) -> Recipe:
    return Recipe(name="tiny_two_stage",
                  data=DataConfig(source="folder", dir=str(folder), image_size=33),
                  model=ModelConfig(architecture="mobilenet_v2", weights="none",
                                    mode="two_stage", unfreeze="block_16"),
                  train=TrainConfig(epochs=2, fine_tune_epochs=2, batch_size=8,
                                    learning_rate=0.01, deterministic=True, **train),
                  export=ExportConfig(enabled=False))


def test_compare_chooses_on_validation_never_on_test(monkeypatch, tmp_path):
    # fine_tune wins on test but loses on validation: the choice must ignore test.
    figures = {"feature_extraction": (0.80, 0.70), "fine_tune": (0.75, 0.95),
               "scratch": (0.50, 0.40)}
    exported = []

    info = DataInfo(SingleLabel(10), (97, 97, 3), list("abcdefghij"), 97, "t")

    def fake_train(recipe):
        val, test = figures[recipe.model.mode]
        assert recipe.export.enabled is False
        return TrainResult(recipe, None, {}, tmp_path / recipe.model.mode, info,
                           {"val_accuracy": val, "test_accuracy": test}, 1.0)

    monkeypatch.setattr(compare_module, "train", fake_train)
    monkeypatch.setattr(compare_module, "export_run", lambda run_dir: exported.append(run_dir)
                        or tmp_path / "exported")
    recipe = tftoolkit.load_recipe("fashion_transfer")
    table = compare_module.compare(recipe, list(figures))
    assert table.metric_name == "val_accuracy"
    assert table.best.mode == "feature_extraction"
    assert exported == [tmp_path / "feature_extraction"]
    text = table.render()
    assert "val_accuracy" in text and "test_accuracy" in text
    best_line = next(line for line in text.splitlines() if "best" in line)
    assert best_line.startswith("feature_extraction") and "best by val_accuracy" in best_line


def test_compare_refuses_a_mode_the_architecture_lacks_before_training(monkeypatch):
    monkeypatch.setattr(compare_module, "train", lambda r: pytest.fail("trained"))
    with pytest.raises(RecipeError, match="needs a pretrained backbone"):
        compare_module.compare(tftoolkit.load_recipe("mlp"), ["scratch", "fine_tune"])


def test_plan_stages_scales_rates_and_numbers_epochs_across_stages():
    recipe = tftoolkit.load_recipe("fashion_transfer", {
        "model.mode": "two_stage", "train.epochs": 2, "train.fine_tune_epochs": 3,
        "train.learning_rate": 0.01, "train.fine_tune_learning_rate": 0.001})
    first, second = plan_stages(recipe, lr_scale=2)
    assert (first.mode, first.first_epoch, first.end, first.learning_rate) == (
        "feature_extraction", 0, 2, 0.02)
    assert (second.mode, second.first_epoch, second.end, second.learning_rate) == (
        "fine_tune", 2, 5, 0.002)


def test_a_run_killed_at_the_stage_boundary_resumes_into_fine_tuning(image_folder, tmp_path,
                                                                     monkeypatch):
    recipe = _tiny_two_stage(image_folder)
    whole = tftoolkit.train(recipe, {"train.run_dir": str(tmp_path / "whole"),
                                     "train.verbose": 0})

    real_run_stage = runner._run_stage

    def dies_in_fine_tuning(run, stage, last):
        if stage.index == 1:
            raise KeyboardInterrupt("killed at the stage boundary")
        real_run_stage(run, stage, last)

    overrides = {"train.run_dir": str(tmp_path / "killed"), "train.verbose": 0}
    monkeypatch.setattr(runner, "_run_stage", dies_in_fine_tuning)
    with pytest.raises(KeyboardInterrupt):
        tftoolkit.train(recipe, overrides)
    monkeypatch.setattr(runner, "_run_stage", real_run_stage)
    resumed = tftoolkit.train(recipe, overrides)
    assert any("resuming" in note and "stage 2" in note for note in resumed.notes)
    assert not any("feature cache" in note for note in resumed.notes)  # stage 1 not rerun
    assert len(resumed.history["loss"]) == 2  # the fine-tuning epochs (stage 1 is solved)
    for a, b in zip(whole.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _arrays_recipe(arrays: dict, **train) -> Recipe:
    return Recipe(name="arrays", data=DataConfig(source="arrays", arrays=arrays),
                  model=ModelConfig(architecture="linear"),
                  train=TrainConfig(batch_size=16, optimizer="sgd", verbose=0, **train),
                  export=ExportConfig(enabled=False))


def test_early_stopping_ends_when_validation_worsens_and_keeps_the_best_epoch(quiet):
    # Validation targets run the other way: the better the fit, the worse val_loss.
    x = np.linspace(-1, 1, 64, dtype="float32")[:, None]
    recipe = _arrays_recipe({"train": (x, 2 * x), "val": (x, -2 * x)}, epochs=20,
                            learning_rate=0.05, early_stopping=1, loss="mse")
    result = tftoolkit.train(recipe, quiet)
    assert len(result.history["val_loss"]) < 20
    assert result.metrics["val_loss"] == pytest.approx(min(result.history["val_loss"]),
                                                       rel=1e-5)


def test_output_to_a_file_gets_one_line_per_epoch_unless_verbose_says_otherwise(tmp_path,
                                                                               capsys):
    x = np.linspace(-1, 1, 256, dtype="float32")[:, None]
    recipe = dataclasses.replace(_arrays_recipe({"train": (x, 2 * x), "val": (x, 2 * x)},
                                                epochs=3, loss="mse"),
                                 train=TrainConfig(batch_size=4, optimizer="sgd", epochs=3,
                                                   loss="mse"))
    assert recipe.train.verbose == "auto"
    where = {"train.run_dir": str(tmp_path / "runs"), "train.resume": False}
    tftoolkit.train(recipe, where)  # pytest's captured stdout is not a terminal
    out = capsys.readouterr().out
    assert "\r" not in out and "\b" not in out
    assert out.count(" - loss:") == 3  # one line per epoch of 58 steps
    tftoolkit.train(recipe, {**where, "train.verbose": 1})
    assert "\r" in capsys.readouterr().out  # the bar, as asked


def test_verbose_accepts_levels_and_auto_only():
    with pytest.raises(RecipeError, match="train.verbose='loud'"):
        tftoolkit.load_recipe("mlp", {"train.verbose": "loud"})
    assert tftoolkit.load_recipe("mlp", {"train.verbose": 2}).train.verbose == 2


def test_label_smoothing_reaches_the_loss(quiet):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype("float32")
    y = (np.arange(40) % 4).astype("int64")
    recipe = dataclasses.replace(
        _arrays_recipe({"train": (x, y), "val": (x, y)}, epochs=1, learning_rate=0.0),
        regularize=RegularizeConfig(label_smoothing=0.2))
    result = tftoolkit.train(recipe, quiet)
    probabilities = result.model.predict(x, verbose=0)
    smoothed = np.eye(4)[y] * 0.8 + 0.2 / 4
    expected = -np.mean(np.sum(smoothed * np.log(probabilities), axis=1))
    assert result.metrics["val_loss"] == pytest.approx(expected, rel=1e-4)


def test_label_smoothing_with_a_sparse_loss_is_refused_before_anything_runs():
    with pytest.raises(RecipeError, match="label_smoothing=0.1 needs one-hot"):
        tftoolkit.load_recipe("fashion_transfer", {
            "regularize.label_smoothing": 0.1,
            "train.loss": "sparse_categorical_crossentropy"})


def test_batchnorm_recalibration_sets_the_mean_of_the_batch_statistics():
    from tftoolkit.training.batchnorm import recalibrate_batchnorm
    import tensorflow as tf

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.99)(inputs))
    batches = [np.random.default_rng(i).normal(i, 1 + i, (8, 4)).astype("float32")
               for i in range(3)]
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.concatenate(batches), np.zeros(24))).batch(8)
    layer = model.layers[-1]
    assert recalibrate_batchnorm(model, dataset) == 3
    np.testing.assert_allclose(layer.moving_mean.numpy(),
                               np.mean([b.mean(axis=0) for b in batches], axis=0), rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(),
                               np.mean([b.var(axis=0) for b in batches], axis=0), rtol=1e-4)
    assert layer.momentum == 0.99  # restored


LOAD_EVERY_KERAS_FILE = """
import sys
import keras
import tftoolkit
for path in sys.argv[1:]:
    model = keras.models.load_model(path)
    print(path, model.name)
"""


def test_every_keras_file_the_toolkit_writes_loads_after_import_tftoolkit(image_folder, quiet):
    recipe = Recipe(name="files", data=DataConfig(source="folder", dir=str(image_folder),
                                                  image_size=33),
                    model=ModelConfig(architecture="mobilenet_v2", weights="none",
                                      mode="feature_extraction"),
                    augment=tftoolkit.recipe.AugmentConfig(enabled=True, fused=True,
                                                           rotation=0.1, crop=0.1),
                    train=TrainConfig(epochs=1, batch_size=8))
    result = tftoolkit.train(recipe, quiet)
    files = [result.run_dir / "model.keras", result.export_dir / "model.keras"]
    graph = keras.Sequential([keras.Input((33, 33, 3)),
                              tftoolkit.layers.RandomResizedCrop(33), result.model])
    graph.save(Path(quiet["train.run_dir"]) / "graph.keras")
    files.append(Path(quiet["train.run_dir"]) / "graph.keras")
    proc = subprocess.run([sys.executable, "-c", LOAD_EVERY_KERAS_FILE, *map(str, files)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(proc.stdout.strip().splitlines()) == 3


def _class_sorted_folder(root, per_class=20):
    from conftest import make_image_folder

    return make_image_folder(root, classes=("a", "b", "c", "d"), per_class=per_class, size=16)


def test_batchnorm_is_recalibrated_on_batches_that_mix_classes(tmp_path, quiet, monkeypatch):
    from tftoolkit.training import callbacks

    seen: list[set[int]] = []
    real = runner.recalibrate_batchnorm

    def recording(model, batches, *args, **kwargs):
        seen.extend(set(np.asarray(y).argmax(1).tolist()) for _, y in batches)
        return real(model, batches, *args, **kwargs)

    monkeypatch.setattr(runner, "recalibrate_batchnorm", recording)
    monkeypatch.setattr(callbacks, "recalibrate_batchnorm", recording)
    folder = _class_sorted_folder(tmp_path / "sorted")  # read class by class
    recipe = Recipe(name="sorted", data=DataConfig(source="folder", dir=str(folder),
                                                   image_size=16),
                    model=ModelConfig(architecture="cnn", filters=[4]),
                    train=TrainConfig(epochs=1, batch_size=8),
                    export=ExportConfig(enabled=False))
    tftoolkit.train(recipe, quiet)
    assert len(seen) >= 2 * 6  # before validation and after training, all batches
    assert min(len(classes) for classes in seen) >= 3, seen


class _NanAfter(keras.layers.Layer):
    """Identity for ``steps`` training steps, NaN after: a run that diverges mid-way."""

    def __init__(self, steps: int, **kwargs):
        super().__init__(**kwargs)
        self.steps = steps

    def build(self, input_shape):
        self.count = self.add_weight(shape=(), initializer="zeros", trainable=False)

    def call(self, x, training=False):
        import tensorflow as tf

        if training:
            self.count.assign_add(1.0)
        return x + tf.where(self.count > self.steps, float("nan"), 0.0)


def _diverging_mlp(steps: int):
    def build(recipe, info):
        inputs = keras.Input(info.input_shape)
        hidden = _NanAfter(steps)(keras.layers.Dense(4, activation="tanh")(inputs))
        return keras.Model(inputs, keras.layers.Dense(info.num_outputs)(hidden))
    return build


def test_a_nan_loss_mid_run_stops_at_once_keeps_the_last_finite_checkpoint(quiet):
    from dataclasses import replace

    from tftoolkit.errors import TrainingDiverged
    from tftoolkit.recipe import load_recipe
    from tftoolkit.rundir import RunDir

    recipe = load_recipe("mlp", {**quiet, "train.epochs": 3, "train.steps_per_epoch": 4})
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 2, step 3 of stage 1 "
                                               r"\(scratch\).*train\.learning_rate=0\.5.*"
                                               r"checkpoint of epoch 1"):
        tftoolkit.train(replace(recipe, model_fn=_diverging_mlp(6)))
    (path,) = (Path(quiet["train.run_dir"]) / "mlp").iterdir()
    run = RunDir(path)
    for _ in range(300):  # epoch 1's checkpoint may still be on its way to the disk
        if run.progress() is not None:
            break
        time.sleep(0.1)
    assert not run.finished and not Path(quiet["export.dir"]).exists()
    assert run.progress().next_epoch == 1
    assert sorted(p.name for p in (path / "checkpoints").glob("state-*")) == ["state-0-1.npz"]
    with np.load(path / run.progress().state) as state:
        assert all(np.isfinite(state[k]).all() for k in state.files if k.startswith("arr_"))
    assert len(runner.read_history(path / "history.csv")["loss"]) == 1  # no epoch 2 logged


@pytest.mark.parametrize("loop", ["keras_fit", "dp_sgd"])
def test_an_infinite_loss_ends_every_training_loop_with_one_clear_error(quiet, loop):
    from tftoolkit.errors import TrainingDiverged

    overrides = {**quiet, "train.learning_rate": 1e38, "train.epochs": 3}
    if loop == "dp_sgd":
        overrides.update({"privacy.enabled": True, "privacy.noise_multiplier": 1.0,
                          "train.optimizer": "sgd", "train.batch_size": 64,
                          "train.steps_per_epoch": 0})
    with pytest.raises(TrainingDiverged, match=r"at epoch 1, step \d+ .*learning rate too "
                                               r"high \(train\.learning_rate=1e\+38\)"):
        tftoolkit.train("mlp", overrides)
    assert not list(Path(quiet["train.run_dir"]).rglob("metrics.json"))
    assert not Path(quiet["export.dir"]).exists()


def test_the_multi_worker_loop_stops_at_the_first_nan_step():
    import tensorflow as tf

    from tftoolkit.errors import TrainingDiverged
    from tftoolkit.training.callbacks import StopOnNonFiniteLoss
    from tftoolkit.training.distributed import fit_distributed

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4), _NanAfter(2),
                              keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), keras.losses.MeanSquaredError())
    x = np.random.default_rng(0).normal(size=(64, 2)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(8).repeat()
    with pytest.raises(TrainingDiverged, match="loss is nan at epoch 1, step 3"):
        fit_distributed(model, data, strategy=tf.distribute.get_strategy(),
                        task=Regression(), epochs=2,
                        initial_epoch=0, steps_per_epoch=8, verbose=0,
                        callbacks=[StopOnNonFiniteLoss("stage 1 (scratch)",
                                                       "train.learning_rate", 0.01, "run")])
    assert model.layers[1].count.numpy() == 3  # no step after the first NaN


def test_the_run_to_resume_is_locked_before_its_progress_is_read(tmp_path, monkeypatch):
    """Another process may finish the run between finding it and locking it: its
    progress is read only once the lock is held, and a run finished meanwhile is not
    resumed (a new run starts)."""
    import tensorflow as tf

    from tftoolkit.recipe import load_recipe
    from tftoolkit.rundir import Progress, RunDir

    x = np.linspace(-1, 1, 16, dtype="float32")[:, None]
    recipe = load_recipe(_arrays_recipe({"train": (x, 2 * x)}, loss="mse"),
                         {"train.run_dir": str(tmp_path / "runs")})
    other = RunDir.create(recipe.train.run_dir, recipe.name)
    other.write_json(RunDir.RECIPE, recipe.to_dict())
    other.write_progress(Progress(0, 1))
    assert RunDir.find_resumable(recipe.train.run_dir, recipe).path == other.path
    events = []
    real_lock, real_progress = RunDir.lock, runner.readable_progress

    def lock(run):
        if run.path == other.path:  # the other writer finishes just before this lock
            other.write_json(RunDir.METRICS, {"loss": 0.0})
        events.append(("lock", run.path))
        real_lock(run)

    def progress(run):
        events.append(("read", run.path))
        return real_progress(run)

    monkeypatch.setattr(RunDir, "lock", lock)
    monkeypatch.setattr(runner, "readable_progress", progress)
    opened = runner._open_run(recipe, tf.distribute.get_strategy())
    try:
        assert events[0] == ("lock", other.path)
        assert ("read", other.path) not in events
        assert opened.resume_from is None and opened.progress is None
        assert opened.run.path != other.path and opened.run.path.parent == other.path.parent
        assert any("finished while this run started" in note for note in opened.notes)
    finally:
        opened.run.release()


def test_a_missing_package_of_an_export_format_stops_the_run_before_training(
        quiet, monkeypatch, tmp_path):
    import importlib.util

    from tftoolkit.errors import ExportError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    monkeypatch.setattr(runner.distributed, "fit", lambda *a, **k: pytest.fail("trained"))
    x = np.linspace(-1, 1, 32, dtype="float32")[:, None]
    recipe = dataclasses.replace(_arrays_recipe({"train": (x, 2 * x)}, epochs=1),
                                 export=ExportConfig(formats=["onnx"]))
    with pytest.raises(ExportError, match=r"export\.formats has 'onnx', which needs "
                                          r"onnxruntime: pip install 'tftoolkit\[onnx\]'"):
        tftoolkit.train(recipe, quiet)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("history, panels", [
    ({"loss": [1.0, 0.5], "val_loss": [1.1, 0.6], "accuracy": [0.5, 0.7],
      "val_accuracy": [0.4, 0.6], "val_ema_loss": [1.2, 0.7],
      "val_ema_accuracy": [0.3, 0.6]}, 2),                  # the average on its figure's
    ({"loss": [1.0], "val_loss": [1.1], "val_map": [0.2], "val_map_50": [0.4]}, 3),
])
def test_the_curves_have_a_panel_per_figure_whether_measured_on_training_or_not(
        tmp_path, history, panels):
    from PIL import Image

    from tftoolkit.training.plots import plot_history

    with Image.open(plot_history(history, tmp_path / "curves.png")) as curves:
        assert curves.width == panels * 500  # 5 inches at 100 dpi a panel
