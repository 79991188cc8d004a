"""Fine-tuning on cached activations of the frozen blocks, against plain ``fit``.

The flagship (MobileNetV2 at 97 px, blocks 13 and up fine-tuned) on 16,000 Fashion-MNIST
training images (``data.max_examples=20000``): one epoch of plain Keras ``fit`` through
the whole model on images, and one epoch of the unfrozen top on the cached output of the
frozen blocks, alternated twice, the faster of each compared; the one-time pass that
fills the cache is timed apart. Then the whole recipe is trained both ways
(``train.cache_features=off|auto``) for the validation and test accuracy.

    python -m benchmarks.prefix_cache

The last line is the epoch-time ratio.
"""

from __future__ import annotations

import tempfile
import time

import tftoolkit

DATA = {"data.max_examples": 20000}   # 16,000 training and 4,000 validation images


def epoch_times() -> dict[str, float]:
    from tftoolkit.augment import build_augmenter
    from tftoolkit.models import input_size
    from tftoolkit.recipe import load_recipe
    from tftoolkit.training import feature_cache
    from tftoolkit.training.feature_cache import cached_datasets, split_below_unfrozen
    from tftoolkit.training.optim import compile_model

    recipe = load_recipe("fashion_transfer", DATA)
    data = tftoolkit.load_data(recipe, input_size(recipe))
    batch = recipe.train.batch_size
    steps = data.steps_per_epoch("train", batch)
    model = tftoolkit.build_model(recipe, data.info)
    compile_model(model, recipe, data.info, 1e-4)
    images = data.dataset("train", training=True, batch_size=batch)
    feature_cache._COMPUTED.clear()  # not the activations the whole runs memoised
    start = time.perf_counter()
    cached = cached_datasets(split_below_unfrozen(model, recipe.model.unfreeze), data,
                             build_augmenter(recipe.augment, 97, 0), 0, batch)
    times = {"caching_s": time.perf_counter() - start}
    compile_model(cached.model, recipe, data.info, 1e-4)
    for _ in range(2):
        for key, trained, dataset in (("plain_fit_s", model, images),
                                      ("cached_top_s", cached.model, cached.train)):
            start = time.perf_counter()
            trained.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0,
                        shuffle=False)
            times[key] = min(times.get(key, float("inf")), time.perf_counter() - start)
    return times


def whole_runs() -> dict[str, dict]:
    rows = {}
    with tempfile.TemporaryDirectory() as workdir:
        for cache in ("off", "auto"):
            result = tftoolkit.train("fashion_transfer", {
                **DATA, "train.cache_features": cache, "train.run_dir": f"{workdir}/runs",
                "export.enabled": False, "train.verbose": 0})
            rows[cache] = {"val": result.metrics["val_accuracy"],
                           "test": result.metrics["test_accuracy"],
                           "train_s": result.train_seconds}
            print(f"train.cache_features={cache}: val {rows[cache]['val']:.4f}, test "
                  f"{rows[cache]['test']:.4f}, training {rows[cache]['train_s']:.0f} s",
                  flush=True)
    return rows


def main() -> None:
    rows = whole_runs()
    times = epoch_times()
    print(f"val accuracy difference: {100 * (rows['auto']['val'] - rows['off']['val']):+.2f} "
          "pt (target within 0.5)")
    print(f"one epoch: plain fit {times['plain_fit_s']:.1f} s, cached top "
          f"{times['cached_top_s']:.1f} s; the cache filled once in {times['caching_s']:.1f} s")
    print(f"{times['plain_fit_s'] / times['cached_top_s']:.2f}x faster per fine-tuning epoch "
          "(target >= 1.8)")


if __name__ == "__main__":
    main()
