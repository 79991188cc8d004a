"""Run every benchmark and print one table: ``python -m benchmarks``.

Each row compares the toolkit with the plain Keras way of doing the same work,
measured side by side in this run (alternating repeats; the best run of each).
"""

from __future__ import annotations

from benchmarks import (augment_throughput, feature_cache, fit_overhead, precision,
                        stream_throughput)

ROWS = [
    ("feature_cache", feature_cache, "plain fit s", "plain_seconds", "cached s",
     "cached_seconds", "x faster (target >= 5)"),
    ("fit_overhead", fit_overhead, "plain fit s", "plain_seconds", "tftoolkit s",
     "toolkit_seconds", "time ratio (target <= 1.05)"),
    ("augment_throughput", augment_throughput, "chain img/s", "keras_chain_img_s",
     "fused img/s", "fused_img_s", "x faster (target >= 3)"),
    ("precision", precision, "f32 img/s", "float32_img_s", "bf16 img/s",
     "mixed_bfloat16_img_s", "x faster"),
    ("stream_throughput", stream_throughput, "image_dataset_from_directory img/s",
     "keras_plain_img_s", "uncached img/s", "toolkit_plain_img_s", "x (target >= 1.0)"),
]
NOTES = {"feature_cache": lambda r: (f"test accuracy plain {r['plain_test_accuracy']:.4f}, "
                                     f"cached {r['cached_test_accuracy']:.4f}"),
         "stream_throughput": lambda r: (f"random resized crop + flip "
                                         f"{r['augmented_ratio']:.2f}x the Keras layers "
                                         "(target >= 1.5)")}


def main() -> None:
    lines = ["| benchmark | baseline | tftoolkit | ratio | notes |",
             "| --- | --- | --- | --- | --- |"]
    for name, module, base_label, base_key, ours_label, ours_key, ratio_label in ROWS:
        r = module.run()
        note = NOTES[name](r) if name in NOTES else ""
        lines.append(f"| {name} | {base_label} {r[base_key]:.1f} | {ours_label} "
                     f"{r[ours_key]:.1f} | {r['ratio']:.2f} {ratio_label} | {note} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
