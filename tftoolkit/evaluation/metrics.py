"""Evaluation reports (:meth:`tftoolkit.tasks.Task.report`) as text tables."""

from __future__ import annotations


def render_report(report: dict) -> str:
    """The report as a text table."""
    if "map" in report:
        return _render_multilabel(report)
    if "per_class" not in report:  # figures without classes (regression)
        return "\n".join(f"{key}: {value:.4f}" for key, value in report.items()
                         if isinstance(value, float))
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
