"""An imported network's own ImageNet classifier on image files: how to check an import.

``tftoolkit weights predict NAME IMAGE...`` runs the network of ``tftoolkit weights
import NAME`` with its 1000-class ImageNet head, at the size where it reproduces the
original network, on each image resized the toolkit's way (``data.pipeline.Resize``,
bilinear, antialiased when downscaling) and preprocessed as its weights were trained.
Class names: the WordNet ids that ship with ``tensorflow-datasets`` (ImageNet's label
file), and the readable names it also ships.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tftoolkit.errors import DataError, WeightsError


@dataclass(frozen=True)
class ImageNetClass:
    """One of an image's most probable ImageNet classes."""

    index: int
    wordnet_id: str
    name: str
    probability: float


def imagenet_labels() -> list[tuple[str, str]]:
    """``(WordNet id, readable name)`` of the 1000 ImageNet-1k classes, in class order."""
    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("ImageNet's class list ships in tensorflow-datasets, which is not "
                           "installed: pip install tensorflow-datasets")
    root = Path(list(spec.submodule_search_locations)[0])
    ids = (root / "datasets" / "imagenet2012" / "labels.txt").read_text().split()
    try:  # the readable names, in the same order (SI-Score's copy of the list)
        from tensorflow_datasets.datasets.siscore.labels import IMAGENET_LABELS_LIST
        names = [name.split(",")[0] for name in IMAGENET_LABELS_LIST]
    except ImportError:
        names = []
    if len(names) != len(ids):
        names = ids
    return list(zip(ids, names))


def classify_imagenet(architecture: str, images: list[str | Path],
                      top_k: int = 5) -> list[list[ImageNetClass]]:
    """The ``top_k`` ImageNet classes of each image file by the imported network of
    ``architecture`` (imported from its wheel first when needed)."""
    import tensorflow as tf

    from tftoolkit.data.decode import DEFAULT_MAX_PIXELS
    from tftoolkit.data.pipeline import Resize, decode_image_bytes, to_rgb_image
    from tftoolkit.layers import Preprocess
    from tftoolkit.models.weight_import import imagenet_network, importer_for

    if top_k < 1:
        raise WeightsError(f"--top-k {top_k}: give 1 or more")
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        raise DataError(f"image file(s) not found: {', '.join(missing)}")
    importer = importer_for(architecture)
    network = imagenet_network(architecture)
    resize = Resize(importer.size, "bilinear")
    try:
        batch = np.stack([np.asarray(to_rgb_image(decode_image_bytes(
            tf.io.read_file(str(p)), DEFAULT_MAX_PIXELS), resize)) for p in images])
    except tf.errors.InvalidArgumentError as exc:
        raise DataError(f"cannot decode one of {', '.join(map(str, images))} as an image: "
                        f"{exc.message.splitlines()[0][:160]}") from None
    probabilities = network(Preprocess(importer.preprocessing)(batch)).numpy()
    labels = imagenet_labels()
    return [[ImageNetClass(int(i), *labels[i], float(row[i]))
             for i in np.argsort(row)[::-1][:top_k]] for row in probabilities]
