"""Names of the layers tftoolkit models are built with.

The rest of the toolkit finds the parts of a model by these names: the feature cache
splits a model at ``FEATURES``, fine-tuning unfreezes blocks of ``BACKBONE``, the
model card reads the ``PREPROCESS`` mode, reports read ``OUTPUT``.
"""

PREPROCESS = "preprocess"      # raw pixels -> the backbone's input (tftoolkit.layers.Preprocess)
BACKBONE = "backbone"          # the nested pretrained network of a transfer model
FEATURES = "pool"              # pooled features: the input of the head
BACKBONE_POOL = "backbone_pool"  # with model.pixel_features: the backbone's pooled part
PIXELS = "grey_pixels"         # with model.pixel_features: the pixels beside (GreyPixels)
HEAD_DROPOUT = "head_dropout"
OUTPUT = "predictions"         # the output layer (float32 under mixed precision)
