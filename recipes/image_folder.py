"""Any class-per-subfolder image folder -> a fine-tuned, exported image classifier.

    tftoolkit train image_folder --set data.dir=PATH/TO/IMAGES

Unreadable files stop the run with their list (or --set data.on_bad_file=skip).
"""

from tftoolkit.recipe import (AugmentConfig, DataConfig, ModelConfig, Recipe,
                              RegularizeConfig, TrainConfig)

RECIPE = Recipe(
    name="image_folder",
    description="fine-tune ImageNet MobileNetV2 on a class-per-subfolder image folder "
                "(--set data.dir=PATH)",
    data=DataConfig(source="folder", image_size=160, validation_fraction=0.2),
    model=ModelConfig(architecture="mobilenet_v2", weights="imagenet", mode="two_stage",
                      unfreeze="block_13"),
    augment=AugmentConfig(enabled=True, flip="horizontal", rotation=0.05, zoom=0.1),
    regularize=RegularizeConfig(dropout=0.2, label_smoothing=0.1),
    train=TrainConfig(epochs=5, fine_tune_epochs=5, batch_size=32, learning_rate=1e-3,
                      fine_tune_learning_rate=1e-4),
)
