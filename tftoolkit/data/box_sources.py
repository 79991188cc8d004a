"""Detection data sources: Pascal VOC, COCO and CSV annotations, read into one form.

Each reader returns a :class:`DetectionSource`: per image, its file, its size (read from
the file's header), its boxes as ``(ymin, xmin, ymax, xmax)`` normalised to the image and
their class ids; and the class names (sorted, or COCO's categories in id order, or the
names given). Images without objects are kept: they are negative examples.

- **VOC** (``read_voc``): a folder holding ``Annotations/*.xml`` and the images in
  ``JPEGImages/`` or ``images/`` (Pascal VOC's and Model Maker's layout); each XML names
  its image (``filename``), size and objects (``name``, ``bndbox`` in pixels).
- **COCO** (``read_coco``): an ``instances.json`` (``images``, ``annotations`` with
  ``bbox`` = ``[x, y, width, height]`` in pixels, ``categories``) and the folder its
  ``file_name`` values are relative to. Crowd regions (``iscrowd``) are not objects to
  detect; they are left out and counted in the description.
- **CSV** (``read_box_csv``): a header naming ``path,xmin,ymin,xmax,ymax,label`` (any
  order, more columns allowed), one row per box in pixels, several rows per image. An
  image without objects is one row with its path and the other cells empty. Paths are
  relative to ``images_dir`` when given (and may not leave it), else to the CSV file's
  folder. An optional split column puts each image in ``train``, ``val`` or ``test``.

Every problem is collected and reported at once, each named by its file and line or
object, in a :class:`~tftoolkit.errors.DataError`: a file that does not parse, a missing
image, an image whose size differs from what its annotation declares, a box outside the
image, of zero area or with a minimum above its maximum, a coordinate that is not a
number, an unknown class (when ``class_names`` are given, or a COCO category that is not
listed).
"""

from __future__ import annotations

import csv
import functools
import json
import math
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tftoolkit.data.decode import declared_size
from tftoolkit.data.scan import IMAGE_EXTENSIONS, is_hidden
from tftoolkit.data.table import SPLIT_VALUES, resolve_path
from tftoolkit.errors import DataError, did_you_mean

VOC_IMAGE_FOLDERS = ("JPEGImages", "images")
CSV_COLUMNS = ("path", "xmin", "ymin", "xmax", "ymax", "label")
SHOWN_PROBLEMS = 50  # problems listed in an error; the rest are counted


@dataclass(frozen=True)
class DetectionImage:
    """One annotated image: ``boxes`` [N, 4] float32 normalised
    ``(ymin, xmin, ymax, xmax)``, ``classes`` [N] int64 (N may be 0: a negative)."""

    path: str
    height: int
    width: int
    boxes: np.ndarray
    classes: np.ndarray
    where: str            # the annotation that names it ("Annotations/a.xml", ...)
    split: str = ""       # train / val / test where the source says; "" otherwise

    def pixel_boxes(self) -> np.ndarray:
        """``boxes`` in pixels of the image."""
        return self.boxes * np.array([self.height, self.width] * 2, np.float32)


@dataclass
class DetectionSource:
    """What a reader returns: the images, the class names, a description."""

    images: list[DetectionImage]
    class_names: list[str]
    description: str

    @property
    def box_count(self) -> int:
        return sum(len(image.classes) for image in self.images)


@dataclass
class _Problems:
    """The problems found so far, each ``(where, why)``."""

    found: list[tuple[str, str]] = field(default_factory=list)

    def add(self, where: str, why: str) -> None:
        self.found.append((where, why))

    def raise_if_any(self, what: str) -> None:
        if not self.found:
            return
        shown = "\n".join(f"  {where}: {why}" for where, why in self.found[:SHOWN_PROBLEMS])
        more = len(self.found) - SHOWN_PROBLEMS
        rest = f"\n  ... and {more} more" if more > 0 else ""
        raise DataError(f"{len(self.found)} problem(s) in {what}:\n{shown}{rest}\nFix the "
                        "annotations (or the images) and run again; no image was left out.")


@functools.cache
def _size_reader():
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def read(path):
        width, height = declared_size(tf.io.read_file(path))
        return height, width

    return read


def _image_sizes(paths: list[str], threads: int = 8) -> list[tuple[int, int] | None]:
    """``(height, width)`` each image file declares in its header (None: unreadable)."""
    import tensorflow as tf

    def one(path: str) -> tuple[int, int] | None:
        try:
            height, width = (int(v) for v in _size_reader()(tf.constant(path)))
        except (tf.errors.OpError, OSError):
            return None
        return (height, width) if height > 0 and width > 0 else None

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, paths))


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _box_problem(xmin: float, ymin: float, xmax: float, ymax: float, height: int,
                 width: int) -> str | None:
    """Why a pixel box cannot be used in an image of ``height`` x ``width``, or None."""
    box = f"box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g})"
    if xmin > xmax or ymin > ymax:
        return f"{box} has a minimum above its maximum (xmin, ymin, xmax, ymax)"
    if xmin == xmax or ymin == ymax:
        return f"{box} has zero area"
    if xmin < 0 or ymin < 0 or xmax > width or ymax > height:
        return f"{box} is outside the image ({width}x{height} pixels)"
    return None


def _class_id(name: str, names: dict[str, int], fixed: bool) -> int | None:
    """The id of class ``name``: from the given classes (None when unknown), or a new
    one in order of appearance (renumbered once all are known)."""
    if name not in names:
        if fixed:
            return None
        names[name] = len(names)
    return names[name]


def _unknown(name: str, names: dict[str, int]) -> str:
    return (f"unknown class {name!r}{did_you_mean(name, list(names))} (classes: "
            f"{', '.join(names)})")


def _normalised(boxes: list[tuple[float, float, float, float]], height: int,
                width: int) -> np.ndarray:
    """Pixel ``(xmin, ymin, xmax, ymax)`` boxes -> normalised ``(ymin, xmin, ymax, xmax)``."""
    if not boxes:
        return np.zeros((0, 4), np.float32)
    xmin, ymin, xmax, ymax = np.asarray(boxes, np.float64).T
    return np.stack([ymin / height, xmin / width, ymax / height, xmax / width],
                    axis=1).astype(np.float32)


@dataclass
class _Pending:
    """An image as annotated, before its file's size is known."""

    path: str | None
    where: str
    boxes: list[tuple[float, float, float, float]]
    box_where: list[str]
    classes: list[int]
    declared: tuple[int, int] | None = None   # (height, width) the annotation states
    split: str = ""


def _finish(pending: list[_Pending], names: dict[str, int], fixed: bool,
            problems: _Problems, what: str, description: str) -> DetectionSource:
    """Read each image's size, check the boxes against it, and build the source (class
    names sorted unless given)."""
    paths = [p.path for p in pending if p.path is not None]
    sizes = dict(zip(paths, _image_sizes(paths)))
    images = []
    order = list(names) if fixed else sorted(names)
    renumber = np.array([order.index(name) for name in names], np.int64)
    for item in pending:
        if item.path is None:
            continue
        size = sizes[item.path]
        if size is None:
            problems.add(item.where, f"image {item.path} cannot be read (not a JPEG, PNG, "
                                     "GIF, BMP or WebP file, or a damaged one)")
            continue
        if item.declared is not None and item.declared != size:
            problems.add(item.where, f"declares a {item.declared[1]}x{item.declared[0]} "
                                     f"image, but {item.path} is {size[1]}x{size[0]}")
            continue
        for box, where in zip(item.boxes, item.box_where):
            why = _box_problem(*box, *size)
            if why:
                problems.add(where, why)
        classes = renumber[np.asarray(item.classes, np.int64)] if item.classes else \
            np.zeros(0, np.int64)
        images.append(DetectionImage(item.path, size[0], size[1],
                                     _normalised(item.boxes, *size), classes, item.where,
                                     item.split))
    problems.raise_if_any(what)
    if not images:
        raise DataError(f"{what} names no image")
    return DetectionSource(images, order, description)


def _fixed_names(class_names: list[str] | None) -> dict[str, int]:
    return {name: i for i, name in enumerate(class_names or [])}


# --- Pascal VOC --------------------------------------------------------------------------

def read_voc(folder: str | Path, class_names: list[str] | None = None) -> DetectionSource:
    """The images and objects of a Pascal VOC folder (see the module docstring)."""
    root = Path(folder).expanduser()
    annotations = root / "Annotations"
    if not annotations.is_dir():
        raise DataError(f"data.dir={str(folder)!r} has no Annotations/ folder: a Pascal VOC "
                        "folder holds Annotations/*.xml and JPEGImages/ (or images/)")
    image_dir = next((root / name for name in VOC_IMAGE_FOLDERS if (root / name).is_dir()),
                     None)
    if image_dir is None:
        raise DataError(f"data.dir={str(folder)!r} has no JPEGImages/ or images/ folder "
                        "beside Annotations/")
    files = sorted(p for p in annotations.glob("*.xml") if not is_hidden(p.name))
    if not files:
        raise DataError(f"{annotations} holds no .xml annotation")
    names, fixed = _fixed_names(class_names), class_names is not None
    problems, pending = _Problems(), []
    for xml in files:
        where = str(xml.relative_to(root))
        try:
            tree = ElementTree.parse(xml).getroot()
        except ElementTree.ParseError as exc:
            line, column = exc.position
            problems.add(f"{where} line {line}", f"does not parse as XML ({exc.msg}, column "
                                                 f"{column})")
            continue
        pending.append(_voc_image(tree, xml, where, image_dir, names, fixed, problems))
    return _finish(pending, names, fixed, problems, f"the annotations in {annotations}",
                   f"voc {root}")


def _voc_image(tree: ElementTree.Element, xml: Path, where: str, image_dir: Path,
               names: dict[str, int], fixed: bool, problems: _Problems) -> _Pending:
    filename = (tree.findtext("filename") or "").strip()
    if filename:
        path = image_dir / filename
    else:  # no filename: the image of the same stem
        path = next((image_dir / f"{xml.stem}{ext}" for ext in IMAGE_EXTENSIONS
                     if (image_dir / f"{xml.stem}{ext}").is_file()), image_dir / xml.stem)
    item = _Pending(str(path), where, [], [], [])
    if not path.is_file():
        problems.add(where, f"its image {path} does not exist")
        item.path = None
    width, height = (_number(tree.findtext(f"size/{key}")) for key in ("width", "height"))
    if width and height:  # some tools write 0 when they do not know
        item.declared = (int(height), int(width))
    for number, obj in enumerate(tree.findall("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        object_where = f"{where} object {number} ({name or 'no name'})"
        values = [_number(obj.findtext(f"bndbox/{key}")) for key in
                  ("xmin", "ymin", "xmax", "ymax")]
        if not name:
            problems.add(object_where, "has no <name>")
            continue
        if any(v is None for v in values):
            problems.add(object_where, "needs a <bndbox> with numeric xmin, ymin, xmax, ymax")
            continue
        class_id = _class_id(name, names, fixed)
        if class_id is None:
            problems.add(object_where, _unknown(name, names))
            continue
        item.boxes.append(tuple(values))
        item.box_where.append(object_where)
        item.classes.append(class_id)
    return item


# --- COCO --------------------------------------------------------------------------------

def read_coco(annotations: str | Path, images_dir: str | Path,
              class_names: list[str] | None = None) -> DetectionSource:
    """The images and objects of a COCO ``instances.json`` (see the module docstring);
    ``class_names``, when given, must name every category used."""
    path = Path(annotations).expanduser()
    image_dir = Path(images_dir).expanduser()
    if not path.is_file():
        raise DataError(f"data.annotations={str(annotations)!r}: no such file")
    if not image_dir.is_dir():
        raise DataError(f"data.dir={str(images_dir)!r}: no such directory (the folder the "
                        "COCO file_name values are relative to)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a readable JSON file: {exc}") from None
    missing = [key for key in ("images", "annotations", "categories")
               if not isinstance(data, dict) or not isinstance(data.get(key), list)]
    if missing:
        raise DataError(f"{path} is not a COCO instances file: it needs lists "
                        f"{', '.join(missing)}")
    problems = _Problems()
    categories: dict[int, str] = {}
    for number, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or not isinstance(category.get("id"), int) or \
                not str(category.get("name", "")).strip():
            problems.add(f"{path.name} categories[{number}]", "needs an integer id and a name")
            continue
        name = str(category["name"]).strip()
        if name in categories.values():
            problems.add(f"{path.name} categories[{number}]", f"repeats the name {name!r}")
        categories[category["id"]] = name
    names = _fixed_names(class_names if class_names is not None
                         else [categories[key] for key in sorted(categories)])
    pending: dict[object, _Pending] = {}
    for number, image in enumerate(data["images"]):
        key = image.get("id", number) if isinstance(image, dict) else number
        where = f"{path.name} image {key}"
        if not isinstance(image, dict) or "id" not in image or not image.get("file_name"):
            problems.add(where, "needs an id and a file_name")
            continue
        resolved, why = resolve_path(str(image["file_name"]), image_dir.resolve(), None)
        item = _Pending(resolved, f"{where} ({image['file_name']})", [], [], [])
        if why:
            problems.add(item.where, f"its image cannot be used: {why}")
        width, height = _number(image.get("width")), _number(image.get("height"))
        if width and height:
            item.declared = (int(height), int(width))
        pending[image["id"]] = item
    crowds = 0
    for number, annotation in enumerate(data["annotations"]):
        if not isinstance(annotation, dict):
            problems.add(f"{path.name} annotations[{number}]", "is not an object")
            continue
        where = f"{path.name} annotation {annotation.get('id', number)}"
        item = pending.get(annotation.get("image_id"))
        if item is None:
            problems.add(where, f"names image_id {annotation.get('image_id')!r}, which is not "
                                "in images")
            continue
        if annotation.get("iscrowd"):
            crowds += 1
            continue
        category = categories.get(annotation.get("category_id"))
        if category is None:
            problems.add(where, f"names category_id {annotation.get('category_id')!r}, which "
                                f"is not in categories (ids: {sorted(categories)})")
            continue
        if category not in names:
            problems.add(where, _unknown(category, names))
            continue
        bbox = annotation.get("bbox")
        values = [_number(v) for v in bbox] if isinstance(bbox, list) else []
        if len(values) != 4 or any(v is None for v in values):
            problems.add(where, f"bbox {bbox!r} is not [x, y, width, height] numbers")
            continue
        x, y, w, h = values
        item.boxes.append((x, y, x + w, y + h))
        item.box_where.append(where)
        item.classes.append(names[category])
    description = f"coco {path}" + (f" ({crowds} crowd regions left out)" if crowds else "")
    return _finish(list(pending.values()), names, True, problems, str(path), description)


# --- CSV ---------------------------------------------------------------------------------

def names_box_columns(table: str | Path) -> bool:
    """Whether the CSV file ``table`` has a header naming xmin, ymin, xmax and ymax (a
    table of boxes); False for a file that cannot be read (its reader says why)."""
    try:
        with open(Path(table).expanduser(), newline="", encoding="utf-8-sig") as f:
            header = {cell.strip() for cell in next(csv.reader(f), [])}
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return {"xmin", "ymin", "xmax", "ymax"} <= header


def read_box_csv(table: str | Path, images_dir: str | Path = "",
                 class_names: list[str] | None = None,
                 split_column: str = "") -> DetectionSource:
    """The images and boxes of a CSV file of ``path,xmin,ymin,xmax,ymax,label`` rows
    (see the module docstring)."""
    path = Path(table).expanduser()
    if not path.is_file():
        raise DataError(f"data.csv={str(table)!r}: no such file")
    root = Path(images_dir).expanduser().resolve() if images_dir else None
    if root is not None and not root.is_dir():
        raise DataError(f"data.dir={str(images_dir)!r}: no such directory")
    base = root or path.resolve().parent
    names, fixed = _fixed_names(class_names), class_names is not None
    problems = _Problems()
    pending: dict[str, _Pending] = {}
    empty_rows: dict[str, str] = {}   # path -> where its "no objects" row is
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [cell.strip() for cell in next(reader, [])]
        wanted = list(CSV_COLUMNS) + ([split_column] if split_column else [])
        absent = [c for c in wanted if c not in header]
        if absent:
            raise DataError(f"{path} needs a header row naming the columns "
                            f"{', '.join(wanted)}; missing: {', '.join(absent)} (found: "
                            f"{', '.join(header) or 'nothing'})")
        index = {c: header.index(c) for c in wanted}
        for cells in reader:
            where = f"{path.name} line {reader.line_num}"
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                problems.add(where, f"has {len(cells)} fields, the header {len(header)}")
                continue
            row = {c: cells[i].strip() for c, i in index.items()}
            _csv_row(row, where, base, root, names, fixed, split_column, pending,
                     empty_rows, problems)
    for image_path, where in empty_rows.items():
        if pending[image_path].boxes:
            problems.add(where, "marks an image without objects (empty box cells), but "
                                "other rows give it boxes; remove this row")
    return _finish(list(pending.values()), names, fixed, problems, str(path), f"csv {path}")


def _csv_row(row: dict[str, str], where: str, base: Path, root: Path | None,
             names: dict[str, int], fixed: bool, split_column: str,
             pending: dict[str, _Pending], empty_rows: dict[str, str],
             problems: _Problems) -> None:
    """Add one row's box (or its image's "no objects" mark) to ``pending``."""
    resolved, why = resolve_path(row["path"], base, root)
    if why:
        problems.add(where, f"its image cannot be used: {why}")
        return
    split = row.get(split_column, "") if split_column else ""
    if split_column and split not in SPLIT_VALUES:
        problems.add(where, f"{split_column!r} is {split!r}"
                            f"{did_you_mean(split, list(SPLIT_VALUES))} (allowed: "
                            f"{', '.join(SPLIT_VALUES)})")
        return
    item = pending.setdefault(resolved, _Pending(resolved, where, [], [], [], split=split))
    if split_column and item.split != split:
        problems.add(where, f"puts {row['path']} in {split!r}, an earlier row in "
                            f"{item.split!r}; all rows of an image need one split")
        return
    cells = [row[c] for c in ("xmin", "ymin", "xmax", "ymax", "label")]
    if not any(cells):
        empty_rows.setdefault(resolved, where)
        return
    if not all(cells):
        problems.add(where, "needs xmin, ymin, xmax, ymax and label all filled in (or all "
                            "empty for an image without objects)")
        return
    values = [_number(cell) for cell in cells[:4]]
    if any(v is None for v in values):
        problems.add(where, f"coordinates {cells[:4]} are not all numbers")
        return
    class_id = _class_id(row["label"], names, fixed)
    if class_id is None:
        problems.add(where, _unknown(row["label"], names))
        return
    item.boxes.append(tuple(values))
    item.box_where.append(where)
    item.classes.append(class_id)
