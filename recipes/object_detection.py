"""Boxes in Pascal VOC, COCO or CSV annotations -> an exported object detector.

    tftoolkit train object_detection --set data.dir=PATH/TO/VOC
    tftoolkit train object_detection --set data.source=coco \\
        --set data.annotations=instances.json --set data.dir=PATH/TO/IMAGES
    tftoolkit train object_detection --set data.source=csv --set data.csv=boxes.csv

An anchor-based single-stage detector (feature pyramid over ImageNet MobileNetV2,
sigmoid focal loss) whose epochs are kept by validation COCO mAP; add
--set export.formats=[mediapipe,mediapipe_int8] for MediaPipe ObjectDetector files.
Without augmentation the frozen backbone runs once and the head trains on its cached
feature maps; --set augment.enabled=true (horizontal flips) trains on images instead,
running the backbone every epoch.
"""

from tftoolkit.recipe import AugmentConfig, DataConfig, ModelConfig, Recipe, TrainConfig

RECIPE = Recipe(
    name="object_detection",
    description="an anchor-based detector on ImageNet MobileNetV2 from VOC, COCO or CSV "
                "boxes (--set data.dir=PATH)",
    data=DataConfig(source="voc", image_size=224, validation_fraction=0.2),
    model=ModelConfig(architecture="mobilenet_v2", weights="imagenet",
                      mode="feature_extraction"),
    augment=AugmentConfig(enabled=False, flip="horizontal"),
    train=TrainConfig(epochs=12, batch_size=16, learning_rate=3e-3, schedule="cosine",
                      select_best="val_map"),
)
