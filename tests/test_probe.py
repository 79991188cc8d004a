"""Solved linear heads: the solver against scikit-learn and Keras, and the solved stage."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

import tftoolkit
from tftoolkit.recipe import (AugmentConfig, DataConfig, ExportConfig, ModelConfig, Recipe,
                              RegularizeConfig, TrainConfig)
from tftoolkit.training import probe


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return x[:600].astype("float32"), y[:600], x[600:900].astype("float32"), y[600:900]


def test_the_softmax_head_is_scikit_learns_logistic_regression(digits):
    x, y, xv, yv = digits
    solution = probe.solve(probe.LinearProblem(probe.SOFTMAX, 10), x, y, grid=(0.01,))
    # scikit-learn minimises C * sum(loss) + |w|^2 / 2 on the same standardized features
    scale = probe._Standardizer.fit(x)
    sk = LogisticRegression(C=1 / (2 * 0.01 * len(x)), tol=1e-10, max_iter=10000).fit(
        scale(x), y)
    logits = solution.predict(xv)
    ours = np.exp(logits - logits.max(1, keepdims=True))
    ours /= ours.sum(1, keepdims=True)
    np.testing.assert_allclose(ours, sk.predict_proba(scale(xv)), atol=2e-3)


def test_a_solve_stopped_by_the_iteration_limit_says_so(digits, monkeypatch):
    x, y, xv, yv = digits
    problem = probe.LinearProblem(probe.SOFTMAX, 10)
    assert probe.solve(problem, x, y, xv, yv, grid=(1.0, 0.1)).unconverged == 0
    monkeypatch.setattr(probe, "MAX_ITERATIONS", 3)
    stopped = probe.solve(problem, x, y, xv, yv, grid=(1.0, 0.1))
    assert stopped.unconverged == 2
    assert stopped.describe().endswith(
        "; 2 of 2 strengths stopped at the limit of 3 iterations before converging")


def test_a_multi_label_head_is_one_binary_regression_per_class(digits):
    x, y, _, _ = digits
    rows = np.stack([y % 2, y > 4], axis=1).astype("float32")
    both = probe.solve(probe.LinearProblem(probe.MULTILABEL, 2), x, rows, grid=(0.02,))
    for c in range(2):
        # the multi-label loss averages the classes: each alone carries half of it
        alone = probe.solve(probe.LinearProblem(probe.SIGMOID, 1), x, rows[:, c:c + 1],
                            grid=(0.04,))
        np.testing.assert_allclose(both.kernel[:, c], alone.kernel[:, 0], atol=2e-3)
        np.testing.assert_allclose(both.bias[c], alone.bias[0], atol=2e-3)


def _keras_gradient_norm(kind, outputs, loss, x, labels, solution, l2, weights=None):
    """The norm of the gradient of Keras' own training loss (the loss object plus an l2
    kernel regularizer) at the solved kernel and bias."""
    inputs = keras.Input((x.shape[1],))
    dense = keras.layers.Dense(outputs, activation="softmax" if kind == probe.SOFTMAX
                               else "sigmoid", kernel_regularizer=keras.regularizers.L2(l2))
    model = keras.Model(inputs, dense(inputs))
    dense.set_weights([solution.kernel, solution.bias])
    with tf.GradientTape() as tape:
        total = loss(labels, model(x), sample_weight=weights) + tf.add_n(model.losses)
    grads = tape.gradient(total, model.trainable_variables)
    return float(tf.linalg.global_norm(grads)), float(total)


def test_the_solution_is_where_keras_training_loss_stops_moving(digits):
    x, y, _, _ = digits
    x = x / 16.0
    class_weights = np.linspace(0.5, 2.0, 10)
    problem = probe.LinearProblem(probe.SOFTMAX, 10, label_smoothing=0.1,
                                  class_weights=class_weights)
    solution = probe.solve(problem, x, y, grid=(1e-3,), raw_penalty=True)
    norm, _ = _keras_gradient_norm(
        probe.SOFTMAX, 10, keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
        x, np.eye(10)[y], solution, 1e-3, class_weights[y])
    assert norm < 1e-3

    rows = np.stack([y % 2, y > 4, y == 0], axis=1).astype("float32")
    positive = np.array([1.0, 2.0, 8.0])
    problem = probe.LinearProblem(probe.MULTILABEL, 3, label_smoothing=0.1,
                                  positive_weights=positive)
    solution = probe.solve(problem, x, rows, grid=(1e-3,), raw_penalty=True)
    loss = tftoolkit.multilabel.MultiLabelCrossentropy(0.1, list(positive))
    norm, _ = _keras_gradient_norm(probe.MULTILABEL, 3, loss, x, rows, solution, 1e-3)
    assert norm < 1e-3


def test_the_l2_strength_is_the_best_on_validation_ties_to_the_lower_loss(digits):
    x, y, xv, yv = digits
    solution = probe.solve(probe.LinearProblem(probe.SOFTMAX, 10), x, y, xv, yv)
    assert [l2 for l2, *_ in solution.tried] == sorted(probe.L2_GRID, reverse=True)
    best = max(solution.tried, key=lambda t: (t[1], -t[2]))
    assert (solution.l2, solution.val_score, solution.val_loss) == best
    with pytest.raises(ValueError, match="needs validation data"):
        probe.solve(probe.LinearProblem(probe.SOFTMAX, 10), x, y)


def _frozen(folder, **train) -> Recipe:
    return Recipe(name="solved",
                  data=DataConfig(source="folder", dir=str(folder), image_size=32),
                  model=ModelConfig(architecture="mobilenet_v2",
                                    weights="imagenet-torchvision",
                                    mode="feature_extraction"),
                  regularize=RegularizeConfig(kernel="l2", strength=1e-3),
                  train=TrainConfig(epochs=3, batch_size=8, learning_rate=0.01,
                                    baselines=False, **train),
                  export=ExportConfig(enabled=False))


def _training_objective(result, recipe) -> float:
    """The head's training loss (cross-entropy plus the l2 penalty) on the run's
    training features."""
    from tftoolkit.training.feature_cache import split_at_features, split_features
    from tftoolkit.training.optim import compile_model

    data = tftoolkit.load_data(recipe, 32)
    extractor, head = split_at_features(result.model)
    features, labels = split_features(extractor, data, "train", 8)
    compile_model(head, recipe, data.info, 0.0)
    return head.evaluate(features, np.eye(2)[labels], verbose=0, return_dict=True)["loss"]


def test_a_solved_head_reaches_a_lower_training_loss_than_its_epochs(image_folder, quiet,
                                                                     imported_mobilenet):
    solved_recipe = _frozen(image_folder, refit_head=False)  # the training rows' optimum
    solved = tftoolkit.train(solved_recipe, quiet)
    sampled_recipe = _frozen(image_folder, solve_head="off")
    sampled = tftoolkit.train(sampled_recipe, quiet)
    notes = " ".join(solved.notes)
    assert "head solved on" in notes and "L2 0.001, " in notes
    assert "head solved" not in " ".join(sampled.notes)
    assert "loss" not in solved.history  # no epoch was sampled
    assert (_training_objective(solved, solved_recipe)
            < _training_objective(sampled, sampled_recipe))


def test_the_solved_stage_is_the_start_of_fine_tuning_and_its_record(image_folder, quiet,
                                                                       imported_mobilenet):
    recipe = _frozen(image_folder, select_best="val_accuracy", fine_tune_epochs=1,
                     fine_tune_learning_rate=1e-4)
    recipe = tftoolkit.load_recipe(recipe, {"model.mode": "two_stage",
                                            "model.unfreeze": "block_16",
                                            "regularize.kernel": "none"})
    result = tftoolkit.train(recipe, quiet)
    record = json.loads((result.run_dir / "checkpoints" / "best-0.json").read_text())
    assert record["weights"] == "solved" and record["metric"] == "val_accuracy"
    assert len(result.history["val_accuracy"]) == 1  # the fine-tuning epoch alone
    assert result.metrics["val_accuracy"] >= record["value"]  # never below stage 1
    assert "chosen on validation from 10 strengths" in " ".join(result.notes)
    assert not (result.run_dir / "refit.json").exists()  # refitted only when last


def test_cached_views_without_augmentation_cache_the_images_once(image_folder, quiet,
                                                                 imported_mobilenet):
    recipe = Recipe(name="views", data=DataConfig(source="folder", dir=str(image_folder),
                                                  image_size=32),
                    model=ModelConfig(architecture="mobilenet_v2", weights="none",
                                      mode="feature_extraction"),
                    augment=AugmentConfig(enabled=False, cached_views=3),
                    train=TrainConfig(epochs=1, batch_size=8, baselines=False),
                    export=ExportConfig(enabled=False))
    result = tftoolkit.train(recipe, quiet)
    train = result.info.counts["train"]
    assert f"head solved on {train} cached feature rows" in " ".join(result.notes)


def test_with_augmented_views_the_head_is_solved_on_them_and_on_the_images_alike(
        image_folder, quiet, imported_mobilenet, monkeypatch):
    from tftoolkit.training import solved_head

    tried = []
    real_solve = solved_head.solve
    monkeypatch.setattr(solved_head, "solve", lambda problem, x, *a, **k: tried.append(
        len(x)) or real_solve(problem, x, *a, **k))
    real_refit = solved_head.refit
    monkeypatch.setattr(solved_head, "refit", lambda problem, x, *a, **k: tried.append(
        len(x)) or real_refit(problem, x, *a, **k))
    recipe = tftoolkit.load_recipe(_frozen(image_folder), {
        "augment.enabled": True, "augment.rotation": 0.1, "augment.cached_views": 3,
        "regularize.kernel": "none"})
    result = tftoolkit.train(recipe, quiet)
    n, v = result.info.counts["train"], result.info.counts["val"]
    assert tried[:2] == [n, 4 * n]
    assert tried[2] in (n + v, 4 * n + v)  # the kept fit refitted with validation
    notes = " ".join(result.notes)
    assert (f"head solved on {4 * n} cached feature rows (the images and their augmented "
            "copies, chosen on validation)" in notes or f"head solved on {n} cached feature "
            "rows (the images as they are, chosen on validation)" in notes), notes


def test_the_last_solved_head_is_refitted_with_validation_and_reports_the_figures_before(
        image_folder, quiet, imported_mobilenet):
    from tftoolkit.training.feature_cache import split_at_features, split_features

    recipe = _frozen(image_folder)
    held_out = tftoolkit.train(recipe, {**quiet, "train.refit_head": False})
    refitted = tftoolkit.train(recipe, quiet)
    assert not (held_out.run_dir / "refit.json").exists()
    record = json.loads((refitted.run_dir / "refit.json").read_text())
    counts = refitted.info.counts
    assert record["splits"] == ["train", "val"]
    assert record["rows"] == counts["train"] + counts["val"]
    # the run's validation figures are the head's before the refit: the held-out run's
    for key in ("val_accuracy", "val_loss"):
        assert refitted.metrics[key] == pytest.approx(held_out.metrics[key], abs=1e-6)
    assert "head refitted at L2 0.001 on" in " ".join(refitted.notes)
    # the head is the solution on the training and validation features together
    data = tftoolkit.load_data(recipe, 32)
    extractor, head = split_at_features(refitted.model)
    train, train_labels = split_features(extractor, data, "train", 8)
    val, val_labels = split_features(extractor, data, "val", 8)
    both = probe.solve(probe.LinearProblem(probe.SOFTMAX, 2), np.concatenate([train, val]),
                       np.concatenate([train_labels, val_labels]), grid=(1e-3,),
                       raw_penalty=True)
    kernel = head.layers[-1].get_weights()[0]
    np.testing.assert_allclose(kernel, both.kernel, atol=1e-4)
    assert np.abs(kernel - split_at_features(held_out.model)[1].layers[-1]
                  .get_weights()[0]).max() > 1e-3
    # evaluating on validation later says that it is no held-out estimate
    report, _ = tftoolkit.evaluate(refitted.run_dir, split="val")
    assert any("no held-out estimate" in n for n in report["notes"])
    report, _ = tftoolkit.evaluate(held_out.run_dir, split="val")
    assert not any("held-out" in n for n in report.get("notes", []))
    best = json.loads((refitted.run_dir / "checkpoints" / "best-0.json").read_text()) \
        if (refitted.run_dir / "checkpoints" / "best-0.json").is_file() else None
    assert best is None or best["refitted_on"] == ["train", "val"]


def test_an_export_of_a_refitted_head_says_so_wherever_it_is_evaluated(
        image_folder, quiet, imported_mobilenet, tmp_path):
    import shutil

    recipe = tftoolkit.load_recipe(_frozen(image_folder, select_best="val_accuracy"),
                                   {"export.enabled": True})
    result = tftoolkit.train(recipe, quiet)
    card = json.loads((result.export_dir / "model_card.json").read_text())
    assert card["refit"]["splits"] == ["train", "val"]
    assert "only their comparison with the float model" in card["refit"]["note"]
    best = json.loads((result.run_dir / "checkpoints" / "best-0.json").read_text())
    assert best["refitted_on"] == ["train", "val"]
    # the run directory moved away: the card alone says so
    shutil.move(result.run_dir, tmp_path / "moved")
    report, _ = tftoolkit.evaluate(result.export_dir, split="val")
    assert any("no held-out estimate" in n for n in report["notes"])


def test_two_experts_add_their_logits_with_weights_chosen_on_validation(digits):
    x, y, xv, yv = digits
    rng = np.random.default_rng(0)
    noise, noise_val = rng.normal(size=(len(x), 12)), rng.normal(size=(len(xv), 12))
    problem = probe.LinearProblem(probe.SOFTMAX, 10)
    # uninformative "features" first, informative "pixels" last: the pixels must count
    both = probe.solve_experts(problem, np.hstack([noise, x]), y, np.hstack([noise_val, xv]),
                               yv, split=12)
    a, b = both.blend.weights
    assert b > 0 and a < 1 and len(both.blend.tried) == len(probe.BLENDS)
    assert both.val_score == max(t[2] for t in both.blend.tried) > both.blend.tried[0][2]
    alone = [probe.solve(problem, part, y, val, yv) for part, val in
             ((noise, noise_val), (x, xv))]
    assert both.blend.pixel_l2 == alone[1].l2
    np.testing.assert_allclose(both.kernel[:12], a * alone[0].kernel, atol=1e-6)
    np.testing.assert_allclose(both.kernel[12:], b * alone[1].kernel, atol=1e-6)
    np.testing.assert_allclose(both.bias, a * alone[0].bias + b * alone[1].bias, atol=1e-5)
    assert "chosen on validation from 5 blends" in both.describe()
    # informative features and noise pixels: the features alone win (the first blend)
    features_first = probe.solve_experts(problem, np.hstack([x, noise]), y,
                                         np.hstack([xv, noise_val]), yv, split=64)
    assert features_first.blend.weights == (1.0, 0.0)
    assert not features_first.kernel[64:].any()
    # a refit keeps the blend and each expert's strength
    more = probe.refit(problem, np.vstack([np.hstack([noise, x]), np.hstack([noise_val, xv])]),
                       np.concatenate([y, yv]), both)
    assert more.blend.weights == both.blend.weights and more.l2 == both.l2


def test_grey_pixels_are_the_area_average_of_the_grey_image():
    from tftoolkit.layers import GreyPixels

    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    expected = images.mean(-1).reshape(2, 8, 4, 8, 4).mean((2, 4)).reshape(2, 64) / 255
    np.testing.assert_allclose(np.asarray(GreyPixels(8)(images)), expected, atol=1e-6)
    # a side that is no multiple of 8: resized up to one first
    odd = np.full((1, 30, 30, 3), 51.0, "float32")
    np.testing.assert_allclose(np.asarray(GreyPixels(8)(odd)), np.full((1, 64), 0.2),
                               atol=1e-6)


def test_pixel_features_are_a_second_expert_of_the_frozen_head_and_export_alike(
        image_folder, quiet, imported_mobilenet):
    from tftoolkit.training.feature_cache import (pixel_columns, prefix_refusal,
                                                  split_at_features, split_below_unfrozen)

    recipe = tftoolkit.load_recipe(_frozen(image_folder), {
        "model.pixel_features": 8, "regularize.kernel": "none", "train.baselines": True,
        "export.enabled": True, "export.formats": ["tflite", "onnx"]})
    result = tftoolkit.train(recipe, quiet)
    extractor, head = split_at_features(result.model)
    assert pixel_columns(extractor) == 64 and extractor.output.shape[-1] == 1280 + 64
    assert split_below_unfrozen(result.model, "block_16") is None  # the head reads pixels
    assert prefix_refusal(result.model, "block_16") == "the head reads the image's pixels too"
    assert "experts' logits: " in " ".join(result.notes)
    # the probe baseline reads the backbone's features alone
    baselines = json.loads((result.run_dir / "baselines.json").read_text())
    assert [b["name"] for b in baselines["baselines"]] == ["pixels", "probe"]
    # every format serves what the Keras model predicts (the export's parity check)
    card = json.loads((result.export_dir / "model_card.json").read_text())
    for name in ("tflite", "onnx"):
        assert card["formats"][name]["max_abs_diff"] <= 1e-4
    # Grad-CAM follows the branch: it explains the class the model predicts
    from tftoolkit.evaluation.gradcam import grad_cam

    images = np.stack([np.asarray(keras.utils.load_img(p, target_size=(32, 32)), "float32")
                       for p in sorted(image_folder.glob("*/*"))[:4]])
    _, explained = grad_cam(result.model, images)
    np.testing.assert_array_equal(explained, result.model.predict(images, verbose=0).argmax(1))
    # fine-tuning trains the backbone: its model has no pixels
    tuned = tftoolkit.load_recipe(recipe, {"model.mode": "two_stage"})
    assert pixel_columns(tftoolkit.build_model(tuned, result.info)) == 0
