"""The record of a run's splits (splits.csv): written before training, checked by a
resume, and the splits every later command reads."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import tftoolkit
from conftest import make_image_folder, write_image
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


def _shapes_recipe(folder: Path, **export) -> Recipe:
    return Recipe(name="shapes", data=DataConfig(source="folder", dir=str(folder),
                                                 image_size=16, test_fraction=0.2),
                  model=ModelConfig(architecture="cnn", filters=[4]),
                  train=TrainConfig(epochs=1, batch_size=8),
                  export=ExportConfig(**{"enabled": False, **export}))


def test_evaluate_scores_the_recorded_test_images_after_the_folder_grows(tmp_path, quiet,
                                                                          cli):
    from tftoolkit.evaluation import recorded_data

    folder = make_image_folder(tmp_path / "shapes", per_class=10, size=16)
    result = tftoolkit.train(_shapes_recipe(folder), quiet)
    tested = [r["source"] for r in _rows(result.run_dir) if r["split"] == "test"]
    assert len(tested) == 4
    more = make_image_folder(tmp_path / "more", per_class=10, size=16, seed=1)
    for image in more.rglob("*.*"):  # the folder doubles after training
        image.rename(folder / image.parent.name / f"new-{image.name}")
    proc = cli("evaluate", result.run_dir)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((result.run_dir / "eval" / "metrics.json").read_text())
    assert report["examples"] == 4 and sum(map(sum, report["confusion_matrix"])) == 4
    assert "20 example(s) of the data are not in splits.csv (added since the run" in proc.stdout
    data = recorded_data(result.run_dir, result.recipe, result.info)
    assert data.splits["test"].paths.tolist() == tested

    Path(tested[0]).unlink()  # a recorded test image is gone: named, and left out
    report, _ = tftoolkit.evaluate(result.run_dir)
    assert report["examples"] == 3
    assert any("1 of the 4 test examples the run recorded are not in the data now" in note
               and f"{tested[0]} (missing)" in note for note in report["notes"])


def test_the_card_fingerprints_each_split_and_guards_an_export_without_its_run(tmp_path,
                                                                               quiet):
    import shutil

    folder = make_image_folder(tmp_path / "shapes", per_class=10, size=16)
    result = tftoolkit.train(_shapes_recipe(folder, enabled=True), quiet)
    card = json.loads((result.export_dir / "model_card.json").read_text())
    rows = _rows(result.run_dir)
    for split in ("train", "val", "test"):
        digests = sorted(r["sha256"] for r in rows if r["split"] == split)
        assert card["split_fingerprints"][split] == hashlib.sha256(
            "\n".join(digests).encode()).hexdigest()
    shutil.rmtree(result.run_dir)
    report, _ = tftoolkit.evaluate(result.export_dir)  # the data as it was: derived again
    assert report["examples"] == 4 and "split_fingerprints" not in report
    assert any("the model card fingerprints" in note for note in report["notes"])
    write_image(folder / "circle" / "new.png", np.full((16, 16, 3), 7, np.uint8))
    with pytest.raises(DataError, match=r"splits.csv is gone, and the data now gives other "
                                        r".*examples than the model card"):
        tftoolkit.evaluate(result.export_dir)


def test_compare_refuses_runs_that_recorded_other_splits(monkeypatch, tmp_path):
    from tftoolkit.data import DataInfo
    from tftoolkit.data.record import RecordRow
    from tftoolkit.tasks import SingleLabel
    from tftoolkit.training import comparison
    from tftoolkit.training.runner import TrainResult

    info = DataInfo(SingleLabel(2), (8, 8, 3), ["a", "b"], 8, "t")

    def fake_train(recipe):  # the test images changed between the two runs
        run_dir = tmp_path / recipe.model.mode
        run_dir.mkdir()
        tested = "b" * 64 if recipe.model.mode == "scratch" else "c" * 64
        SplitRecord([RecordRow("train", "a.png", "a" * 64),
                     RecordRow("test", "b.png", tested)]).write(run_dir)
        return TrainResult(recipe, None, {}, run_dir, info, {"val_accuracy": 0.5}, 1.0)

    monkeypatch.setattr(comparison, "train", fake_train)
    monkeypatch.setattr(comparison, "export_run", lambda run_dir: pytest.fail("exported"))
    with pytest.raises(DataError, match=r"the scratch and fine_tune runs recorded other test "
                                        r"examples .*the data changed while compare ran"):
        comparison.compare(tftoolkit.load_recipe("fashion_transfer"), ["scratch", "fine_tune"])


def _recipe_of(source: str, tmp_path: Path, monkeypatch) -> Recipe:
    """A small recipe of each kind of source."""
    from test_data import _fashion_recipe, _write_idx

    from tftoolkit.data import sources

    if source == "synthetic":
        return tftoolkit.load_recipe("mlp", ["data.num_examples=40",
                                             "data.validation_fraction=0.25"])
    if source == "arrays":
        x = np.arange(40 * 12, dtype="uint8").reshape(40, 2, 2, 3)
        return Recipe(name="a", data=DataConfig(source="arrays", arrays={
            "train": (x, np.arange(40) % 2), "test": (x[:6] + 1, np.arange(6) % 2)}))
    if source == "fashion_mnist":
        _write_idx(tmp_path / "debian", {"train": 30, "test": 20})
        monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
        return _fashion_recipe()
    if source == "tfds":
        return tftoolkit.load_recipe("flowers", ["data.max_examples=0"])
    folder = make_image_folder(tmp_path / "shapes", per_class=6, size=8)
    if source == "folder":
        return _shapes_recipe(folder)
    table = tmp_path / "t.csv"
    table.write_text("path,label\n" + "".join(f"{p.relative_to(tmp_path)},{p.parent.name}\n"
                                             for p in sorted(folder.rglob("*.*"))))
    return Recipe(name="t", data=DataConfig(source="csv", csv=str(table), image_size=8))


@pytest.mark.parametrize("source", ["synthetic", "arrays", "fashion_mnist", "folder", "csv",
                                    "tfds"])
def test_every_source_reads_its_recorded_splits_back_in_their_order(source, tmp_path,
                                                                     monkeypatch):
    import tensorflow_datasets as tfds

    recipe = _recipe_of(source, tmp_path, monkeypatch)
    with tfds.testing.mock_data(num_examples=20):
        data = load_data(recipe, 8)
        record = SplitRecord.of(data.splits)
        record.write(tmp_path)
        again = load_data(recipe, 8, record=SplitRecord.read(tmp_path))
        assert sorted(again.splits) == sorted(data.splits)
        assert not any("not in" in note for note in again.notes)
        for split, examples in data.splits.items():
            read = again.splits[split]
            np.testing.assert_array_equal(read.sources, examples.sources)
            np.testing.assert_array_equal(read.digests, examples.digests)
            np.testing.assert_array_equal(read.labels, examples.labels)
            first, second = (next(iter(d.dataset(split, batch_size=64))) for d in (data, again))
            np.testing.assert_array_equal(first[0], second[0])  # the same inputs, in order
    assert len({row.source for row in record.rows}) == len(record.rows)  # ids are unique


def test_a_damaged_record_is_named_with_its_line(tmp_path):
    (tmp_path / "splits.csv").write_text("split,source,sha256\ntrain,a.png," + "0" * 64
                                         + "\ntrain,b.png\n")
    with pytest.raises(DataError, match=r"splits.csv line 3 is not a split, a source and a "
                                        r"sha256 \(\['train', 'b.png'\]\)"):
        SplitRecord.read(tmp_path)
