"""Object detection: what boxes as targets mean, in pieces the detection task assembles.

One module per piece, each usable on its own:

- ``anchors`` and ``boxes``: the fixed anchors and the one box coding (MediaPipe's);
- ``matching``: box tables matched to the anchors -> the targets the loss takes;
- ``losses``: the sigmoid focal loss plus the box regression loss, per image;
- ``head``: the feature pyramid and shared towers over a backbone's feature maps;
- ``decoding``: predictions -> detections, suppressed the way MediaPipe does;
- ``metrics``: COCO mAP as a Keras metric logged every epoch (``val_map``);
- ``evaluation``: COCO metrics by pycocotools (reports, and the check of ``metrics``).

The task object (:class:`tftoolkit.tasks.Detection`) ties them together. The stages of a
run hold the rest: sources in :mod:`tftoolkit.data.box_sources`, box-aware augmentation
in :mod:`tftoolkit.augment.boxes`, the detector model in :mod:`tftoolkit.models.detector`,
MediaPipe ObjectDetector files in :mod:`tftoolkit.serving.detection`.

Boxes are ``(ymin, xmin, ymax, xmax)`` normalised to the image throughout.
"""
