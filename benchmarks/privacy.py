"""The flagship's feature extraction trained with DP-SGD at epsilon 1, 3 and 8 (delta
1e-5), beside the same run without privacy. One process: the frozen backbone's features
are computed once and shared. The last line is the test accuracy at epsilon 8.

    python -m benchmarks.privacy
"""

from __future__ import annotations

import tempfile

import tftoolkit

BASE = {"model.mode": "feature_extraction", "data.max_examples": 20000,  # 16,000 to train
        "train.epochs": 10, "train.batch_size": 512,
        "train.schedule": "constant", "train.warmup_epochs": 0.0,
        "train.select_best": "val_accuracy", "regularize.label_smoothing": 0.0,
        "export.enabled": False, "train.verbose": 0}
PRIVATE = {"train.optimizer": "sgd", "train.momentum": 0.9, "train.learning_rate": 2.0,
           "train.weight_decay": 0.0, "privacy.enabled": True, "privacy.l2_clip": 1.0,
           "privacy.delta": 1e-5}


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        plain = tftoolkit.train("fashion_transfer", {
            **BASE, "train.optimizer": "adam", "train.learning_rate": 1e-3,
            "train.run_dir": f"{tmp}/plain"})
        rows.append(("not private (Adam 1e-3)", "-", plain))
        for target in (1.0, 3.0, 8.0):
            result = tftoolkit.train("fashion_transfer", {
                **BASE, **PRIVATE, "privacy.target_epsilon": target,
                "train.run_dir": f"{tmp}/eps{target:g}"})
            noise = next(n for n in result.notes if n.startswith("DP-SGD"))
            rows.append((f"DP-SGD, target epsilon {target:g}", noise.split(",")[0], result))
    print(f"{'training':28s} {'epsilon':>8s} {'test acc':>9s} {'val acc':>8s} "
          f"{'train s':>8s}  noise")
    for label, noise, result in rows:
        m = result.metrics
        eps = f"{m['epsilon']:.2f}" if "epsilon" in m else "-"
        print(f"{label:28s} {eps:>8s} {m['test_accuracy']:9.4f} {m['val_accuracy']:8.4f} "
              f"{m['train_seconds']:8.1f}  {noise}")
    print(f"{rows[-1][2].metrics['test_accuracy']:.4f}")


if __name__ == "__main__":
    main()
