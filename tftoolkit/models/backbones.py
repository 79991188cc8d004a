"""Every ``keras.applications`` architecture, and EfficientNet-Lite, registered as backbones.

Each entry knows its constructor, its default input size, and the preprocessing that
belongs to its ImageNet weights (Keras' own; EfficientNet-Lite's are imported, see
``models.weight_import``). Preprocessing runs inside the model (the
:class:`~tftoolkit.layers.Preprocess` layer), so every model takes raw RGB pixels 0-255.
"""

from __future__ import annotations

import functools

import keras

from tftoolkit.models.efficientnet_lite import VARIANTS, EfficientNetLite
from tftoolkit.models.layout import BACKBONE
from tftoolkit.models.registry import MODES, ArchitectureSpec, register_architecture


def _build_application(constructor: str, *, weights: str | None,
                       input_shape: tuple[int, int, int]) -> keras.Model:
    """The headless ``keras.applications`` network, named ``backbone``."""
    fn = getattr(keras.applications, constructor)
    if constructor.startswith("EfficientNetV2"):
        # it looks its blocks up by its own name: built under that name, then renamed
        network = fn(include_top=False, weights=weights, input_shape=input_shape)
        return keras.Model(network.input, network.output, name=BACKBONE)
    return fn(include_top=False, weights=weights, input_shape=input_shape, name=BACKBONE)


def _applications() -> list[tuple[str, str, int, str]]:
    """(name, keras.applications constructor, default size, preprocessing) of each."""
    table = [
        ("mobilenet", "MobileNet", 224, "tf"),
        ("mobilenet_v2", "MobileNetV2", 224, "tf"),
        ("mobilenet_v3_small", "MobileNetV3Small", 224, "none"),
        ("mobilenet_v3_large", "MobileNetV3Large", 224, "none"),
        ("resnet50", "ResNet50", 224, "caffe"),
        ("resnet101", "ResNet101", 224, "caffe"),
        ("resnet152", "ResNet152", 224, "caffe"),
        ("resnet50_v2", "ResNet50V2", 224, "tf"),
        ("resnet101_v2", "ResNet101V2", 224, "tf"),
        ("resnet152_v2", "ResNet152V2", 224, "tf"),
        ("densenet121", "DenseNet121", 224, "torch"),
        ("densenet169", "DenseNet169", 224, "torch"),
        ("densenet201", "DenseNet201", 224, "torch"),
        ("inception_v3", "InceptionV3", 299, "tf"),
        ("inception_resnet_v2", "InceptionResNetV2", 299, "tf"),
        ("xception", "Xception", 299, "tf"),
        ("vgg16", "VGG16", 224, "caffe"),
        ("vgg19", "VGG19", 224, "caffe"),
        ("nasnet_mobile", "NASNetMobile", 224, "tf"),
        ("nasnet_large", "NASNetLarge", 331, "tf"),
    ]
    for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600)):
        table.append((f"efficientnet_b{i}", f"EfficientNetB{i}", size, "none"))
    for suffix, size in (("b0", 224), ("b1", 240), ("b2", 260), ("b3", 300), ("s", 384),
                         ("m", 480), ("l", 480)):
        table.append((f"efficientnet_v2_{suffix}", f"EfficientNetV2{suffix.upper()}", size,
                      "none"))
    for size in ("tiny", "small", "base", "large", "xlarge"):
        table.append((f"convnext_{size}", f"ConvNeXt{size.capitalize().replace('Xl', 'XL')}",
                      224, "none"))
    return table


# architecture name -> keras.applications constructor
KERAS_CONSTRUCTORS: dict[str, str] = {name: ctor for name, ctor, _, _ in _applications()}

BACKBONES: dict[str, ArchitectureSpec] = {
    name: register_architecture(ArchitectureSpec(
        name, "backbone", size, MODES, functools.partial(_build_application, constructor),
        preprocessing))
    for name, constructor, size, preprocessing in _applications()}


def _build_efficientnet_lite(variant: str, *, weights: None,
                             input_shape: tuple[int, int, int]) -> keras.Model:
    """The headless EfficientNet-Lite, random weights (its ImageNet weights are imported
    ones, which ``models.weights`` loads), named ``backbone``."""
    return EfficientNetLite(variant, input_shape=input_shape, name=BACKBONE)


EFFICIENTNET_LITE: dict[str, ArchitectureSpec] = {
    variant: register_architecture(ArchitectureSpec(
        variant, "backbone", size, MODES,
        functools.partial(_build_efficientnet_lite, variant), "efficientnet_lite"))
    for variant, (_, _, size, _) in VARIANTS.items()}
