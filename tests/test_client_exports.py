"""Files that other runtimes load as they are: MediaPipe Tasks' ImageClassifier, ONNX Runtime.

Each client runs in a process that imports neither tftoolkit nor TensorFlow.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import keras
import tensorflow as tf
import tftoolkit
from conftest import shapes_recipe
from tftoolkit.data import DataInfo
from tftoolkit.rundir import RunDir
from tftoolkit.serving import litert, mediapipe_tasks, quantization_inputs
from tftoolkit.serving.savedmodel import export_model
from tftoolkit.tasks import SingleLabel

pytest.importorskip("mediapipe")
pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

FORMATS = ["mediapipe", "mediapipe_int8", "onnx"]

# MediaPipe's ImageClassifier and ONNX Runtime on the exported files, TensorFlow blocked.
CLIENT = """
import json, sys
sys.modules["tensorflow"] = None  # mediapipe imports it when it can; it must not need it
import numpy as np
import mediapipe as mp
import onnxruntime
from mediapipe.tasks.python import BaseOptions, vision

version, images, pixels = sys.argv[1], sys.argv[2:-1], sys.argv[-1]
out = {}
for name in ("model_mediapipe.tflite", "model_mediapipe_int8.tflite"):
    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=f"{version}/{name}"), max_results=1)
    with vision.ImageClassifier.create_from_options(options) as classifier:
        tops = []
        for path in images:
            top = classifier.classify(mp.Image.create_from_file(path)).classifications[0]
            tops.append([top.categories[0].index, top.categories[0].category_name])
    out[name] = tops
session = onnxruntime.InferenceSession(f"{version}/model.onnx",
                                       providers=["CPUExecutionProvider"])
out["onnx"] = session.run(None, {"images": np.load(pixels)})[0].tolist()
out["tensorflow_imported"] = any(m.startswith(("tensorflow", "tftoolkit")) and sys.modules[m]
                                 for m in sys.modules)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from conftest import make_image_folder

    tmp = tmp_path_factory.mktemp("clients")
    folder = make_image_folder(tmp / "shapes", per_class=32)
    result = tftoolkit.train(shapes_recipe(folder, tmp, 0.5, formats=FORMATS,
                                           max_accuracy_drop=1.0))
    data = tftoolkit.load_data(result.recipe, 32)
    test_files = [str(p) for p in data.splits["test"].paths]
    return result, test_files, tmp


@pytest.fixture(scope="module")
def clients(exported):
    """What each client returns on the test split's image files."""
    result, test_files, tmp = exported
    pixels = tmp / "test_pixels.npy"
    np.save(pixels, _pixels(test_files))
    proc = subprocess.run([sys.executable, "-c", CLIENT, str(result.export_dir), *test_files,
                           str(pixels)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _pixels(files: list[str]) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32) for f in files])


def _savedmodel_probabilities(version, files: list[str]) -> np.ndarray:
    served = tf.saved_model.load(str(version)).signatures["serving_default"]
    return served(images=tf.constant(_pixels(files)))["probabilities"].numpy()


def test_mediapipe_image_classifier_gives_the_savedmodels_classes(exported, clients):
    result, test_files, _ = exported
    assert clients["tensorflow_imported"] is False
    card = json.loads((result.export_dir / "model_card.json").read_text())
    top = _savedmodel_probabilities(result.export_dir, test_files).argmax(1)
    names = [card["class_names"][i] for i in top]
    assert len(test_files) == 32
    assert clients["model_mediapipe.tflite"] == [[int(i), n] for i, n in zip(top, names)]
    int8 = clients["model_mediapipe_int8.tflite"]
    assert all(name == card["class_names"][i] for i, name in int8)
    agreement = float(np.mean([i == t for (i, _), t in zip(int8, top)]))
    assert agreement == pytest.approx(card["formats"]["mediapipe_int8"]["test_agreement"])


def test_onnx_runtime_matches_the_savedmodels_probabilities(exported, clients):
    result, test_files, _ = exported
    expected = _savedmodel_probabilities(result.export_dir, test_files)
    np.testing.assert_allclose(np.asarray(clients["onnx"]), expected, atol=1e-4)
    card = json.loads((result.export_dir / "model_card.json").read_text())
    assert card["formats"]["onnx"]["max_abs_diff"] <= 1e-4
    assert card["formats"]["onnx"]["input_size"] == [32, 32]
    assert "antialiased when downscaling" in card["formats"]["onnx"]["client_resize"]


def test_mediapipe_files_are_measured_in_the_card_with_their_metadata(exported):
    result, _, _ = exported
    card = json.loads((result.export_dir / "model_card.json").read_text())
    for fmt, dtype in (("mediapipe", np.float32), ("mediapipe_int8", np.uint8)):
        entry = card["formats"][fmt]
        path = result.export_dir / entry["file"]
        assert entry["size_bytes"] == path.stat().st_size
        for key in ("val_accuracy", "test_accuracy", "val_agreement", "test_agreement"):
            assert 0 <= entry[key] <= 1, key
        assert entry["latency_ms"] > 0 and entry["examples"]["test"] == 32
        model = litert.LiteRTModel(path)
        assert model.input["shape"].tolist() == [1, 32, 32, 3]
        assert model.input["dtype"] == dtype and model.output["shape"].tolist() == [1, 2]
        metadata = json.loads((result.export_dir / entry["metadata_file"]).read_text())
        graph = metadata["subgraph_metadata"][0]
        normalization = graph["input_tensor_metadata"][0]["process_units"][0]["options"]
        assert (normalization["mean"], normalization["std"]) == ([0.0], [1.0])
        assert graph["output_tensor_metadata"][0]["associated_files"][0]["name"] == "labels.txt"
        assert mediapipe_tasks.packed_labels(path) == card["class_names"]
        assert entry["client_resize"] in metadata["description"]
        assert entry["input_size"] == [32, 32]
        assert "by bilinear resizing, antialiased when downscaling" in entry["client_resize"]
    assert card["formats"]["mediapipe_int8"]["size_bytes"] < \
        card["formats"]["mediapipe"]["size_bytes"]


def test_predict_reads_the_labels_from_a_mediapipe_files_metadata(exported, tmp_path):
    result, test_files, _ = exported
    alone = tmp_path / "classifier.tflite"  # no labels.txt nor model card beside it
    shutil.copy(result.export_dir / "model_mediapipe.tflite", alone)
    got = tftoolkit.predict(alone, test_files[:4], top_k=2)
    want = tftoolkit.predict(result.export_dir, test_files[:4], top_k=2)
    for a, b in zip(got, want):
        assert [n for n, _ in a] == [n for n, _ in b]
        assert a[0][1] == pytest.approx(b[0][1], abs=1e-5)


def test_a_mediapipe_file_losing_too_much_is_refused_with_its_metadata(exported, monkeypatch):
    result, _, tmp = exported
    real = litert.measure

    def int8_loses_too_much(*args):
        measured = real(*args)
        if args[0].input["dtype"] != np.float32:
            measured.drop = 2.0
        return measured

    monkeypatch.setattr(litert, "measure", int8_loses_too_much)
    data = tftoolkit.load_data(result.recipe, 32)
    version = export_model(result.model, data.info, tmp / "refusing",
                           parity_inputs=np.load(result.run_dir / RunDir.PARITY_INPUTS), card={},
                           formats=["mediapipe_int8"],
                           quantization=quantization_inputs(data))
    card = json.loads((version / "model_card.json").read_text())
    assert "max_accuracy_drop=1.0" in card["formats_refused"]["mediapipe_int8"]["reason"]
    assert not (version / "model_mediapipe_int8.tflite").exists()
    assert not (version / "model_mediapipe_int8_metadata.json").exists()
    assert (version / "saved_model.pb").is_file()
    assert sorted(p.name for p in (tmp / "refusing").iterdir()) == ["1"]  # no temp left


def _three_classes(size: int, resize_method: str) -> DataInfo:
    """Images of ``size`` px in three classes a, b, c, resized by ``resize_method``."""
    return DataInfo(SingleLabel(3), (size, size, 3), ["a", "b", "c"], size, "t",
                    resize_method=resize_method)


def _flattening_classifier() -> keras.Model:
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, activation="relu")(x))
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def test_mediapipe_int8_takes_raw_pixels_even_when_calibrated_on_dark_images():
    dark = [np.random.default_rng(0).integers(10, 100, (8, 16, 16, 3)).astype("float32")]
    flatbuffer, _ = mediapipe_tasks.convert(_flattening_classifier(), "mediapipe_int8",
                                            _three_classes(16, "bilinear"), dark)
    # MediaPipe writes uint8 pixels into the input as they are: scale 1, zero point 0
    assert litert.LiteRTModel(flatbuffer).input["quantization"] == (1.0, 0)


def test_a_mediapipe_files_metadata_says_how_to_resize_images_for_it():
    flatbuffer, metadata = mediapipe_tasks.convert(_flattening_classifier(), "mediapipe",
                                                   _three_classes(16, "nearest"))
    text = json.loads(metadata)["description"]
    assert "16x16 by nearest resizing, rounded" in text and "MediaPipe resizes" in text
    assert text.encode() in flatbuffer  # in the file's packed metadata, not only the JSON


def test_a_file_of_a_fixed_batch_is_measured_one_image_at_a_time():
    model = _flattening_classifier()
    flatbuffer, _ = mediapipe_tasks.convert(model, "mediapipe", _three_classes(16, "bilinear"))
    images = np.random.default_rng(1).uniform(0, 255, (10, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(litert.LiteRTModel(flatbuffer).predict(images),
                               model(images, training=False), atol=1e-5)


def test_onnx_serves_inference_outputs_and_two_columns_for_one_sigmoid(tmp_path):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.RandomFlip("horizontal_and_vertical", seed=1)(inputs)
    x = keras.layers.Rescaling(1 / 255)(x)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.Dropout(0.5)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    info = DataInfo(SingleLabel(2, "binary"), (16, 16, 3), ["no", "yes"], 16, "t")
    images = np.random.default_rng(0).uniform(0, 255, (6, 16, 16, 3)).astype("float32")
    version = export_model(model, info, tmp_path, parity_inputs=images, card={},
                           formats=["onnx"])
    import onnxruntime

    session = onnxruntime.InferenceSession(str(version / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images})[0]
    p = model(images, training=False).numpy()
    np.testing.assert_allclose(got, np.concatenate([1 - p, p], axis=1), atol=1e-5)


def test_the_parser_version_follows_the_fields_the_metadata_uses():
    import flatbuffers
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema

    def packed(metadata) -> bytes:
        builder = flatbuffers.Builder(0)
        builder.Finish(metadata.Pack(builder), b"M001")
        return bytes(builder.Output())

    labels = schema.AssociatedFileT()
    labels.name, labels.type = "labels.txt", schema.AssociatedFileType.TENSOR_AXIS_LABELS
    tensor = schema.TensorMetadataT()
    tensor.associatedFiles = [labels]
    graph = schema.SubGraphMetadataT()
    graph.outputTensorMetadata = [tensor]
    root = schema.ModelMetadataT()
    root.subgraphMetadata = [graph]
    assert mediapipe_tasks.minimum_parser_version(packed(root)) == "1.0.0"
    labels.version = "2"
    assert mediapipe_tasks.minimum_parser_version(packed(root)) == "1.4.1"
    graph.customMetadata = [schema.CustomMetadataT()]
    assert mediapipe_tasks.minimum_parser_version(packed(root)) == "1.5.0"


# --- a multi-label classifier ------------------------------------------------------------

# MediaPipe's ImageClassifier on a multi-label file, TensorFlow blocked: every score (one
# call with a threshold near 0: it takes 0 or below as unset, and falls back on the
# file's), and the categories it returns with the file's own defaults.
MULTILABEL_CLIENT = """
import json, sys
sys.modules["tensorflow"] = None
import mediapipe as mp
from mediapipe.tasks.python import BaseOptions, vision

version, images = sys.argv[1], sys.argv[2:]
out = {}
for fmt in ("mediapipe", "mediapipe_int8"):
    path = f"{version}/model_{fmt}.tflite"
    every = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=path),
                                          score_threshold=1e-9)
    default = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=path))
    with vision.ImageClassifier.create_from_options(every) as classifier:
        scores = []
        for image in images:
            categories = classifier.classify(mp.Image.create_from_file(image)).classifications[0]
            by_index = {c.index: c.score for c in categories.categories}
            scores.append([by_index[i] for i in range(len(by_index))])
    with vision.ImageClassifier.create_from_options(default) as classifier:
        returned = [sorted(c.index for c in classifier.classify(
            mp.Image.create_from_file(image)).classifications[0].categories) for image in images]
    # the per-class thresholds, as a client reads them from the file's metadata
    metadata = json.load(open(f"{version}/model_{fmt}_metadata.json"))
    described = metadata["subgraph_metadata"][0]["output_tensor_metadata"][0]["description"]
    thresholds = list(json.loads(described.split("Per-class thresholds: ", 1)[1]).values())
    labels = [[s >= t for s, t in zip(row, thresholds)] for row in scores]
    out[fmt] = {"scores": scores, "returned": returned, "labels": labels}
out["tensorflow_imported"] = any(m.startswith(("tensorflow", "tftoolkit")) and sys.modules[m]
                                 for m in sys.modules)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def multilabel_clients(tmp_path_factory):
    """A multi-label run exported as both MediaPipe files, what MediaPipe returns on its
    test images, what the SavedModel serves for them, the export and those images."""
    from conftest import make_multilabel_table, multilabel_recipe

    tmp = tmp_path_factory.mktemp("multilabel_clients")
    # seed 1: every label has positive and negative validation images to choose on
    recipe = multilabel_recipe(make_multilabel_table(tmp / "tags", seed=1)).with_overrides({
        "export.enabled": True, "export.formats": ["mediapipe", "mediapipe_int8"],
        "export.max_accuracy_drop": 1.0, "train.verbose": 0, "train.epochs": 4,
        "train.learning_rate": 3e-3, "train.run_dir": str(tmp / "runs"),
        "export.dir": str(tmp / "exports")})
    result = tftoolkit.train(recipe)
    files = [str(p) for p in tftoolkit.load_data(recipe, 32).splits["test"].paths]
    proc = subprocess.run([sys.executable, "-c", MULTILABEL_CLIENT, str(result.export_dir),
                           *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = tf.saved_model.load(str(result.export_dir)).signatures["serving_default"](
        images=tf.constant(_pixels(files)))
    card = json.loads((result.export_dir / "model_card.json").read_text())
    return (card, json.loads(proc.stdout.strip().splitlines()[-1]),
            {k: v.numpy() for k, v in served.items()}, result.export_dir, files)


def test_mediapipe_scores_a_multilabel_file_as_the_savedmodels_probabilities_and_labels(
        multilabel_clients):
    card, clients, served, _, _ = multilabel_clients
    assert clients["tensorflow_imported"] is False
    got = clients["mediapipe"]
    assert served["probabilities"].shape == (12, 3)
    np.testing.assert_allclose(got["scores"], served["probabilities"], atol=1e-5)
    np.testing.assert_array_equal(got["labels"], served["labels"])
    thresholds = np.array(list(card["thresholds"].values()))
    assert len(set(thresholds.tolist())) > 1 and thresholds.min() > 0  # each label its own
    # MediaPipe's one threshold, by default the lowest: every label above its own is in
    for scores, returned, labels in zip(got["scores"], got["returned"], got["labels"]):
        assert returned == [i for i, s in enumerate(scores) if s >= thresholds.min()]
        assert set(np.flatnonzero(labels)) <= set(returned)
    int8 = np.array(clients["mediapipe_int8"]["labels"])
    assert np.mean(int8 == served["labels"]) == pytest.approx(
        card["formats"]["mediapipe_int8"]["test_agreement"])


def test_a_multilabel_mediapipe_file_carries_its_thresholds_and_is_judged_by_map(
        multilabel_clients):
    card, _, _, version, _ = multilabel_clients
    for fmt in ("mediapipe", "mediapipe_int8"):
        entry = card["formats"][fmt]
        assert set(entry) >= {"val_map", "val_float_map", "test_map", "val_agreement",
                              "test_agreement", "map_drop"}
        assert entry["map_drop"] == pytest.approx(entry["val_float_map"] - entry["val_map"])
        assert "val_accuracy" not in entry and "val_loss" not in entry
        model = litert.LiteRTModel(version / entry["file"])
        assert model.output["shape"].tolist() == [1, 3]
        assert mediapipe_tasks.packed_labels(version / entry["file"]) == card["class_names"]
        metadata = json.loads((version / entry["metadata_file"]).read_text())
        output = metadata["subgraph_metadata"][0]["output_tensor_metadata"][0]
        described = output["description"].split(mediapipe_tasks.THRESHOLDS_PREFIX, 1)[1]
        assert json.loads(described) == card["thresholds"]
        # (the JSON leaves out a field at its default, 0)
        assert output["process_units"][0]["options"].get("global_score_threshold", 0.0) == \
            pytest.approx(min(card["thresholds"].values()))


def test_predict_on_a_multilabel_mediapipe_file_alone_applies_its_packed_thresholds(
        multilabel_clients, tmp_path):
    card, _, _, version, files = multilabel_clients
    alone = tmp_path / "tags.tflite"  # no model card nor labels.txt beside it
    shutil.copy(version / card["formats"]["mediapipe"]["file"], alone)
    assert mediapipe_tasks.packed_thresholds(alone) == card["thresholds"]
    assert mediapipe_tasks.packed_thresholds(version / "model_card.json") is None
    got = tftoolkit.predict(alone, files, top_k=3)
    want = tftoolkit.predict(version, files, top_k=3)
    assert [[n for n, _ in image] for image in got] == [[n for n, _ in image] for image in want]
    assert any(len(image) != 3 for image in got)  # thresholds applied, not the top 3
