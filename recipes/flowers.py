"""TFDS tf_flowers (3,670 photos, 5 classes) with ImageNet MobileNetV2, two stages.

Needs the prepared dataset: online, TFDS downloads it on first use; offline, prepare
it elsewhere (`tfds build tf_flowers`) and --set data.data_dir=PATH.
"""

from tftoolkit.recipe import (AugmentConfig, DataConfig, ModelConfig, Recipe,
                              RegularizeConfig, TrainConfig)

RECIPE = Recipe(
    name="flowers",
    description="TFDS tf_flowers with ImageNet MobileNetV2: feature extraction, then "
                "fine-tuning",
    data=DataConfig(source="tfds", name="tf_flowers", train_split="train[:80%]",
                    val_split="train[80%:90%]", test_split="train[90%:]", image_size=224),
    model=ModelConfig(architecture="mobilenet_v2", weights="imagenet", mode="two_stage",
                      unfreeze="block_13"),
    augment=AugmentConfig(enabled=True, flip="horizontal", rotation=0.05, zoom=0.1),
    regularize=RegularizeConfig(dropout=0.2, label_smoothing=0.1),
    train=TrainConfig(epochs=5, fine_tune_epochs=5, batch_size=32, learning_rate=1e-3,
                      fine_tune_learning_rate=1e-4),
)
