"""The preprocessing a backbone's pretrained weights expect, as a layer inside the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import keras

# The modes of keras.applications.imagenet_utils.preprocess_input; "efficientnet_lite",
# (x - 127) / 128, which Google's EfficientNet-Lite weights were trained with; "affine",
# a KerasHub preset's image converter (resize, then x * scale + offset per channel); and
# "none" for architectures that rescale inside themselves (EfficientNet, MobileNetV3).
PREPROCESSING_MODES = ("tf", "torch", "caffe", "efficientnet_lite", "affine", "none")
RESIZE_METHODS = ("bilinear", "nearest", "bicubic", "lanczos3", "lanczos5", "area")


@dataclass(frozen=True)
class AffinePreprocessing:
    """The ``affine`` mode's parameters: resize to ``size`` (None: keep; ``antialias``:
    filtered when downscaling), then ``x * scale + offset`` (one value, or one per
    channel; no offset: empty)."""

    scale: tuple[float, ...]
    offset: tuple[float, ...] = ()
    size: tuple[int, int] | None = None
    interpolation: str = "bilinear"
    antialias: bool = False


@keras.saving.register_keras_serializable(package="tftoolkit")
class Preprocess(keras.layers.Layer):
    """Raw RGB pixels 0-255 -> the input a backbone's weights were trained on.

    ``mode`` is ``tf`` ([-1, 1]), ``torch`` (/255, ImageNet mean/std), ``caffe`` (BGR,
    mean-centred), ``efficientnet_lite`` ((x - 127) / 128), ``affine`` (resized to
    ``size`` when the input is not that size, then ``x * scale + offset``, each one value
    or one per channel) or ``none`` (the backbone rescales inside itself). ``source``
    names the pretrained weights this preprocessing belongs to, so that a saved model
    records which weights it started from (the model card shows it).
    """

    def __init__(self, mode: str, scale: Sequence[float] = (), offset: Sequence[float] = (),
                 size: Sequence[int] | None = None, interpolation: str = "bilinear",
                 antialias: bool = False, source: str = "", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(f"preprocessing mode {mode!r} not in {PREPROCESSING_MODES}")
        if (mode == "affine") != bool(scale):
            raise ValueError("the affine mode takes a scale (one value or one per channel); "
                             "other modes take none")
        if interpolation not in RESIZE_METHODS:
            raise ValueError(f"interpolation {interpolation!r} not in {RESIZE_METHODS}")
        self.mode = mode
        self.scale = [float(s) for s in scale]
        self.offset = [float(o) for o in offset]
        self.size = [int(s) for s in size] if size else None
        self.interpolation = interpolation
        self.antialias = bool(antialias)
        self.source = source

    def call(self, images):
        images = keras.ops.cast(images, self.compute_dtype)
        if self.mode == "none":
            return images
        if self.mode == "efficientnet_lite":
            return (images - 127.0) / 128.0
        if self.mode == "affine":
            if self.size and list(images.shape[1:3]) != self.size:
                images = keras.ops.image.resize(images, self.size,
                                                interpolation=self.interpolation,
                                                antialias=self.antialias)
            images = images * keras.ops.convert_to_tensor(self.scale, self.compute_dtype)
            if self.offset:
                images = images + keras.ops.convert_to_tensor(self.offset, self.compute_dtype)
            return images
        return keras.applications.imagenet_utils.preprocess_input(
            images, data_format="channels_last", mode=self.mode)

    def compute_output_shape(self, input_shape):
        if self.size:
            return (input_shape[0], *self.size, input_shape[-1])
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "scale": self.scale,
                "offset": self.offset, "size": self.size,
                "interpolation": self.interpolation, "antialias": self.antialias,
                "source": self.source}
