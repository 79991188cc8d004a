"""The flagship task with each offline backbone at equal training time: MobileNetV2
(torchvision's weights, the flagship's), EfficientNet-Lite0 and Lite2 (Google's ImageNet
weights, imported), each fine-tuned on Fashion-MNIST as the flagship recipe does.

    python -m benchmarks.backbones [--train N] [--seconds S] [--size PX|native] [--pilot M]

Equal time: a pilot run of each backbone (one epoch on ``--pilot`` examples) measures
its training seconds per image and epoch; the real run then gets as many training images
(at most ``--train``) as fit ``--seconds`` in the flagship's 3 epochs. Each run is then
exported as MediaPipe float and full-integer files, measured by the export on the test
split through the LiteRT interpreter (a file the export refuses for losing validation
accuracy is still measured, and shown as refused). Printed per backbone: test accuracy, training
seconds (wall and process CPU), the load average, and each MediaPipe file's size and
test accuracy. The last line names the backbone with the best test accuracy at this
equal training time, and Lite0's int8-to-float size ratio and accuracy difference.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import tftoolkit

# name, architecture, weights, model.unfreeze (the top quarter of the blocks, as the
# flagship's block_13 is for MobileNetV2's 17)
BACKBONES = [
    ("MobileNetV2", "mobilenet_v2", "imagenet-torchvision", "block_13"),
    ("EfficientNet-Lite0", "efficientnet_lite0", "imagenet", "block6a"),
    ("EfficientNet-Lite2", "efficientnet_lite2", "imagenet", "block6a"),
]
FLAGSHIP_SIZE, EPOCHS, VALIDATION = 97, 3, 0.2
FORMATS = ["mediapipe", "mediapipe_int8"]


def _overrides(architecture: str, weights: str, unfreeze: str, size: int, examples: int,
               workdir: Path) -> dict:
    return {"model.architecture": architecture, "model.weights": weights,
            "model.unfreeze": unfreeze, "data.image_size": size,
            "data.max_examples": examples, "train.epochs": EPOCHS,
            "train.run_dir": str(workdir / "runs"), "train.verbose": 0,
            "export.enabled": False, "export.formats": FORMATS,
            "export.dir": str(workdir / "exports")}


def _examples_for(train_images: int) -> int:
    """``data.max_examples`` that leaves ``train_images`` for training (the rest of the
    source's training split is validation; the test split is capped at it too)."""
    return int(round(train_images / (1 - VALIDATION)))


def _train(overrides: dict) -> tuple[tftoolkit.TrainResult, float, float]:
    """The run, its training wall seconds and the process CPU seconds it took."""
    cpu = time.process_time()
    result = tftoolkit.train("fashion_transfer", overrides)
    return result, result.train_seconds, time.process_time() - cpu


def run_backbone(name: str, architecture: str, weights: str, unfreeze: str, size: int,
                 train: int, seconds: float, pilot: int, workdir: Path) -> dict:
    pilot_run, pilot_seconds, _ = _train({
        **_overrides(architecture, weights, unfreeze, size, _examples_for(pilot), workdir),
        "train.epochs": 1})
    per_image = pilot_seconds / pilot_run.info.counts["train"]
    images = train if seconds <= 0 else max(64, min(train, int(seconds / (EPOCHS *
                                                                        per_image))))
    load_before = os.getloadavg()[0]
    result, wall, cpu = _train(_overrides(architecture, weights, unfreeze, size,
                                          _examples_for(images), workdir))
    load = (load_before + os.getloadavg()[0]) / 2
    version = tftoolkit.export(result.run_dir, to=workdir / "exports" / architecture)
    card = json.loads((version / "model_card.json").read_text())
    refused = card.get("formats_refused", {})  # measured, not written: figures kept
    files = {fmt: {"size_bytes": entry["size_bytes"],
                   "test_accuracy": entry.get("test_accuracy"), "written": fmt not in refused}
             for fmt, entry in {**card["formats"], **refused}.items()}
    return {"name": name, "size": size, "train_images": result.info.counts["train"],
            "test_images": result.info.counts["test"],
            "test_accuracy": result.metrics["test_accuracy"], "train_seconds": wall,
            "cpu_seconds": cpu, "load": load, "pilot_seconds_per_image": per_image,
            "files": files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=40000,
                        help="most training images per backbone (the flagship's 40,000)")
    parser.add_argument("--seconds", type=float, default=300.0,
                        help="training seconds per backbone (3 epochs); 0: --train for all")
    parser.add_argument("--size", default=str(FLAGSHIP_SIZE),
                        help="image side for every backbone, or 'native' (97 / 224 / 260)")
    parser.add_argument("--pilot", type=int, default=1000,
                        help="training images of the pilot that measures each backbone")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name, architecture, weights, unfreeze in BACKBONES:
            size = (tftoolkit.models.get_architecture(architecture).default_size
                    if args.size == "native" and architecture != "mobilenet_v2"
                    else FLAGSHIP_SIZE if args.size == "native" else int(args.size))
            rows.append(run_backbone(name, architecture, weights, unfreeze, size, args.train,
                                     args.seconds, args.pilot, Path(workdir)))
            print(json.dumps(rows[-1]), flush=True)
    report(rows, args.seconds)


def report(rows: list[dict], seconds: float) -> None:
    """The table, then the last line."""
    print(f"Fashion-MNIST, {EPOCHS} epochs each, training budget {seconds:g} s, "
          f"CPU cores {os.cpu_count()}")
    print("| backbone | px | train images | test acc. | train s (wall) | CPU s | load | "
          "MediaPipe float | MediaPipe int8 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        cells = [f"{r['files'][f]['size_bytes'] / 1024:,.0f} KB, "
                 f"{r['files'][f]['test_accuracy']:.4f}"
                 + ("" if r["files"][f]["written"] else " (refused)")
                 for f in FORMATS]
        print(f"| {r['name']} | {r['size']} | {r['train_images']:,} | "
              f"{r['test_accuracy']:.4f} | {r['train_seconds']:.0f} | {r['cpu_seconds']:.0f} | "
              f"{r['load']:.1f} | {cells[0]} | {cells[1]} |")
    best = max(rows, key=lambda r: r["test_accuracy"])
    lite0 = next(r for r in rows if r["name"] == "EfficientNet-Lite0")
    float_file, int8_file = (lite0["files"][f] for f in FORMATS)
    ratio = int8_file["size_bytes"] / float_file["size_bytes"]
    change = int8_file["test_accuracy"] - float_file["test_accuracy"]
    print(f"best test accuracy at equal training time: {best['name']} "
          f"({best['test_accuracy']:.4f}, {best['cpu_seconds'] / 60:.1f} CPU min); Lite0 "
          "MediaPipe int8 / float "
          f"size {ratio:.2f}x (target <= 0.35), test accuracy {100 * change:+.2f} points "
          "against float (target: within 1)")


if __name__ == "__main__":
    main()
