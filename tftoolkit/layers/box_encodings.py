"""The box codes output of a detector, carrying what decodes it."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="tftoolkit")
class BoxEncodings(keras.layers.Layer):
    """Box codes [batch, anchors, 4], unchanged (float32), with the anchors and the box
    coding they are relative to in the layer's config (plain values:
    ``tftoolkit.detection`` rebuilds its ``AnchorSet`` and ``BoxCoder`` from them), so a
    saved detector decodes itself."""

    def __init__(self, anchors: dict, coder: dict, **kwargs):
        super().__init__(**kwargs)
        self.anchors, self.coder = dict(anchors), dict(coder)

    def call(self, codes):
        return keras.ops.cast(codes, "float32")

    def compute_output_spec(self, codes):
        return keras.KerasTensor(codes.shape, "float32")

    def get_config(self):
        return {**super().get_config(), "anchors": self.anchors, "coder": self.coder}
