"""Box-aware augmentation: boxes move exactly as the pixels do."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tftoolkit.data.pipeline import Resize
from tftoolkit.augment.boxes import BoxAugment, crop_boxes, transform_boxes

SIZE = 64
POLICIES = {
    "horizontal flip": BoxAugment(flip="horizontal"),
    "vertical flip": BoxAugment(flip="vertical"),
    "resized crop": BoxAugment(resized_crop_scale=0.5, min_visible=0.0),
    "rotation": BoxAugment(rotation=0.1),
    "zoom": BoxAugment(zoom=0.3),
    "translation": BoxAugment(translation=0.15),
    "colour": BoxAugment(contrast=0.4, brightness=0.2),
    "everything": BoxAugment(flip="horizontal_and_vertical", resized_crop_scale=0.6,
                             rotation=0.08, zoom=0.2, translation=0.1, contrast=0.3,
                             brightness=0.1, min_visible=0.0),
}


def _rendered(box_pixels: tuple[int, int, int, int], height: int = 48, width: int = 80):
    """A dark image with a bright rectangle over the box (ymin, xmin, ymax, xmax) in
    pixels, and that box normalised."""
    image = np.full((height, width, 3), 20, np.uint8)
    ymin, xmin, ymax, xmax = box_pixels
    image[ymin:ymax, xmin:xmax] = 235
    return image, np.array([[ymin / height, xmin / width, ymax / height, xmax / width]],
                           np.float32)


def _bright_box(image: np.ndarray) -> np.ndarray:
    """The normalised box enclosing the pixels brighter than the middle of the range."""
    gray = image.mean(axis=-1)
    rows, cols = np.nonzero(gray > (gray.max() + gray.min()) / 2)
    h, w = gray.shape
    return np.array([rows.min() / h, cols.min() / w, (rows.max() + 1) / h,
                     (cols.max() + 1) / w])


@pytest.mark.parametrize("name", list(POLICIES))
def test_a_rendered_box_stays_on_its_object_after_every_transform(name):
    policy, resize = POLICIES[name], Resize(SIZE, "bilinear")
    image, boxes = _rendered((10, 30, 34, 58))
    moved = 0
    for seed in range(6):
        key = tf.constant([seed, 7], tf.int64)
        out, out_boxes, classes = policy(tf.constant(image), boxes, tf.constant([4]), key,
                                         resize)
        again = policy(tf.constant(image), boxes, tf.constant([4]), key, resize)
        np.testing.assert_array_equal(out.numpy(), again[0].numpy())  # keyed: reproducible
        assert classes.numpy().tolist() == [4], (name, seed)
        expected = out_boxes.numpy()[0]
        # within a pixel of the rendered object (its edges are bilinear)
        np.testing.assert_allclose(_bright_box(out.numpy()), expected, atol=1.0 / SIZE,
                                   err_msg=f"{name}, seed {seed}")
        moved += not np.allclose(expected, boxes[0], atol=1e-3)
    if name != "colour":
        assert moved >= 2, f"{name} hardly moved the box: the test would show nothing"


def test_a_crop_drops_boxes_left_less_than_min_visible_and_clips_the_rest():
    boxes = tf.constant([[0.0, 0.0, 0.5, 0.5], [0.4, 0.4, 0.6, 0.6], [0.9, 0.9, 1.0, 1.0]])
    window = tf.constant([20, 20, 60, 60])      # pixels 20..80 of a 100x100 image
    kept, classes = crop_boxes(boxes, tf.constant([0, 1, 2]), window,
                               tf.constant([100, 100, 3]), min_visible=0.3)
    # box 0 keeps 30x30 of 50x50 (0.36): clipped; box 1 inside; box 2 outside: dropped
    assert classes.numpy().tolist() == [0, 1]
    np.testing.assert_allclose(kept.numpy(), [[0, 0, 0.5, 0.5], [1 / 3, 1 / 3, 2 / 3, 2 / 3]],
                               atol=1e-6)
    _, classes = crop_boxes(boxes, tf.constant([0, 1, 2]), window,
                            tf.constant([100, 100, 3]), min_visible=0.4)
    assert classes.numpy().tolist() == [1]


def test_a_box_shifted_out_of_the_image_is_dropped():
    # output x = input x + 30 (the map goes from output to input: x_in = x_out - 30)
    shift = tf.constant([[1.0, 0.0, -30.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    boxes = tf.constant([[0.1, 0.1, 0.3, 0.3], [0.1, 0.6, 0.3, 0.9]])
    kept, classes = transform_boxes(boxes, tf.constant([0, 1]), shift, 100, 100, 0.5)
    assert classes.numpy().tolist() == [0]
    np.testing.assert_allclose(kept.numpy(), [[0.1, 0.4, 0.3, 0.6]], atol=1e-6)


def test_an_image_without_boxes_stays_without_boxes():
    image, _ = _rendered((10, 10, 20, 20))
    out, boxes, classes = POLICIES["everything"](
        tf.constant(image), tf.zeros([0, 4]), tf.zeros([0], tf.int32),
        tf.constant([1, 2], tf.int64), Resize(SIZE, "bilinear"))
    assert out.shape == (SIZE, SIZE, 3) and boxes.shape == (0, 4) and classes.shape == (0,)


def test_the_augmentation_runs_in_a_tf_data_map_and_is_keyed_there_too():
    image, boxes = _rendered((10, 30, 34, 58))
    policy, resize = POLICIES["everything"], Resize(SIZE, "bilinear")
    keys = tf.constant([[seed, 7] for seed in range(3)], tf.int64)
    mapped = tf.data.Dataset.from_tensor_slices(keys).map(
        lambda key: policy(tf.constant(image), boxes, tf.constant([4]), key, resize))
    for key, (out, out_boxes, _) in zip(keys, mapped):
        eager, eager_boxes, _ = policy(tf.constant(image), boxes, tf.constant([4]), key,
                                       resize)
        np.testing.assert_allclose(out.numpy(), eager.numpy(), atol=1e-3)
        np.testing.assert_allclose(out_boxes.numpy(), eager_boxes.numpy(), atol=1e-6)


def test_a_training_example_keeps_its_box_table_shape_and_loses_only_dropped_boxes():
    image = np.full((SIZE, SIZE, 3), 20, np.uint8)
    image[4:20, 40:60] = 235   # near the right edge: a shift left keeps it
    table = np.array([[4 / SIZE, 40 / SIZE, 20 / SIZE, 60 / SIZE, 1],
                      [0.0, 0.0, 0.05, 0.05, 0],      # tiny, in the corner
                      [0, 0, 0, 0, -1]], np.float32)  # unused
    flipped_image, flipped = BoxAugment(flip="horizontal").augment_example(
        tf.constant(image), tf.constant(table), tf.constant([5, 5], tf.int64),
        Resize(SIZE, "bilinear"))
    assert flipped.shape == (3, 5) and flipped_image.shape == (SIZE, SIZE, 3)
    kept = flipped.numpy()
    assert kept[:, 4].tolist() == [1, 0, -1]
    mirrored = table[0].copy()
    mirrored[[1, 3]] = 1 - table[0, [3, 1]]
    assert any(np.allclose(kept[0], box, atol=1e-5) for box in (table[0], mirrored))
    # a translation far enough drops the corner box; its row becomes an unused one
    shifted = BoxAugment(translation=0.5, min_visible=0.9)
    for seed in range(20):
        _, moved = shifted.augment_example(tf.constant(image), tf.constant(table),
                                           tf.constant([seed, 1], tf.int64),
                                           Resize(SIZE, "bilinear"))
        moved = moved.numpy()
        if (moved[:, 4] == -1).sum() > 1:
            break
    assert (moved[:, 4] == -1).sum() >= 2 and moved.shape == (3, 5)
    assert not moved[moved[:, 4] == -1, :4].any()
