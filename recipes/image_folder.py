"""Any class-per-subfolder image folder -> an exported image classifier, the mode chosen.

    tftoolkit train image_folder --set data.dir=PATH/TO/IMAGES

The backbone is EfficientNet-Lite0 with its ImageNet weights at its own 224 px (Model
Maker's default; its linear probe scores 3 to 4 points above MobileNetV2's at 160 px on
10 to 50 Fashion-MNIST images per class). ``model.mode=auto`` tries the linear probe
(the head solved on the frozen backbone's features, 2 augmented views of each image,
then refitted with the validation images), the probe then fine-tuning of blocks 6a and
up, and, for images unlike photos, a small CNN from scratch, and keeps the one that
validates best (within ``train.time_budget`` seconds). Every stage takes at
least ``train.min_steps`` steps, however few the images. The run reports two baselines
beside the model: logistic regression on downsampled pixels and the linear probe.
Unreadable files stop the run with their list (or --set data.on_bad_file=skip).
"""

from tftoolkit.recipe import (AugmentConfig, DataConfig, ModelConfig, Recipe,
                              RegularizeConfig, TrainConfig)

RECIPE = Recipe(
    name="image_folder",
    description="an ImageNet EfficientNet-Lite0 classifier of a class-per-subfolder image "
                "folder, its mode chosen on validation (--set data.dir=PATH)",
    data=DataConfig(source="folder", image_size=224, validation_fraction=0.2),
    model=ModelConfig(architecture="efficientnet_lite0", weights="imagenet", mode="auto",
                      unfreeze="block6a", pixel_features=16),
    augment=AugmentConfig(enabled=True, flip="horizontal", rotation=0.05, zoom=0.1,
                          cached_views=2),
    regularize=RegularizeConfig(dropout=0.2, label_smoothing=0.1),
    train=TrainConfig(epochs=5, fine_tune_epochs=5, batch_size=32, optimizer="adamw",
                      weight_decay=1e-4, learning_rate=1e-3, fine_tune_learning_rate=3e-4,
                      schedule="cosine", warmup_epochs=0.5, min_steps=100, time_budget=600),
)
