"""Boxes in Pascal VOC, COCO or CSV annotations -> an exported object detector.

    tftoolkit train object_detection --set data.dir=PATH/TO/VOC
    tftoolkit train object_detection --set data.source=coco \\
        --set data.annotations=instances.json --set data.dir=PATH/TO/IMAGES
    tftoolkit train object_detection --set data.source=csv --set data.csv=boxes.csv

An anchor-based single-stage detector (feature pyramid over ImageNet MobileNetV2,
sigmoid focal loss) whose epochs are kept by validation COCO mAP; add
--set export.formats=[mediapipe,mediapipe_int8] for MediaPipe ObjectDetector files.
Two stages: the head trains on the frozen backbone's cached feature maps (6 epochs),
then the top 35% of the backbone's layers, rounded to a block (MobileNetV2: from
block_11), fine-tune with it (10 epochs at 1e-3) on the cached activations of the blocks
below.
--set augment.enabled=true (horizontal flips) trains on images instead, running the
backbone every epoch.
"""

from tftoolkit.recipe import AugmentConfig, DataConfig, ModelConfig, Recipe, TrainConfig

RECIPE = Recipe(
    name="object_detection",
    description="an anchor-based detector on ImageNet MobileNetV2 from VOC, COCO or CSV "
                "boxes (--set data.dir=PATH)",
    data=DataConfig(source="voc", image_size=224, validation_fraction=0.2),
    model=ModelConfig(architecture="mobilenet_v2", weights="imagenet",
                      mode="two_stage", unfreeze=0.35),
    augment=AugmentConfig(enabled=False, flip="horizontal"),
    train=TrainConfig(epochs=6, batch_size=16, learning_rate=3e-3, schedule="cosine",
                      fine_tune_epochs=10, fine_tune_learning_rate=1e-3,
                      select_best="val_map"),
)
