"""Object detection end to end: the ``object_detection`` recipe on a detection set built
from real images (:mod:`benchmarks.detection_data`: Fashion-MNIST items composited on
photo crops), exported as a SavedModel and as MediaPipe ObjectDetector files.

    python -m benchmarks.detection [--train 3000] [--val 500] [--test 1000]
        [--image-size PX] [--epochs N] [--fine-tune-epochs N] [--mediapipe-images 200]

``--image-size`` and ``--epochs`` default to the recipe's own; ``--epochs`` is the first
stage's (the head on the frozen backbone), ``--fine-tune-epochs`` the second's.

Prints the seconds of each part apart (writing the pictures, training, the rest of the
run with its export), with the CPU seconds of this process and the load average before
and after; test mAP (IoU 0.50:0.95) and mAP@0.5 (pycocotools' figures, as metrics.json
reports them); per MediaPipe file its size, its validation and test mAP against the
float model's and its agreement with it (the model card's figures), and the int8 file's
size ratio to the float file and its test mAP@0.5 drop (``tftoolkit evaluate`` of each
file); then MediaPipe's own ObjectDetector, run in a process without TensorFlow on
``--mediapipe-images`` test pictures brought to the model's size as training brings
them, against the SavedModel's detections of the same pictures: the share of its
detections that match one of the SavedModel's (same class, IoU >= 0.9). The last line
is test mAP@0.5 (target >= 0.80, training <= 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

import tftoolkit
from benchmarks.detection_data import write_dataset
from tftoolkit.data import load_data
from tftoolkit.detection.evaluation import box_iou
from tftoolkit.evaluation import evaluate
from tftoolkit.recipe import load_recipe

RECIPE = load_recipe("object_detection")

MATCH_IOU = 0.9
# MediaPipe's ObjectDetector on a list of pictures, TensorFlow blocked: per picture its
# detections as [class name, score, xmin, ymin, width, height] in pixels.
CLIENT = """
import json, sys
sys.modules["tensorflow"] = None
import mediapipe as mp
from mediapipe.tasks.python import BaseOptions, vision

model, limit, threshold, paths = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
options = vision.ObjectDetectorOptions(base_options=BaseOptions(model_asset_path=model),
                                       max_results=limit, score_threshold=threshold)
found = []
with vision.ObjectDetector.create_from_options(options) as detector:
    for path in paths:
        found.append([[d.categories[0].category_name, d.categories[0].score,
                       d.bounding_box.origin_x, d.bounding_box.origin_y,
                       d.bounding_box.width, d.bounding_box.height]
                      for d in detector.detect(mp.Image.create_from_file(path)).detections])
print(json.dumps(found))
"""


def mediapipe_agreement(version: Path, images: np.ndarray, folder: Path) -> tuple[float, int]:
    """The share of MediaPipe's detections (float file) on ``images`` (already at the
    model's size) that match a detection of the SavedModel's ``serving_default`` (same
    class, IoU >= :data:`MATCH_IOU` in MediaPipe's whole pixels); and their count."""
    card = json.loads((version / "model_card.json").read_text())
    nms = card["data_info"]["task_config"]["nms"]
    paths = []
    for i, image in enumerate(images):
        paths.append(str(folder / f"{i:04d}.png"))
        Image.fromarray(image.astype(np.uint8)).save(paths[-1])
    proc = subprocess.run([sys.executable, "-c", CLIENT, str(version / "model_mediapipe.tflite"),
                           str(nms["max_results"]), str(nms["score_threshold"]), *paths],
                          capture_output=True, text=True, check=True)
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    served = tf.saved_model.load(str(version)).signatures["serving_default"]
    matched = total = 0
    size = images.shape[1]
    for start in range(0, len(images), 32):
        out = served(images=tf.constant(images[start:start + 32], tf.float32))
        for row, detections in enumerate(theirs[start:start + 32]):
            n = int(out["num_detections"][row])
            ymin, xmin = (out["detection_boxes"][row, :n, :2].numpy() * size).astype(int).T
            extent = (out["detection_boxes"][row, :n, 2:] - out["detection_boxes"][row, :n, :2])
            h, w = (extent.numpy() * size).astype(int).T
            ours = np.stack([ymin, xmin, ymin + h, xmin + w], 1).astype(float)
            names = np.array([c.decode() for c in
                              out["detection_class_names"][row, :n].numpy()])
            for name, _, x, y, width, height in detections:
                iou = box_iou(np.array([[y, x, y + height, x + width]], float), ours)[0]
                matched += bool(np.max(iou[names == name], initial=0.0) >= MATCH_IOU)
                total += 1
    return (matched / total if total else float("nan")), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=RECIPE.data.image_size)
    parser.add_argument("--epochs", type=int, default=RECIPE.train.epochs)
    parser.add_argument("--fine-tune-epochs", type=int, default=RECIPE.train.fine_tune_epochs)
    parser.add_argument("--mediapipe-images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        start = time.perf_counter()
        table = write_dataset(work / "set", {"train": args.train, "val": args.val,
                                             "test": args.test}, seed=args.seed)
        print(f"data generation: {args.train + args.val + args.test} pictures in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        load_before, cpu_before = os.getloadavg()[0], time.process_time()
        start = time.perf_counter()
        result = tftoolkit.train("object_detection", {
            "data.source": "csv", "data.csv": str(table), "data.split_column": "split",
            "data.image_size": args.image_size, "train.epochs": args.epochs,
            "train.fine_tune_epochs": args.fine_tune_epochs,
            "train.seed": args.seed, "train.run_dir": str(work / "runs"),
            "export.dir": str(work / "exports"), "export.formats": ["mediapipe",
                                                                    "mediapipe_int8"],
            "train.verbose": 0})
        run_seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_before
        load_after = os.getloadavg()[0]
        m = result.metrics
        for note in result.notes:
            print(f"  {note}")
        print(f"training: {result.train_seconds:.0f} s ({result.info.counts['train']} "
              f"pictures, {args.epochs} + {args.fine_tune_epochs} epochs at {args.image_size} "
              "px); the rest of the run "
              f"(test figures, export, MediaPipe files measured): "
              f"{run_seconds - result.train_seconds:.0f} s; the whole run {cpu:.0f} CPU s "
              f"of this process; load average {load_before:.2f} before, {load_after:.2f} "
              "after")
        print(f"test mAP {m['test_map']:.4f}, test mAP@0.5 {m['test_map_50']:.4f}; val mAP "
              f"{m['val_map']:.4f}, val mAP@0.5 {m['val_map_50']:.4f} "
              f"({result.info.counts['test']} test pictures)")
        version = result.export_dir
        card = json.loads((version / "model_card.json").read_text())
        files = {**card["formats"], **card["formats_refused"]}
        map_50 = {}
        for fmt, entry in files.items():
            print(f"{fmt}: {entry['size_bytes'] / 1024:.0f} KB, val mAP {entry['val_map']:.4f} "
                  f"(float model {entry['val_float_map']:.4f}), test mAP "
                  f"{entry['test_map']:.4f}, agreement with the float model "
                  f"{entry.get('test_agreement', float('nan')):.4f}"
                  + ("" if entry["file"] else f"; refused: {entry['reason']}"))
            if entry["file"]:
                report, _ = evaluate(version / entry["file"], "test",
                                     out=work / f"eval-{fmt}")
                map_50[fmt] = report["map_50"]
        if {"mediapipe", "mediapipe_int8"} <= set(card["formats"]):
            ratio = files["mediapipe_int8"]["size_bytes"] / files["mediapipe"]["size_bytes"]
            print(f"int8 file: {ratio:.2f}x the float file's size; test mAP@0.5 "
                  f"{map_50['mediapipe_int8']:.4f} against the float file's "
                  f"{map_50['mediapipe']:.4f} (drop "
                  f"{map_50['mediapipe'] - map_50['mediapipe_int8']:+.4f})")
        if "mediapipe" in card["formats"] and args.mediapipe_images:
            data = load_data(result.recipe, args.image_size)
            images, _ = data.arrays("test", args.mediapipe_images)
            (work / "resized").mkdir()
            share, count = mediapipe_agreement(version, images, work / "resized")
            print(f"MediaPipe ObjectDetector (float file, no TensorFlow) on {len(images)} "
                  f"test pictures at {args.image_size} px: {share:.4f} of its {count} "
                  f"detections match a SavedModel detection (same class, IoU >= "
                  f"{MATCH_IOU})")
    print(f"{m['test_map_50']:.4f}")


if __name__ == "__main__":
    main()
