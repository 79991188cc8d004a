"""The flagship's client files as their own runtimes run them: MediaPipe Tasks'
ImageClassifier on ``mediapipe`` and ``mediapipe_int8``, ONNX Runtime on ``onnx``.

    python -m benchmarks.client_exports [--set key=value ...] [--run-dir RUN]

Trains the flagship with ``export.formats=[mediapipe,mediapipe_int8,onnx]`` (or, with
``--run-dir``, exports a finished flagship run with those formats), then, in a
process that imports neither tftoolkit nor TensorFlow, classifies every test image with
each file: test accuracy, top-1 agreement with the SavedModel on the same uint8 pixels,
median latency of one image. The Keras model's own latency of one image is measured in
this process as the baseline. The last line is the int8 file's size against the float one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import tftoolkit
from tftoolkit.models import load_keras_model
from tftoolkit.recipe import parse_overrides
from tftoolkit.rundir import RunDir

FORMATS = ["mediapipe", "mediapipe_int8", "onnx"]

CLIENT = """
import json, sys, time
sys.modules["tensorflow"] = None
import numpy as np
import mediapipe as mp
import onnxruntime
from mediapipe.tasks.python import BaseOptions, vision

version, pixels = sys.argv[1], np.load(sys.argv[2])
out = {}
for name in sys.argv[3:]:  # the MediaPipe files written (a refused one is not)
    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=f"{version}/{name}"), max_results=1)
    with vision.ImageClassifier.create_from_options(options) as classifier:
        tops, times = [], []
        for image in pixels:
            start = time.perf_counter()
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB,
                                                  data=np.ascontiguousarray(image)))
            times.append(time.perf_counter() - start)
            tops.append(result.classifications[0].categories[0].index)
    out[name] = {"top": tops, "ms": 1e3 * float(np.median(times))}
session = onnxruntime.InferenceSession(f"{version}/model.onnx",
                                       providers=["CPUExecutionProvider"])
tops, times = [], []
for image in pixels.astype(np.float32):
    start = time.perf_counter()
    probabilities = session.run(None, {"images": image[None]})[0]
    times.append(time.perf_counter() - start)
    tops.append(int(probabilities.argmax()))
out["model.onnx"] = {"top": tops, "ms": 1e3 * float(np.median(times))}
print(json.dumps(out))
"""


def _trained(overrides: dict, workdir: Path, run_dir: str | None):
    """The flagship trained with the client formats and exported (``run_dir``: a finished
    flagship run, exported again with them instead of training one)."""
    if not run_dir:
        result = tftoolkit.train("fashion_transfer", {
            **overrides, "train.run_dir": str(workdir / "runs"),
            "export.dir": str(workdir / "exports"), "train.verbose": 0,
            "export.formats": FORMATS})
        return result.export_dir, result.recipe, result.info, result.model
    run = workdir / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    recipe = json.loads((run / RunDir.RECIPE).read_text())
    if recipe["name"] != "fashion_transfer":
        raise SystemExit(f"{run_dir} is a run of {recipe['name']}, not of fashion_transfer")
    recipe["export"]["formats"] = FORMATS
    (run / RunDir.RECIPE).write_text(json.dumps(recipe))
    version = tftoolkit.export(run, to=workdir / "exports")
    return (version, RunDir(run).read_recipe(), RunDir(run).read_info(),
            load_keras_model(run / RunDir.MODEL))


def run(overrides: dict, workdir: Path, run_dir: str | None = None) -> dict:
    import tensorflow as tf

    version, recipe, info, model = _trained(overrides, workdir, run_dir)
    data = tftoolkit.load_data(recipe, info.image_size)
    x, y = data.arrays("test")
    pixels = np.clip(np.round(x), 0, 255).astype(np.uint8)  # what a camera gives MediaPipe
    served = tf.saved_model.load(str(version)).signatures["serving_default"]
    reference = np.concatenate([served(images=tf.constant(pixels[i:i + 256], tf.float32))
                                ["probabilities"].numpy().argmax(1)
                                for i in range(0, len(pixels), 256)])
    times = []
    for image in pixels[:200].astype(np.float32):
        start = time.perf_counter()
        model(image[None], training=False)
        times.append(time.perf_counter() - start)
    np.save(workdir / "pixels.npy", pixels)
    card = json.loads((version / "model_card.json").read_text())
    mediapipe_files = [card["formats"][f]["file"] for f in ("mediapipe", "mediapipe_int8")
                       if f in card["formats"]]
    proc = subprocess.run([sys.executable, "-c", CLIENT, str(version),
                           str(workdir / "pixels.npy"), *mediapipe_files],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    clients = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = {"keras (SavedModel's model)": {
        "size_bytes": (version / "model.keras").stat().st_size,
        "test_accuracy": float(np.mean(reference == y)), "agreement": 1.0,
        "ms": 1e3 * float(np.median(times))}}
    for name, got in clients.items():
        top = np.asarray(got["top"])
        rows[name] = {"size_bytes": (version / name).stat().st_size,
                      "test_accuracy": float(np.mean(top == y)),
                      "agreement": float(np.mean(top == reference)), "ms": got["ms"]}
    return {"rows": rows, "test_examples": int(len(y)), "refused": card["formats_refused"],
            "card": {f: {k: v for k, v in e.items() if "accuracy" in k or "agreement" in k}
                     for f, e in card["formats"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--run-dir", help="a finished `tftoolkit train fashion_transfer` run "
                        "to export with the client formats instead of training one")
    args = parser.parse_args()
    if args.run_dir and args.set:
        raise SystemExit("--set changes the training, which --run-dir does not run")
    overrides = parse_overrides(args.set)
    with tempfile.TemporaryDirectory() as workdir:
        report = run(overrides, Path(workdir), args.run_dir)
    rows = report["rows"]
    print(f"test images: {report['test_examples']}; refused: {report['refused'] or 'none'}")
    print(f"model card: {json.dumps(report['card'])}")
    print("| file | size | test acc. | agreement with SavedModel | ms / image |")
    print("| --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        print(f"| {name} | {row['size_bytes'] / 1024:,.0f} KB | {row['test_accuracy']:.4f} | "
              f"{row['agreement']:.4f} | {row['ms']:.2f} |")
    if "model_mediapipe_int8.tflite" not in rows:
        raise SystemExit("mediapipe_int8 was refused: no int8 figures")
    float_row, int8_row = rows["model_mediapipe.tflite"], rows["model_mediapipe_int8.tflite"]
    print(f"int8 accuracy - float: {int8_row['test_accuracy'] - float_row['test_accuracy']:+.4f}")
    print(f"int8 size / float size: {int8_row['size_bytes'] / float_row['size_bytes']:.2f}")


if __name__ == "__main__":
    main()
