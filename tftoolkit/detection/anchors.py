"""Anchors: the fixed reference boxes a detector's outputs are relative to.

An :class:`AnchorSet` is a function of its :class:`AnchorConfig` and the square input
size alone, so a model stores those two and rebuilds the same anchors anywhere. Anchors
are listed in the order the detector flattens its head's outputs: pyramid level
(finest first), then row, then column, then the anchors of one location (scale-major,
then aspect ratio). MediaPipe's ``FixedAnchorsSchema`` takes them in this order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from tftoolkit.errors import RecipeError


@dataclass(frozen=True)
class AnchorConfig:
    """Which anchors sit at each location of each pyramid level.

    Attributes:
        strides: input pixels per feature cell of each level (8, 16, 32: three levels).
        size: side of an anchor of scale 1 and aspect ratio 1, in strides of its level
            (RetinaNet's 4: 32 px at stride 8).
        scales: size multipliers at each location.
        aspect_ratios: width / height of the anchors at each location.
    """

    strides: tuple[int, ...] = (8, 16, 32)
    size: float = 4.0
    scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)

    @property
    def per_location(self) -> int:
        return len(self.scales) * len(self.aspect_ratios)

    @classmethod
    def from_dict(cls, values: dict) -> "AnchorConfig":
        return cls(**{key: tuple(value) if isinstance(value, list) else value
                      for key, value in values.items()})


@dataclass(frozen=True)
class AnchorLevel:
    """One pyramid level's anchors: a ``rows`` x ``columns`` grid of locations, each
    with the anchors ``shapes`` (normalised ``(height, width)``)."""

    stride: int
    rows: int
    columns: int
    shapes: tuple[tuple[float, float], ...]

    @property
    def count(self) -> int:
        return self.rows * self.columns * len(self.shapes)


@dataclass(frozen=True)
class AnchorSet:
    """Every anchor of a detector of ``image_size`` x ``image_size`` inputs."""

    image_size: int
    config: AnchorConfig
    levels: tuple[AnchorLevel, ...]

    @classmethod
    def build(cls, config: AnchorConfig, image_size: int) -> "AnchorSet":
        """The anchors of ``config`` for a square input of ``image_size`` pixels, which
        must be a multiple of the largest stride (each level's grid is then exact)."""
        largest = max(config.strides)
        if image_size <= 0 or image_size % largest:
            raise RecipeError(f"data.image_size={image_size}: a detector's input side must "
                              f"be a multiple of its largest stride, {largest} (for example "
                              f"{max(largest, round(image_size / largest) * largest)})")
        levels = []
        for stride in sorted(config.strides):
            side = config.size * stride / image_size
            shapes = tuple((side * scale / np.sqrt(ratio), side * scale * np.sqrt(ratio))
                           for scale in config.scales for ratio in config.aspect_ratios)
            grid = image_size // stride
            levels.append(AnchorLevel(stride, grid, grid,
                                      tuple((float(h), float(w)) for h, w in shapes)))
        return cls(image_size, config, tuple(levels))

    @property
    def count(self) -> int:
        return sum(level.count for level in self.levels)

    def centres_sizes(self) -> np.ndarray:
        """``[count, 4]`` float32 ``(yc, xc, h, w)`` of every anchor, normalised, in the
        flattening order (level, row, column, anchor)."""
        parts = []
        for level in self.levels:
            ys = (np.arange(level.rows) + 0.5) / level.rows
            xs = (np.arange(level.columns) + 0.5) / level.columns
            shapes = np.asarray(level.shapes)                        # [K, 2]
            yc, xc = np.meshgrid(ys, xs, indexing="ij")              # [rows, columns]
            k = len(shapes)
            parts.append(np.stack([
                np.repeat(yc.reshape(-1), k), np.repeat(xc.reshape(-1), k),
                np.tile(shapes[:, 0], level.rows * level.columns),
                np.tile(shapes[:, 1], level.rows * level.columns)], axis=1))
        return np.concatenate(parts).astype(np.float32)

    def corners(self) -> np.ndarray:
        """``[count, 4]`` float32 ``(ymin, xmin, ymax, xmax)`` of every anchor."""
        yc, xc, h, w = self.centres_sizes().T
        return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=1)

    def to_dict(self) -> dict:
        """What rebuilds these anchors (:meth:`from_dict`): the config and input size."""
        return {"image_size": self.image_size, **asdict(self.config)}

    @classmethod
    def from_dict(cls, values: dict) -> "AnchorSet":
        values = dict(values)
        image_size = values.pop("image_size")
        return cls.build(AnchorConfig.from_dict(values), image_size)
