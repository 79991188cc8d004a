"""Multi-label: figures against scikit-learn, the loss, thresholds on validation only,
and a run end to end on a tiny generated table."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import tftoolkit
from conftest import make_multilabel_table, multilabel_recipe
from tftoolkit import multilabel
from tftoolkit.data import load_data

sklearn_metrics = pytest.importorskip("sklearn.metrics")

# Fixed arrays: 12 examples, 4 classes, scores on a 0.05 grid with ties.
LABELS = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 1], [0, 0, 1, 1], [1, 0, 0, 0],
                   [0, 1, 1, 0], [1, 0, 1, 1], [0, 0, 0, 1], [1, 1, 0, 0], [0, 1, 1, 1],
                   [0, 0, 1, 0], [1, 0, 0, 1]])
SCORES = np.array([[.90, .10, .55, .30], [.20, .85, .40, .05], [.60, .45, .10, .70],
                   [.35, .20, .80, .65], [.75, .30, .25, .10], [.40, .60, .55, .35],
                   [.55, .05, .95, .50], [.10, .15, .30, .90], [.80, .55, .20, .15],
                   [.30, .70, .45, .60], [.25, .40, .75, .20], [.65, .20, .05, .45]])


def _histograms(labels=LABELS, scores=SCORES):
    return tuple(h.numpy() for h in multilabel.score_histograms(labels, scores))


def test_average_precision_and_map_equal_scikit_learns():
    positives, negatives = _histograms()
    ap = multilabel.average_precision(positives, negatives).numpy()
    expected = [sklearn_metrics.average_precision_score(LABELS[:, k], SCORES[:, k])
                for k in range(4)]
    np.testing.assert_allclose(ap, expected, atol=1e-6)
    np.testing.assert_allclose(multilabel.mean_average_precision(positives, negatives),
                               sklearn_metrics.average_precision_score(LABELS, SCORES,
                                                                       average="macro"),
                               atol=1e-6)
    rng = np.random.default_rng(0)  # continuous scores: equal up to the bins' width
    labels = rng.integers(0, 2, (400, 5))
    scores = np.clip(labels * 0.3 + rng.uniform(0, 0.7, (400, 5)), 0, 1)
    np.testing.assert_allclose(
        multilabel.mean_average_precision(*_histograms(labels, scores)),
        sklearn_metrics.average_precision_score(labels, scores), atol=2e-3)


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_f1_precision_and_recall_at_a_threshold_equal_scikit_learns(threshold):
    counts = multilabel.counts_at(*_histograms(), threshold)
    predicted = (SCORES >= threshold).astype(int)
    for average in ("micro", "macro"):
        expected = sklearn_metrics.f1_score(LABELS, predicted, average=average,
                                            zero_division=0)
        got = counts.micro_f1 if average == "micro" else counts.f1.mean()
        assert got == pytest.approx(expected, abs=1e-9)
    np.testing.assert_allclose(counts.precision, sklearn_metrics.precision_score(
        LABELS, predicted, average=None, zero_division=0))
    np.testing.assert_allclose(counts.recall, sklearn_metrics.recall_score(
        LABELS, predicted, average=None, zero_division=0))


def test_keras_metrics_add_up_over_batches_to_the_same_figures():
    metrics = multilabel.metrics(4)
    for metric in metrics:
        for rows in (slice(0, 5), slice(5, 12)):
            metric.update_state(LABELS[rows].astype("float32"), SCORES[rows])
    got = {m.name: float(m.result()) for m in metrics}
    predicted = (SCORES >= 0.5).astype(int)
    assert got["map"] == pytest.approx(sklearn_metrics.average_precision_score(
        LABELS, SCORES), abs=1e-6)
    assert got["f1"] == pytest.approx(sklearn_metrics.f1_score(LABELS, predicted,
                                                               average="micro"), abs=1e-6)
    assert got["macro_f1"] == pytest.approx(sklearn_metrics.f1_score(
        LABELS, predicted, average="macro"), abs=1e-6)


def test_the_loss_is_smoothed_binary_cross_entropy_with_weighted_positives():
    logits = np.random.default_rng(1).normal(size=(12, 4)).astype("float32")
    probabilities = tf.sigmoid(logits)
    y = LABELS.astype("float32")
    plain = multilabel.MultiLabelCrossentropy(label_smoothing=0.1)
    keras_bce = keras.losses.BinaryCrossentropy(label_smoothing=0.1)
    assert float(plain(y, probabilities)) == pytest.approx(float(keras_bce(y, probabilities)),
                                                           rel=1e-5)
    weights = [3.0, 1.0, 0.5, 2.0]
    weighted = multilabel.MultiLabelCrossentropy(positive_weights=weights)
    expected = tf.reduce_mean(tf.nn.weighted_cross_entropy_with_logits(
        y, logits, pos_weight=tf.constant(weights)))
    assert float(weighted(y, probabilities)) == pytest.approx(float(expected), rel=1e-4)
    again = keras.losses.deserialize(keras.losses.serialize(weighted))
    assert again.positive_weights == weights


def test_thresholds_maximise_each_classs_f1_on_the_histograms_given():
    positives, negatives = _histograms()
    chosen = multilabel.choose_thresholds(positives, negatives)
    candidates = np.arange(0, 1.0, 0.05)
    for k in range(4):
        best = max(sklearn_metrics.f1_score(LABELS[:, k], SCORES[:, k] >= t)
                   for t in candidates)
        assert sklearn_metrics.f1_score(LABELS[:, k], SCORES[:, k] >= chosen[k]) == \
            pytest.approx(best)
    one = multilabel.choose_thresholds(positives, negatives, "global")
    assert len(set(one.tolist())) == 1
    best = max(sklearn_metrics.f1_score(LABELS, SCORES >= t, average="micro")
               for t in candidates)
    assert sklearn_metrics.f1_score(LABELS, SCORES >= one[0], average="micro") == \
        pytest.approx(best)


# --- a tiny multi-label table -----------------------------------------------------------

@pytest.fixture
def tag_table(tmp_path) -> Path:
    return make_multilabel_table(tmp_path / "tags")


def test_a_multilabel_table_gives_multi_hot_targets_and_balanced_positive_weights(tag_table):
    data = load_data(multilabel_recipe(tag_table), 32)
    info = data.info
    assert info.task.name == info.task.encoding == "multilabel"
    assert info.class_names == ["bar", "disc", "dot"] and info.num_outputs == 3
    train = data.splits["train"].labels
    assert train.shape == (info.counts["train"], 3)
    assert info.class_counts == train.sum(0).astype(int).tolist()
    n = info.counts["train"]
    np.testing.assert_allclose(info.task.positive_weights(),
                               [(n - c) / c for c in info.class_counts])
    batch = next(iter(data.dataset("train", training=True)))
    assert len(batch) == 2 and batch[1].shape[1:] == (3,)  # no per-example weights
    from tftoolkit.training import compile_model

    model = tftoolkit.build_model(multilabel_recipe(tag_table), info)
    balanced = multilabel_recipe(tag_table)
    balanced = balanced.with_overrides({"data.class_weight": "balanced"})
    compile_model(model, balanced, info, 1e-3)
    assert model.loss.positive_weights == pytest.approx(info.task.positive_weights())
    assert model.layers[-1].activation.__name__ == "sigmoid"


def test_mixup_and_cutmix_mix_multi_hot_targets(tag_table):
    from tftoolkit.augment import build_augmenter
    from tftoolkit.recipe import AugmentConfig

    data = load_data(multilabel_recipe(tag_table), 32)
    augmenter = build_augmenter(AugmentConfig(enabled=True, flip="none", mixup=0.4,
                                              cutmix=1.0), 32, seed=0)
    images, labels = next(iter(data.dataset("train", batch_size=8)))
    _, mixed = augmenter.pipeline_fn().per_batch(images, labels)
    mixed = np.asarray(mixed)
    assert mixed.shape == (8, 3) and ((mixed >= 0) & (mixed <= 1)).all()
    assert not np.array_equal(mixed, np.asarray(labels))


class _TestIsOffLimits:
    """A DataBundle whose test split may not be read."""

    def __init__(self, data):
        self._data = data
        self.info = data.info
        self.splits = {k: v for k, v in data.splits.items() if k != "test"}
        self.test_read = False

    def dataset(self, split, **kwargs):
        if split == "test":
            self.test_read = True
            raise AssertionError("the test split was read to choose thresholds")
        return self._data.dataset(split, **kwargs)


def test_thresholds_are_chosen_on_validation_and_never_read_test(tag_table):
    data = load_data(multilabel_recipe(tag_table), 32)
    model = tftoolkit.build_model(multilabel_recipe(tag_table), data.info)
    guarded = _TestIsOffLimits(data)
    with pytest.raises(AssertionError):     # the guard does catch a read of test
        guarded.dataset("test", batch_size=8)
    guarded = _TestIsOffLimits(data)
    chosen = multilabel.validation_thresholds(model, guarded, "per_class")
    assert not guarded.test_read and "validation" in chosen.chosen_by
    positives, negatives = multilabel.split_histograms(model, data.dataset("val",
                                                                           batch_size=8))
    np.testing.assert_allclose(chosen.values,
                               multilabel.choose_thresholds(positives, negatives))
    fixed = multilabel.validation_thresholds(model, guarded, 0.3)
    np.testing.assert_allclose(fixed.values, 0.3)


def test_a_multilabel_run_logs_map_and_f1_and_keeps_thresholds(tag_table, quiet):
    result = tftoolkit.train(multilabel_recipe(tag_table, select_best="val_map"), quiet)
    for key in ("map", "f1", "macro_f1", "val_map", "val_f1", "val_macro_f1"):
        assert len(result.history[key]) == 2, key
    assert 0 <= result.metrics["test_map"] <= 1
    assert {"val_f1_at_thresholds", "test_f1_at_thresholds",
            "test_macro_f1_at_thresholds"} <= set(result.metrics)
    saved = json.loads((result.run_dir / "thresholds.json").read_text())
    assert list(saved["thresholds"]) == ["bar", "disc", "dot"]
    assert "validation" in saved["chosen_by"]
    assert (result.run_dir / "checkpoints" / "best-0.json").is_file()


# --- serving -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One multi-label run, exported with a LiteRT file, shared by the serving tests."""
    root = tmp_path_factory.mktemp("exported")
    recipe = multilabel_recipe(make_multilabel_table(root / "tags"))
    recipe = recipe.with_overrides({"export.enabled": True, "export.formats": ["tflite"],
                                    "train.threshold": "global", "train.verbose": 0,
                                    "train.run_dir": str(root / "runs"),
                                    "export.dir": str(root / "exports")})
    result = tftoolkit.train(recipe)
    data = load_data(recipe, 32)
    return result, data.splits["test"].paths


def test_both_signatures_serve_the_keras_probabilities_and_a_fixed_shape_label_mask(exported):
    result, paths = exported
    version = result.export_dir
    card = json.loads((version / "model_card.json").read_text())
    saved = json.loads((result.run_dir / "thresholds.json").read_text())["thresholds"]
    assert card["thresholds"] == saved and list(saved) == ["bar", "disc", "dot"]
    assert (version / "labels.txt").read_text().split() == list(saved)
    thresholds = np.array(list(saved.values()), np.float32)
    loaded = tf.saved_model.load(str(version))
    for name in ("serving_default", "serve_bytes"):
        spec = loaded.signatures[name].structured_outputs
        assert spec["labels"].dtype == tf.bool and spec["labels"].shape.as_list() == [None, 3]
        assert spec["probabilities"].shape.as_list() == [None, 3]
    from tftoolkit.data.pipeline import decode_image_bytes, to_rgb_image

    images = np.stack([np.asarray(to_rgb_image(decode_image_bytes(tf.io.read_file(p)),
                                                       result.info.resize))
                       for p in paths])
    expected = np.asarray(result.model(images, training=False))
    from_pixels = loaded.signatures["serving_default"](tf.constant(images))
    from_bytes = loaded.signatures["serve_bytes"](
        image_bytes=tf.constant([Path(p).read_bytes() for p in paths]))
    for served in (from_pixels, from_bytes):
        np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)
        np.testing.assert_array_equal(served["labels"].numpy(), expected >= thresholds)
    names = list(saved)
    predicted = tftoolkit.predict(version, list(paths))
    from_litert = tftoolkit.predict(version / "model.tflite", list(paths))
    for i, row in enumerate(predicted):
        above = [names[k] for k in np.argsort(-expected[i]) if expected[i, k] >= thresholds[k]]
        assert [n for n, _ in row] == above
        assert [n for n, _ in from_litert[i]] == above
        np.testing.assert_allclose([p for _, p in row], [p for _, p in from_litert[i]],
                                   atol=1e-5)


def test_predict_prints_every_label_above_threshold(exported, capsys):
    from tftoolkit.cli import main

    result, paths = exported
    assert main(["predict", str(result.export_dir), *paths[:2]]) == 0
    printed = capsys.readouterr().out
    expected = tftoolkit.predict(result.export_dir, list(paths[:2]))
    for row in expected:
        for name, p in row:
            assert f"{p:7.2%}  {name}" in printed


def test_evaluate_writes_the_threshold_table_and_pr_curves(exported, tmp_path):
    result, paths = exported
    report, out = tftoolkit.evaluate(result.export_dir, out=tmp_path / "eval")
    card = json.loads((result.export_dir / "model_card.json").read_text())
    assert [row["threshold"] for row in report["per_class"]] == pytest.approx(
        list(card["thresholds"].values()))
    header = (out / "per_class.csv").read_text().splitlines()[0]
    assert header == "class,threshold,ap,precision,recall,f1,support"
    assert (out / "pr_curves.png").stat().st_size > 5000
    from tftoolkit.data.pipeline import decode_image_bytes, to_rgb_image

    images = np.stack([np.asarray(to_rgb_image(decode_image_bytes(tf.io.read_file(p)),
                                                       result.info.resize))
                       for p in paths])
    probabilities = np.asarray(result.model(images, training=False))
    labels = load_data(result.recipe, 32).splits["test"].labels.astype(int)
    present = labels.sum(0) > 0
    assert report["map"] == pytest.approx(sklearn_metrics.average_precision_score(
        labels[:, present], probabilities[:, present]), abs=2e-3)
    thresholds = np.array(list(card["thresholds"].values()))
    assert report["micro_f1"] == pytest.approx(sklearn_metrics.f1_score(
        labels, probabilities >= thresholds, average="micro"), abs=1e-6)
    assert report["per_class"][0]["support"] == labels[:, 0].sum()
    from tftoolkit.evaluation.metrics import render_report

    assert "threshold" in render_report(report).splitlines()[0]


def test_explain_draws_one_grad_cam_per_predicted_label(exported, tmp_path):
    result, paths = exported
    images = list(paths[:4])
    written = tftoolkit.explain(result.export_dir, images, tmp_path / "cams")
    names = result.info.class_names
    loaded = tf.saved_model.load(str(result.export_dir))
    served = loaded.signatures["serve_bytes"](
        image_bytes=tf.constant([Path(p).read_bytes() for p in images]))
    marked, probabilities = served["labels"].numpy(), served["probabilities"].numpy()
    expected = []
    for p, row, probs in zip(images, marked, probabilities):
        chosen = np.flatnonzero(row) if row.any() else [int(probs.argmax())]
        expected += [f"{Path(p).stem}_{names[k]}_gradcam.png" for k in chosen]
    assert sorted(path.name for path in written) == sorted(expected)


def test_saved_model_cli_runs_the_multilabel_signature(exported, tmp_path):
    import re
    import subprocess
    import sys

    result, _ = exported
    cli = str(Path(sys.executable).parent / "saved_model_cli")
    np.save(tmp_path / "images.npy", np.full((2, 40, 40, 3), 128.0, dtype=np.float32))
    shown = subprocess.run([cli, "show", "--dir", str(result.export_dir), "--tag_set", "serve",
                            "--signature_def", "serve_bytes"], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"outputs\['labels'\] tensor_info:\s+dtype: DT_BOOL\s+shape: \(-1, 3\)",
                     shown.stdout), shown.stdout
    ran = subprocess.run([cli, "run", "--dir", str(result.export_dir), "--tag_set", "serve",
                          "--signature_def", "serving_default", "--inputs",
                          f"images={tmp_path / 'images.npy'}"], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert "Result for output key labels" in ran.stdout


def test_a_threshold_stored_as_float32_counts_from_its_own_bin():
    positives, negatives = _histograms()
    for threshold in (0.586, 0.55, 0.35):
        stored = float(np.float32(threshold))   # as a model card or a signature keeps it
        assert multilabel.threshold_bins(stored) == round(threshold * multilabel.BINS)
        counts = multilabel.counts_at(positives, negatives, stored)
        assert counts.micro_f1 == pytest.approx(sklearn_metrics.f1_score(
            LABELS, SCORES >= threshold, average="micro"))


def test_evaluate_with_tta_averages_sigmoid_probabilities_then_applies_thresholds(
        exported, tmp_path, capsys):
    from tftoolkit.cli import main

    result, _ = exported
    report, _ = tftoolkit.evaluate(result.export_dir, tta=2, out=tmp_path / "eval")
    images, labels = load_data(result.recipe, 32).arrays("test")
    flipped = images[:, :, ::-1]
    averaged = (np.asarray(result.model(images, training=False))
                + np.asarray(result.model(flipped, training=False))) / 2
    card = json.loads((result.export_dir / "model_card.json").read_text())
    thresholds = np.array(list(card["thresholds"].values()), np.float32)
    assert report["tta"]["views"] == 2
    # (mAP from the score histograms, as every figure: tested against scikit-learn above)
    assert report["tta"]["map"] == pytest.approx(float(multilabel.mean_average_precision(
        *_histograms(labels, averaged))), abs=1e-6)
    assert report["tta"]["f1_at_thresholds"] == pytest.approx(sklearn_metrics.f1_score(
        labels, averaged >= thresholds, average="micro"), abs=1e-6)
    assert main(["evaluate", str(result.export_dir), "--tta", "2", "--out",
                 str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out.split("with TTA (2 views)")[1]
    assert f"map {report['tta']['map']:.4f}" in printed
