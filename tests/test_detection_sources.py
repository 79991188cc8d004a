"""Detection sources: Pascal VOC, COCO and CSV annotations, and every bad annotation
named by its file and line or object."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import write_image
from tftoolkit.data.box_sources import read_box_csv, read_coco, read_voc
from tftoolkit.errors import DataError


def _image(path: Path, width: int = 40, height: int = 30) -> Path:
    return write_image(path, np.zeros((height, width, 3), np.uint8))


def _voc_xml(filename: str, objects: list[tuple], width: int = 40, height: int = 30) -> str:
    parts = [f"<annotation><filename>{filename}</filename>"
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for name, xmin, ymin, xmax, ymax in objects:
        parts.append(f"<object><name>{name}</name><difficult>0</difficult><bndbox>"
                     f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax>"
                     f"<ymax>{ymax}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


def _voc(root: Path, files: dict[str, tuple[str, list[tuple]]],
         image_folder: str = "JPEGImages") -> Path:
    (root / "Annotations").mkdir(parents=True)
    for stem, (image, objects) in files.items():
        _image(root / image_folder / image)
        (root / "Annotations" / f"{stem}.xml").write_text(_voc_xml(image, objects))
    return root


@pytest.mark.parametrize("image_folder", ["JPEGImages", "images"])
def test_voc_boxes_are_normalised_and_images_without_objects_kept(tmp_path, image_folder):
    root = _voc(tmp_path / "voc", {
        "a": ("a.png", [("dog", 4, 3, 20, 15), ("cat", 0, 0, 40, 30)]),
        "b": ("b.jpg", [])}, image_folder)
    source = read_voc(root)
    assert source.class_names == ["cat", "dog"]
    first, second = source.images
    assert (first.height, first.width) == (30, 40)
    np.testing.assert_allclose(first.boxes, [[0.1, 0.1, 0.5, 0.5], [0, 0, 1, 1]], atol=1e-6)
    assert first.classes.tolist() == [1, 0]
    np.testing.assert_allclose(first.pixel_boxes()[0], [3, 4, 15, 20])
    assert second.boxes.shape == (0, 4) and second.path.endswith("b.jpg")
    assert source.box_count == 2


def test_every_bad_voc_annotation_is_named_in_one_error(tmp_path):
    root = _voc(tmp_path / "voc", {
        "ok": ("ok.png", [("dog", 1, 1, 5, 5)]),
        "outside": ("o.png", [("dog", 30, 10, 45, 20)]),
        "flat": ("f.png", [("dog", 5, 5, 5, 9)]),
        "inverted": ("i.png", [("dog", 9, 5, 3, 9)]),
        "unknown": ("u.png", [("wolf", 1, 1, 5, 5)])})
    (root / "Annotations" / "missing.xml").write_text(_voc_xml("gone.png", []))
    (root / "Annotations" / "broken.xml").write_text("<annotation>\n<object>\n</annotation>")
    (root / "Annotations" / "resized.xml").write_text(_voc_xml("ok.png", [], width=80))
    with pytest.raises(DataError) as error:
        read_voc(root, class_names=["dog", "cat"])
    message = str(error.value)
    assert "7 problem(s)" in message
    assert "Annotations/outside.xml object 1 (dog): box (30, 10, 45, 20) is outside the " \
           "image (40x30 pixels)" in message
    assert "Annotations/flat.xml object 1 (dog): box (5, 5, 5, 9) has zero area" in message
    assert "Annotations/inverted.xml object 1 (dog): box (9, 5, 3, 9) has a minimum above " \
           "its maximum" in message
    assert "Annotations/unknown.xml object 1 (wolf): unknown class 'wolf'" in message
    assert "Annotations/missing.xml: its image" in message and "gone.png does not exist" \
        in message
    assert "Annotations/broken.xml line 3: does not parse as XML" in message
    assert "Annotations/resized.xml: declares a 80x30 image, but" in message


def test_a_voc_folder_without_annotations_or_images_is_refused(tmp_path):
    with pytest.raises(DataError, match="no Annotations/ folder"):
        read_voc(tmp_path)
    (tmp_path / "Annotations").mkdir()
    with pytest.raises(DataError, match="no JPEGImages/ or images/ folder"):
        read_voc(tmp_path)


def _coco(root: Path, annotations: list[dict], images: list[dict] | None = None) -> Path:
    images = images if images is not None else [
        {"id": 7, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 9, "file_name": "sub/b.png", "width": 40, "height": 30}]
    for image in images:
        if image["file_name"] != "gone.png":
            _image(root / "images" / image["file_name"])
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 3, "name": "person"},
                                               {"id": 1, "name": "bicycle"}]}))
    return path


def test_coco_categories_keep_their_id_order_and_crowds_are_counted_not_detected(tmp_path):
    path = _coco(tmp_path, [
        {"id": 1, "image_id": 7, "category_id": 3, "bbox": [4, 3, 16, 12], "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 40, 30], "iscrowd": 1}])
    source = read_coco(path, tmp_path / "images")
    assert source.class_names == ["bicycle", "person"]
    first, second = source.images
    np.testing.assert_allclose(first.boxes, [[0.1, 0.1, 0.5, 0.5]], atol=1e-6)
    assert first.classes.tolist() == [1]
    assert second.boxes.shape == (0, 4)   # no annotation: a negative
    assert "1 crowd regions left out" in source.description


def test_every_bad_coco_annotation_is_named_in_one_error(tmp_path):
    images = [{"id": 7, "file_name": "a.png", "width": 40, "height": 30},
              {"id": 8, "file_name": "gone.png", "width": 40, "height": 30}]
    path = _coco(tmp_path, [
        {"id": 11, "image_id": 7, "category_id": 5, "bbox": [1, 1, 4, 4]},
        {"id": 12, "image_id": 7, "category_id": 3, "bbox": [1, 1, 0, 4]},
        {"id": 13, "image_id": 7, "category_id": 3, "bbox": [30, 1, 20, 4]},
        {"id": 14, "image_id": 99, "category_id": 3, "bbox": [1, 1, 4, 4]},
        {"id": 15, "image_id": 7, "category_id": 1, "bbox": [1, 1, 4, 4]}], images)
    with pytest.raises(DataError) as error:
        read_coco(path, tmp_path / "images", class_names=["person"])
    message = str(error.value)
    assert "instances.json annotation 11: names category_id 5, which is not in " \
           "categories" in message
    assert "instances.json annotation 12: box (1, 1, 1, 5) has zero area" in message
    assert "instances.json annotation 13: box (30, 1, 50, 5) is outside the image" in message
    assert "instances.json annotation 14: names image_id 99" in message
    assert "instances.json annotation 15: unknown class 'bicycle'" in message
    assert "instances.json image 8 (gone.png): its image cannot be used: no such file" \
        in message


def _csv(tmp_path: Path, rows: list[str], header: str = "path,xmin,ymin,xmax,ymax,label"
         ) -> Path:
    for name in ("a.png", "b.png", "c.png"):
        _image(tmp_path / "pictures" / name)
    table = tmp_path / "boxes.csv"
    table.write_text("\n".join([header, *rows]) + "\n")
    return table


def test_csv_rows_of_one_image_gather_and_an_empty_row_marks_a_negative(tmp_path):
    table = _csv(tmp_path, ["pictures/a.png,4,3,20,15,dog", "pictures/b.png,,,,,",
                            "pictures/a.png,0,0,40,30,cat"])
    source = read_box_csv(table)
    assert source.class_names == ["cat", "dog"]
    first, second = source.images
    assert first.classes.tolist() == [1, 0] and second.boxes.shape == (0, 4)
    assert first.where == "boxes.csv line 2"
    # relative to a given images folder instead of the CSV's
    table.write_text("path,label,xmin,ymin,xmax,ymax\na.png,dog,4,3,20,15\n")
    assert read_box_csv(table, images_dir=tmp_path / "pictures").images[0].path.endswith(
        "a.png")


def test_a_csv_split_column_places_whole_images(tmp_path):
    table = _csv(tmp_path, ["pictures/a.png,1,1,5,5,dog,train",
                            "pictures/b.png,1,1,5,5,dog,val", "pictures/b.png,2,2,6,6,dog,test"],
                 header="path,xmin,ymin,xmax,ymax,label,split")
    with pytest.raises(DataError, match=r"line 4: puts pictures/b.png in 'test', an earlier "
                                        r"row in 'val'"):
        read_box_csv(table, split_column="split")
    table.write_text("path,xmin,ymin,xmax,ymax,label,split\npictures/a.png,1,1,5,5,dog,"
                     "train\npictures/b.png,1,1,5,5,dog,val\n")
    assert [i.split for i in read_box_csv(table, split_column="split").images] == [
        "train", "val"]


def test_every_bad_csv_row_is_named_by_its_line(tmp_path):
    table = _csv(tmp_path, [
        "pictures/a.png,1,1,5,5,dog",
        "pictures/a.png,1,1,5,,dog",            # 3: half empty
        "pictures/gone.png,1,1,5,5,dog",        # 4: missing image
        "pictures/b.png,x,1,5,5,dog",           # 5: not a number
        "pictures/b.png,1,1,45,5,dog",          # 6: outside
        "pictures/c.png,1,1,5,5,wolf",          # 7: unknown class
        "pictures/a.png,,,,,"])                 # 8: a negative mark on an image with boxes
    with pytest.raises(DataError) as error:
        read_box_csv(table, class_names=["dog", "cat"])
    message = str(error.value)
    assert "boxes.csv line 3: needs xmin, ymin, xmax, ymax and label all filled in" in message
    assert "boxes.csv line 4: its image cannot be used: no such file" in message
    assert "boxes.csv line 5: coordinates ['x', '1', '5', '5'] are not all numbers" in message
    assert "boxes.csv line 6: box (1, 1, 45, 5) is outside the image (40x30 pixels)" in message
    assert "boxes.csv line 7: unknown class 'wolf'" in message
    assert "boxes.csv line 8: marks an image without objects" in message


def test_a_csv_without_the_box_columns_is_refused(tmp_path):
    table = _csv(tmp_path, ["pictures/a.png,dog"], header="path,label")
    with pytest.raises(DataError, match="missing: xmin, ymin, xmax, ymax"):
        read_box_csv(table)
