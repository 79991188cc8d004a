"""Training quality: schedules, weight decay, layer decay, EMA, best epoch, LR finder."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import tftoolkit
from tftoolkit.data import DataInfo
from tftoolkit.errors import RecipeError
from tftoolkit.recipe import DataConfig, ExportConfig, ModelConfig, Recipe, TrainConfig
from tftoolkit.training import runner
from tftoolkit.training.lr_find import LrFindResult, valley
from tftoolkit.training.optim import (block_learning_rate_multipliers, compile_model,
                                      learning_rate_schedule)
from tftoolkit.tasks import SingleLabel

CLASSES = DataInfo(SingleLabel(2), (3,), ["a", "b"], None, "test")


def _rates(schedule, steps):
    return [float(schedule(s)) if callable(schedule) else schedule for s in steps]


def test_cosine_warms_up_linearly_then_decays_to_zero():
    cfg = TrainConfig(schedule="cosine", warmup_epochs=0.5)
    schedule = learning_rate_schedule(cfg, peak=0.1, total_steps=100, steps_per_epoch=20)
    at = dict(zip([0, 5, 10, 55, 100], _rates(schedule, [0, 5, 10, 55, 100])))
    assert at[0] == 0.0 and at[5] == pytest.approx(0.05) and at[10] == pytest.approx(0.1)
    assert at[55] == pytest.approx(0.05, rel=1e-5)  # half-way through the decay
    assert at[100] == pytest.approx(0.0, abs=1e-7)


def test_constant_with_warmup_ramps_then_holds():
    cfg = TrainConfig(schedule="constant", warmup_epochs=1.0)
    schedule = learning_rate_schedule(cfg, peak=0.1, total_steps=100, steps_per_epoch=10)
    assert _rates(schedule, [0, 5, 10, 60, 100]) == pytest.approx([0, 0.05, 0.1, 0.1, 0.1])
    assert learning_rate_schedule(TrainConfig(), 0.1, 100, 10) == 0.1  # plain constant


def test_one_cycle_starts_low_peaks_after_warmup_and_ends_near_zero():
    cfg = TrainConfig(schedule="one_cycle", warmup_epochs=2.5)
    schedule = learning_rate_schedule(cfg, peak=0.1, total_steps=100, steps_per_epoch=10)
    start, peak, end = _rates(schedule, [0, 25, 100])
    assert start == pytest.approx(0.1 / 25) and peak == pytest.approx(0.1)
    assert end == pytest.approx(0.1 / 25e4, rel=1e-3)
    rates = _rates(schedule, range(101))
    assert int(np.argmax(rates)) == 25


def _compiled(recipe_train: dict, model: keras.Model, info=CLASSES, **kw):
    recipe = Recipe(name="t", model=ModelConfig(architecture="mlp"),
                    train=TrainConfig(**recipe_train))
    compile_model(model, recipe, info, **kw)
    model.optimizer.build(model.trainable_variables)
    return model.optimizer


def test_weight_decay_spares_batchnorm_and_biases():
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4)(inputs)
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    for v in model.trainable_variables:  # non-zero everywhere, so decay would show
        v.assign(np.full(v.shape, 0.5, "float32"))
    optimizer = _compiled({"optimizer": "adamw", "weight_decay": 0.5}, model,
                          learning_rate=0.1)
    before = [v.numpy().copy() for v in model.trainable_variables]
    # Zero gradients: AdamW moves nothing but what decays.
    optimizer.apply_gradients([(np.zeros(v.shape, "float32"), v)
                               for v in model.trainable_variables])
    for v, old in zip(model.trainable_variables, before):
        if len(v.shape) >= 2:
            np.testing.assert_allclose(v.numpy(), old * (1 - 0.1 * 0.5), rtol=1e-6,
                                       err_msg=v.path)
        else:
            np.testing.assert_array_equal(v.numpy(), old, err_msg=v.path)


def _tiny_backbone_model() -> keras.Model:
    recipe = Recipe(name="t", data=DataConfig(source="arrays", image_size=33),
                    model=ModelConfig(architecture="mobilenet_v2", weights="none",
                                      mode="fine_tune", unfreeze="block_15"))
    info = DataInfo(SingleLabel(2), (33, 33, 3), ["a", "b"], 33, "test")
    return tftoolkit.models.build_model(recipe, info)


def test_layer_decay_gives_lower_blocks_proportionally_smaller_steps():
    model = _tiny_backbone_model()
    multipliers = {v.path: f for v, f in block_learning_rate_multipliers(model, 0.5)}
    assert multipliers["Conv_1/kernel"] == 0.5
    assert multipliers["block_16_project/kernel"] == 0.25
    assert multipliers["block_15_expand/kernel"] == 0.125
    assert len(multipliers) == len(model.get_layer("backbone").trainable_variables)
    optimizer = _compiled({"optimizer": "sgd", "layer_decay": 0.5}, model,
                          learning_rate=0.1, layer_decay_model=model)
    variables = model.trainable_variables
    before = {v.path: v.numpy().copy() for v in variables}
    optimizer.apply_gradients([(np.ones(v.shape, "float32"), v) for v in variables])
    step = {v.path: float(np.mean(before[v.path] - v.numpy())) for v in variables}
    assert step["predictions/kernel"] == pytest.approx(0.1)  # the head: the full rate
    assert step["Conv_1/kernel"] == pytest.approx(0.05)
    assert step["block_16_expand/kernel"] == pytest.approx(0.025)
    assert step["block_15_depthwise/kernel"] == pytest.approx(0.0125)


def test_layer_decay_counts_a_mobilenet_v3_block_once_whatever_its_layers():
    """An expanded_conv_N block (expand, depthwise, squeeze-excite, project and their
    BatchNorms) takes one rate, and the block below it the next."""
    recipe = Recipe(name="t", data=DataConfig(source="arrays", image_size=33),
                    model=ModelConfig(architecture="mobilenet_v3_small", weights="none",
                                      mode="fine_tune", unfreeze="expanded_conv_9"))
    info = DataInfo(SingleLabel(2), (33, 33, 3), ["a", "b"], 33, "test")
    model = tftoolkit.models.build_model(recipe, info)
    multipliers = {v.path.split("/")[0]: f
                   for v, f in block_learning_rate_multipliers(model, 0.5)}
    assert multipliers["conv_1"] == 0.5
    assert {multipliers[f"expanded_conv_10_{part}"] for part in (
        "expand", "depthwise", "squeeze_excite_conv", "squeeze_excite_conv_1",
        "project")} == {0.25}
    assert multipliers["expanded_conv_9_expand"] == multipliers[
        "expanded_conv_9_project"] == 0.125
    assert set(multipliers.values()) == {0.5, 0.25, 0.125}


def test_layer_decay_scales_the_decoupled_weight_decay_with_the_rate():
    model = _tiny_backbone_model()
    for v in model.trainable_variables:
        v.assign(np.full(v.shape, 0.5, "float32"))
    optimizer = _compiled({"optimizer": "adamw", "weight_decay": 0.5, "layer_decay": 0.5},
                          model, learning_rate=0.1, layer_decay_model=model)
    # Zero gradients: AdamW moves nothing but what decays, at lr * layer factor * wd.
    optimizer.apply_gradients([(np.zeros(v.shape, "float32"), v)
                               for v in model.trainable_variables])
    kept = {v.path: float(np.mean(v.numpy())) / 0.5 for v in model.trainable_variables}
    assert kept["predictions/kernel"] == pytest.approx(1 - 0.1 * 0.5)
    assert kept["Conv_1/kernel"] == pytest.approx(1 - 0.05 * 0.5)
    assert kept["block_16_expand/kernel"] == pytest.approx(1 - 0.025 * 0.5)
    assert kept["block_15_depthwise/kernel"] == pytest.approx(1 - 0.0125 * 0.5)
    assert kept["predictions/bias"] == 1.0  # 1-D weights never decay


def test_ema_weights_equal_the_closed_form_after_k_steps():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    model.layers[0].kernel.assign([[1.0]])
    optimizer = _compiled({"optimizer": "sgd", "ema": 0.8}, model, learning_rate=0.1)
    gradient = np.array([[2.0]], "float32")
    for _ in range(5):
        optimizer.apply_gradients([(gradient, model.layers[0].kernel)])
    weights = [1.0 - 0.2 * k for k in range(1, 6)]  # w_k = 1 - k * lr * g
    average = weights[0]  # Keras starts the average at the first step's weights
    for w in weights[1:]:
        average = 0.8 * average + 0.2 * w
    assert model.layers[0].kernel.numpy().item() == pytest.approx(weights[-1], abs=1e-6)
    ema = optimizer._model_variables_moving_average[0].numpy()
    assert ema.item() == pytest.approx(average, rel=1e-6)


def _diverging_val_recipe(**train) -> Recipe:
    # Validation targets run the other way: the better the fit, the worse val_loss.
    x = np.linspace(-1, 1, 64, dtype="float32")[:, None]
    options = {"batch_size": 16, "optimizer": "sgd", "learning_rate": 0.05, "epochs": 4,
               "loss": "mse", "verbose": 0, **train}
    return Recipe(name="arrays", data=DataConfig(source="arrays", arrays={
        "train": (x, 2 * x), "val": (x, -2 * x)}), model=ModelConfig(architecture="linear"),
        train=TrainConfig(**options), export=ExportConfig(enabled=False))


def test_select_best_restores_the_best_epochs_weights_and_says_which(quiet):
    result = tftoolkit.train(_diverging_val_recipe(select_best="val_loss"), quiet)
    history = result.history["val_loss"]
    assert len(history) == 4 and int(np.argmin(history)) == 0
    assert result.metrics["val_loss"] == pytest.approx(min(history), rel=1e-5)
    assert "stage 1 (scratch): kept epoch 1 (the weights), val_loss" in " ".join(result.notes)
    last = tftoolkit.train(_diverging_val_recipe(), quiet)
    assert last.metrics["val_loss"] == pytest.approx(history[-1], rel=1e-5)


def test_select_best_never_reads_a_test_or_training_metric():
    for bad in ("test_accuracy", "accuracy", "loss"):
        with pytest.raises(RecipeError, match="validation metric"):
            tftoolkit.load_recipe("mlp", {"train.select_best": bad})


@pytest.mark.parametrize("select_best", ["val_loss", ""])
def test_early_stopping_keeps_the_weights_the_best_record_describes(quiet, select_best):
    # The weights' average validates best here; early stopping must not put the raw
    # weights of the best val_loss epoch back over it.
    from tftoolkit.training.checkpoint import callback_states

    result = tftoolkit.train(_diverging_val_recipe(ema=0.9, epochs=3, early_stopping=5,
                                                   select_best=select_best), quiet)
    record = json.loads((result.run_dir / "checkpoints" / "best-0.json").read_text())
    assert record["weights"] == "ema" and record["metric"] == "val_loss"
    assert result.metrics["val_loss"] == pytest.approx(record["value"], rel=1e-5)
    last = max((result.run_dir / "checkpoints").glob("state-0-*.npz"),
               key=lambda path: int(path.stem.rsplit("-", 1)[1]))
    kept = callback_states(last)["keep_best"]
    assert kept.record["best"] == record  # the last checkpoint holds the best it kept
    for weight, kept_weight in zip(result.model.get_weights(), kept.arrays, strict=True):
        np.testing.assert_allclose(weight, kept_weight, rtol=1e-6)


def test_select_best_on_a_metric_never_logged_is_refused_before_training(quiet, tmp_path):
    with pytest.raises(RecipeError) as err:
        tftoolkit.train(_diverging_val_recipe(select_best="val_acc"), quiet)
    message = str(err.value)
    assert "train.select_best='val_acc'" in message and "val_loss, val_mse, val_mae" in message
    assert not (tmp_path / "runs").exists()  # nothing ran, no run directory


def test_select_best_without_a_validation_split_is_refused(quiet, tmp_path):
    x = np.linspace(-1, 1, 32, dtype="float32")[:, None]
    recipe = Recipe(name="no_val", data=DataConfig(
        source="arrays", arrays={"train": (x, 2 * x)}, validation_fraction=0.0),
        model=ModelConfig(architecture="linear"),
        train=TrainConfig(select_best="val_loss", verbose=0), export=ExportConfig(
            enabled=False))
    with pytest.raises(RecipeError, match="validation split.*validation_fraction=0"):
        tftoolkit.train(recipe, quiet)
    assert not (tmp_path / "runs").exists()


def test_ema_validation_is_logged_and_kept_when_better(quiet):
    result = tftoolkit.train(_diverging_val_recipe(ema=0.9, epochs=3), quiet)
    assert len(result.history["val_ema_loss"]) == 3
    # Averages lag behind the weights, so on this problem they validate better.
    assert result.history["val_ema_loss"][-1] < result.history["val_loss"][-1]
    assert "(the weights' moving average)" in " ".join(result.notes)
    assert result.metrics["val_loss"] == pytest.approx(result.history["val_ema_loss"][-1],
                                                       rel=1e-5)


def test_valley_picks_the_steep_part_of_the_longest_descent():
    losses = [5.0] * 10 + list(np.linspace(5, 1, 30)) + [1.0, 2.0, 8.0]
    index = valley(losses)
    assert 10 + 30 // 3 <= index <= 10 + 30 // 2 + 1


def test_lr_find_suggests_a_rate_that_trains_and_stops_on_divergence(tmp_path):
    # Least squares with unit-variance inputs: SGD is stable below a rate of about 1 and
    # diverges above it, so the sweep to 10 must stop early.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 4)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5, 3.0], "float32"))[:, None]
    recipe = Recipe(name="finder", data=DataConfig(source="arrays", arrays={"train": (x, y)}),
                    model=ModelConfig(architecture="linear"),
                    train=TrainConfig(batch_size=32, optimizer="sgd", loss="mse", verbose=0),
                    export=ExportConfig(enabled=False))
    result = tftoolkit.lr_find(recipe, steps=200, out=tmp_path / "lr.png")
    assert result.diverged and len(result.learning_rates) < 200
    assert max(result.learning_rates) < 5.0
    assert 1e-3 <= result.suggestion <= 1.0
    assert (tmp_path / "lr.png").stat().st_size > 0
    auto = tftoolkit.train(recipe, {"train.learning_rate": "auto", "train.epochs": 3,
                                    "train.run_dir": str(tmp_path / "runs")})
    assert any("train.learning_rate=auto" in note for note in auto.notes)
    found = json.loads((auto.run_dir / "lr_find.json").read_text())
    assert (auto.run_dir / "lr_find.png").is_file()
    assert auto.recipe.train.learning_rate == found["suggestion"]
    assert auto.metrics["val_loss"] < 0.05 * float(np.var(y))  # 95% of the variance fitted


def test_learning_rate_auto_is_the_fine_tuning_rate_even_when_one_is_set(image_folder, quiet,
                                                                         monkeypatch):
    found = LrFindResult([1e-4, 1e-3, 1e-2], [1.0, 0.5, 0.9], 3e-3, False)
    monkeypatch.setattr(runner, "_sweep_first_stage", lambda setup: found)
    peaks, schedule = [], runner.learning_rate_schedule
    monkeypatch.setattr(runner, "learning_rate_schedule",
                        lambda cfg, peak, *rest: peaks.append(peak) or schedule(cfg, peak,
                                                                                 *rest))
    recipe = Recipe(name="tiny_fine_tune",
                    data=DataConfig(source="folder", dir=str(image_folder), image_size=33),
                    model=ModelConfig(architecture="mobilenet_v2", weights="none",
                                      mode="fine_tune", unfreeze="block_16"),
                    train=TrainConfig(epochs=1, batch_size=8, learning_rate="auto",
                                      fine_tune_learning_rate=0.5),
                    export=ExportConfig(enabled=False))
    result = tftoolkit.train(recipe, quiet)
    assert peaks == [pytest.approx(3e-3)]  # the one stage trained at the finder's rate
    assert "replaces train.fine_tune_learning_rate=0.5" in " ".join(result.notes)


def test_learning_rate_auto_notes_the_cache_of_its_stage_once(image_folder, quiet):
    """The sweep trains what the stage trains, on the same frozen-prefix cache: the run
    says so once."""
    recipe = Recipe(name="tiny_fine_tune",
                    data=DataConfig(source="folder", dir=str(image_folder), image_size=33),
                    model=ModelConfig(architecture="mobilenet_v2", weights="none",
                                      mode="fine_tune", unfreeze="block_16"),
                    train=TrainConfig(epochs=1, batch_size=8, learning_rate="auto"),
                    export=ExportConfig(enabled=False))
    result = tftoolkit.train(recipe, quiet)
    cache_notes = [n for n in result.notes if n.startswith("frozen-prefix cache")]
    assert len(cache_notes) == 1, result.notes
    assert any(n.startswith("train.learning_rate=auto") for n in result.notes)


def test_two_stage_never_ends_below_its_first_stage(image_folder, quiet):
    recipe = Recipe(name="guard", data=DataConfig(source="folder", dir=str(image_folder),
                                                  image_size=33),
                    model=ModelConfig(architecture="mobilenet_v2", weights="none",
                                      mode="two_stage", unfreeze="block_15"),
                    train=TrainConfig(epochs=3, fine_tune_epochs=1, batch_size=8,
                                      learning_rate=0.01, fine_tune_learning_rate=50.0,
                                      optimizer="sgd", select_best="val_accuracy"),
                    export=ExportConfig(enabled=False))
    result = tftoolkit.train(recipe, quiet)
    # the first stage's head is solved: its validation figure is its record, not an epoch
    first_stage = json.loads((result.run_dir / "checkpoints/best-0.json").read_text())["value"]
    assert result.metrics["val_accuracy"] >= first_stage
    if result.history["val_accuracy"][0] < first_stage:  # fine-tuning at rate 50 hurt
        assert "kept stage 1 (feature_extraction)" in " ".join(result.notes)


def test_a_run_killed_mid_schedule_resumes_the_same_schedule_and_average(tmp_path,
                                                                          monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(96, 3)).astype("float32")
    y = (x.sum(axis=1) > 0).astype("int64")
    recipe = Recipe(name="resume_schedule",
                    data=DataConfig(source="arrays", arrays={"train": (x, y)}),
                    model=ModelConfig(architecture="mlp", hidden=[6]),
                    train=TrainConfig(epochs=4, batch_size=16, optimizer="adamw",
                                      weight_decay=0.01, schedule="cosine",
                                      warmup_epochs=0.5, ema=0.9, deterministic=True,
                                      verbose=0),
                    export=ExportConfig(enabled=False))
    whole = tftoolkit.train(recipe, {"train.run_dir": str(tmp_path / "whole")})

    class Kill(keras.callbacks.Callback):
        def __init__(self, save):
            super().__init__()
            self.save = save

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                self.save._wait()  # epoch 2's state is on disk, as after a real kill
                raise KeyboardInterrupt

    real_callbacks = runner._callbacks

    def with_kill(run, stage, inputs):
        callbacks = real_callbacks(run, stage, inputs)
        return [*callbacks, Kill(callbacks[-1])]

    overrides = {"train.run_dir": str(tmp_path / "killed")}
    monkeypatch.setattr(runner, "_callbacks", with_kill)
    with pytest.raises(KeyboardInterrupt):
        tftoolkit.train(recipe, overrides)
    monkeypatch.setattr(runner, "_callbacks", real_callbacks)
    resumed = tftoolkit.train(recipe, overrides)
    assert any("resuming" in n and "at epoch 2" in n for n in resumed.notes)
    assert int(resumed.model.optimizer.iterations) == int(whole.model.optimizer.iterations)
    for a, b in zip(whole.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(whole.model.optimizer._model_variables_moving_average,
                    resumed.model.optimizer._model_variables_moving_average):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def test_scratch_validation_during_training_is_honest(quiet):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 120, (160, 16, 16, 3)).astype("float32")
    y = np.arange(160) % 2
    x[y == 1, 4:12, 4:12] = 255.0
    recipe = Recipe(name="honest", data=DataConfig(source="arrays", arrays={
        "train": (x, y.astype("int64"))}), model=ModelConfig(architecture="cnn", filters=[8]),
        train=TrainConfig(epochs=3, batch_size=16, learning_rate=3e-3, verbose=0),
        export=ExportConfig(enabled=False))
    result = tftoolkit.train(recipe, quiet)
    # The last epoch's logged validation is the model that is kept (statistics
    # recalibrated before every validation pass, as after training).
    assert result.history["val_accuracy"][-1] == pytest.approx(
        result.metrics["val_accuracy"], abs=0.04)
    assert result.metrics["val_accuracy"] > 0.9


def test_layer_decay_is_validated():
    with pytest.raises(RecipeError, match="out of range"):
        tftoolkit.load_recipe("fashion_transfer", {"train.layer_decay": 0.0})
    with pytest.raises(RecipeError, match="'auto'"):
        tftoolkit.load_recipe("fashion_transfer", {"train.learning_rate": "fast"})


def _crash_after(monkeypatch, epoch: int) -> None:
    """Make the next run stop like a crash once epoch ``epoch`` (0-based) is on disk."""
    from tftoolkit.training.checkpoint import SaveProgress

    make = runner._callbacks

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, index, logs=None):
            if index == epoch:
                saver.on_train_end()  # the epoch's state file and progress written
                raise KeyboardInterrupt

    def callbacks(*args):
        nonlocal saver
        made = make(*args)
        saver = next(c for c in made if isinstance(c, SaveProgress))
        return [*made, Crash()]

    saver = None
    monkeypatch.setattr(runner, "_callbacks", callbacks)


@pytest.mark.parametrize("crash_after, resumes_at", [(1, 2), (2, 8)])
def test_early_stopping_keeps_counting_its_patience_across_a_resume(quiet, monkeypatch,
                                                                    crash_after, resumes_at):
    # val_loss is best at epoch 1 and worse after it: patience 2 stops after epoch 3.
    # Crashed after epoch 2, the resumed stage has one epoch of patience left; crashed
    # after epoch 3, where it stopped, it has ended (the next epoch is the fit's end).
    recipe = _diverging_val_recipe(epochs=8, early_stopping=2, deterministic=True)
    whole = tftoolkit.train(recipe, quiet)
    assert len(whole.history["val_loss"]) == 3
    crashed = {**quiet, "train.run_dir": quiet["train.run_dir"] + "-crashed"}
    _crash_after(monkeypatch, epoch=crash_after)
    with pytest.raises(KeyboardInterrupt):
        tftoolkit.train(recipe, crashed)
    monkeypatch.undo()
    resumed = tftoolkit.train(recipe, crashed)
    assert any("resuming" in note and f"at epoch {resumes_at}" in note
               for note in resumed.notes)
    assert resumed.history["val_loss"] == pytest.approx(whole.history["val_loss"], rel=1e-5)
    for a, b in zip(whole.model.get_weights(), resumed.model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_early_stopping_watches_the_selection_metric(quiet):
    # Separable classes: validation accuracy is 1.0 from the first epoch on, while the
    # loss keeps falling. Watching val_accuracy, patience 1 ends the stage at epoch 2.
    x = np.concatenate([np.linspace(-1, -0.5, 32), np.linspace(0.5, 1, 32)])[:, None]
    y = (x[:, 0] > 0).astype("int64")
    recipe = Recipe(name="separable", data=DataConfig(source="arrays", arrays={
        "train": (x.astype("float32"), y), "val": (x.astype("float32"), y)}),
        model=ModelConfig(architecture="linear"),
        train=TrainConfig(batch_size=16, optimizer="sgd", learning_rate=2.0, epochs=6,
                          early_stopping=1, verbose=0), export=ExportConfig(enabled=False))
    by_loss = tftoolkit.train(recipe, quiet).history
    assert by_loss["val_accuracy"][0] == 1.0 and len(by_loss["val_loss"]) == 6
    by_accuracy = tftoolkit.train(recipe, {**quiet, "train.select_best": "val_accuracy"})
    assert len(by_accuracy.history["val_accuracy"]) == 2


def test_a_resume_never_restores_the_best_weights_of_a_discarded_attempt(quiet):
    # An attempt killed after it recorded a best epoch, before that epoch's checkpoint
    # reached the disk: the resumed run continues from the checkpoint of epoch 2 and must
    # not take the record and weights of the discarded epoch 3 (here: a val_loss no
    # epoch reaches, and zero weights).
    from tftoolkit.rundir import Progress, RunDir

    recipe = _diverging_val_recipe(epochs=3, select_best="val_loss", deterministic=True)
    clean = tftoolkit.train(recipe, quiet)
    run = RunDir(clean.run_dir)
    (run / "metrics.json").unlink()
    (run / "checkpoints" / "state-0-3.npz").unlink()
    run.write_progress(Progress(0, 2, "checkpoints/state-0-2.npz"))
    run.write_json("checkpoints/best-0.json", {"stage": 0, "epoch": 3, "weights": "weights",
                                               "metric": "val_loss", "value": -1.0})
    np.savez(run / "checkpoints" / "best-0.npz",
             *[np.zeros_like(w) for w in clean.model.get_weights()])
    resumed = tftoolkit.train(recipe, quiet)
    assert resumed.run_dir == clean.run_dir
    assert run.best_record(0)["epoch"] == 1 and run.best_record(0)["value"] > 0
    for a, b in zip(clean.model.get_weights(), resumed.model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
