"""Object detection: boxes in, a served detector and MediaPipe ObjectDetector files out.

One module per piece, each usable on its own:

- ``sources``: Pascal VOC, COCO and CSV annotations -> one ``DetectionSource``;
- ``augment``: box-aware crop, flip, rotation, zoom, translation and colour ops;
- ``anchors`` and ``boxes``: the fixed anchors and the one box coding (MediaPipe's);
- ``matching``: anchors matched to true boxes -> the targets the losses take;
- ``losses``: sigmoid focal loss and the box regression loss;
- ``model``: the detector on any registry backbone (feature pyramid, shared heads);
- ``decoding``: raw outputs -> detections, suppressed the way MediaPipe does;
- ``evaluation``: COCO mAP (pycocotools, and the same in numpy for every epoch);
- ``export``: SavedModel signatures and the MediaPipe ObjectDetector files.

Boxes are ``(ymin, xmin, ymax, xmax)`` normalised to the image throughout.
"""
