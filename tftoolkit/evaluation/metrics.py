"""Evaluation reports (:meth:`tftoolkit.tasks.Task.report`) as text tables."""

from __future__ import annotations


def render_report(report: dict) -> str:
    """The report as a text table."""
    if "cocoeval" in report:
        return _render_detection(report)
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
    lines += ["", f"mAP: {report['map']:.4f}   at the thresholds: micro-F1 "
                  f"{report['f1_at_thresholds']:.4f}, macro-F1 "
                  f"{report['macro_f1_at_thresholds']:.4f}   ({report['examples']} examples)"]
    return "\n".join(lines)


def _render_detection(report: dict) -> str:
    """A detector's AP per class (COCOeval's) and its mAP figures."""
    width = max(12, *(len(row["class"]) for row in report["per_class"]))
    lines = [f"{'class':{width}s} {'AP':>7s} {'AP@0.5':>7s} {'boxes':>7s}"]

    def figure(value):
        return f"{value:7.3f}" if value is not None else f"{'-':>7s}"

    for row in report["per_class"]:
        lines.append(f"{row['class']:{width}s} {figure(row['ap'])} {figure(row['ap_50'])} "
                     f"{row['boxes']:7d}")
    coco = report["cocoeval"]
    lines += ["", f"mAP (IoU 0.50:0.95): {figure(coco['map']).strip()}   mAP@0.5: "
                  f"{figure(coco['map_50']).strip()}   (pycocotools; {report['examples']} "
                  "images)"]
    return "\n".join(lines)
