"""Flagship: ImageNet MobileNetV2 (torchvision's weights, imported offline) -> Fashion-MNIST.

Grayscale 28x28 clothes are upscaled to 97x97 RGB, a size at which the imported
weights reproduce torchvision exactly. The top blocks (13 and up) are fine-tuned with
AdamW under a linear warmup then cosine decay, label smoothing, and the best epoch by
validation accuracy kept; the frozen blocks below run once (the frozen-prefix cache), so
an epoch costs the top alone; 40,000 training images, 10,000 for validation, the full
10,000-image test set. ``python -m benchmarks.flagship`` measures it.
"""

from tftoolkit.recipe import (DataConfig, ModelConfig, Recipe, RegularizeConfig,
                              TrainConfig)

RECIPE = Recipe(
    name="fashion_transfer",
    description="ImageNet MobileNetV2 (torchvision weights) fine-tuned on Fashion-MNIST, 97 px",
    data=DataConfig(source="fashion_mnist", image_size=97, max_examples=50000,
                    validation_fraction=0.2),
    model=ModelConfig(architecture="mobilenet_v2", weights="imagenet-torchvision",
                      mode="fine_tune", unfreeze="block_13"),
    regularize=RegularizeConfig(label_smoothing=0.1),
    train=TrainConfig(epochs=3, batch_size=64, optimizer="adamw", weight_decay=1e-4,
                      learning_rate=1e-3, fine_tune_learning_rate=1e-3, schedule="cosine",
                      warmup_epochs=0.3, select_best="val_accuracy", seed=42),
)
