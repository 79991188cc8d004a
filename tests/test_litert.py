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

    def int8_loses_too_much(candidate, reference, splits, classification):
        measured = real(candidate, reference, splits, classification)
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
    measured = litert.measure(candidate, reference, splits, classification=True)
    assert measured.drop == 0.0
    assert measured.figures["test_accuracy_drop"] == 1.0  # reported, not deciding
    assert measured.figures["val_accuracy_drop"] == 0.0
    # And a validation loss decides even when test is perfect.
    candidate = _Fixed({4: eye[1 - y_val], 3: eye[y_test]})
    assert litert.measure(candidate, reference, splits, classification=True).drop == 1.0


def test_quantized_variants_are_not_judged_without_a_validation_split():
    from tftoolkit.errors import ExportError

    eye = np.eye(2, dtype=np.float32)
    only_test = {"test": (np.zeros((2, 1)), np.array([0, 1]))}
    model = _Fixed({2: eye})
    with pytest.raises(ExportError, match="validation split"):
        litert.measure(model, model, only_test, classification=True)
