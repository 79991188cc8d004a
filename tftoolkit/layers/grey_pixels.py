"""The image's grey pixels on a coarse grid, as features beside a backbone's."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="tftoolkit")
class GreyPixels(keras.layers.Layer):
    """Raw RGB 0-255 images [batch, H, W, 3] -> their grey levels averaged over
    ``side`` x ``side`` equal cells (area downsampling), in [0, 1], flattened to
    ``side * side`` features. A side that is not a multiple of ``side`` is first resized
    (bilinear) up to the next multiple. Average pooling, a channel mean, a reshape (and a
    bilinear resize): builtin operations of every export format."""

    def __init__(self, side: int, **kwargs):
        super().__init__(**kwargs)
        self.side = int(side)

    def call(self, images):
        images = keras.ops.cast(images, "float32")
        height, width = images.shape[1], images.shape[2]
        cell_h, cell_w = -(-height // self.side), -(-width // self.side)
        if (height, width) != (cell_h * self.side, cell_w * self.side):
            images = keras.ops.image.resize(images, (cell_h * self.side, cell_w * self.side),
                                            interpolation="bilinear", antialias=False)
        cells = keras.ops.average_pool(images, (cell_h, cell_w), padding="valid")
        grey = keras.ops.mean(cells, axis=-1)
        return keras.ops.reshape(grey, (-1, self.side * self.side)) / 255.0

    def compute_output_spec(self, images):
        return keras.KerasTensor((images.shape[0], self.side * self.side), "float32")

    def get_config(self):
        return {**super().get_config(), "side": self.side}
