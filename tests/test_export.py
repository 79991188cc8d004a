"""Export: served outputs equal Keras inference outputs; atomic, never overwriting."""

from __future__ import annotations

import errno
import io
import os
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import keras
import tensorflow as tf
import tftoolkit
from tftoolkit.data import DataInfo
from tftoolkit.errors import ExportError
from tftoolkit.recipe import (DataConfig, ExportConfig, ModelConfig, Recipe, TrainConfig)
from tftoolkit.serving import savedmodel
from tftoolkit.serving.savedmodel import export_model
from tftoolkit.tasks import Regression, SingleLabel

INFO = DataInfo(SingleLabel(2), (32, 32, 3), ["circle", "square"], 32, "test images")


def _images(n=4, size=32, seed=0) -> np.ndarray:
    """Whole pixel levels 0-255, as the training pipeline gives them."""
    return np.round(np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3))).astype(
        "float32")


def _model_with_augmentation_inside() -> keras.Model:
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.RandomFlip("horizontal_and_vertical", seed=1)(inputs)
    x = keras.layers.RandomRotation(0.3, seed=2)(x)
    x = keras.layers.Rescaling(1 / 255)(x)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dropout(0.5)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


def _export(model, root: Path, **kw) -> Path:
    return export_model(model, INFO, root, parity_inputs=_images(), card={"recipe": "t"}, **kw)


def test_model_with_augmentation_layers_serves_its_inference_outputs(tmp_path):
    model = _model_with_augmentation_inside()
    version = _export(model, tmp_path / "exports")
    served = tf.saved_model.load(str(version)).signatures["serving_default"]
    x = _images(8, seed=5)
    first, second = served(images=x), served(images=x)
    expected = model(x, training=False).numpy()
    assert np.abs(first["probabilities"].numpy() - expected).max() <= 1e-5
    np.testing.assert_array_equal(first["probabilities"], second["probabilities"])
    np.testing.assert_array_equal(first["class_id"], np.argmax(expected, axis=1))
    assert [n.decode() for n in first["class_name"].numpy()] == [
        INFO.class_names[i] for i in np.argmax(expected, axis=1)]


def test_any_input_size_is_resized_inside(tmp_path):
    model = _model_with_augmentation_inside()
    served = tf.saved_model.load(str(_export(model, tmp_path))).signatures["serving_default"]
    big = _images(2, size=50)
    expected = model(INFO.resize(big), training=False).numpy()
    np.testing.assert_allclose(served(images=big)["probabilities"], expected, atol=1e-5)


def _encode(images: np.ndarray, fmt: str) -> list[bytes]:
    from PIL import Image

    out = []
    for image in images.astype("uint8"):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=fmt, quality=95)
        out.append(buffer.getvalue())
    return out


def test_serve_bytes_matches_serving_default(tmp_path):
    model = _model_with_augmentation_inside()
    loaded = tf.saved_model.load(str(_export(model, tmp_path)))
    x = np.round(_images(4, seed=7))
    by_array = loaded.signatures["serving_default"](images=x)["probabilities"].numpy()
    png = loaded.signatures["serve_bytes"](image_bytes=_encode(x, "PNG"))
    np.testing.assert_allclose(png["probabilities"], by_array, atol=1e-5)  # lossless
    jpeg = loaded.signatures["serve_bytes"](image_bytes=_encode(x, "JPEG"))
    # JPEG is lossy (quality 95 on noise images): probabilities agree within 0.05.
    assert np.abs(jpeg["probabilities"].numpy() - by_array).max() <= 0.05


def test_serve_bytes_refuses_images_over_the_recipes_max_pixels(tmp_path):
    from dataclasses import replace

    model = _model_with_augmentation_inside()
    limited = replace(INFO, max_pixels=300 * 300)  # data.max_pixels=90000
    version = export_model(model, limited, tmp_path, parity_inputs=_images(), card={})
    serve = tf.saved_model.load(str(version)).signatures["serve_bytes"]
    assert serve(image_bytes=_encode(_images(1, size=300), "PNG"))["probabilities"].shape == (
        1, 2)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"declares 301x301 pixels, more than data\.max_pixels=90000"):
        serve(image_bytes=_encode(_images(1, size=301), "PNG"))
    # the card's data_info carries the limit to predict and explain
    assert DataInfo.from_dict(limited.to_dict()).max_pixels == 300 * 300


def test_failed_export_leaves_no_version_directory(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(savedmodel, "parity_check", broken)
    root = tmp_path / "exports"
    with pytest.raises(RuntimeError, match="disk full"):
        _export(_model_with_augmentation_inside(), root)
    assert list(root.iterdir()) == []


def test_parity_failure_fails_loudly_and_leaves_nothing(tmp_path, monkeypatch):
    other = _model_with_augmentation_inside()
    real_check = savedmodel.parity_check
    monkeypatch.setattr(savedmodel, "parity_check",
                        lambda path, model, *args: real_check(path, other, *args))
    root = tmp_path / "exports"
    with pytest.raises(ExportError, match="parity check failed"):
        _export(_model_with_augmentation_inside(), root)
    assert list(root.iterdir()) == []


def test_existing_versions_are_never_overwritten(tmp_path, monkeypatch):
    root = tmp_path / "exports"
    (root / "1").mkdir(parents=True)
    (root / "1" / "keep.txt").write_text("v1")
    model = _model_with_augmentation_inside()
    assert _export(model, root).name == "2"
    # A racing writer: this export computed version 1 while another took it.
    monkeypatch.setattr(savedmodel, "next_version", lambda r: 1)
    third = _export(model, root)
    assert third.name == "3"
    assert json.loads((third / "model_card.json").read_text())["version"] == 3
    assert (root / "1" / "keep.txt").read_text() == "v1"
    assert sorted(p.name for p in root.iterdir()) == ["1", "2", "3"]


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory):
    """A tiny classifier trained on shapes and exported by the recipe path."""
    from conftest import make_image_folder

    tmp = tmp_path_factory.mktemp("export")
    folder = make_image_folder(tmp / "shapes", per_class=10)
    recipe = Recipe(name="shapes", data=DataConfig(source="folder", dir=str(folder),
                                                   image_size=32),
                    model=ModelConfig(architecture="cnn", filters=[8]),
                    train=TrainConfig(epochs=1, batch_size=8, verbose=0,
                                      run_dir=str(tmp / "runs")),
                    export=ExportConfig(dir=str(tmp / "exports")))
    result = tftoolkit.train(recipe)
    return result, folder


def test_training_exports_a_complete_version(trained_export):
    result, _ = trained_export
    version = result.export_dir
    assert version.name == "1" and version.parent.name == "shapes"
    assert (version / "labels.txt").read_text().split() == ["circle", "square"]
    card = json.loads((version / "model_card.json").read_text())
    for key in ("recipe", "resolved_recipe", "dataset", "class_names", "input_shape",
                "preprocessing", "metrics", "seed", "train_seconds", "versions", "parity"):
        assert key in card, key
    assert card["parity"]["max_abs_diff"] <= 1e-5
    assert set(card["versions"]) >= {"tftoolkit", "tensorflow", "keras"}
    # the run's baselines, beside the model's own validation figure
    assert [b["name"] for b in card["baselines"]["baselines"]] == ["pixels"]
    assert card["baselines"]["model"] == {"val_accuracy": card["metrics"]["val_accuracy"]}
    reloaded = keras.models.load_model(version / "model.keras")
    assert reloaded.output_shape == (None, 2)


def test_export_verb_writes_the_next_version(trained_export, tmp_path, cli):
    result, _ = trained_export
    proc = cli("export", result.run_dir, "--to", tmp_path / "elsewhere")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "elsewhere" / "1" / "saved_model.pb").is_file()


def test_two_exports_at_once_each_get_their_own_version(trained_export, tmp_path):
    result, _ = trained_export
    command = [sys.executable, "-m", "tftoolkit", "export", str(result.run_dir), "--to",
               str(tmp_path / "shared")]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-2000:]
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["1", "2"]
    for version in ("1", "2"):
        card = json.loads((tmp_path / "shared" / version / "model_card.json").read_text())
        assert card["version"] == int(version)


def test_saved_model_cli_lists_and_runs_the_signatures(trained_export, tmp_path):
    version = str(trained_export[0].export_dir)
    np.save(tmp_path / "images.npy", np.full((2, 40, 40, 3), 128.0, dtype=np.float32))
    shown = subprocess.run(["saved_model_cli", "show", "--dir", version, "--all"],
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "signature_def['serving_default']" in shown.stdout
    assert "signature_def['serve_bytes']" in shown.stdout
    ran = subprocess.run(["saved_model_cli", "run", "--dir", version, "--tag_set", "serve",
                          "--signature_def", "serving_default", "--inputs",
                          f"images={tmp_path / 'images.npy'}"],
                         capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert "probabilities" in ran.stdout and "class_name" in ran.stdout


def test_export_serves_in_a_process_that_imports_only_tensorflow(trained_export):
    result, folder = trained_export
    image = sorted((folder / "circle").glob("*.png"))[0]
    code = (
        "import sys, tensorflow as tf\n"
        f"m = tf.saved_model.load({str(result.export_dir)!r})\n"
        f"out = m.signatures['serve_bytes'](image_bytes=tf.constant([open({str(image)!r}, "
        "'rb').read()]))\n"
        "assert 'tftoolkit' not in sys.modules\n"
        "print(out['class_name'].numpy()[0].decode(), out['probabilities'].shape)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    name, shape = proc.stdout.strip().split(" ", 1)
    assert name in ("circle", "square") and shape == "(1, 2)"


def test_predict_cli_prints_top_classes(trained_export, cli):
    result, folder = trained_export
    images = [str(sorted((folder / c).glob("*.jpg"))[0]) for c in ("circle", "square")]
    proc = cli("predict", result.export_dir, *images, "--top-k", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == images[0] and lines[3] == images[1]
    probabilities = [float(line.split("%")[0]) for line in lines if "%" in line]
    assert len(probabilities) == 4
    assert probabilities[0] + probabilities[1] == pytest.approx(100, abs=0.02)


def test_predict_rejects_a_non_export(tmp_path, cli):
    proc = cli("predict", tmp_path, "x.jpg")
    assert proc.returncode == 2 and "saved_model.pb" in proc.stderr


def test_tflite_format_is_written_and_parity_checked(tmp_path):
    model = _model_with_augmentation_inside()
    version = _export(model, tmp_path / "exports", formats=["tflite"])
    card = json.loads((version / "model_card.json").read_text())
    assert card["formats"]["tflite"]["max_abs_diff"] <= 1e-5
    # a fixed-size file says what size it takes and how training resized to it
    assert card["formats"]["tflite"]["input_size"] == [32, 32]
    assert ("by bilinear resizing, antialiased when downscaling"
            in card["formats"]["tflite"]["client_resize"])
    interpreter = tf.lite.Interpreter(model_path=str(version / "model.tflite"))
    interpreter.resize_tensor_input(0, [3, 32, 32, 3])  # the model's own size
    interpreter.allocate_tensors()
    x = _images(3, size=32, seed=9)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(out, model(x, training=False), atol=1e-5)


def test_a_format_whose_runtime_is_missing_stops_before_anything_is_written(tmp_path,
                                                                          monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    root = tmp_path / "exports"
    with pytest.raises(ExportError, match=r"'onnx'.*onnxruntime.*tftoolkit\[onnx\].*Nothing"):
        _export(_model_with_augmentation_inside(), root, formats=["onnx"])
    assert not root.exists() or list(root.iterdir()) == []


def test_mediapipe_formats_are_refused_for_a_model_that_is_not_an_image_classifier(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    info = DataInfo(Regression(), (4,), [], None, "rows")
    with pytest.raises(ExportError, match="mediapipe.*regression.*Nothing was exported"):
        export_model(model, info, tmp_path / "exports", parity_inputs=np.zeros((2, 4), "f4"),
                     card={}, formats=["mediapipe"])
    assert not (tmp_path / "exports").exists()


def test_calibration_parity_and_capped_measurements_mix_the_classes_of_a_sorted_folder(
        tmp_path):
    from conftest import make_image_folder

    from tftoolkit.rundir import RunDir
    from tftoolkit.serving import quantization_inputs, save_parity_inputs

    folder = make_image_folder(tmp_path / "sorted", classes=("a", "b", "c", "d"),
                               per_class=20, size=16)  # read class by class
    recipe = Recipe(name="sorted", data=DataConfig(source="folder", dir=str(folder),
                                                   image_size=16, test_fraction=0.25),
                    train=TrainConfig(batch_size=8, run_dir=str(tmp_path / "runs")),
                    export=ExportConfig(calibration_steps=2, eval_examples=4,
                                        formats=["tflite_int8"]))
    data = tftoolkit.load_data(recipe, 16)

    def classes_of(images, split):  # each (distinct, noisy) image found in its split
        x, y = data.arrays(split)
        flat = x.reshape(len(x), -1)
        return [int(y[np.flatnonzero((flat == i.reshape(-1)).all(1))[0]]) for i in images]

    quantization = quantization_inputs(data)
    assert len(quantization.calibration) == 2
    for batch in quantization.calibration:
        assert len(set(classes_of(batch, "train"))) >= 3
    for split in ("val", "test"):
        x, y = quantization.splits[split]
        assert len(x) == 4 and len(set(y.tolist())) >= 3
        assert classes_of(x, split) == y.tolist()
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    save_parity_inputs(run, data)
    parity = np.load(run / RunDir.PARITY_INPUTS)
    assert len(set(classes_of(parity, "val"))) >= 3
    # Seeded: the same samples every time.
    again = quantization_inputs(data)
    np.testing.assert_array_equal(again.calibration[0], quantization.calibration[0])


def _photo(side: int) -> np.ndarray:
    """A real photo (scikit-image's astronaut, 512 px) as a client would send it at
    ``side`` px: whole pixel levels, float."""
    from skimage import data as photos

    image = tf.image.resize(photos.astronaut()[None].astype("float32"), (side, side),
                            antialias=True)
    return np.round(np.clip(image.numpy(), 0, 255))


@pytest.mark.parametrize("method", ["area", "bicubic", "nearest"])
def test_both_signatures_serve_the_training_resize_at_any_client_size(tmp_path, method):
    from dataclasses import replace

    model = _model_with_augmentation_inside()
    info = replace(INFO, resize_method=method)
    version = export_model(model, info, tmp_path, parity_inputs=_images(),
                           card={"recipe": "t"})
    loaded = tf.saved_model.load(str(version))
    for side in (28, 300, 640):
        client = _photo(side)
        expected = model(info.resize(client), training=False).numpy()  # as in training
        by_array = loaded.signatures["serving_default"](images=client)["probabilities"]
        by_bytes = loaded.signatures["serve_bytes"](image_bytes=_encode(client, "PNG"))
        np.testing.assert_allclose(by_array, expected, atol=1e-5)
        np.testing.assert_allclose(by_bytes["probabilities"], expected, atol=1e-5)
    assert DataInfo.from_dict(info.to_dict()).resize == info.resize  # kept in the card


def test_the_parity_check_serves_other_sizes_and_catches_a_different_resize(tmp_path,
                                                                            monkeypatch):
    from dataclasses import replace

    model = _model_with_augmentation_inside()
    trained_with = replace(INFO, resize_method="area")
    real_write = savedmodel.write_savedmodel  # a server that resizes another way
    monkeypatch.setattr(savedmodel, "write_savedmodel",
                        lambda m, info, path, *rest: real_write(m, INFO, path, *rest))
    with pytest.raises(ExportError, match=r"serving_default at \d+ px differs"):
        export_model(model, trained_with, tmp_path / "skewed",
                     parity_inputs=_images(), card={"recipe": "t"})
    assert not (tmp_path / "skewed" / "1").exists()


def test_downscaling_is_antialiased_and_upscaling_is_plain_interpolation():
    from tftoolkit.data.pipeline import Resize

    resize = Resize(32, "bilinear")
    # A photo sent at 300 and at 640 px reaches the model nearly the same...
    near = np.abs(resize(_photo(300)) - resize(_photo(640))).max()
    aliased = np.abs(np.round(tf.image.resize(_photo(300), (32, 32)))
                     - np.round(tf.image.resize(_photo(640), (32, 32)))).max()
    assert near < 0.25 * aliased, (near, aliased)
    # ...and an upscale (the flagship's 28 -> 97 px) is the plain bilinear one, unchanged.
    small = _photo(28)
    np.testing.assert_array_equal(
        Resize(97, "bilinear")(small),
        np.clip(np.round(tf.image.resize(small, (97, 97), method="bilinear")), 0, 255))


def test_a_killed_exports_temporary_folder_is_removed_by_the_next_export(tmp_path):
    import socket

    from tftoolkit.tempfiles import temporary_path

    root = tmp_path / "exports"
    host = socket.gethostname()
    assert temporary_path(root).name.startswith(f".tmp-{host}-{os.getpid()}-")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = root / f".tmp-{host}-{dead.pid}-0123abcd"
    (stale / "variables").mkdir(parents=True)
    (stale / "variables" / "variables.data-00000-of-00001").write_bytes(b"0" * 1000)
    live = root / f".tmp-{host}-{os.getpid()}-4567cdef"  # under way in this process
    live.mkdir()
    # on a shared disk: another host's export, whose process id means nothing here
    elsewhere = root / f".tmp-other-host.example.org-{dead.pid}-89abcdef"
    elsewhere.mkdir()
    assert _export(_model_with_augmentation_inside(), root).name == "1"
    assert sorted(p.name for p in root.iterdir()) == sorted([live.name, elsewhere.name, "1"])


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    tf.errors.ResourceExhaustedError(None, None, "saved_model/variables/variables.data: "
                                                 "No space left on device")])
def test_a_full_disk_during_export_is_one_clear_error_and_leaves_nothing(tmp_path,
                                                                         monkeypatch, error):
    def full_disk(*args, **kwargs):
        raise error

    monkeypatch.setattr(keras.Model, "save", full_disk)  # the last file an export writes
    root = tmp_path / "exports"
    with pytest.raises(ExportError, match=r"disk is full: the export to .*exports failed "
                                          r"\(.*No space left on device.*no version was "
                                          r"written.*tftoolkit export RUN_DIR"):
        _export(_model_with_augmentation_inside(), root)
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncated_saved_model_pb", "no_labels_txt"])
def test_predict_on_a_damaged_export_is_one_line_with_the_fix(trained_export, tmp_path,
                                                              capsys, damage):
    import shutil

    from tftoolkit.cli import main

    result, folder = trained_export
    version = tmp_path / "1"
    shutil.copytree(result.export_dir, version)
    if damage == "no_labels_txt":
        (version / "labels.txt").unlink()
        expected = rf"{version} has no labels\.txt .*export the run again"
    else:
        pb = version / "saved_model.pb"
        pb.write_bytes(pb.read_bytes()[: pb.stat().st_size // 3])
        expected = rf"cannot load the SavedModel in {version}: .*damaged or incomplete"
    image = str(sorted((folder / "circle").glob("*.jpg"))[0])
    assert main(["predict", str(version), image]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(expected, err), err


def test_predict_and_explain_name_a_refused_image_and_why(trained_export, tmp_path, cli):
    from PIL import Image

    result, folder = trained_export
    litert = export_model(_model_with_augmentation_inside(), INFO, tmp_path / "exports",
                          parity_inputs=_images(), card={"data_info": INFO.to_dict()},
                          formats=["tflite"]) / "model.tflite"
    bomb, text = tmp_path / "bomb.png", tmp_path / "notes.jpg"
    Image.new("1", (8000, 6000)).save(bomb)  # a 1-bit PNG of a few KB declaring 48 MP
    text.write_text("not an image")
    good = next(folder.rglob("*.png"))
    for image, expected in (
            (bomb, r"declares 8000x6000 pixels, more than data\.max_pixels=40000000\. "
                   r"Fix: downscale"),
            (text, r"its size cannot be read from its header: not a JPEG, PNG, GIF, BMP or "
                   r"WebP file.* Fix: give JPEG")):
        for argv in (("predict", result.export_dir, good, image), ("predict", litert, image),
                     ("explain", result.export_dir, image, "--out", tmp_path / "cams")):
            proc = cli(*argv)
            assert proc.returncode == 2, (argv, proc.stderr)
            assert proc.stderr.count("\n") == 1, proc.stderr
            assert re.search(rf"refused: {re.escape(str(image))}: {expected}", proc.stderr), (
                argv, proc.stderr)
