"""Throughput of the bad-file check of a large image folder.

Random 256 px JPEGs (20,000 by default) are checked alternately, three times each, by
tftoolkit's scan (TensorFlow's decoder in a thread pool, with progress lines) and the
plain way, a loop decoding each file with ``tf.io.decode_image``; the fastest of each
is compared. Then the share one worker of two checks in a multi-worker run.

    python -m benchmarks.scan_throughput [--files N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def make_folder(root: Path, count: int) -> list[Path]:
    """``count`` distinct 256 x 256 JPEGs in two class folders (32 px noise, upscaled)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = root / ("a" if i % 2 else "b") / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((256, 256)).save(path, quality=90)
        paths.append(path)
    return paths


def plain_check(paths: list[Path]) -> int:
    """The plain way: decode every file in turn; the number that fail."""
    import tensorflow as tf

    bad = 0
    for path in paths:
        try:
            tf.io.decode_image(tf.io.read_file(str(path)), channels=3,
                               expand_animations=False)
        except tf.errors.InvalidArgumentError:
            bad += 1
    return bad


def run(files: int = 20000) -> dict[str, float]:
    from tftoolkit.data import WorkerShare
    from tftoolkit.data.scan import scan_image_folder

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_folder(Path(tmp), files)
        best = {"plain_s": float("inf"), "scan_s": float("inf")}
        for _ in range(3):
            start = time.perf_counter()
            assert plain_check(paths) == 0
            best["plain_s"] = min(best["plain_s"], time.perf_counter() - start)
            start = time.perf_counter()
            assert not scan_image_folder(paths).bad
            best["scan_s"] = min(best["scan_s"], time.perf_counter() - start)
        start = time.perf_counter()
        scan_image_folder(paths, share=WorkerShare(0, 2, lambda marks: marks))
        best["share_of_two_s"] = time.perf_counter() - start
    return {**best, "files": files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20000)
    r = run(parser.parse_args().files)
    n = r["files"]
    print(f"{n} JPEGs of 256 px: plain decode loop {r['plain_s']:.1f} s "
          f"({n / r['plain_s']:.0f} files/s); tftoolkit scan {r['scan_s']:.1f} s "
          f"({n / r['scan_s']:.0f} files/s), {r['plain_s'] / r['scan_s']:.2f}x faster; "
          f"one worker of two: {r['share_of_two_s']:.1f} s "
          f"({n / r['share_of_two_s']:.0f} files/s of the folder)")


if __name__ == "__main__":
    main()
