"""Training: runtime set-up, stages of fitting, checkpoints and resume, run directories."""

from tftoolkit.training.comparison import Comparison, compare
from tftoolkit.training.optim import compile_model
from tftoolkit.training.lr_find import LrFindResult
from tftoolkit.training.runner import TrainResult, lr_find, train

__all__ = ["Comparison", "LrFindResult", "TrainResult", "compare", "compile_model", "lr_find",
           "train"]
