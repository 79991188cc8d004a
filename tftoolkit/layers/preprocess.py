"""The preprocessing a backbone's pretrained weights expect, as a layer inside the model."""

from __future__ import annotations

import keras

# The modes of keras.applications.imagenet_utils.preprocess_input, plus "none" for
# architectures that rescale inside themselves (EfficientNet, MobileNetV3, ConvNeXt).
PREPROCESSING_MODES = ("tf", "torch", "caffe", "none")


@keras.saving.register_keras_serializable(package="tftoolkit")
class Preprocess(keras.layers.Layer):
    """Raw RGB pixels 0-255 -> the input a backbone's weights were trained on.

    ``mode`` is ``tf`` ([-1, 1]), ``torch`` (/255, ImageNet mean/std), ``caffe`` (BGR,
    mean-centred) or ``none`` (the backbone rescales inside itself). ``source``
    names the pretrained weights this preprocessing belongs to, so that a saved model
    records which weights it started from (the model card shows it).
    """

    def __init__(self, mode: str, source: str = "", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(f"preprocessing mode {mode!r} not in {PREPROCESSING_MODES}")
        self.mode = mode
        self.source = source

    def call(self, images):
        images = keras.ops.cast(images, self.compute_dtype)
        if self.mode == "none":
            return images
        return keras.applications.imagenet_utils.preprocess_input(
            images, data_format="channels_last", mode=self.mode)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "source": self.source}
