"""Tasks: one object per kind of target, the one source of every figure and decision."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tftoolkit
from conftest import make_multilabel_table, multilabel_recipe
from tftoolkit.errors import RecipeError
from tftoolkit.recipe import DataConfig, ExportConfig, ModelConfig, Recipe, TrainConfig
from tftoolkit.tasks import MultiLabel, Regression, SingleLabel, any_monitor, make_task
from tftoolkit.training import distributed


def _task_data(task, n=96, seed=0):
    """Features and labels (as sources give them) a task's tiny model can learn a bit."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    if isinstance(task, MultiLabel):
        y = (x[:, :task.num_classes] > 0).astype("float32")
    elif isinstance(task, Regression):
        y = x[:, :1] * 2.0
    else:
        y = (np.argmax(x[:, :task.num_classes], axis=1)).astype("int64")
    return x, y


TASKS = {"sparse": SingleLabel(3, "sparse"), "categorical": SingleLabel(3, "categorical"),
         "binary": SingleLabel(2, "binary"), "multilabel": MultiLabel(3),
         "regression": Regression()}


def _compiled(task):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(task.output_units,
                                                   activation=task.activation)(inputs))
    model.compile(optimizer="adam", loss=task.loss(), metrics=task.metrics())
    return model


@pytest.mark.parametrize("encoding", list(TASKS))
def test_the_own_loop_and_measure_give_what_keras_evaluate_gives(encoding):
    task = TASKS[encoding]
    x, y = _task_data(task)
    model = _compiled(task)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).map(
        lambda a, b: (a, task.encode(b)))
    keras_figures = model.evaluate(dataset, verbose=0, return_dict=True)
    assert set(keras_figures) == set(task.figures)
    own = distributed.evaluate_distributed(model, dataset, tf.distribute.get_strategy(), task)
    measured = task.measure(y, model.predict(x, verbose=0))
    for figure, value in keras_figures.items():
        assert own[figure] == pytest.approx(value, abs=1e-5), figure
        assert measured[figure] == pytest.approx(value, abs=1e-5), figure


_MIRRORED = textwrap.dedent("""
    import json, numpy as np, tensorflow as tf, keras
    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    from tftoolkit.tasks import MultiLabel, SingleLabel
    from tftoolkit.training import distributed
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 6)).astype("float32")
    out = {}
    for name, task in [("sparse", SingleLabel(3, "sparse")), ("binary", SingleLabel(2, "binary")),
                       ("categorical", SingleLabel(3)), ("multilabel", MultiLabel(3))]:
        y = ((x[:, :3] > 0).astype("float32") if name == "multilabel"
             else np.argmax(x[:, :task.num_classes], 1).astype("int64"))
        with strategy.scope():
            keras.utils.set_random_seed(0)
            inputs = keras.Input((6,))
            model = keras.Model(inputs, keras.layers.Dense(task.output_units,
                                                           activation=task.activation)(inputs))
            model.compile(optimizer="sgd", loss=task.loss(), metrics=task.metrics())
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(20).map(
            lambda a, b: (a, task.encode(b)))
        out[name] = [model.evaluate(data, verbose=0, return_dict=True),
                     distributed.evaluate_distributed(model, data, strategy, task)]
    print(json.dumps(out))
""")


def test_the_own_loop_sums_every_replicas_figures_under_mirrored_strategy():
    proc = subprocess.run([sys.executable, "-c", _MIRRORED], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, (single, mirrored) in json.loads(proc.stdout.splitlines()[-1]).items():
        assert set(single) == set(mirrored), name
        for figure, value in single.items():
            assert mirrored[figure] == pytest.approx(value, abs=1e-5), (name, figure)


def test_decisions_and_scores_of_a_one_sigmoid_classifier_have_a_column_per_class():
    task = SingleLabel(2, "binary")
    predictions = np.array([[0.9], [0.2], [0.5]], np.float32)
    np.testing.assert_allclose(task.scores(predictions), [[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]],
                               atol=1e-6)
    assert task.decide(predictions).tolist() == [1, 0, 0]
    assert task.measure(np.array([1, 0, 1]), predictions)["accuracy"] == pytest.approx(2 / 3)


def test_monitors_name_the_logged_figures_and_their_direction():
    assert SingleLabel(3).monitor() == any_monitor("val_accuracy")
    assert MultiLabel(3).monitor().key == "val_map" and MultiLabel(3).monitor().higher_is_better
    assert Regression().monitor() == any_monitor("val_loss")
    assert not Regression().monitor("val_mae").higher_is_better
    with pytest.raises(RecipeError, match=r"train.select_best='val_map'.*val_accuracy"):
        SingleLabel(3).monitor("val_map", asked_by="train.select_best")
    with pytest.raises(RecipeError, match="not a validation figure any task logs"):
        any_monitor("val_accuracyy")
    assert make_task("sparse", 4) == SingleLabel(4, "sparse")


def test_tta_of_a_one_sigmoid_model_counts_both_classes(quiet):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 60, (80, 16, 16, 3)).astype("float32")
    y = (np.arange(80) % 4 != 0).astype("int64")  # three in four are class 1
    x[y == 1, 4:12, 4:12] = 250.0
    recipe = Recipe(name="binary_tta", data=DataConfig(source="arrays", arrays={"train": (x, y)},
                                                       validation_fraction=0.25),
                    model=ModelConfig(architecture="cnn", filters=[4]),
                    train=TrainConfig(epochs=2, batch_size=16, loss="binary_crossentropy",
                                      tta=1),
                    export=ExportConfig(enabled=False))
    result = tftoolkit.train(recipe, quiet)
    # one view (the identity): the averaged predictions are the plain ones
    assert result.metrics["test_accuracy_tta"] == pytest.approx(result.metrics["test_accuracy"],
                                                                abs=1e-6)
    assert result.metrics["val_loss_tta"] == pytest.approx(result.metrics["val_loss"], abs=1e-4)


def test_a_multilabel_run_selects_on_any_figure_it_logs_and_compare_ranks_by_map(tmp_path,
                                                                                 quiet):
    table = make_multilabel_table(tmp_path / "tags")
    one_epoch = {**quiet, "train.epochs": 1}
    result = tftoolkit.train(multilabel_recipe(table, select_best="val_f1"), one_epoch)
    assert json.loads((result.run_dir / "checkpoints" / "best-0.json").read_text())[
        "metric"] == "val_f1"
    comparison = tftoolkit.compare(multilabel_recipe(table).with_overrides(one_epoch),
                                   ["scratch"])
    assert comparison.metric_name == "val_map"
    assert comparison.rows[0].validation == pytest.approx(
        json.loads((comparison.rows[0].run_dir / "metrics.json").read_text())["val_map"])
