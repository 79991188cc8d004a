"""Classification metrics computed from labels and predicted probabilities."""

from __future__ import annotations

import numpy as np

from tftoolkit import multilabel


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``[true, predicted]``; sums to the number of examples."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def top_k_accuracy(labels: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """Share of examples whose true class is among the ``k`` most probable."""
    top = np.argsort(-probabilities, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def classification_report(labels: np.ndarray, probabilities: np.ndarray,
                          class_names: list[str]) -> dict:
    """Accuracy, top-k accuracy, per-class precision/recall/F1/support, averages."""
    k = len(class_names)
    predicted = np.argmax(probabilities, axis=1)
    matrix = confusion_matrix(labels, predicted, k)
    true_pos = np.diag(matrix).astype(float)
    predicted_count, support = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(true_pos, predicted_count, out=np.zeros(k), where=predicted_count > 0)
    recall = np.divide(true_pos, support, out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    weights = support / max(support.sum(), 1)
    per_class = [{"class": name, "precision": float(p), "recall": float(r), "f1": float(f),
                  "support": int(s)}
                 for name, p, r, f, s in zip(class_names, precision, recall, f1, support)]
    top_k = min(5, k - 1) if k > 2 else 1
    return {
        "examples": int(len(labels)),
        "accuracy": float(np.mean(predicted == labels)),
        f"top_{top_k}_accuracy": top_k_accuracy(labels, probabilities, top_k),
        "per_class": per_class,
        "macro_avg": {"precision": float(precision.mean()), "recall": float(recall.mean()),
                      "f1": float(f1.mean())},
        "weighted_avg": {"precision": float((precision * weights).sum()),
                         "recall": float((recall * weights).sum()),
                         "f1": float((f1 * weights).sum())},
        "confusion_matrix": matrix.tolist(),
    }


def multilabel_report(positives: np.ndarray, negatives: np.ndarray,
                      class_names: list[str], thresholds: np.ndarray) -> dict:
    """From a split's score histograms (:func:`tftoolkit.multilabel.score_histograms`):
    mAP, micro/macro F1 and per class AP, precision, recall, F1 and support at each
    class's threshold (``thresholds``, chosen on validation)."""
    counts = multilabel.counts_at(positives, negatives, thresholds)
    ap = multilabel.average_precision(positives, negatives).numpy()
    support = positives.sum(axis=-1)
    per_class = [{"class": name, "threshold": float(t), "ap": float(a), "precision": float(p),
                  "recall": float(r), "f1": float(f), "support": int(round(n))}
                 for name, t, a, p, r, f, n in zip(class_names, thresholds, ap,
                                                   counts.precision, counts.recall,
                                                   counts.f1, support)]
    return {"examples": int(round((positives + negatives)[0].sum())),
            "map": float(multilabel.mean_average_precision(positives, negatives)),
            "micro_f1": counts.micro_f1, "macro_f1": float(counts.f1.mean()),
            "per_class": per_class,
            "macro_avg": {"precision": float(counts.precision.mean()),
                          "recall": float(counts.recall.mean()),
                          "f1": float(counts.f1.mean())}}


def render_report(report: dict) -> str:
    """The report as a text table."""
    if "map" in report:
        return _render_multilabel(report)
    width = max(12, *(len(row["class"]) for row in report["per_class"]))
    lines = [f"{'class':{width}s} {'precision':>9s} {'recall':>9s} {'f1':>9s} {'support':>8s}"]
    for row in report["per_class"]:
        lines.append(f"{row['class']:{width}s} {row['precision']:9.3f} {row['recall']:9.3f} "
                     f"{row['f1']:9.3f} {row['support']:8d}")
    for name in ("macro_avg", "weighted_avg"):
        avg = report[name]
        lines.append(f"{name:{width}s} {avg['precision']:9.3f} {avg['recall']:9.3f} "
                     f"{avg['f1']:9.3f} {report['examples']:8d}")
    lines.append("")
    for key, value in report.items():
        if key.endswith("accuracy"):
            lines.append(f"{key}: {value:.4f}")
    return "\n".join(lines)


def _render_multilabel(report: dict) -> str:
    width = max(12, *(len(row["class"]) for row in report["per_class"]))
    lines = [f"{'class':{width}s} {'threshold':>9s} {'AP':>7s} {'precision':>9s} "
             f"{'recall':>7s} {'f1':>7s} {'support':>8s}"]
    for row in report["per_class"]:
        lines.append(f"{row['class']:{width}s} {row['threshold']:9.3f} {row['ap']:7.3f} "
                     f"{row['precision']:9.3f} {row['recall']:7.3f} {row['f1']:7.3f} "
                     f"{row['support']:8d}")
    lines += ["", f"mAP: {report['map']:.4f}   micro-F1: {report['micro_f1']:.4f}   "
                  f"macro-F1: {report['macro_f1']:.4f}   ({report['examples']} examples)"]
    return "\n".join(lines)
