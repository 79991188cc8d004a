"""Flagship: ImageNet MobileNetV2 (torchvision's weights, imported offline) -> Fashion-MNIST.

Grayscale 28x28 clothes are upscaled to 97x97 RGB, a size at which the imported
weights reproduce torchvision exactly. ``tftoolkit compare fashion_transfer`` trains
feature extraction, fine-tuning and the from-scratch baseline on the same data.
"""

from tftoolkit.recipe import (DataConfig, ModelConfig, Recipe, RegularizeConfig,
                              TrainConfig)

RECIPE = Recipe(
    name="fashion_transfer",
    description="ImageNet MobileNetV2 (torchvision weights) fine-tuned on Fashion-MNIST, 97 px",
    data=DataConfig(source="fashion_mnist", image_size=97, max_examples=1200,
                    validation_fraction=0.2),
    model=ModelConfig(architecture="mobilenet_v2", weights="imagenet-torchvision",
                      mode="fine_tune", unfreeze="block_13"),
    regularize=RegularizeConfig(dropout=0.2),
    train=TrainConfig(epochs=3, batch_size=64, learning_rate=1e-3,
                      fine_tune_learning_rate=3e-4, seed=42),
)
