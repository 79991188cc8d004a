"""From-scratch models: builders, losses, optimizers, regularizers, classic recipes."""

from __future__ import annotations

import numpy as np
import pytest

import keras
import tftoolkit
from tftoolkit.errors import RecipeError
from tftoolkit.tasks import Regression, SingleLabel
from tftoolkit.models import scratch
from tftoolkit.models.regularize import apply_kernel_regularizer
from tftoolkit.recipe import DataConfig, ModelConfig, Recipe, TrainConfig, ExportConfig


def _ols(seed: int) -> np.ndarray:
    from tftoolkit.data.sources import load_source

    data = load_source(DataConfig(source="synthetic", name="linear", num_examples=100),
                       seed).splits["train"]
    design = np.hstack([data.arrays, np.ones((100, 1))])
    return np.linalg.lstsq(design, data.labels, rcond=None)[0].ravel()


def test_linear_regression_recipe_recovers_slope_and_intercept(quiet):
    result = tftoolkit.train("linear_regression", quiet)
    kernel, bias = result.model.get_layer("predictions").get_weights()
    assert abs(kernel.item() - 3.0) <= 0.2
    assert abs(bias.item() - 2.5) <= 0.15
    assert "learned W = " in result.recipe.report(result)
    assert (result.run_dir / "history.csv").is_file()
    assert (result.run_dir / "curves.png").is_file()


@pytest.mark.parametrize("seed", [0])  # a sample whose least-squares fit is W=3.24, b=2.40
def test_gradient_descent_converges_to_least_squares(quiet, seed):
    result = tftoolkit.train("linear_regression", {**quiet, "data.split_seed": seed})
    kernel, bias = result.model.get_layer("predictions").get_weights()
    np.testing.assert_allclose([kernel.item(), bias.item()], _ols(seed), atol=0.01)


def test_mlp_beats_constant_and_best_linear_fit(quiet):
    result = tftoolkit.train("mlp", quiet)
    from tftoolkit.data.sources import load_source

    data = load_source(result.recipe.data, result.recipe.train.seed).splits["train"]
    x, y = data.arrays, data.labels
    design = np.hstack([x, np.ones((len(x), 1))])
    linear = np.mean((design @ np.linalg.lstsq(design, y, rcond=None)[0] - y) ** 2)
    constant = np.mean((y - y.mean()) ** 2)
    mlp = np.mean((result.model.predict(x, verbose=0) - y) ** 2)
    assert mlp < 0.25 * linear and mlp < 0.25 * constant
    dense = [layer for layer in result.model.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [4, 1]
    assert result.model.get_layer("hidden_0").activation.__name__ == "tanh"


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
def test_mlp_builder_uses_the_activation(activation):
    model = scratch.mlp(input_shape=(3,), task=SingleLabel(2),
                        hidden=[5, 4], activation=activation)
    assert model.get_layer("hidden_1").activation.__name__ == activation
    assert model.output_shape == (None, 2)
    out = model(np.zeros((2, 3), "float32"))
    np.testing.assert_allclose(np.sum(out, axis=1), 1.0, rtol=1e-6)  # softmax


def test_linear_builder_is_wx_plus_b():
    model = scratch.linear(input_shape=(2,), task=Regression())
    model.get_layer("predictions").set_weights([np.array([[2.0], [-1.0]]), np.array([0.5])])
    np.testing.assert_allclose(model(np.array([[1.0, 3.0]], "float32")), [[-0.5]])


def test_cnn_builder_on_images():
    model = scratch.cnn(input_shape=(32, 32, 3), task=SingleLabel(3),
                        filters=[8, 16], activation="relu")
    assert model.output_shape == (None, 3)
    with pytest.raises(RecipeError, match="needs images"):
        scratch.cnn(input_shape=(10,), task=SingleLabel(3),
                    filters=[8], activation="relu")


def _arrays_recipe(x, y, **train) -> Recipe:
    return Recipe(name="arrays", data=DataConfig(source="arrays",
                                                 arrays={"train": (x, y)},
                                                 validation_fraction=0.25),
                  model=ModelConfig(architecture="mlp", hidden=[8]),
                  train=TrainConfig(**{"epochs": 3, "batch_size": 16, **train}),
                  export=ExportConfig(enabled=False))


def _blobs(classes: int, n: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, 2)).astype("float32") + 3 * np.eye(classes, 2)[y]
    return x, y.astype("int64")


@pytest.mark.parametrize("classes,loss,encoding,units,loss_class", [
    (2, "auto", "binary", 1, keras.losses.BinaryCrossentropy),
    (3, "auto", "categorical", 3, keras.losses.CategoricalCrossentropy),
    (3, "sparse_categorical_crossentropy", "sparse", 3,
     keras.losses.SparseCategoricalCrossentropy),
    (2, "categorical_crossentropy", "categorical", 2, keras.losses.CategoricalCrossentropy),
])
def test_cross_entropy_is_chosen_from_labels_or_set(quiet, classes, loss, encoding, units,
                                                    loss_class):
    x, y = _blobs(classes)
    result = tftoolkit.train(_arrays_recipe(x, y, loss=loss), quiet)
    assert result.info.task.encoding == encoding
    assert result.model.output_shape == (None, units)
    assert isinstance(result.model.loss, loss_class)
    assert "val_accuracy" in result.metrics


def test_mse_for_real_valued_targets(quiet):
    x = np.random.default_rng(0).normal(size=(40, 2)).astype("float32")
    y = (x @ np.array([[1.0], [2.0]], "float32"))
    result = tftoolkit.train(_arrays_recipe(x, y), quiet)
    assert result.info.task.name == "regression"
    assert isinstance(result.model.loss, keras.losses.MeanSquaredError)


@pytest.mark.parametrize("optimizer,extra", [("gd", {"batch_size": 0, "learning_rate": 0.5}),
                                             ("sgd", {"momentum": 0.9, "learning_rate": 0.05}),
                                             ("adam", {"learning_rate": 0.02})])
def test_each_optimizer_reduces_the_loss(quiet, optimizer, extra):
    x, y = _blobs(2, n=64)
    result = tftoolkit.train(_arrays_recipe(x, y, optimizer=optimizer, epochs=8, **extra),
                             quiet)
    loss = result.history["loss"]
    assert loss[-1] < loss[0]
    opt = result.model.optimizer
    if optimizer == "sgd":
        assert float(opt.momentum) == pytest.approx(0.9)


def test_gd_runs_on_full_batches_and_rejects_mini_batches(quiet):
    x, y = _blobs(2, n=64)
    with pytest.raises(RecipeError, match="full-batch gradient descent"):
        tftoolkit.train(_arrays_recipe(x, y, optimizer="gd", batch_size=8), quiet)
    result = tftoolkit.train(_arrays_recipe(x, y, optimizer="gd", batch_size=0, epochs=1),
                             quiet)
    assert int(result.model.optimizer.iterations) == 1  # one epoch, one full-batch step


@pytest.mark.parametrize("kind", ["l1", "l2", "l1_l2"])
def test_kernel_regularizer_reaches_model_losses(kind):
    model = scratch.mlp(input_shape=(3,), task=SingleLabel(2),
                        hidden=[4], activation="relu")
    count = apply_kernel_regularizer(model, kind, 0.01)
    assert count == 2
    kernels = [layer.kernel.numpy() for layer in model.layers
               if isinstance(layer, keras.layers.Dense)]
    l1 = 0.01 * sum(np.abs(k).sum() for k in kernels)
    l2 = 0.01 * sum((k ** 2).sum() for k in kernels)
    expected = {"l1": l1, "l2": l2, "l1_l2": l1 + l2}[kind]
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-5)


def test_training_builds_only_the_pipelines_it_reads(quiet, monkeypatch):
    from tftoolkit.data import DataBundle

    built = []
    real_dataset, real_sample = DataBundle.dataset, DataBundle.sample

    def dataset(self, split, **kwargs):
        built.append((split, "augmented" if kwargs.get("training") else "in order"))
        return real_dataset(self, split, **kwargs)

    def sample(self, split, count, **kwargs):
        built.append((split, "sample"))
        return real_sample(self, split, count, **kwargs)

    monkeypatch.setattr(DataBundle, "dataset", dataset)
    monkeypatch.setattr(DataBundle, "sample", sample)
    # a from-scratch MLP: no BatchNorm to recalibrate, no DP-SGD arrays to gather
    tftoolkit.train("mlp", {**quiet, "train.epochs": 2, "train.steps_per_epoch": 2,
                            "data.validation_fraction": 0.25, "export.enabled": False})
    training = [b for b in built if b[0] == "train"]
    assert training == [("train", "augmented")], built
