"""A 2-4-1 tanh perceptron learns y = sin(pi x1) * x2, which no linear model can fit."""

from tftoolkit.recipe import (DataConfig, ExportConfig, ModelConfig, Recipe, TrainConfig)


def report(result) -> str:
    """Training MSE beside the constant predictor and the best linear fit."""
    import numpy as np

    from tftoolkit.data.sources import load_source

    data = load_source(result.recipe.data, result.recipe.train.seed).splits["train"]
    x, y = data.arrays, data.labels
    constant = float(np.mean((y - y.mean()) ** 2))
    design = np.hstack([x, np.ones((len(x), 1))])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    linear = float(np.mean((design @ coef - y) ** 2))
    mlp = float(np.mean((result.model.predict(x, verbose=0) - y) ** 2))
    return (f"MSE: 2-4-1 tanh MLP {mlp:.4f} | best linear fit {linear:.4f} | "
            f"constant {constant:.4f}")


RECIPE = Recipe(
    name="mlp",
    description="2-4-1 tanh MLP by gradient descent on y = sin(pi x1) * x2",
    data=DataConfig(source="synthetic", name="sine_product", num_examples=256,
                    validation_fraction=0.0),
    model=ModelConfig(architecture="mlp", hidden=[4], activation="tanh"),
    train=TrainConfig(optimizer="gd", learning_rate=0.5, momentum=0.9, batch_size=0,
                      epochs=40, steps_per_epoch=50, loss="mse", seed=0, verbose=2),
    export=ExportConfig(enabled=False),
    report=report,
)
