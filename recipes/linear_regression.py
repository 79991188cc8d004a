"""Linear regression by full-batch gradient descent: Y = 3X + 2 + U(0,1) noise."""

from tftoolkit.recipe import (DataConfig, ExportConfig, ModelConfig, Recipe, TrainConfig)


def report(result) -> str:
    """The learned slope and intercept (the noise has mean 0.5, so b -> 2.5)."""
    kernel, bias = result.model.get_layer("predictions").get_weights()
    return f"learned W = {kernel.item():.4f} (true 3.0), b = {bias.item():.4f} (true 2 + 0.5)"


RECIPE = Recipe(
    name="linear_regression",
    description="y = Wx + b fitted to 100 noisy points by full-batch gradient descent",
    data=DataConfig(source="synthetic", name="linear", num_examples=100,
                    validation_fraction=0.0),
    model=ModelConfig(architecture="linear"),
    train=TrainConfig(optimizer="gd", learning_rate=0.05, batch_size=0, epochs=40,
                      steps_per_epoch=50, loss="mse", seed=1, verbose=2),
    export=ExportConfig(enabled=False),
    report=report,
)
