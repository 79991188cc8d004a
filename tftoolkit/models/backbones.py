"""The backbone registry: every ``keras.applications`` architecture by name.

Each entry knows its constructor, its default input size, and the preprocessing that
belongs to its Keras ImageNet weights. Preprocessing runs inside the model (the
:class:`Preprocess` layer), so every model takes raw RGB pixels in 0-255.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

# The modes of keras.applications.imagenet_utils.preprocess_input, plus "none" for
# architectures that rescale inside themselves (EfficientNet, MobileNetV3, ConvNeXt).
PREPROCESSING_MODES = ("tf", "torch", "caffe", "none")


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one architecture and feed it."""

    constructor: str          # attribute of keras.applications
    default_size: int
    preprocessing: str        # one of PREPROCESSING_MODES, for Keras' ImageNet weights

    def build(self, weights: str | None, input_shape: tuple[int, int, int]) -> keras.Model:
        """The headless backbone, named ``backbone``."""
        fn = getattr(keras.applications, self.constructor)
        return fn(include_top=False, weights=weights, input_shape=input_shape,
                  name="backbone")


def _specs() -> dict[str, BackboneSpec]:
    specs = {
        "mobilenet": BackboneSpec("MobileNet", 224, "tf"),
        "mobilenet_v2": BackboneSpec("MobileNetV2", 224, "tf"),
        "mobilenet_v3_small": BackboneSpec("MobileNetV3Small", 224, "none"),
        "mobilenet_v3_large": BackboneSpec("MobileNetV3Large", 224, "none"),
        "resnet50": BackboneSpec("ResNet50", 224, "caffe"),
        "resnet101": BackboneSpec("ResNet101", 224, "caffe"),
        "resnet152": BackboneSpec("ResNet152", 224, "caffe"),
        "resnet50_v2": BackboneSpec("ResNet50V2", 224, "tf"),
        "resnet101_v2": BackboneSpec("ResNet101V2", 224, "tf"),
        "resnet152_v2": BackboneSpec("ResNet152V2", 224, "tf"),
        "densenet121": BackboneSpec("DenseNet121", 224, "torch"),
        "densenet169": BackboneSpec("DenseNet169", 224, "torch"),
        "densenet201": BackboneSpec("DenseNet201", 224, "torch"),
        "inception_v3": BackboneSpec("InceptionV3", 299, "tf"),
        "inception_resnet_v2": BackboneSpec("InceptionResNetV2", 299, "tf"),
        "xception": BackboneSpec("Xception", 299, "tf"),
        "vgg16": BackboneSpec("VGG16", 224, "caffe"),
        "vgg19": BackboneSpec("VGG19", 224, "caffe"),
        "nasnet_mobile": BackboneSpec("NASNetMobile", 224, "tf"),
        "nasnet_large": BackboneSpec("NASNetLarge", 331, "tf"),
    }
    for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600)):
        specs[f"efficientnet_b{i}"] = BackboneSpec(f"EfficientNetB{i}", size, "none")
    for suffix, size in (("b0", 224), ("b1", 240), ("b2", 260), ("b3", 300), ("s", 384),
                         ("m", 480), ("l", 480)):
        specs[f"efficientnet_v2_{suffix}"] = BackboneSpec(
            f"EfficientNetV2{suffix.upper()}", size, "none")
    for size, constructor in (("tiny", "Tiny"), ("small", "Small"), ("base", "Base"),
                              ("large", "Large"), ("xlarge", "XLarge")):
        specs[f"convnext_{size}"] = BackboneSpec(f"ConvNeXt{constructor}", 224, "none")
    return specs


BACKBONES: dict[str, BackboneSpec] = _specs()


@keras.saving.register_keras_serializable(package="tftoolkit")
class Preprocess(keras.layers.Layer):
    """Raw RGB pixels 0-255 -> the input a backbone's weights were trained on.

    ``mode`` is ``tf`` ([-1, 1]), ``torch`` (/255, ImageNet mean/std), ``caffe`` (BGR,
    mean-centred) or ``none`` (the backbone rescales inside itself).
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(f"preprocessing mode {mode!r} not in {PREPROCESSING_MODES}")
        self.mode = mode

    def call(self, images):
        images = keras.ops.cast(images, self.compute_dtype)
        if self.mode == "none":
            return images
        return keras.applications.imagenet_utils.preprocess_input(
            images, data_format="channels_last", mode=self.mode)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
