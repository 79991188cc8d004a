"""The toolkit's training loop vs a hand-written ``compile``/``fit`` on the same work.

Same model (an MLP on Fashion-MNIST pixels), data pipeline, batch size and epochs; the
toolkit's time is its stage loop (callbacks, checkpoints, history included). Both
measured in this run; the last line is the overhead ratio.

    python -m benchmarks.fit_overhead
"""

from __future__ import annotations



import tftoolkit
from benchmarks.baseline import plain_keras_fit
from tftoolkit.data import load_data

OVERRIDES = {"model.architecture": "mlp", "model.mode": "scratch", "model.hidden": [256, 128],
             "model.activation": "relu", "data.image_size": 0, "data.max_examples": 10000,
             "train.epochs": 5, "train.batch_size": 64, "train.verbose": 0,
             "export.enabled": False, "train.run_dir": "runs/benchmarks"}


def run() -> dict[str, float]:
    recipe = tftoolkit.load_recipe("fashion_transfer", OVERRIDES)
    tftoolkit.train(recipe.with_overrides({"train.epochs": 1}))  # warm caches and imports
    _, plain = plain_keras_fit(recipe, load_data(recipe, 28), recipe.train.epochs)
    toolkit = tftoolkit.train(recipe).train_seconds
    return {"plain_seconds": plain, "toolkit_seconds": toolkit, "ratio": toolkit / plain}


def main() -> None:
    r = run()
    print(f"hand-written compile/fit: {r['plain_seconds']:6.2f} s")
    print(f"tftoolkit training loop : {r['toolkit_seconds']:6.2f} s")
    print(f"fit_overhead ratio (tftoolkit / plain): {r['ratio']:.3f}")


if __name__ == "__main__":
    main()
