"""Data sources: each turns a ``data`` section into labelled splits of examples.

A source returns :class:`Examples` per split (``train``, and ``val``/``test`` where the
source has them) plus the class names. Detection sources (Pascal VOC, COCO, a CSV of
boxes: :mod:`tftoolkit.data.box_sources`) label each image with its box table,
``[max_boxes, 5]`` rows of ``(ymin, xmin, ymax, xmax, class id)``, unused rows of class
-1 (:mod:`tftoolkit.detection.matching`). Examples are in-memory arrays, image file
paths, or (TFDS) a ``tf.data.Dataset`` whose labels were read up front; each carries
where it comes from (its source id) and the sha256 of its content. Single-label images
whose content is identical must agree on their class (a source the user wrote: a
folder, a table, arrays).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tftoolkit.data.box_sources import (DetectionSource, names_box_columns, read_box_csv,
                                        read_coco, read_voc)
from tftoolkit.data.content import (DIGEST_BYTES, array_digests, conflicting_pairs,
                                    content_groups, sha256)
from tftoolkit.data.parallelism import PARALLEL_CALLS
from tftoolkit.data.scan import IMAGE_EXTENSIONS, WorkerShare, is_hidden, scan_image_folder
from tftoolkit.data.table import control_characters, read_table
from tftoolkit.detection.matching import BOX_FIELDS, NO_BOX
from tftoolkit.errors import DataError, bounded_list, did_you_mean
from tftoolkit.paths import keras_datasets_dir
from tftoolkit.recipe import DataConfig

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                       "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class Examples:
    """One split of labelled examples, before decoding and batching."""

    labels: np.ndarray
    arrays: np.ndarray | None = None       # features, or images (N, H, W[, C]) uint8
    paths: np.ndarray | None = None        # image files
    dataset: object | None = None          # TFDS: tf.data.Dataset of (image, label),
    #                                        images encoded (PNG/JPEG bytes) or tensors
    sources: np.ndarray | None = None      # where each example comes from: its file,
    #                                        "array:train:7", a TFDS id, ...
    digests: np.ndarray | None = None      # (N, 32) uint8: sha256 of each example's
    #                                        file bytes, array bytes or encoded image

    def __len__(self) -> int:
        return len(self.labels)

    @functools.cached_property
    def fingerprint(self) -> str:
        """A digest of the split's content, computed once: its labels and, per kind of
        example, the image files (paths, sizes, modification times), the arrays' bytes,
        or the TFDS element spec."""
        digest = hashlib.sha1(np.ascontiguousarray(self.labels).tobytes())
        if self.paths is not None:
            for path in self.paths:
                stat = os.stat(path)
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        elif self.arrays is not None:
            digest.update(str(self.arrays.shape).encode())
            digest.update(np.ascontiguousarray(self.arrays).tobytes())
        else:
            digest.update(repr(self.dataset.element_spec).encode())
        return digest.hexdigest()

    def subset(self, indices: np.ndarray) -> "Examples":
        """The examples at ``indices``, in that order; a TFDS dataset is read in one
        order, so its subset is in position order (each example as often as named)."""
        if self.dataset is not None:
            indices = np.sort(indices)
        return Examples(
            self.labels[indices],
            arrays=None if self.arrays is None else self.arrays[indices],
            paths=None if self.paths is None else self.paths[indices],
            dataset=None if self.dataset is None else _select(self.dataset, indices),
            sources=None if self.sources is None else self.sources[indices],
            digests=None if self.digests is None else self.digests[indices])

    @classmethod
    def joined(cls, parts: list["Examples"]) -> "Examples":
        """The examples of ``parts`` one after the other (all of one kind)."""
        def join(name: str):
            values = [getattr(part, name) for part in parts]
            return None if values[0] is None else np.concatenate(values)

        dataset = None
        if parts[0].dataset is not None:
            dataset = functools.reduce(lambda a, b: a.concatenate(b),
                                       [part.dataset for part in parts])
        return cls(join("labels"), arrays=join("arrays"), paths=join("paths"),
                   dataset=dataset, sources=join("sources"), digests=join("digests"))


def _select(dataset, indices: np.ndarray):
    """The elements of ``dataset`` at the sorted positions ``indices``, each as many
    times as it is named there (a padded shard names some twice)."""
    import tensorflow as tf

    times = np.bincount(indices) if len(indices) else np.zeros(0, np.int64)
    size = len(times)
    table = tf.constant(times, tf.int64)
    chosen = (dataset.take(size).enumerate()
              .filter(lambda i, example: tf.gather(table, i) > 0))
    if times.max(initial=0) <= 1:
        return chosen.map(lambda i, example: example)
    return chosen.flat_map(lambda i, example: tf.data.Dataset.from_tensors(example)
                           .repeat(tf.gather(table, i)))


@dataclass
class SourceData:
    """What a source yields: splits, class names (None for regression), the files or
    rows left out with their reasons, notes (warnings about the data);
    ``multilabel``: labels are multi-hot rows, several classes per example."""

    splits: dict[str, Examples]
    class_names: list[str] | None
    description: str
    bad_files: list[tuple[str, str]]
    multilabel: bool = False
    notes: list[str] = field(default_factory=list)
    detection: bool = False   # labels are box tables


def _ids(prefix: str, count: int) -> np.ndarray:
    """Source ids ``PREFIX:0``, ``PREFIX:1``, ... of in-memory examples."""
    return np.array([f"{prefix}:{i}" for i in range(count)])


def _refuse_conflicts(examples: Examples, name: Callable[[int], str], what: str) -> None:
    """Refuse single-label examples of identical content but different classes, each
    pair named by ``name(index)``."""
    pairs = conflicting_pairs(content_groups(examples.digests), examples.labels)
    if pairs:
        listing = bounded_list([f"{name(a)} and {name(b)}" for a, b in pairs],
                               "conflicting-labels")
        raise DataError(f"{len(pairs)} {what} byte-identical to another under a different "
                        f"class, a contradiction the model cannot learn:{listing}\nRemove "
                        "the copy with the wrong class (an image belongs to one class; "
                        "several labels per image are a table with data.label_delimiter).")


def load_source(cfg: DataConfig, seed: int, share: WorkerShare | None = None) -> SourceData:
    """Read the source named by ``cfg.source``; with ``share``, the workers of a
    multi-worker run split the check of an image folder's files among them."""
    loaders = {"synthetic": _synthetic, "arrays": _arrays,
               "folder": functools.partial(_folder, share=share),
               "csv": functools.partial(_csv, share=share),
               "tfds": _tfds, "fashion_mnist": _fashion_mnist,
               "voc": functools.partial(_voc, share=share),
               "coco": functools.partial(_coco, share=share)}
    if cfg.task == "detection" and cfg.source not in ("voc", "coco", "csv"):
        raise DataError(f"data.task=detection needs boxes: data.source=voc, coco or csv (a "
                        f"table of path,xmin,ymin,xmax,ymax,label rows), not "
                        f"{cfg.source!r}")
    return loaders[cfg.source](cfg, seed)


# --- synthetic -------------------------------------------------------------------------

def _synthetic(cfg: DataConfig, seed: int) -> SourceData:
    """Classic regression targets: ``linear`` (Y = 3X + 2 + U(0,1)) and ``sine_product``
    (y = sin(pi x1) * x2 on [-1, 1]^2, which a linear model cannot fit)."""
    rng = np.random.default_rng(seed)
    n = cfg.num_examples
    if cfg.name == "linear":
        x = rng.uniform(0.0, 1.0, size=(n, 1))
        y = 3.0 * x + 2.0 + rng.uniform(0.0, 1.0, size=(n, 1))
    elif cfg.name == "sine_product":
        x = rng.uniform(-1.0, 1.0, size=(n, 2))
        y = (np.sin(np.pi * x[:, 0]) * x[:, 1])[:, None]
    else:
        raise DataError(f"data.name={cfg.name!r} is not a synthetic generator "
                        "(choices: linear, sine_product)")
    x = x.astype("float32")
    return SourceData({"train": Examples(y.astype("float32"), arrays=x,
                                         sources=_ids(f"synthetic:{cfg.name}", n),
                                         digests=array_digests(x))},
                      None, f"synthetic:{cfg.name} ({n} examples)", [])


# --- in-memory arrays ------------------------------------------------------------------

def _arrays(cfg: DataConfig, seed: int) -> SourceData:
    if not cfg.arrays or "train" not in cfg.arrays:
        raise DataError("data.source='arrays' needs data.arrays={'train': (x, y), ...}")
    splits, max_label, integer = {}, -1, True
    for split, pair in cfg.arrays.items():
        if split not in ("train", "val", "test"):
            raise DataError(f"data.arrays has split {split!r}; allowed: train, val, test")
        x, y = (np.asarray(a) for a in pair)
        if len(x) != len(y):
            raise DataError(f"data.arrays[{split!r}]: {len(x)} inputs but {len(y)} labels")
        _refuse_unit_floats(x, split)
        integer = integer and np.issubdtype(y.dtype, np.integer)
        if integer:
            if y.min() < 0:
                raise DataError(f"data.arrays[{split!r}]: label {int(y.min())} is negative; "
                                "class labels must be 0..num_classes-1")
            max_label = max(max_label, int(y.max()))
        splits[split] = Examples(y, arrays=x, sources=_ids(f"array:{split}", len(x)),
                                 digests=array_digests(x))
    class_names = [str(i) for i in range(max_label + 1)] if integer else None
    if integer:
        seen = np.unique(splits["train"].labels)
        missing = sorted(set(range(max_label + 1)) - set(seen.tolist()))
        if missing:
            raise DataError(f"data.arrays: labels range over 0..{max_label} but classes "
                            f"{missing} never occur in 'train'; labels out of range?")
        if splits["train"].arrays.ndim >= 3:  # images: a picture has one class
            pooled = Examples.joined(list(splits.values()))
            _refuse_conflicts(pooled, lambda i: f"{pooled.sources[i]} (label "
                                                f"{pooled.labels[i]})",
                              "data.arrays image(s) are")
    return SourceData(splits, class_names, "arrays", [])


def _refuse_unit_floats(x: np.ndarray, split: str) -> None:
    """Refuse float images whose values all lie within [0, 1]: tftoolkit's images are raw
    0-255 pixels, which each model scales itself, so these would be near-black (and
    rounded to 0 or 1 by the uint8 cache)."""
    if (x.ndim >= 3 and np.issubdtype(x.dtype, np.floating) and x.size
            and float(x.min()) >= 0.0 and float(x.max()) <= 1.0):
        raise DataError(f"data.arrays[{split!r}]: float images with every value within "
                        f"[0, 1] (max {float(x.max()):g}); images are raw 0-255 pixels (each "
                        "model applies its own scaling): pass x * 255, or the uint8 images")


# --- Fashion-MNIST ---------------------------------------------------------------------

def _fashion_mnist_dir() -> Path | None:
    names = [f for pair in FASHION_MNIST_FILES.values() for f in pair]
    for folder in (keras_datasets_dir() / "fashion-mnist", DEBIAN_FASHION_MNIST_DIR):
        if all((folder / f).is_file() for f in names):
            return folder
    return None


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def _fashion_mnist(cfg: DataConfig, seed: int) -> SourceData:
    """Fashion-MNIST from the Keras cache, else the Debian package, else Keras' download."""
    folder = _fashion_mnist_dir()
    if folder is None:
        import keras

        try:
            (xtr, ytr), (xte, yte) = keras.datasets.fashion_mnist.load_data()
        except Exception as exc:  # offline: Keras raises a plain Exception on fetch failure
            raise DataError(
                "Fashion-MNIST is not available offline: none of "
                f"{keras_datasets_dir() / 'fashion-mnist'} or {DEBIAN_FASHION_MNIST_DIR} "
                "holds the four *-ubyte.gz files, and the download failed "
                f"({str(exc).splitlines()[0][:120]}). Install them with "
                "`apt-get install dataset-fashion-mnist`, or copy the files into "
                f"{keras_datasets_dir() / 'fashion-mnist'}.") from None
        where, pairs = "Keras download", {"train": (xtr, ytr), "test": (xte, yte)}
    else:
        pairs = {}
        for split, (images, labels) in FASHION_MNIST_FILES.items():
            y = _read_idx(folder / labels, 8)
            pairs[split] = _read_idx(folder / images, 16).reshape(len(y), 28, 28), y
        where = str(folder)
    splits = {split: Examples(y.astype("int64"), arrays=x,
                              sources=_ids(f"fashion_mnist:{split}", len(x)),
                              digests=array_digests(x)) for split, (x, y) in pairs.items()}
    return SourceData(splits, list(FASHION_MNIST_CLASSES), f"fashion_mnist ({where})", [])


# --- image folder ----------------------------------------------------------------------

def _folder(cfg: DataConfig, seed: int, share: WorkerShare | None = None) -> SourceData:
    if not cfg.dir:
        raise DataError("data.source='folder' needs data.dir: --set data.dir=PATH/TO/IMAGES "
                        "(one subfolder per class)")
    root = Path(cfg.dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data.dir={cfg.dir!r}: no such directory")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not is_hidden(p.name))
    if len(class_dirs) < 2:
        raise DataError(f"data.dir={cfg.dir!r} has {len(class_dirs)} class subfolder(s); "
                        "an image folder needs one subfolder per class, at least two")
    odd = [repr(str(d)) for d in class_dirs if control_characters(d.name)]
    if odd:
        raise DataError(f"class folder name(s) with a control character (a line break, a "
                        f"tab, ...): {', '.join(odd)}; a class name is one line of the "
                        "export's labels.txt, which such a name would break: rename them")
    files = {d.name: sorted(p for p in d.rglob("*") if (p.is_file() or p.is_symlink())
                            and not any(is_hidden(part) for part in p.relative_to(d).parts))
             for d in class_dirs}  # a dangling link is a bad file, named by the scan
    empty = [name for name, paths in files.items() if not paths]
    if empty:
        raise DataError(f"data.dir={cfg.dir!r}: class folder(s) {empty} hold no files; "
                        "remove them or add images")
    scan = scan_image_folder([p for paths in files.values() for p in paths], share=share,
                             max_pixels=cfg.max_pixels)
    if scan.bad and cfg.on_bad_file == "error":
        raise _unreadable(scan.bad, f"file(s) in {cfg.dir} cannot be read as images "
                                    f"({', '.join(IMAGE_EXTENSIONS)})")
    class_of = {str(p): label for label, paths in enumerate(files.values()) for p in paths}
    labels = np.array([class_of[path] for path in scan.good], "int64")
    present = set(labels.tolist())
    unreadable = [name for label, name in enumerate(files) if label not in present]
    if unreadable:
        raise DataError(f"class folder {root / unreadable[0]} has no readable image")
    paths = np.array(scan.good)
    examples = Examples(labels, paths=paths, sources=paths, digests=scan.digests)
    _refuse_conflicts(examples, lambda i: scan.good[i], f"file(s) in {cfg.dir} are")
    return SourceData({"train": examples}, list(files), f"folder {root}", scan.bad)


def _unreadable(bad: list[tuple[str, str]], what: str) -> DataError:
    """The error that lists files or rows that cannot be used, and the way round."""
    listing = bounded_list([f"{where}: {why}" for where, why in bad], "unreadable")
    return DataError(f"{len(bad)} {what}:{listing}\nFix or remove them, or --set "
                     "data.on_bad_file=skip to train without them (the list is then "
                     "written to the run directory).")


# --- a table of image paths and labels (CSV file or DataFrame) -------------------------

def _csv(cfg: DataConfig, seed: int, share: WorkerShare | None = None) -> SourceData:
    """Images named by the rows of a table; its split column, when given, sets the
    splits (the rest are held out of train as for an image folder)."""
    if cfg.csv is None or (isinstance(cfg.csv, str) and not cfg.csv):
        raise DataError("data.source='csv' needs data.csv: --set data.csv=PATH/TO/labels.csv "
                        "(or a pandas DataFrame in the Python API)")
    if cfg.task == "detection" or (isinstance(cfg.csv, str) and names_box_columns(cfg.csv)):
        if not isinstance(cfg.csv, str):
            raise DataError("data.task=detection reads a CSV file of boxes: set data.csv to "
                            "its path (a DataFrame is not read as boxes)")
        return _boxes(read_box_csv(cfg.csv, cfg.dir, split_column=cfg.split_column), cfg,
                      share)
    table = read_table(cfg.csv, path_column=cfg.path_column, label_column=cfg.label_column,
                       label_delimiter=cfg.label_delimiter, split_column=cfg.split_column,
                       data_dir=cfg.dir)
    if table.bad_rows and cfg.on_bad_file == "error":
        raise _unreadable(table.bad_rows, f"row(s) of {table.description} cannot be used")
    scan = scan_image_folder([Path(p) for p in dict.fromkeys(table.paths)], share=share,
                             max_pixels=cfg.max_pixels)
    row_of = dict(zip(reversed(table.paths), reversed(table.rows)))  # each path's first
    scan.bad = [(f"{row_of[path]} ({path})", why) for path, why in scan.bad]
    if scan.bad and cfg.on_bad_file == "error":
        raise _unreadable(scan.bad, f"file(s) named in {table.description} cannot be read "
                                    f"as images ({', '.join(IMAGE_EXTENSIONS)})")
    digest_of = dict(zip(scan.good, scan.digests))
    keep = np.array([p in digest_of for p in table.paths], bool)
    paths, labels = np.array(table.paths, dtype=str), table.labels
    row_split, rows = np.array(table.splits, dtype=str), np.array(table.rows, dtype=str)
    digests = np.array([digest_of.get(p, np.zeros(DIGEST_BYTES, np.uint8))
                        for p in table.paths], np.uint8).reshape(-1, DIGEST_BYTES)
    if table.class_names is not None and not table.multilabel and len(table.class_names) < 2:
        raise DataError(f"{table.description}: column {cfg.label_column!r} names "
                        f"{len(table.class_names)} class(es); classification needs two or "
                        "more (numbers in every row would be regression targets)")
    if table.multilabel and len(table.class_names) < 2:
        raise DataError(f"{table.description}: column {cfg.label_column!r} names "
                        f"{len(table.class_names)} label(s); multi-label needs two or more "
                        "(one label present or absent is binary: leave "
                        "data.label_delimiter empty)")
    if table.class_names is not None and not table.multilabel:
        kept_rows, kept_paths = rows[keep], paths[keep]
        _refuse_conflicts(Examples(labels[keep], digests=digests[keep]),
                          lambda i: f"{kept_rows[i]} ({kept_paths[i]})",
                          f"row(s) of {table.description} name an image")
    splits = {}
    for split in ("train", "val", "test"):
        chosen = keep & (row_split == split)
        if chosen.any() or split == "train":
            splits[split] = Examples(labels[chosen], paths=paths[chosen],
                                     sources=paths[chosen], digests=digests[chosen])
    return SourceData(splits, table.class_names, table.description,
                      table.bad_rows + scan.bad, multilabel=table.multilabel,
                      notes=table.notes)


# --- TensorFlow Datasets ---------------------------------------------------------------

# --- object detection annotations -------------------------------------------------------

def _voc(cfg: DataConfig, seed: int, share: WorkerShare | None = None) -> SourceData:
    if not cfg.dir:
        raise DataError("data.source='voc' needs data.dir: --set data.dir=PATH (the folder "
                        "holding Annotations/ and JPEGImages/ or images/)")
    return _boxes(read_voc(cfg.dir), cfg, share)


def _coco(cfg: DataConfig, seed: int, share: WorkerShare | None = None) -> SourceData:
    if not cfg.annotations or not cfg.dir:
        raise DataError("data.source='coco' needs data.annotations (the instances JSON) and "
                        "data.dir (the folder of its images): --set "
                        "data.annotations=PATH/instances.json --set data.dir=PATH/images")
    return _boxes(read_coco(cfg.annotations, cfg.dir), cfg, share)


def _boxes(found: DetectionSource, cfg: DataConfig,
           share: WorkerShare | None = None) -> SourceData:
    """The annotated images as splits (where the annotations place them; train
    otherwise) labelled with their box tables, each image checked as a folder's are."""
    where = {image.path: image.where for image in found.images}
    scan = scan_image_folder([Path(image.path) for image in found.images], share=share,
                             max_pixels=cfg.max_pixels)
    scan.bad = [(f"{where.get(path, path)} ({path})", why) for path, why in scan.bad]
    if scan.bad and cfg.on_bad_file == "error":
        raise _unreadable(scan.bad, f"image(s) named in {found.description} cannot be read "
                                    f"({', '.join(IMAGE_EXTENSIONS)})")
    digest_of = dict(zip(scan.good, scan.digests))
    images = [image for image in found.images if image.path in digest_of]
    max_boxes = max([len(image.classes) for image in images] + [1])
    tables = np.zeros((len(images), max_boxes, BOX_FIELDS), np.float32)
    tables[..., 4] = NO_BOX
    for row, image in enumerate(images):
        count = len(image.classes)
        tables[row, :count, :4], tables[row, :count, 4] = image.boxes, image.classes
    paths = np.array([image.path for image in images], dtype=str)
    digests = np.array([digest_of[image.path] for image in images],
                       np.uint8).reshape(-1, DIGEST_BYTES)
    placed = np.array([image.split or "train" for image in images], dtype=str)
    splits = {split: Examples(tables[placed == split], paths=paths[placed == split],
                              sources=paths[placed == split],
                              digests=digests[placed == split])
              for split in ("train", "val", "test") if split == "train" or
              (placed == split).any()}
    return SourceData(splits, found.class_names,
                      f"{found.description} ({found.box_count} boxes)", scan.bad,
                      detection=True)


def _tfds_read_config():
    """Record files read :data:`~tftoolkit.data.parallelism.PARALLEL_CALLS` at a time
    (interleaved in a fixed order), whether tf.data autotunes or not; each record with
    its TFDS id."""
    import tensorflow_datasets as tfds

    return tfds.ReadConfig(num_parallel_calls_for_interleave_files=PARALLEL_CALLS,
                           add_tfds_id=True)


def _tfds(cfg: DataConfig, seed: int) -> SourceData:
    import tensorflow_datasets as tfds

    if not cfg.name:
        raise DataError("data.source='tfds' needs data.name (a TFDS dataset such as "
                        "tf_flowers)")
    try:
        builder = tfds.builder(cfg.name, data_dir=cfg.data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        hint = did_you_mean(cfg.name, tfds.list_builders())
        raise DataError(f"data.name={cfg.name!r} is not a TFDS dataset{hint}") from None
    if not builder.is_prepared():
        try:
            builder.download_and_prepare()
        except Exception as exc:
            raise DataError(
                f"TFDS dataset {cfg.name!r} is not prepared in {builder.data_dir} and "
                f"could not be downloaded ({type(exc).__name__}: {str(exc)[:160]}). On a "
                f"machine with internet run `tfds build {cfg.name}` (or the same recipe), "
                "then copy the prepared folder here and --set data.data_dir=PATH.") from None
    image_key, label_key = builder.info.supervised_keys
    label_feature = builder.info.features[label_key]
    splits = {}
    for split, spec in (("train", cfg.train_split), ("val", cfg.val_split),
                        ("test", cfg.test_split)):
        if not spec:
            continue
        try:  # images stay encoded until the pipeline has picked its examples
            records = builder.as_dataset(split=spec, decoders={
                image_key: tfds.decode.SkipDecoding()}, read_config=_tfds_read_config())
        except (ValueError, KeyError) as exc:
            raise DataError(f"data.{split}_split={spec!r} is not a split of {cfg.name} "
                            f"({', '.join(builder.info.splits)}): {exc}") from None
        ids, labels, digests = [], [], []
        for record in records.as_numpy_iterator():  # labels, ids and digests up front
            image = record[image_key]
            ids.append(record["tfds_id"].decode())
            labels.append(int(record[label_key]))
            digests.append(sha256(image if isinstance(image, bytes)
                                  else np.ascontiguousarray(image).tobytes()))
        splits[split] = Examples(
            np.array(labels, "int64"),
            dataset=records.map(lambda record: (record[image_key], record[label_key])),
            sources=np.array(ids, dtype=str),
            digests=np.array(digests, np.uint8).reshape(-1, DIGEST_BYTES))
    return SourceData(splits, list(label_feature.names), f"tfds:{cfg.name}", [])
