"""Classification metrics computed from labels and predicted probabilities."""

from __future__ import annotations

import numpy as np


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


def render_report(report: dict) -> str:
    """The report as a text table."""
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
