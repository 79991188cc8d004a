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
    ("stream_throughput", stream_throughput, "image_dataset_from_directory CPU ms/img",
     "keras_plain_cpu_ms", "uncached CPU ms/img", "toolkit_plain_cpu_ms",
     "CPU time ratio (target <= 1.2)"),
]
NOTES = {"feature_cache": lambda r: (f"test accuracy plain {r['plain_test_accuracy']:.4f}, "
                                     f"cached {r['cached_test_accuracy']:.4f}"),
         "stream_throughput": lambda r: (
             f"uncached img/s {r['plain_speed_ratio']:.2f}x Keras' (target >= 0.9)"
             f"{r['plain_speed_flag']}; random resized crop + flip img/s "
             f"{r['augmented_speed_ratio']:.2f}x the Keras layers (target >= 1.5)"
             f"{r['augmented_speed_flag']}, CPU ms/img "
             f"{r['augmented_cpu_vs_plain_keras_ratio']:.2f}x Keras' plain loader "
             "(target <= 1.0)")}


def main() -> None:
    lines = ["| benchmark | baseline | tftoolkit | ratio | notes |",
             "| --- | --- | --- | --- | --- |"]
    for name, module, base_label, base_key, ours_label, ours_key, ratio_label in ROWS:
        r = module.run()
        note = NOTES[name](r) if name in NOTES else ""
        lines.append(f"| {name} | {base_label} {r[base_key]:.4g} | {ours_label} "
                     f"{r[ours_key]:.4g} | {r['ratio']:.2f} {ratio_label} | {note} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
