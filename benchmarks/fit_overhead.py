"""The toolkit's training loop vs a hand-written ``compile``/``fit`` on the same work.

Same model (an MLP on Fashion-MNIST pixels), data pipeline, batch size, epochs and
optimisation (the flagship's training keys are replaced by the plain ones that the
hand-written side uses: Adam at a constant rate, no label smoothing, the last epoch
kept); the toolkit's time is its stage loop (callbacks, checkpoints, TensorBoard and
CSV logs included). The two alternate ``REPEATS`` times in this run. Other load on the
machine only ever adds time (on a busy 2-core machine a run can take 1.5x its usual
time), so the fastest run of each is compared, as ``timeit`` does; the medians are
printed beside them. The last line is the overhead ratio.

    python -m benchmarks.fit_overhead
"""

from __future__ import annotations

import statistics

import tftoolkit
from benchmarks.baseline import PLAIN_TRAINING, plain_keras_fit
from tftoolkit.data import load_data

REPEATS = 5
OVERRIDES = {**PLAIN_TRAINING, "model.architecture": "mlp", "model.mode": "scratch",
             "model.hidden": [256, 128], "model.activation": "relu", "data.image_size": 0,
             "data.max_examples": 10000,
             "train.epochs": 5, "train.batch_size": 64, "train.verbose": 0,
             "export.enabled": False, "train.run_dir": "runs/benchmarks"}


def run() -> dict[str, float]:
    recipe = tftoolkit.load_recipe("fashion_transfer", OVERRIDES)
    tftoolkit.train(recipe.with_overrides({"train.epochs": 1}))  # warm caches and imports
    data = load_data(recipe, 28)
    plain, toolkit = [], []
    for _ in range(REPEATS):
        plain.append(plain_keras_fit(recipe, data, recipe.train.epochs)[1])
        toolkit.append(tftoolkit.train(recipe).train_seconds)
    return {"plain_seconds": min(plain), "toolkit_seconds": min(toolkit),
            "plain_median": statistics.median(plain),
            "toolkit_median": statistics.median(toolkit),
            "plain_runs": plain, "toolkit_runs": toolkit, "ratio": min(toolkit) / min(plain)}


def main() -> None:
    r = run()
    for key, label in (("plain", "hand-written compile/fit"),
                       ("toolkit", "tftoolkit training loop")):
        runs = " ".join(f"{s:.2f}" for s in r[f"{key}_runs"])
        print(f"{label}: fastest {r[f'{key}_seconds']:6.2f} s, median "
              f"{r[f'{key}_median']:6.2f} s (runs: {runs})")
    print(f"median ratio: {r['toolkit_median'] / r['plain_median']:.3f}")
    print(f"fit_overhead ratio (tftoolkit / plain, fastest runs): {r['ratio']:.3f}")


if __name__ == "__main__":
    main()
