"""Quantized LiteRT exports: written, measured, refused when they lose accuracy."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import tftoolkit
from conftest import shapes_recipe
from tftoolkit.serving import litert
from tftoolkit.tasks import MultiLabel, SingleLabel

ALL = ["tflite", "tflite_dynamic", "tflite_float16", "tflite_int8"]


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    from conftest import make_image_folder

    tmp = tmp_path_factory.mktemp("litert")
    folder = make_image_folder(tmp / "shapes", per_class=16)
    result = tftoolkit.train(shapes_recipe(folder, tmp, 0.25, formats=ALL,
                                           max_accuracy_drop=1.0, int8_io="uint8"))
    return result, folder, tmp


def test_every_format_is_written_and_runs_without_tftoolkit(quantized):
    result, _, _ = quantized
    files = ["model.tflite", "model_dynamic.tflite", "model_float16.tflite",
             "model_int8.tflite"]
    for name in files:
        assert (result.export_dir / name).stat().st_size > 0, name
    code = ("import sys, numpy as np, tensorflow as tf\n"
            "for path in sys.argv[1:]:\n"
            "    i = tf.lite.Interpreter(model_path=path); i.allocate_tensors()\n"
            "    d = i.get_input_details()[0]\n"
            "    i.set_tensor(d['index'], np.zeros(d['shape'], d['dtype'])); i.invoke()\n"
            "    print(path, i.get_output_details()[0]['shape'].tolist())\n"
            "assert 'tftoolkit' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code,
                           *(str(result.export_dir / n) for n in files)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(proc.stdout.strip().splitlines()) == 4


def test_the_card_figures_equal_an_independent_evaluation(quantized):
    import tensorflow as tf

    result, _, _ = quantized
    card = json.loads((result.export_dir / "model_card.json").read_text())
    data = tftoolkit.load_data(result.recipe, 32)
    x = np.concatenate([np.asarray(b[0]) for b in data.dataset("test", batch_size=64)])
    y = np.concatenate([np.asarray(b[1]).argmax(1) for b in data.dataset("test",
                                                                        batch_size=64)])
    for fmt in ("tflite_dynamic", "tflite_float16"):
        interpreter = tf.lite.Interpreter(
            model_path=str(result.export_dir / card["formats"][fmt]["file"]))
        interpreter.resize_tensor_input(0, list(x.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        entry = card["formats"][fmt]
        assert entry["test_accuracy"] == pytest.approx(float(np.mean(out.argmax(1) == y)))
        float_top = result.model.predict(x, verbose=0).argmax(1)
        assert entry["test_agreement"] == pytest.approx(float(np.mean(out.argmax(1) ==
                                                                      float_top)))
        assert entry["size_bytes"] == (result.export_dir / entry["file"]).stat().st_size
        assert entry["latency_ms"] > 0 and entry["examples"]["test"] == len(x)
    assert card["formats"]["tflite_int8"]["io"] == "uint8"
    assert card["formats_refused"] == {}


def test_int8_io_scales_are_applied_in_predict(quantized):
    result, folder, _ = quantized
    images = sorted(folder.rglob("*.png"))[:6]
    from_int8 = tftoolkit.predict(result.export_dir / "model_int8.tflite", images, top_k=2)
    from_savedmodel = tftoolkit.predict(result.export_dir, images, top_k=2)
    for a, b in zip(from_int8, from_savedmodel):
        assert a[0][0] == b[0][0]  # same top class
        assert a[0][1] == pytest.approx(b[0][1], abs=0.1)  # dequantized probabilities
    interpreter = litert.LiteRTModel(result.export_dir / "model_int8.tflite")
    assert interpreter.input["dtype"] == np.uint8


def test_evaluate_accepts_a_tflite_file(quantized):
    result, _, tmp = quantized
    card = json.loads((result.export_dir / "model_card.json").read_text())
    report, out = tftoolkit.evaluate(result.export_dir / "model_float16.tflite",
                                     out=tmp / "eval16")
    assert report["accuracy"] == pytest.approx(card["formats"]["tflite_float16"]
                                               ["test_accuracy"])
    assert (out / "confusion_matrix.png").is_file()


def test_a_variant_losing_too_much_is_refused_and_nothing_of_it_is_left(quantized,
                                                                        monkeypatch):
    result, folder, tmp = quantized
    real = litert.measure

    def int8_loses_too_much(*args):
        measured = real(*args)
        candidate = args[0]
        if candidate.input["dtype"] != np.float32:
            measured.drop = 2.0  # beyond any accuracy: over the max of 1.0
        return measured

    monkeypatch.setattr(litert, "measure", int8_loses_too_much)
    version = tftoolkit.export(result.run_dir, to=tmp / "refusing")
    card = json.loads((version / "model_card.json").read_text())
    assert "tflite_int8" in card["formats_refused"]
    assert "max_accuracy_drop=1.0" in card["formats_refused"]["tflite_int8"]["reason"]
    assert not (version / "model_int8.tflite").exists()
    assert (version / "model_dynamic.tflite").is_file()
    assert sorted(p.name for p in (tmp / "refusing").iterdir()) == ["1"]  # no temp left


def test_quantized_formats_are_validated_with_the_recipe():
    with pytest.raises(tftoolkit.RecipeError, match="tflite_int4"):
        tftoolkit.load_recipe("mlp", {"export.formats": "[tflite_int4]"})
    recipe = tftoolkit.load_recipe("mlp", {"export.formats": "tflite,tflite_int8"})
    assert recipe.export.formats == ["tflite", "tflite_int8"]


class _Fixed:
    """A stand-in model that returns the given predictions for each input batch."""

    def __init__(self, by_split: dict[int, np.ndarray]):
        self.by_split = by_split

    def predict(self, x, verbose=0):
        return self.by_split[len(x)]


def test_the_validation_split_alone_decides_and_test_is_only_reported():
    eye = np.eye(2, dtype=np.float32)
    y_val, y_test = np.array([0, 1, 0, 1]), np.array([0, 1, 1])
    splits = {"val": (np.zeros((4, 1)), y_val), "test": (np.zeros((3, 1)), y_test)}
    reference = _Fixed({4: eye[y_val], 3: eye[y_test]})
    # Right on every validation example, wrong on every test example.
    candidate = _Fixed({4: eye[y_val], 3: eye[1 - y_test]})
    measured = litert.measure(candidate, reference, splits, task=SingleLabel(2, "sparse"))
    assert measured.drop == 0.0
    assert measured.figures["test_accuracy_drop"] == 1.0  # reported, not deciding
    assert measured.figures["val_accuracy_drop"] == 0.0
    # And a validation loss decides even when test is perfect.
    candidate = _Fixed({4: eye[1 - y_val], 3: eye[y_test]})
    assert litert.measure(candidate, reference, splits, task=SingleLabel(2, "sparse")).drop == 1.0


def test_quantized_variants_are_not_judged_without_a_validation_split():
    from tftoolkit.errors import ExportError

    eye = np.eye(2, dtype=np.float32)
    only_test = {"test": (np.zeros((2, 1)), np.array([0, 1]))}
    model = _Fixed({2: eye})
    with pytest.raises(ExportError, match="validation split"):
        litert.measure(model, model, only_test, task=SingleLabel(2, "sparse"))


def test_a_multilabel_variant_is_judged_by_validation_map_and_its_decisions():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    scores = {n: rng.uniform(0, 1, (n, 3)).astype(np.float32) for n in (8, 6)}
    labels = {n: (scores[n] > 0.5).astype(int) for n in scores}   # float model: mAP 1
    labels[8][0], labels[6][0] = 1, 0                            # not a perfect ranking
    splits = {"val": (np.zeros((8, 1)), labels[8]), "test": (np.zeros((6, 1)), labels[6])}
    thresholds = np.array([0.4, 0.5, 0.6], np.float32)
    reference = _Fixed(scores)
    # Equal on validation, every score reversed on test.
    candidate = _Fixed({8: scores[8], 6: 1 - scores[6]})
    measured = litert.measure(candidate, reference, splits, MultiLabel(3), thresholds)
    assert measured.drop == 0.0 and measured.drop_key == "map_drop"
    assert measured.figures["val_agreement"] == 1.0
    want_test = sklearn_metrics.average_precision_score(labels[6], 1 - scores[6])
    assert measured.figures["test_map"] == pytest.approx(want_test, abs=1e-6)
    assert measured.figures["test_float_map"] == pytest.approx(
        sklearn_metrics.average_precision_score(labels[6], scores[6]), abs=1e-6)
    assert measured.figures["test_map_drop"] > 0.2                 # reported, not deciding
    assert measured.figures["test_agreement"] == pytest.approx(np.mean(
        (1 - scores[6] >= thresholds) == (scores[6] >= thresholds)))
    # Reversed on validation: its mAP drop there decides.
    candidate = _Fixed({8: 1 - scores[8], 6: scores[6]})
    measured = litert.measure(candidate, reference, splits, MultiLabel(3), thresholds)
    assert measured.drop == pytest.approx(
        sklearn_metrics.average_precision_score(labels[8], scores[8])
        - sklearn_metrics.average_precision_score(labels[8], 1 - scores[8]), abs=1e-6)
    with pytest.raises(tftoolkit.ExportError, match="thresholds"):
        litert.measure(candidate, reference, splits, MultiLabel(3))


def test_a_multilabel_variant_keeping_its_map_but_not_its_decisions_is_refused():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    scores = rng.uniform(0, 1, (40, 3)).astype(np.float32)
    labels = (scores > 0.5).astype(int)
    labels[:4] = 1 - labels[:4]                                  # not a perfect ranking
    thresholds = np.full(3, 0.5, np.float32)
    splits = {"val": (np.zeros((40, 1)), labels)}
    # Every score raised to the 4th power: the same ranking (mAP), other decisions.
    measured = litert.measure(_Fixed({40: scores ** 4}), _Fixed({40: scores}), splits,
                              MultiLabel(3), thresholds)
    assert measured.drop == pytest.approx(0.0, abs=1e-3)  # (mAP from score histograms)
    want = sklearn_metrics.f1_score(labels, scores >= 0.5, average="micro") - \
        sklearn_metrics.f1_score(labels, scores ** 4 >= 0.5, average="micro")
    assert measured.f1_drop == pytest.approx(want, abs=1e-6) and want > 0.2
    assert measured.figures["val_f1_drop"] == measured.f1_drop
    reason = measured.refusal("tflite_int8", 0.1)
    assert reason.startswith("tflite_int8 changes validation micro-F1 at the thresholds by")
    assert measured.refusal("tflite_int8", want + 0.01) is None


def test_a_quantized_multilabel_file_losing_validation_map_is_refused(tmp_path, monkeypatch):
    import keras

    from tftoolkit.data import DataInfo
    from tftoolkit.serving import savedmodel

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="sigmoid")(x))
    reversed_model = keras.Model(inputs, 1.0 - model(inputs))    # its ranking upside down
    images = np.random.default_rng(0).uniform(0, 255, (16, 8, 8, 3)).astype(np.float32)
    labels = (np.asarray(model(images)) >= 0.5).astype(int)
    real = litert.convert

    def float16_reversed(model_, fmt, *args, **kwargs):
        return real(reversed_model if fmt == "tflite_float16" else model_, fmt, *args,
                    **kwargs)

    monkeypatch.setattr(litert, "convert", float16_reversed)
    info = DataInfo(MultiLabel(3), (8, 8, 3), ["a", "b", "c"], 8, "t")
    thresholds = np.full(3, 0.5, np.float32)
    quantization = savedmodel.Quantization({"val": (images, labels), "test": (images, labels)},
                                           [images], max_accuracy_drop=0.05)
    version = savedmodel.export_model(model, info, tmp_path, parity_inputs=images, card={},
                                      formats=["tflite_dynamic", "tflite_float16"],
                                      quantization=quantization, thresholds=thresholds)
    card = json.loads((version / "model_card.json").read_text())
    kept = card["formats"]["tflite_dynamic"]
    assert kept["val_float_map"] == pytest.approx(1.0) and kept["map_drop"] <= 0.05
    got = litert.LiteRTModel(version / "model_dynamic.tflite").predict(images)
    assert kept["val_agreement"] == pytest.approx(np.mean(
        (got >= 0.5) == (np.asarray(model(images)) >= 0.5)))
    refused = card["formats_refused"]["tflite_float16"]
    assert "validation mAP" in refused["reason"] and refused["map_drop"] > 0.05
    assert refused["val_agreement"] < 0.5
    assert not (version / "model_float16.tflite").exists()
    table = tftoolkit.serving.formats_table(version)
    assert "val mAP" in table.splitlines()[0] and f"{kept['val_map']:8.4f}" in table


# (preprocessing, int8 I/O, the most pixel levels its int8 file may be off): a level is
# about one step of each op's 8 bits, and each op rounds by half a step at most
@pytest.mark.parametrize("mode,int8_io,levels", [("torch", "uint8", 1.5), ("torch", "float", 1.5),
                                                 ("caffe", "uint8", 1.0)])
def test_a_full_integer_file_keeps_the_preprocessed_image_to_about_a_pixel_level(
        mode, int8_io, levels):
    import keras

    from tftoolkit.layers.preprocess import Preprocess

    inputs = keras.Input((8, 8, 3))
    identity = keras.layers.DepthwiseConv2D(1, use_bias=False, depthwise_initializer="ones")
    model = keras.Model(inputs, identity(Preprocess(mode)(inputs)))
    rng = np.random.default_rng(0)
    calibration = rng.integers(0, 256, (16, 8, 8, 3)).astype("float32")
    calibration[0, 0, :2] = [[0, 0, 0], [255, 255, 255]]
    images = rng.integers(0, 256, (16, 8, 8, 3)).astype("float32")
    flatbuffer = litert.convert(model, "tflite_int8", (8, 8, 3), [calibration], int8_io)
    got = litert.LiteRTModel(flatbuffer).predict(images).reshape(images.shape)
    want = np.asarray(model(images))
    per_level = (want.max(axis=(0, 1, 2)) - want.min(axis=(0, 1, 2))) / 255
    error = np.abs(got - want) / per_level  # in pixel levels, per channel
    # Each op rounds once over the range of its own values. Ranges calibrated as the
    # union with the next op's (an input read after the op wrote over it) rounded
    # x / 255 - mean over the normalized range: 3.4 levels off (torch), 1.3 (caffe).
    assert error.max() < levels


def test_calibration_refuses_a_model_without_calibrated_ranges():
    import keras
    import tensorflow as tf

    from tftoolkit.serving.calibration import with_own_ranges

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    # what the converter gives when its calibrate-only switch is ignored: no ranges
    plain = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    with pytest.raises(tftoolkit.ExportError, match="did not give the calibrated float model"):
        with_own_ranges(plain, [np.zeros((1, 4), np.float32)])
