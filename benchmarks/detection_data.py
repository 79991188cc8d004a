"""A detection set from real images: Fashion-MNIST items composited on photo crops.

Each picture is a random crop of one of scikit-image's bundled photos (astronaut,
coffee, chelsea, rocket, the Hubble deep field, a retina, a stained tissue sample, and
the grey brick, grass, gravel, camera, coins and moon pictures), flipped at random and
resized to ``--size`` pixels, with 0 to ``--max-items`` Fashion-MNIST items pasted on it:
each scaled to a side between ``--min-side`` and ``--max-side`` pixels (log-uniform,
aspect jittered by up to 20%), tinted, blended by its own intensity (dark background
pixels of the item stay transparent) and placed where it overlaps no earlier item by
more than 10% of the smaller box. An item's box encloses its opaque pixels (blend weight
above one half). About 5% of the pictures hold no item: negatives.

Train and validation items come from disjoint parts of Fashion-MNIST's 60,000 training
images, test items from its 10,000 test images only; backgrounds are crops of the same
photos in every split. The set is written as a CSV table ``boxes.csv``
(``path,xmin,ymin,xmax,ymax,label,split``, pixels; an image without objects is one row
with empty box cells) beside ``images/*.jpg``: ``data.source=csv`` reads it.

    python -m benchmarks.detection_data OUT_DIR [--train 3000] [--val 500] [--test 1000]
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tftoolkit.data.sources import FASHION_MNIST_CLASSES, load_source
from tftoolkit.recipe import DataConfig

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina", "brick", "grass", "gravel", "camera", "coins",
          "moon")
NEGATIVE_SHARE = 0.05
MAX_OVERLAP = 0.1       # of the smaller box, between two items of one picture
OPAQUE = 0.5            # blend weight from which an item's pixel is inside its box
PLACEMENT_TRIES = 30


@dataclass(frozen=True)
class Layout:
    """The pictures' size and what goes on them."""

    size: int = 256
    max_items: int = 4
    min_side: int = 40
    max_side: int = 120


def photos() -> list[np.ndarray]:
    """The bundled scikit-image photos as RGB uint8 arrays."""
    import skimage.data

    pictures = []
    for name in PHOTOS:
        image = np.asarray(getattr(skimage.data, name)())
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        pictures.append(image[..., :3].astype(np.uint8))
    return pictures


def _background(pictures: list[np.ndarray], size: int, rng: np.random.Generator
                ) -> np.ndarray:
    photo = pictures[rng.integers(len(pictures))]
    height, width = photo.shape[:2]
    side = int(rng.uniform(0.3, 1.0) * min(height, width))
    y, x = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size),
                                                                  Image.BILINEAR)
    crop = np.asarray(crop, np.float32)
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def _overlaps(box: np.ndarray, others: list[np.ndarray]) -> bool:
    for other in others:
        inter = (max(0, min(box[2], other[2]) - max(box[0], other[0]))
                 * max(0, min(box[3], other[3]) - max(box[1], other[1])))
        smaller = min((box[2] - box[0]) * (box[3] - box[1]),
                      (other[2] - other[0]) * (other[3] - other[1]))
        if inter > MAX_OVERLAP * smaller:
            return True
    return False


def compose(pictures: list[np.ndarray], items: np.ndarray, labels: np.ndarray,
            layout: Layout, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple]]:
    """One picture with items drawn from ``items`` (28x28 uint8) and ``labels``: the
    uint8 image and its objects ``(xmin, ymin, xmax, ymax, label)`` in pixels."""
    canvas = _background(pictures, layout.size, rng)
    count = 0 if rng.random() < NEGATIVE_SHARE else int(rng.integers(1, layout.max_items + 1))
    objects, boxes = [], []
    for _ in range(count):
        index = rng.integers(len(items))
        side = np.exp(rng.uniform(np.log(layout.min_side), np.log(layout.max_side)))
        stretch = rng.uniform(0.8, 1.2)
        height = int(min(round(side * stretch), layout.size))
        width = int(min(round(side / stretch), layout.size))
        item = np.asarray(Image.fromarray(items[index]).resize((width, height),
                                                                 Image.BILINEAR), np.float32)
        weight = np.clip(item / 64.0, 0.0, 1.0)
        rows, cols = np.nonzero(weight > OPAQUE)
        if not len(rows):
            continue
        for _ in range(PLACEMENT_TRIES):
            y = int(rng.integers(0, layout.size - height + 1))
            x = int(rng.integers(0, layout.size - width + 1))
            box = np.array([y + rows.min(), x + cols.min(), y + rows.max() + 1,
                            x + cols.max() + 1])
            if _overlaps(box, boxes):
                continue
            tint = rng.uniform(0.55, 1.0, 3)
            region = canvas[y:y + height, x:x + width]
            region[:] = (weight[..., None] * item[..., None] * tint
                         + (1.0 - weight[..., None]) * region)
            boxes.append(box)
            objects.append((int(box[1]), int(box[0]), int(box[3]), int(box[2]),
                            FASHION_MNIST_CLASSES[labels[index]]))
            break
    return np.clip(canvas, 0, 255).round().astype(np.uint8), objects


def write_dataset(folder: Path, counts: dict[str, int], layout: Layout = Layout(),
                  seed: int = 0) -> Path:
    """Write ``counts`` pictures per split (``train``, ``val``, ``test``) under
    ``folder`` and their ``boxes.csv``; returns the table's path."""
    source = load_source(DataConfig(source="fashion_mnist"), seed=0)
    train, test = source.splits["train"], source.splits["test"]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train))
    half = len(order) * 5 // 6   # 50,000 items for training pictures, 10,000 for val
    pools = {"train": (train.arrays[order[:half]], train.labels[order[:half]]),
             "val": (train.arrays[order[half:]], train.labels[order[half:]]),
             "test": (test.arrays, test.labels)}
    pictures = photos()
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for split, count in counts.items():
        items, labels = pools[split]
        for i in range(count):
            image, objects = compose(pictures, items, labels, layout, rng)
            path = f"images/{split}_{i:05d}.jpg"
            Image.fromarray(image).save(folder / path, quality=92)
            rows += ([(path, *obj, split) for obj in objects] if objects
                     else [(path, "", "", "", "", "", split)])
    table = folder / "boxes.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "xmin", "ymin", "xmax", "ymax", "label", "split"])
        writer.writerows(rows)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--size", type=int, default=Layout.size)
    parser.add_argument("--max-items", type=int, default=Layout.max_items)
    parser.add_argument("--min-side", type=int, default=Layout.min_side)
    parser.add_argument("--max-side", type=int, default=Layout.max_side)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    table = write_dataset(args.out, {"train": args.train, "val": args.val, "test": args.test},
                          Layout(args.size, args.max_items, args.min_side, args.max_side),
                          args.seed)
    with open(table) as f:
        boxes = sum(1 for row in csv.DictReader(f) if row["label"])
    print(f"{args.train + args.val + args.test} pictures, {boxes} boxes in "
          f"{time.perf_counter() - start:.0f} s: {table}")


if __name__ == "__main__":
    main()
