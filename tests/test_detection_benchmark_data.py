"""The detection benchmark's data: Fashion-MNIST items composited on photo crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.detection_data import Layout, compose, write_dataset
from tftoolkit.data.sources import FASHION_MNIST_CLASSES
from tftoolkit.data.box_sources import read_box_csv


def test_an_items_box_encloses_its_opaque_pixels():
    item = np.zeros((28, 28), np.uint8)
    item[6:20, 10:24] = 255                       # a bright block in the item
    photo = np.full((100, 100, 3), 90, np.uint8)  # a flat background
    rng = np.random.default_rng(3)
    placed = 0
    for _ in range(5):
        image, objects = compose([photo], item[None], np.array([4]),
                                 Layout(size=64, max_items=1, min_side=28, max_side=28), rng)
        if not objects:  # a negative picture
            assert (np.abs(image.astype(int) - 90) <= 1).all()
            continue
        (xmin, ymin, xmax, ymax, label), = objects
        assert label == FASHION_MNIST_CLASSES[4]
        changed = np.abs(image.astype(int) - 90).max(axis=2) > 20
        rows, cols = np.nonzero(changed)
        # the block, scaled to 28 +-20% a side, is what changed; the box is around it
        assert abs(rows.min() - ymin) <= 1 and abs(rows.max() + 1 - ymax) <= 1
        assert abs(cols.min() - xmin) <= 1 and abs(cols.max() + 1 - xmax) <= 1
        placed += 1
    assert placed >= 3


def test_the_benchmark_set_reads_back_as_a_detection_source(tmp_path: Path):
    table = write_dataset(tmp_path / "set", {"train": 6, "val": 2, "test": 3},
                          Layout(size=96, max_items=3, min_side=20, max_side=40))
    source = read_box_csv(table, split_column="split")
    assert [image.split for image in source.images].count("test") == 3
    assert len(source.images) == 11 and source.box_count >= 6
    assert set(source.class_names) <= set(FASHION_MNIST_CLASSES)
    assert all((image.height, image.width) == (96, 96) for image in source.images)
