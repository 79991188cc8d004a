"""Training: runtime set-up, the fit loop over one or two stages, run directories."""

from tftoolkit.training.runner import TrainResult, compile_model, train

__all__ = ["TrainResult", "compile_model", "train"]
