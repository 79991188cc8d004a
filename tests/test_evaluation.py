"""Evaluation: metrics against a hand computation, figures, TTA, Grad-CAM."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

import tftoolkit
from tftoolkit.evaluation.gradcam import grad_cam
from tftoolkit.recipe import DataConfig, ExportConfig, ModelConfig, Recipe, TrainConfig
from tftoolkit.tasks import SingleLabel
from tftoolkit.tasks.classification import confusion_matrix


def test_metrics_equal_a_hand_computation():
    labels = np.array([0, 0, 0, 1, 1, 2])
    probs = np.array([[.8, .1, .1], [.6, .3, .1], [.2, .7, .1],
                      [.1, .8, .1], [.5, .2, .3], [.1, .2, .7]])
    report = SingleLabel(3, "sparse").report(labels, probs, ["a", "b", "c"])
    # predicted: 0 0 1 1 0 2 -> a: tp 2 of 3 predicted, b: tp 1 of 2, c: tp 1 of 1
    assert report["accuracy"] == pytest.approx(4 / 6)
    a, b, c = report["per_class"]
    assert (a["precision"], a["recall"], a["support"]) == pytest.approx((2 / 3, 2 / 3, 3))
    assert (b["precision"], b["recall"], b["support"]) == pytest.approx((1 / 2, 1 / 2, 2))
    assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((1, 1, 1))
    assert a["f1"] == pytest.approx(2 / 3)
    assert report["macro_avg"]["recall"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert report["weighted_avg"]["recall"] == pytest.approx(4 / 6)
    # top-k uses k = min(5, classes - 1): only example 5 (true b, b ranked third) misses
    assert report["top_2_accuracy"] == pytest.approx(5 / 6)


def test_confusion_matrix_sums_to_the_number_of_examples():
    rng = np.random.default_rng(0)
    labels, predicted = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    matrix = confusion_matrix(labels, predicted, 4)
    assert matrix.sum() == 50
    assert np.trace(matrix) == int(np.sum(labels == predicted))


def _quadrant_data(n=160, size=32, seed=0):
    """Class 1 has a bright blob in the top-left quadrant; everything else is noise."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 120, (n, size, size, 3)).astype("float32")
    y = np.arange(n) % 2
    for i in np.flatnonzero(y == 1):
        cy, cx = rng.integers(3, size // 2 - 3, 2)
        x[i, cy - 3:cy + 3, cx - 3:cx + 3] = 255.0
    return x, y.astype("int64")


@pytest.fixture(scope="module")
def quadrant_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quadrant")
    x, y = _quadrant_data()
    xt, yt = _quadrant_data(40, seed=1)
    recipe = Recipe(name="quadrant",
                    data=DataConfig(source="arrays", arrays={"train": (x, y), "test": (xt, yt)},
                                    validation_fraction=0.2),
                    model=ModelConfig(architecture="cnn", filters=[8, 16]),
                    train=TrainConfig(epochs=12, batch_size=16, learning_rate=3e-3, verbose=0,
                                      run_dir=str(tmp / "runs"), tta=2),
                    export=ExportConfig(enabled=False))
    return tftoolkit.train(recipe), xt, yt


def test_grad_cam_mass_lies_in_the_quadrant_that_decides(quadrant_run):
    result, xt, yt = quadrant_run
    assert result.metrics["test_accuracy"] >= 0.9
    positives = xt[yt == 1]
    heat, predicted = grad_cam(result.model, positives)
    assert np.mean(predicted == 1) >= 0.9
    half = xt.shape[1] // 2
    share = heat[:, :half, :half].sum(axis=(1, 2)) / heat.sum(axis=(1, 2))
    assert np.median(share) > 0.6  # chance would be 0.25


def _cam_model(scale: float):
    """conv (4 maps) -> global average pool -> softmax over 3 classes, weights seeded,
    the output layer's weights multiplied by ``scale`` (large: confident predictions)."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    features = keras.layers.Conv2D(4, 1, activation="relu", name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(pooled)
    model = keras.Model(inputs, outputs)
    head = model.get_layer("predictions")
    head.set_weights([w * scale for w in head.get_weights()])
    return model


def test_grad_cam_weights_channels_by_the_class_logit_not_the_probability():
    # With global pooling then a Dense layer, the gradient of the logit z_c with respect
    # to the feature map is W[:, c] / (H * W) everywhere: Grad-CAM is then exactly
    # relu(sum_k W[k, c] A_k), normalised (the class activation map of Zhou et al.).
    images = np.random.default_rng(0).uniform(0, 1, (6, 8, 8, 3)).astype("float32")
    for scale in (1.0, 200.0):
        model = _cam_model(scale)
        heat, predicted = grad_cam(model, images)
        probabilities = model.predict(images, verbose=0)
        np.testing.assert_array_equal(predicted, probabilities.argmax(1))
        maps = np.asarray(model.get_layer("conv")(images))
        kernel = model.get_layer("predictions").get_weights()[0]
        expected = np.maximum(np.einsum("nhwk,kn->nhw", maps, kernel[:, predicted]), 0)
        expected /= expected.max(axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(heat, expected, atol=1e-4)
    assert probabilities.max(axis=1).min() > 0.999  # confident, and the maps still show
    assert (heat.max(axis=(1, 2)) == 1.0).all()


def test_train_reports_tta_beside_the_plain_figure(quadrant_run):
    result = quadrant_run[0]
    _, xt, yt = quadrant_run
    assert "test_accuracy" in result.metrics
    # Two views: the image and its mirror image, probabilities averaged.
    model = result.model
    averaged = (model.predict(xt, verbose=0) + model.predict(xt[:, :, ::-1], verbose=0)) / 2
    expected = float(np.mean(averaged.argmax(axis=1) == yt))
    assert result.metrics["test_accuracy_tta"] == pytest.approx(expected, abs=1e-6)
    plain = float(np.mean(model.predict(xt, verbose=0).argmax(axis=1) == yt))
    assert result.metrics["test_accuracy"] == pytest.approx(plain, abs=1e-6)


def test_evaluate_writes_tables_and_figures(tmp_path, image_folder, quiet, cli):
    recipe = Recipe(name="shapes", data=DataConfig(source="folder", dir=str(image_folder),
                                                   image_size=32),
                    model=ModelConfig(architecture="cnn", filters=[8]),
                    train=TrainConfig(epochs=1, batch_size=8))
    result = tftoolkit.train(recipe, quiet)
    proc = cli("evaluate", result.export_dir, "--split", "val", "--tta", "2")
    assert proc.returncode == 0, proc.stderr
    assert "macro_avg" in proc.stdout and "with TTA (2 views): accuracy" in proc.stdout
    out = result.export_dir.parent / "1-eval"
    report = json.loads((out / "metrics.json").read_text())
    assert sum(map(sum, report["confusion_matrix"])) == result.info.counts["val"]
    for name in ("per_class.csv", "confusion_matrix.png", "top_losses.png"):
        assert (out / name).stat().st_size > 0
    # The folder got a held-out test split (data.test_fraction), so the default works...
    tested = cli("evaluate", result.export_dir)
    assert tested.returncode == 0, tested.stderr
    report = json.loads((out / "metrics.json").read_text())
    assert report["split"] == "test" and report["examples"] == result.info.counts["test"]
    # ...and without one, evaluation falls back to validation and says so.
    no_test = tftoolkit.train(recipe, {**quiet, "data.test_fraction": 0.0,
                                       "export.enabled": False})
    fallback = cli("evaluate", no_test.run_dir)
    assert fallback.returncode == 0, fallback.stderr
    assert "no test split" in fallback.stdout and "evaluated on the val split" in fallback.stdout
    bad = subprocess.run(["tftoolkit", "evaluate", str(result.run_dir), "--split", "holdout"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "split 'holdout' does not exist" in bad.stderr
    assert "oneDNN" not in bad.stderr and "absl" not in bad.stderr  # no TensorFlow banner
    shown = cli("explain", result.run_dir, next(image_folder.rglob("*.png")),
                "--out", tmp_path / "cams")
    assert shown.returncode == 0, shown.stderr
    assert len(list((tmp_path / "cams").glob("*_gradcam.png"))) == 1


def test_evaluate_refuses_tta_views_out_of_range_before_reading_the_run(tmp_path, cli):
    proc = cli("evaluate", tmp_path / "no_run", "--tta", "9")
    assert proc.returncode == 2
    assert "--tta 9: test-time augmentation takes 1 to 7 views (0: none)" in proc.stderr


def test_grad_cam_of_one_sigmoid_unit_explains_the_predicted_class():
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 3))
    features = keras.layers.Conv2D(4, 1, activation="relu", name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(pooled))
    images = np.random.default_rng(1).uniform(0, 1, (8, 8, 8, 3)).astype("float32")
    images[:4] *= -1
    p1 = model.predict(images, verbose=0)[:, 0]
    kernel, bias = model.layers[-1].get_weights()  # a threshold between the two halves
    model.layers[-1].set_weights([kernel, bias - np.median(np.log(p1 / (1 - p1)))])
    heat, predicted = grad_cam(model, images)
    p1 = model.predict(images, verbose=0)[:, 0]
    np.testing.assert_array_equal(predicted, (p1 > 0.5).astype(int))
    assert set(predicted) == {0, 1}
    # The map of class 0 follows -W (the score of class 0 is -z), that of class 1 +W.
    maps = np.asarray(model.get_layer("conv")(images))
    w = model.layers[-1].get_weights()[0][:, 0]
    sign = np.where(predicted == 1, 1.0, -1.0)
    expected = np.maximum(np.einsum("nhwk,k->nhw", maps, w) * sign[:, None, None], 0)
    peak = expected.max(axis=(1, 2), keepdims=True)
    expected = np.divide(expected, peak, out=np.zeros_like(expected), where=peak > 0)
    np.testing.assert_allclose(heat, expected, atol=1e-4)


def test_explain_refuses_a_model_without_a_feature_map_naming_it_and_the_fix(tmp_path, cli,
                                                                              quiet):
    from conftest import make_image_folder

    folder = make_image_folder(tmp_path / "shapes", per_class=4, size=8)
    recipe = Recipe(name="flat", data=DataConfig(source="folder", dir=str(folder),
                                                 image_size=8, test_fraction=0.0),
                    model=ModelConfig(architecture="mlp", hidden=[4]),
                    train=TrainConfig(epochs=1, batch_size=4), export=ExportConfig())
    result = tftoolkit.train(recipe, quiet)
    image = next(folder.rglob("*.png"))
    for path in (result.run_dir, result.export_dir):
        proc = cli("explain", path, image, "--out", tmp_path / "cams")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith(f"error: {path} (model.architecture='mlp'): Grad-CAM "
                                      "weighs the channels of a convolutional feature map, "
                                      "and this model has none"), proc.stderr
        assert "model.architecture=cnn or a pretrained backbone" in proc.stderr
    assert not (tmp_path / "cams").exists()
