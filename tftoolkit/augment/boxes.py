"""Box-aware augmentation of one training example, drawn from the example's key.

Boxes move exactly as the pixels do:

- a random resized crop (the classifiers' window, :class:`ExampleAugment`) keeps the
  boxes it cuts, relative to the window; a box left with less than ``min_visible`` of
  its area in the window is dropped, the rest clipped to it;
- flip, rotation, zoom and translation are one projective map
  (:class:`~tftoolkit.layers.FusedGeometric`, the same distributions as for classifiers,
  pixels outside the source filled black rather than reflected, which would show
  unlabelled objects); each box's four corners go through the same map and the box
  becomes their enclosing box, clipped to the image, dropped when less than
  ``min_visible`` of it stays inside;
- contrast and brightness change pixels only.

Every draw is a stateless op keyed by the example's key, as in
:mod:`tftoolkit.augment.stateless`; augmentation is for training examples only, and an
evaluation or export never sees it (the inference model holds none of it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import tensorflow as tf

from tftoolkit.augment.stateless import ExampleAugment
from tftoolkit.data.pipeline import Resize, crop_window
from tftoolkit.detection.boxes import box_areas
from tftoolkit.detection.matching import NO_BOX
from tftoolkit.layers import FusedGeometric
from tftoolkit.recipe import AugmentConfig

DRAWS = ("crop", "geometric", "colour")
GEOMETRIC_DRAWS = 8  # uniform draws FusedGeometric may make: flips, rotation, zoom, shifts


def _keys(key: tf.Tensor, count: int) -> list[tf.Tensor]:
    return tf.unstack(tf.random.experimental.stateless_split(key, count))


def _keep_visible(boxes: tf.Tensor, classes: tf.Tensor, whole_area: tf.Tensor,
                  min_visible: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Boxes (already clipped) whose area is at least ``min_visible`` of ``whole_area``
    (their area before clipping), and positive; with their classes."""
    area = box_areas(boxes)
    keep = tf.logical_and(area > 0.0, area >= min_visible * whole_area)
    return tf.boolean_mask(boxes, keep), tf.boolean_mask(classes, keep)


def crop_boxes(boxes: tf.Tensor, classes: tf.Tensor, window: tf.Tensor, shape: tf.Tensor,
               min_visible: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Normalised ``boxes`` [N, 4] of an image of ``shape`` ([height, width, ...]) ->
    normalised to the pixel ``window`` ``[y, x, height, width]`` cut from it, clipped to
    it; boxes with less than ``min_visible`` of their area inside are dropped."""
    size = tf.cast(tf.tile(shape[:2], [2]), tf.float32)
    window = tf.cast(window, tf.float32)
    origin, extent = tf.tile(window[:2], [2]), tf.tile(window[2:], [2])
    pixels = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4]) * size
    inside = tf.clip_by_value((pixels - origin) / extent, 0.0, 1.0)
    return _keep_visible(inside, classes, box_areas((pixels - origin) / extent), min_visible)


def transform_boxes(boxes: tf.Tensor, classes: tf.Tensor, matrix: tf.Tensor,
                    height: tf.Tensor, width: tf.Tensor, min_visible: float
                    ) -> tuple[tf.Tensor, tf.Tensor]:
    """Normalised ``boxes`` [N, 4] of an image resampled by ``matrix`` (3x3, output to
    input pixel coordinates, pixel centres at whole numbers, as
    ``ImageProjectiveTransformV3`` reads it; the output the input's size) -> the
    enclosing boxes of their mapped corners, clipped; those with less than
    ``min_visible`` of their area left inside are dropped."""
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=1)
    # the corners in pixel-centre coordinates (an edge at e is at e - 0.5)
    xs = tf.stack([xmin, xmax, xmax, xmin], axis=1) * w - 0.5
    ys = tf.stack([ymin, ymin, ymax, ymax], axis=1) * h - 0.5
    points = tf.stack([xs, ys, tf.ones_like(xs)], axis=-1)                # [N, 4, 3]
    mapped = tf.einsum("ij,nkj->nki", tf.linalg.inv(matrix), points)
    mapped = mapped[..., :2] / mapped[..., 2:]
    x_out, y_out = (mapped[..., 0] + 0.5) / w, (mapped[..., 1] + 0.5) / h
    enclosing = tf.stack([tf.reduce_min(y_out, 1), tf.reduce_min(x_out, 1),
                          tf.reduce_max(y_out, 1), tf.reduce_max(x_out, 1)], axis=1)
    return _keep_visible(tf.clip_by_value(enclosing, 0.0, 1.0), classes,
                         box_areas(enclosing), min_visible)


@dataclass(frozen=True)
class BoxAugment:
    """Flip, random resized crop, rotation, zoom, translation, contrast and brightness of
    an image and its boxes. Parameters mean what the ``augment`` keys of the same names
    mean for classifiers; ``min_visible`` is the share of a box's area that must stay in
    the image for the box to be kept."""

    flip: str = "none"
    resized_crop_scale: float = 0.0
    rotation: float = 0.0
    zoom: float = 0.0
    translation: float = 0.0
    contrast: float = 0.0
    brightness: float = 0.0
    min_visible: float = 0.5

    _geometric: FusedGeometric | None = field(init=False, repr=False, compare=False)
    # the pipeline gives it each example's targets with its image (boxes move with it)
    spatial: ClassVar[bool] = True
    KEYS: ClassVar[tuple[str, ...]] = ("flip", "resized_crop_scale", "rotation", "zoom",
                                       "translation", "contrast", "brightness")

    @classmethod
    def from_config(cls, cfg: AugmentConfig) -> "BoxAugment":
        """The policy's ops that move boxes with the pixels (the detection task refuses
        the others before a run starts)."""
        return cls(**{key: getattr(cfg, key) for key in cls.KEYS})

    def __post_init__(self):
        # built now, not inside a tf.data trace (a Keras layer makes a variable); only its
        # parameter distributions and resampling are used, drawn from the example's key
        geometric = None
        if self.flip != "none" or self.rotation or self.zoom or self.translation:
            geometric = FusedGeometric(flip=self.flip, rotation=self.rotation, zoom=self.zoom,
                                       translation=self.translation, fill_mode="CONSTANT")
        object.__setattr__(self, "_geometric", geometric)

    def window(self, shape: tf.Tensor, key: tf.Tensor) -> tf.Tensor | None:
        """The crop window ``[y, x, height, width]`` of an image of ``shape``, or None
        when the policy does not crop (the pipeline may decode only this window)."""
        if not self.resized_crop_scale:
            return None
        crop_key = _keys(key, len(DRAWS))[0]
        return ExampleAugment(resized_crop_scale=self.resized_crop_scale).window(shape,
                                                                                 crop_key)

    def crop(self, boxes: tf.Tensor, classes: tf.Tensor, window: tf.Tensor,
             shape: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The boxes of an image of ``shape`` relative to its crop ``window``."""
        return crop_boxes(boxes, classes, window, shape, self.min_visible)

    def transform(self, image: tf.Tensor, boxes: tf.Tensor, classes: tf.Tensor,
                  key: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Geometric and colour ops of a (cropped, resized) float image [H, W, 3] 0-255
        and its normalised boxes -> float32 image, boxes, classes."""
        _, geometric_key, colour_key = _keys(key, len(DRAWS))
        image = tf.cast(image, tf.float32)
        boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
        classes = tf.convert_to_tensor(classes)
        if self._geometric is not None:
            draws = iter(_keys(geometric_key, GEOMETRIC_DRAWS))

            def uniform(n, low, high):
                return tf.random.stateless_uniform([n], next(draws), low, high)

            shape = tf.shape(image)
            matrix = self._geometric.sample_matrices(1, shape[0], shape[1], uniform)
            image = self._geometric.transform(image[None], matrix)[0]
            boxes, classes = transform_boxes(boxes, classes, matrix[0], shape[0], shape[1],
                                             self.min_visible)
        if self.contrast or self.brightness:
            image = ExampleAugment(contrast=self.contrast,
                                   brightness=self.brightness).recolor(image, colour_key)
        return image, boxes, classes

    def __call__(self, image: tf.Tensor, boxes: tf.Tensor, classes: tf.Tensor,
                 key: tf.Tensor, resize: Resize) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Every op on a decoded image [H, W, 3] of any size: crop, ``resize`` to the
        model's size, then :meth:`transform`."""
        shape = tf.shape(image)
        window = self.window(shape, key)
        if window is not None:
            image = crop_window(image, window)
            boxes, classes = self.crop(boxes, classes, window, shape)
        return self.transform(resize(tf.cast(image, tf.float32)), boxes, classes, key)

    def augment_example(self, image: tf.Tensor, table: tf.Tensor, key: tf.Tensor,
                        resize: Resize) -> tuple[tf.Tensor, tf.Tensor]:
        """One training example in the input pipeline: its image (at the model's size)
        and box table ``[max_boxes, 5]`` (rows of class ``NO_BOX`` unused) -> the
        augmented float32 image and its table, boxes dropped by the crop or the
        transform leaving unused rows."""
        rows = tf.shape(table)[0]
        present = table[:, 4] != NO_BOX
        image, boxes, classes = self(image, tf.boolean_mask(table[:, :4], present),
                                     tf.boolean_mask(table[:, 4], present), key, resize)
        kept = tf.concat([boxes, classes[:, None]], axis=1)
        unused = tf.concat([tf.zeros([rows - tf.shape(kept)[0], 4]),
                            tf.fill([rows - tf.shape(kept)[0], 1], float(NO_BOX))], axis=1)
        return image, tf.ensure_shape(tf.concat([kept, unused], axis=0), table.shape)
