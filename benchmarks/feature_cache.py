"""Head training on a frozen MobileNetV2: cached features vs plain Keras ``fit``.

Fashion-MNIST subset at 97 px, ImageNet (torchvision) MobileNetV2 frozen, 10 epochs.
Plain: ``model.fit`` through the frozen backbone every epoch. Cached: tftoolkit runs the
backbone once and trains the head on the features (cache pass included in the time).
The two alternate ``REPEATS`` times in this run and the fastest run of each is compared
(other load on the machine only ever adds time); the last line is the speed ratio.

    python -m benchmarks.feature_cache
"""

from __future__ import annotations

import tftoolkit
from benchmarks.baseline import plain_keras_fit
from tftoolkit.data import load_data

EPOCHS, REPEATS = 10, 2
OVERRIDES = {"model.mode": "feature_extraction", "train.epochs": EPOCHS,
             "data.max_examples": 1250, "train.verbose": 0, "export.enabled": False,
             "train.run_dir": "runs/benchmarks"}


def run() -> dict[str, float]:
    recipe = tftoolkit.load_recipe("fashion_transfer", OVERRIDES)
    data = load_data(recipe, recipe.data.image_size)
    plain_seconds, cached_seconds = [], []
    for _ in range(REPEATS):
        model, seconds = plain_keras_fit(recipe, data, EPOCHS)
        plain_seconds.append(seconds)
        cached = tftoolkit.train(recipe.with_overrides({"train.cache_features": "auto"}))
        cached_seconds.append(cached.train_seconds)
    plain_accuracy = model.evaluate(data.dataset("test"), verbose=0, return_dict=True)["accuracy"]
    return {"plain_seconds": min(plain_seconds), "cached_seconds": min(cached_seconds),
            "plain_test_accuracy": float(plain_accuracy),
            "cached_test_accuracy": cached.metrics["test_accuracy"],
            "ratio": min(plain_seconds) / min(cached_seconds)}


def main() -> None:
    r = run()
    print(f"plain Keras fit through frozen backbone: {r['plain_seconds']:6.1f} s, "
          f"test accuracy {r['plain_test_accuracy']:.4f}")
    print(f"tftoolkit cached features (pass incl.) : {r['cached_seconds']:6.1f} s, "
          f"test accuracy {r['cached_test_accuracy']:.4f}")
    print(f"feature_cache ratio (plain / cached): {r['ratio']:.2f}x")


if __name__ == "__main__":
    main()
