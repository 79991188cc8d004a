"""Labels from a table: CSV files and DataFrames, their parsing rules and bad rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tftoolkit
from conftest import make_image_folder, write_image
from tftoolkit.data import load_data
from tftoolkit.data.table import read_table
from tftoolkit.errors import DataError
from tftoolkit.recipe import DataConfig, ExportConfig, ModelConfig, Recipe, TrainConfig


def _recipe(**data) -> Recipe:
    return Recipe(name="table", data=DataConfig(source="csv", image_size=32, **data),
                  model=ModelConfig(architecture="cnn", filters=[8]),
                  train=TrainConfig(epochs=1, batch_size=8),
                  export=ExportConfig(enabled=False))


@pytest.fixture
def images(tmp_path) -> Path:
    """12 circles and 12 squares under tmp_path/data/images/{circle,square}/."""
    return make_image_folder(tmp_path / "data" / "images")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _rows(images: Path, kinds=("circle", "square"), per_kind: int = 12) -> list[tuple]:
    return [(f"images/{kind}/{i:03d}.{'png' if i % 2 else 'jpg'}", kind)
            for kind in kinds for i in range(per_kind)]


def test_a_csv_file_gives_sorted_classes_and_paths_relative_to_its_folder(images):
    text = "path,label\n" + "".join(f"{p},{k}\n" for p, k in _rows(images))
    table = _write(images.parent / "labels.csv", text)
    data = load_data(_recipe(csv=str(table), validation_fraction=0.25, test_fraction=0.0),
                     32)
    assert data.info.class_names == ["circle", "square"]
    assert data.info.task.name == "classification"
    assert data.info.counts == {"train": 18, "val": 6}
    assert np.bincount(data.splits["val"].labels).tolist() == [3, 3]  # stratified as folders
    every = sorted(np.concatenate([data.splits[s].paths for s in ("train", "val")]))
    assert every == sorted(str(p) for p in images.rglob("*.*"))


def test_quoting_header_names_and_a_tsv(images):
    odd = images / "circle" / "a, b.png"
    odd.write_bytes((images / "circle" / "001.png").read_bytes())
    rows = [("images/circle/a, b.png", "round thing")] + _rows(images, ("square",), 4)
    csv_text = 'file name,"kind, as seen"\n' + "".join(f'"{p}","{k}"\n' for p, k in rows)
    tsv_text = "file name\tkind, as seen\n" + "".join(f"{p}\t{k}\n" for p, k in rows)
    for name, text in (("t.csv", csv_text), ("t.tsv", tsv_text)):
        table = read_table(_write(images.parent / name, text), path_column="file name",
                           label_column="kind, as seen")
        assert table.class_names == ["round thing", "square"]
        assert table.paths[0] == str(odd)
        assert table.labels.tolist() == [0, 1, 1, 1, 1]


def test_a_missing_column_is_named_with_a_suggestion(images):
    table = _write(images.parent / "t.csv", "path,lable\nimages/circle/000.jpg,circle\n")
    with pytest.raises(DataError, match=r"data.label_column='label' is not a column .*did "
                                        r"you mean 'lable'"):
        load_data(_recipe(csv=str(table)), 32)


def test_label_delimiters_make_multi_hot_rows(images):
    text = ("path,tags\n"
            "images/circle/000.jpg,round|bright\n"
            "images/circle/001.png,round\n"
            "images/square/000.jpg,\n"   # no label at all: every class negative
            "images/square/001.png,bright | square\n")
    table = _write(images.parent / "t.csv", text)
    result = read_table(table, path_column="path", label_column="tags", label_delimiter="|")
    assert result.multilabel and result.class_names == ["bright", "round", "square"]
    np.testing.assert_array_equal(result.labels, [[1, 1, 0], [0, 1, 0], [0, 0, 0], [1, 0, 1]])
    spaced = _write(images.parent / "s.csv", "path,tags\nimages/circle/000.jpg,b  a\n")
    result = read_table(spaced, path_column="path", label_column="tags", label_delimiter=" ")
    assert result.class_names == ["a", "b"] and result.labels.tolist() == [[1, 1]]


def test_a_numeric_label_column_is_regression(images):
    rows = _rows(images, per_kind=5)
    text = "path,size\n" + "".join(f"{p},{i * 0.5}\n" for i, (p, _) in enumerate(rows))
    table = _write(images.parent / "t.csv", text)
    data = load_data(_recipe(csv=str(table), label_column="size", test_fraction=0.0), 32)
    assert data.info.task.name == "regression" and data.info.class_names is None
    targets = np.sort(np.concatenate([data.splits[s].labels[:, 0] for s in ("train", "val")]))
    np.testing.assert_allclose(targets, np.arange(10) * 0.5)


def test_the_split_column_places_rows_and_only_missing_splits_are_held_out(images):
    rows = _rows(images)
    split = ["test" if i % 4 == 0 else "train" for i in range(len(rows))]
    text = "path,label,fold\n" + "".join(f"{p},{k},{s}\n" for (p, k), s in zip(rows, split))
    data = load_data(_recipe(csv=str(_write(images.parent / "t.csv", text)),
                             split_column="fold", validation_fraction=0.25), 32)
    test_paths = {str((images.parent / p).resolve()) for (p, _), s in zip(rows, split)
                  if s == "test"}
    assert set(data.splits["test"].paths) == test_paths
    assert data.info.counts == {"train": 14, "val": 4, "test": 6}  # val held out of train


def _bad_table(images: Path) -> tuple[Path, list[str]]:
    outside = write_image(images.parent.parent / "outside.png",
                          np.zeros((8, 8, 3), np.uint8))
    (images / "circle" / "broken.png").write_bytes(b"not a png")
    rows = [f"{p},{k},train" for p, k in _rows(images)]
    rows += ["images/circle/gone.png,circle,train",      # line 26: missing file
             ",circle,train",                             # line 27: empty path
             "images/square/000.jpg,square,holdout",      # line 28: unknown split value
             f"../{outside.name},circle,train",           # line 29: leaves data.dir
             f"{outside},square,train",                   # line 30: leaves it, absolute
             "images/circle/broken.png,circle,train"]     # line 31: does not decode
    table = _write(images.parent / "t.csv", "path,label,split\n" + "\n".join(rows) + "\n")
    return table, ["line 26", "line 27", "line 28", "line 29", "line 30"]


def test_bad_rows_are_named_before_anything_runs(images, quiet):
    table, lines = _bad_table(images)
    recipe = _recipe(csv=str(table), dir=str(images.parent), split_column="split")
    with pytest.raises(DataError) as err:
        tftoolkit.train(recipe, quiet)
    message = str(err.value)
    assert message.startswith("5 row(s) of csv")
    for line, why in zip(lines, ["no such file", "empty path", "'split' is 'holdout'",
                                 "leaves data.dir", "leaves data.dir"]):
        assert any(line in row and why in row for row in message.splitlines()), (line, why)
    assert "data.on_bad_file=skip" in message
    assert not Path(quiet["train.run_dir"]).exists()


def test_skip_leaves_out_bad_rows_and_undecodable_files_and_lists_them(images, quiet):
    table, lines = _bad_table(images)
    recipe = _recipe(csv=str(table), dir=str(images.parent), split_column="split",
                     on_bad_file="skip")
    data = load_data(recipe, 32)
    listed = [where for where, _ in data.info.bad_files]
    assert [w.split(" (")[0].split("t.csv ")[-1] for w in listed[:5]] == lines
    assert listed[5].startswith("t.csv line 31 (") and listed[5].endswith("broken.png)")
    assert sum(data.info.counts.values()) == 24
    result = tftoolkit.train(recipe, quiet)   # trains on the good rows, lists the others
    skipped = (result.run_dir / "skipped_files.txt").read_text().splitlines()
    assert len(skipped) == 6


def test_without_skip_an_undecodable_file_is_named(images):
    (images / "square" / "000.jpg").write_bytes(b"")
    text = "path,label\n" + "".join(f"{p},{k}\n" for p, k in _rows(images))
    with pytest.raises(DataError, match=r"(?s)1 file\(s\) named in csv .*t.csv line 14 "
                                        r"\(.*000.jpg\): empty file"):
        load_data(_recipe(csv=str(_write(images.parent / "t.csv", text))), 32)


def test_a_dataframe_reads_as_its_csv_file(images, monkeypatch):
    pd = pytest.importorskip("pandas")
    rows = _rows(images, per_kind=6)
    frame = pd.DataFrame({"path": [p for p, _ in rows], "label": [k for _, k in rows]},
                         index=range(100, 100 + len(rows)))
    text = "path,label\n" + "".join(f"{p},{k}\n" for p, k in rows)
    from_file = load_data(_recipe(csv=str(_write(images.parent / "t.csv", text))), 32)
    monkeypatch.chdir(images.parent)    # a DataFrame's relative paths: the working folder
    from_frame = load_data(_recipe(csv=frame), 32)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(from_frame.splits[split].paths,
                                      from_file.splits[split].paths)
        np.testing.assert_array_equal(from_frame.splits[split].labels,
                                      from_file.splits[split].labels)
    frame.loc[103, "path"] = None
    with pytest.raises(DataError, match=r"DataFrame row 103 \(no path\): empty path"):
        load_data(_recipe(csv=frame), 32)
    saved = _recipe(csv=frame).to_dict()["data"]["csv"]
    assert saved == "<DataFrame of 12 rows>"
    with pytest.raises(DataError, match="trained on a DataFrame, which its files do not keep"):
        load_data(_recipe(csv=saved), 32)


def test_the_images_a_table_names_are_checked_against_data_max_pixels(images):
    text = "path,label\n" + "".join(f"{p},{k}\n" for p, k in _rows(images, per_kind=3))
    table = _write(images.parent / "labels.csv", text)
    with pytest.raises(DataError, match=r"(?s)6 file\(s\) named in csv .*line 2 \(.*000\.jpg\): "
                                        r"declares 32x32 pixels, more than "
                                        r"data\.max_pixels=1000"):
        load_data(_recipe(csv=str(table), max_pixels=1000), 32)
