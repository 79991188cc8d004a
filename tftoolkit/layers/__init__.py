"""The Keras layers tftoolkit models are built with, registered for loading.

Importing this package (``import tftoolkit`` does) registers every layer under the
``tftoolkit`` package name, so ``keras.models.load_model`` reads any ``.keras`` file the
toolkit writes.
"""

from tftoolkit.layers.box_encodings import BoxEncodings
from tftoolkit.layers.fused_geometric import FusedGeometric
from tftoolkit.layers.grey_pixels import GreyPixels
from tftoolkit.layers.preprocess import PREPROCESSING_MODES, AffinePreprocessing, Preprocess
from tftoolkit.layers.random_resized_crop import RandomResizedCrop

__all__ = ["PREPROCESSING_MODES", "AffinePreprocessing", "BoxEncodings", "FusedGeometric",
           "GreyPixels", "Preprocess", "RandomResizedCrop"]
