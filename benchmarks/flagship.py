"""The flagship recipe as shipped: test accuracy on the full 10k Fashion-MNIST test set
and training seconds. ``--ablation`` also trains it with each of the training-quality
switches changed one at a time (same data, same seed, one run each).

    python -m benchmarks.flagship [--ablation]

The last line is the default recipe's test accuracy.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import tftoolkit

# (label, overrides) in the order of the README's table
ABLATION = [
    ("constant Adam, no label smoothing, last epoch (the earlier recipe's training)",
     {"train.optimizer": "adam", "train.weight_decay": 0.0, "train.schedule": "constant",
      "train.warmup_epochs": 0.0, "train.select_best": "", "train.fine_tune_learning_rate": 3e-4,
      "regularize.label_smoothing": 0.0}),
    ("+ layer decay 0.8", {"train.layer_decay": 0.8}),
    ("+ EMA 0.999 of the weights", {"train.ema": 0.999}),
    ("one_cycle instead of warmup + cosine", {"train.schedule": "one_cycle"}),
]


def run_once(overrides: dict, workdir: str) -> dict:
    start = time.perf_counter()
    result = tftoolkit.train("fashion_transfer", {
        **overrides, "train.run_dir": f"{workdir}/runs", "export.enabled": False,
        "train.verbose": 0})
    return {"test_accuracy": result.metrics["test_accuracy"],
            "val_accuracy": result.metrics["val_accuracy"],
            "train_seconds": result.train_seconds,
            "wall_seconds": time.perf_counter() - start,
            "test_examples": result.info.counts["test"], "notes": result.notes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ablation", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        rows = []
        if args.ablation:
            for label, overrides in ABLATION:
                row = run_once(overrides, workdir)
                rows.append((label, row))
                print(f"{label}: test {row['test_accuracy']:.4f}, val "
                      f"{row['val_accuracy']:.4f}, train {row['train_seconds']:.0f} s",
                      flush=True)
        default = run_once({}, workdir)
    for note in default["notes"]:
        print(f"  {note}")
    print(f"default recipe: test {default['test_accuracy']:.4f} on "
          f"{default['test_examples']} images, val {default['val_accuracy']:.4f}, "
          f"train {default['train_seconds']:.0f} s, whole run {default['wall_seconds']:.0f} s")
    print(f"{default['test_accuracy']:.4f}")


if __name__ == "__main__":
    main()
