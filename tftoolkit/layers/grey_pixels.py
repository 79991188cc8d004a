"""The image's grey pixels on a coarse grid, as features beside a backbone's."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="tftoolkit")
class GreyPixels(keras.layers.Layer):
    """Raw RGB 0-255 images [batch, H, W, 3] -> their grey levels averaged over
    ``side`` x ``side`` equal cells (area downsampling), in [0, 1], flattened to
    ``side * side`` features. H and W must be multiples of ``side``. Average pooling,
    a channel mean and a reshape: builtin operations of every export format."""

    def __init__(self, side: int, **kwargs):
        super().__init__(**kwargs)
        self.side = int(side)

    def build(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        if height % self.side or width % self.side:
            raise ValueError(f"GreyPixels: the image ({height}x{width}) is not a multiple of "
                             f"{self.side} pixels on each side")

    def call(self, images):
        height, width = images.shape[1], images.shape[2]
        cells = keras.ops.average_pool(keras.ops.cast(images, "float32"),
                                       (height // self.side, width // self.side),
                                       padding="valid")
        grey = keras.ops.mean(cells, axis=-1)
        return keras.ops.reshape(grey, (-1, self.side * self.side)) / 255.0

    def compute_output_spec(self, images):
        return keras.KerasTensor((images.shape[0], self.side * self.side), "float32")

    def get_config(self):
        return {**super().get_config(), "side": self.side}
