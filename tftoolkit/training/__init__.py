"""Training: runtime set-up, stages of fitting, checkpoints and resume, run directories."""

from tftoolkit.training.comparison import Comparison, compare
from tftoolkit.training.optim import compile_model
from tftoolkit.training.runner import TrainResult, train

__all__ = ["Comparison", "TrainResult", "compare", "compile_model", "train"]
