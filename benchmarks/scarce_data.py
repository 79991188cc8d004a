"""Scarce data: the toolkit's defaults on the few-image folders users bring, against
scikit-learn's logistic regression on the same frozen features (the linear probe), and
against each fixed transfer mode.

    python -m benchmarks.scarce_data [--tasks fashion,mosaics,photos]
        [--per-class 10,50,250] [--seeds 3] [--test 10000]
        [--modes auto,feature_extraction,two_stage,fine_tune]

- ``fashion``: for each size and seed, a stratified draw of N Fashion-MNIST training
  images per class, written as PNG files into a class-per-subfolder folder, as a user
  would bring it; ``image_folder`` trained on it (its defaults: ``model.mode=auto``;
  then each fixed mode of ``--modes``), with ``data.test_fraction=0`` because the test
  set is the official one: every model is scored on the first ``--test`` images of the
  10,000-image test set. Beside it, scikit-learn's ``LogisticRegression()`` fitted on
  the whole draw's features from the recipe's frozen ImageNet backbone (at the
  recipe's image size, through the toolkit's own resize; without the pixels of
  ``model.pixel_features``) and scored on the same test images.
- ``mosaics``: 2x2 mosaics of scikit-learn's 8x8 digits (the builder of
  ``benchmarks.multilabel``; 1,120 training, 280 validation and 1,000 test mosaics from
  disjoint digits), labelled with the digits present, as a CSV table of PNG files at
  64 px; the toolkit's test mAP against one scikit-learn ``LogisticRegression`` per
  class on the 16x16 grey pixels.
- ``photos``: ``skimage.data.lfw_subset`` (200 real 25x25 face / non-face crops): a
  stratified 140 as the folder, 60 held out as the test set; as ``fashion``.

Each row gives the validation figure the run chose on, the test figure, the wall-clock
seconds of the run, the CPU seconds of this process during it (the machine may be
shared: read both) and the load average before and after. Test predictions of a model
whose frozen backbone (or frozen blocks) kept every pretrained weight are computed from
that part's outputs, cached once per test set (checked weight by weight). The last line
is the ratio of the defaults' mean test accuracy to the probe's at the smallest size.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

import tftoolkit
from benchmarks.multilabel import mosaics, write_mosaic_table
from tftoolkit.data.pipeline import to_rgb_image
from tftoolkit.data.sources import FASHION_MNIST_CLASSES, load_source
from tftoolkit.models.transfer import backbone_of
from tftoolkit.recipe import DataConfig
from tftoolkit.tasks import SingleLabel
from tftoolkit.training.feature_cache import (pixel_columns, split_at_features,
                                              split_below_unfrozen)

RECIPE = "image_folder"


@dataclass
class Row:
    task: str
    size: str
    seed: int
    method: str
    validation: float | None
    test: float
    seconds: float
    cpu_seconds: float
    load: tuple[float, float]
    note: str = ""

    def render(self) -> str:
        val = "-" if self.validation is None else f"{self.validation:.4f}"
        return (f"| {self.task} | {self.size} | {self.seed} | {self.method} | {val} | "
                f"{self.test:.4f} | {self.seconds:.1f} | {self.cpu_seconds:.1f} | "
                f"{self.load[0]:.2f} / {self.load[1]:.2f} | {self.note} |")


HEADER = ("| task | size | seed | method | validation | test | seconds | CPU s | "
          "load before / after | note |\n| --- | --- | --- | --- | --- | --- | --- | --- | "
          "--- | --- |")


def _timed(fn):
    """``fn()``'s value, wall seconds, CPU seconds and the load average around it."""
    load, wall, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
    value = fn()
    return (value, time.perf_counter() - wall, time.process_time() - cpu,
            (load, os.getloadavg()[0]))


def folder_name(name: str) -> str:
    return name.replace("/", "_").replace(" ", "_")


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray,
                 names: list[str]) -> Path:
    """A class-per-subfolder folder of grey PNG files."""
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / folder_name(names[label])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    return root


def stratified_draw(labels: np.ndarray, per_class: int, rng) -> np.ndarray:
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                           for c in np.unique(labels)])


class TestSet:
    """Grey test images of classes ``names`` scored by trained models: through the frozen
    part's outputs, cached once, when the model kept that part's pretrained weights."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, names: list[str]):
        self.images, self.labels, self.names = images, labels, names
        self._cache: dict[tuple, tuple[list, np.ndarray]] = {}

    def inputs(self, resize) -> tf.data.Dataset:
        """The images as the toolkit's pipeline brings a grey PNG to the model."""
        return tf.data.Dataset.from_tensor_slices(self.images[..., None]).batch(128).map(
            lambda x: to_rgb_image(x, resize))

    def _frozen_outputs(self, key, frozen, resize):
        """The frozen part's weights and outputs, computed once per part and resize."""
        if key not in self._cache:
            self._cache[key] = (frozen.get_weights(),
                                frozen.predict(self.inputs(resize), verbose=0))
        return self._cache[key]

    def scores(self, model, resize, unfreeze) -> np.ndarray:
        try:
            backbone_of(model)
        except ValueError:  # a network from scratch: no frozen part
            return model.predict(self.inputs(resize), verbose=0)
        for key, parts in ((("features", resize), split_at_features(model)),
                           (("prefix", resize, str(unfreeze)),
                            split_below_unfrozen(model, unfreeze))):
            if parts is None:
                continue
            frozen, rest = parts
            key += (tuple(frozen.output.shape[1:]),)  # (with or without pixel features)
            weights, outputs = self._frozen_outputs(key, frozen, resize)
            current = frozen.get_weights()
            if len(current) == len(weights) and all(
                    np.array_equal(a, b) for a, b in zip(current, weights)):
                return rest.predict(outputs, batch_size=256, verbose=0)
        return model.predict(self.inputs(resize), verbose=0)

    def accuracy(self, result) -> float:
        """The run's test accuracy: its classes are its folders, in their sorted order."""
        scores = self.scores(result.model, result.info.resize, result.recipe.model.unfreeze)
        ours = [folder_name(n) for n in self.names]
        label_of = np.array([ours.index(n) for n in result.info.class_names])
        return float(np.mean(label_of[scores.argmax(axis=1)] == self.labels))


def sklearn_probe(recipe_overrides: dict, train: tuple, test: TestSet) -> tuple[float, str]:
    """scikit-learn's LogisticRegression on the recipe's frozen features."""
    from sklearn.linear_model import LogisticRegression

    recipe = tftoolkit.load_recipe(RECIPE, {**recipe_overrides,
                                            "model.mode": "feature_extraction"})
    size = recipe.data.image_size
    classes = [str(c) for c in np.unique(test.labels)]
    info = tftoolkit.DataInfo(SingleLabel(len(classes)), (size, size, 3), classes, size,
                              "draw", resize_method=recipe.data.resize_method)
    extractor = split_at_features(tftoolkit.build_model(recipe, info))[0]
    backbone_only = extractor.output.shape[-1] - pixel_columns(extractor)
    images, labels = train
    features = extractor.predict(TestSet(images, labels, test.names).inputs(info.resize),
                                 verbose=0)
    probe = LogisticRegression(max_iter=2000).fit(features[:, :backbone_only], labels)
    _, test_features = test._frozen_outputs(
        ("features", info.resize, tuple(extractor.output.shape[1:])), extractor, info.resize)
    return (float(probe.score(test_features[:, :backbone_only], test.labels)),
            f"{len(labels)} training images")


def run_toolkit(folder: Path, workdir: Path, mode: str, test: TestSet,
                overrides: dict) -> tuple:
    settings = {"data.dir": str(folder), "data.test_fraction": 0.0,
                "train.run_dir": str(workdir / "runs"), "train.verbose": 0,
                "export.enabled": False, **overrides}
    if mode != "auto":
        settings["model.mode"] = mode
    result, seconds, cpu, load = _timed(lambda: tftoolkit.train(RECIPE, settings))
    chosen = next((n.split(":")[0].removeprefix("chose ") for n in result.notes
                   if n.startswith("chose ")), "")
    below = "; BELOW a baseline" if any("BELOW" in n for n in result.notes) else ""
    return (result.metrics.get("val_accuracy"), test.accuracy(result), seconds, cpu, load,
            chosen + below)


def fashion(args, workdir: Path) -> list[Row]:
    source = load_source(DataConfig(source="fashion_mnist"), seed=0)
    train, official = source.splits["train"], source.splits["test"]
    test = TestSet(official.arrays[:args.test], official.labels[:args.test],
                   FASHION_MNIST_CLASSES)
    rows = []
    for per_class in args.per_class:
        for seed in range(args.seeds):
            draw = stratified_draw(train.labels, per_class, np.random.default_rng(seed))
            images, labels = train.arrays[draw], train.labels[draw]
            folder = write_folder(workdir / f"fashion_{per_class}_{seed}", images, labels,
                                  FASHION_MNIST_CLASSES)
            size = f"{per_class}/class"
            (accuracy, note), seconds, cpu, load = _timed(
                lambda: sklearn_probe({"data.dir": str(folder)}, (images, labels), test))
            rows.append(Row("fashion", size, seed, "scikit-learn probe", None, accuracy,
                            seconds, cpu, load, note))
            print(rows[-1].render(), flush=True)
            for mode in args.modes:
                val, acc, seconds, cpu, load, note = run_toolkit(
                    folder, workdir / f"runs_{per_class}_{seed}", mode, test, {})
                rows.append(Row("fashion", size, seed, "defaults" if mode == "auto" else mode,
                                val, acc, seconds, cpu, load, note))
                print(rows[-1].render(), flush=True)
    return rows


def photos(args, workdir: Path) -> list[Row]:
    from skimage.data import lfw_subset

    images = (lfw_subset() * 255).round().astype(np.uint8)
    labels = np.repeat([0, 1], 100)  # the first 100 are faces
    held = stratified_draw(labels, 30, np.random.default_rng(0))
    keep = np.setdiff1d(np.arange(len(labels)), held)
    names = ["face", "not_face"]
    test = TestSet(images[held], labels[held], names)
    folder = write_folder(workdir / "lfw", images[keep], labels[keep], names)
    rows = []
    (accuracy, note), seconds, cpu, load = _timed(
        lambda: sklearn_probe({"data.dir": str(folder)}, (images[keep], labels[keep]), test))
    rows.append(Row("photos", "70/class", 0, "scikit-learn probe", None, accuracy, seconds,
                    cpu, load, note))
    print(rows[-1].render(), flush=True)
    for mode in args.modes:
        val, acc, seconds, cpu, load, note = run_toolkit(folder, workdir / "runs_lfw", mode,
                                                         test, {})
        rows.append(Row("photos", "70/class", 0, "defaults" if mode == "auto" else mode,
                        val, acc, seconds, cpu, load, note))
        print(rows[-1].render(), flush=True)
    return rows


def mosaic_table(folder: Path, seed: int = 0) -> tuple[Path, dict]:
    """Digit mosaics from disjoint digits per split, and their 16x16 pixels and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 255 / 16).round().astype(np.uint8)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    pools = {"train": order[:900], "val": order[900:1257], "test": order[1257:]}
    counts = {"train": 1120, "val": 280, "test": 1000}
    names = [f"digit{d}" for d in range(10)]
    splits = {split: mosaics(images[pools[split]], digits.target[pools[split]],
                             counts[split], rng, names) for split in pools}
    table = write_mosaic_table(folder, splits)
    arrays = {}
    for split, (pictures, present) in splits.items():
        rows = np.array([[name in p for name in names] for p in present], np.float32)
        arrays[split] = (pictures.reshape(len(pictures), -1) / 255.0, rows)
    return table, arrays


def mosaic_baseline(arrays: dict) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score

    x, y = arrays["train"]
    xt, yt = arrays["test"]
    scores = np.stack([LogisticRegression(max_iter=2000).fit(x, y[:, c]).predict_proba(xt)[:, 1]
                       for c in range(y.shape[1])], axis=1)
    return float(average_precision_score(yt, scores, average="macro"))


def digit_mosaics(args, workdir: Path) -> list[Row]:
    table, arrays = mosaic_table(workdir / "mosaics")
    rows = []
    value, seconds, cpu, load = _timed(lambda: mosaic_baseline(arrays))
    rows.append(Row("mosaics (mAP)", "1,120 mosaics", 0, "scikit-learn pixels", None, value,
                    seconds, cpu, load, "one LogisticRegression per class, 16x16 grey"))
    print(rows[-1].render(), flush=True)
    for mode in args.modes:
        settings = {"data.source": "csv", "data.csv": str(table),
                    "data.label_column": "labels", "data.label_delimiter": " ",
                    "data.split_column": "split", "data.image_size": 64,
                    "train.run_dir": str(workdir / "runs_mosaics"), "train.verbose": 0,
                    "export.enabled": False}
        if mode != "auto":
            settings["model.mode"] = mode
        result, seconds, cpu, load = _timed(lambda: tftoolkit.train(RECIPE, settings))
        chosen = next((n.split(":")[0].removeprefix("chose ") for n in result.notes
                       if n.startswith("chose ")), "")
        rows.append(Row("mosaics (mAP)", "1,120 mosaics", 0,
                        "defaults" if mode == "auto" else mode, result.metrics["val_map"],
                        result.metrics["test_map"], seconds, cpu, load, chosen))
        print(rows[-1].render(), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="fashion,mosaics,photos")
    parser.add_argument("--per-class", default="10,50,250")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--test", type=int, default=10000)
    parser.add_argument("--modes", default="auto,feature_extraction,two_stage,fine_tune")
    args = parser.parse_args()
    args.per_class = [int(n) for n in args.per_class.split(",")]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    tasks = {"fashion": fashion, "mosaics": digit_mosaics, "photos": photos}
    print(f"{os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.2f}\n{HEADER}",
          flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for task in args.tasks.split(","):
            rows += tasks[task](args, Path(workdir))
    print(HEADER)
    print("\n".join(row.render() for row in rows))
    for task in {row.task for row in rows}:
        for size in dict.fromkeys(row.size for row in rows if row.task == task):
            means = {}
            for row in rows:
                if row.task == task and row.size == size:
                    means.setdefault(row.method, []).append(row.test)
            print(f"{task} {size}: " + ", ".join(f"{m} {np.mean(v):.4f}"
                                                   for m, v in means.items()))
    smallest = [row for row in rows if row.task == "fashion"
                and row.size == f"{min(args.per_class)}/class"]
    ours = [r.test for r in smallest if r.method == "defaults"]
    probe = [r.test for r in smallest if r.method == "scikit-learn probe"]
    if ours and probe:
        print(f"{np.mean(ours) / np.mean(probe):.3f}")


if __name__ == "__main__":
    main()
