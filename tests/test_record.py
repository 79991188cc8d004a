"""The record of a run's splits (splits.csv): written before training, checked by a
resume, and the splits every later command reads."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import tftoolkit
from conftest import make_image_folder
from tftoolkit.data import load_data
from tftoolkit.data.record import SplitRecord
from tftoolkit.errors import DataError
from tftoolkit.recipe import DataConfig, ExportConfig, ModelConfig, Recipe, TrainConfig


def _array_recipe(x: np.ndarray, y: np.ndarray) -> Recipe:
    return Recipe(name="arrays", data=DataConfig(source="arrays", arrays={"train": (x, y)}),
                  model=ModelConfig(architecture="mlp", hidden=[4]),
                  train=TrainConfig(epochs=2, batch_size=8),
                  export=ExportConfig(enabled=False))


def _rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "splits.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_run_records_every_example_with_its_split_source_and_sha256(tmp_path, quiet):
    folder = make_image_folder(tmp_path / "shapes", per_class=6, size=16)
    recipe = Recipe(name="shapes", data=DataConfig(source="folder", dir=str(folder),
                                                   image_size=16, test_fraction=0.2),
                    model=ModelConfig(architecture="cnn", filters=[4]),
                    train=TrainConfig(epochs=1, batch_size=8),
                    export=ExportConfig(enabled=False))
    result = tftoolkit.train(recipe, quiet)
    rows = _rows(result.run_dir)
    assert list(rows[0]) == ["split", "source", "sha256"]
    data = load_data(recipe, 16)
    assert [(r["split"], r["source"]) for r in rows] == [
        (split, path) for split in ("train", "val", "test") for path in data.splits[split].paths]
    for row in rows:
        assert row["sha256"] == hashlib.sha256(Path(row["source"]).read_bytes()).hexdigest()


def test_a_same_size_different_array_refuses_to_resume(quiet):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)).astype("float32"), np.arange(40) % 2
    first = tftoolkit.train(_array_recipe(x, y), quiet)
    assert [r["source"] for r in _rows(first.run_dir)][:2] == ["array:train:0",
                                                              "array:train:1"]
    (first.run_dir / "metrics.json").unlink()  # unfinished, as if killed
    other = x.copy()
    other[5] += 1.0  # the same size, another example 5
    with pytest.raises(DataError, match=r"(?s)the unfinished run .* trained on other data "
                                        r"than the recipe gives now .*split '(train|val)': 1 "
                                        r"with other content \(array:train:5\).*"
                                        r"train\.resume=false"):
        tftoolkit.train(_array_recipe(other, y), quiet)
    resumed = tftoolkit.train(_array_recipe(x, y), quiet)  # the same data resumes it
    assert resumed.run_dir == first.run_dir
    assert any("resuming" in note for note in resumed.notes)


def test_a_record_names_what_changed_between_two_readings_of_the_data():
    def record(x: np.ndarray) -> SplitRecord:
        recipe = _array_recipe(x, np.arange(len(x)) % 2)
        recipe = replace(recipe, data=replace(recipe.data, validation_fraction=0.0,
                                              test_fraction=0.0))
        return SplitRecord.of(load_data(recipe).splits)

    x = np.arange(24, dtype="float32").reshape(12, 2)
    changed = np.concatenate([x, [[50, 51]]]).astype("float32")
    changed[0] = -1
    assert record(changed).changes_since(record(x)) == [
        "split 'train': 1 added (array:train:12), 1 with other content (array:train:0)"]
    assert record(x).changes_since(record(x)) == []
