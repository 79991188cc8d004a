"""What recording a run's splits costs: each example's sha256 and ``splits.csv``.

A folder of random 256 px JPEGs (5,000 by default) is checked by tftoolkit's bad-file
scan as it is (hashing the bytes it reads to decode) and with the hash replaced by
nothing, alternately, three times each; the plain ``tf.io.decode_image`` loop is the
reference. Then the Fashion-MNIST arrays (60,000 + 10,000): the plain read of their files,
beside hashing every image, grouping identical ones, and building and writing the record
of the flagship's splits. CPU seconds per item are counted over every thread.

    python -m benchmarks.split_record [--files N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.scan_throughput import make_folder, plain_check


def _timed(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of the process, result) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def folder(files: int) -> dict[str, tuple[float, float]]:
    """Fastest (wall, CPU) of the plain loop and the scan with and without hashing."""
    from tftoolkit.data import scan
    from tftoolkit.data.content import DIGEST_BYTES

    hashing = scan.sha256
    best = {k: (float("inf"), 0.0) for k in ("plain", "scan", "scan_without_hash")}
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_folder(Path(tmp), files)
        plain_check(paths[:50])  # TensorFlow's first decode set up outside the timings
        for _ in range(3):
            for name, check in (
                    ("plain", lambda: plain_check(paths)),
                    ("scan", lambda: scan.scan_image_folder(paths)),
                    ("scan_without_hash", lambda: scan.scan_image_folder(paths))):
                scan.sha256 = (hashing if name != "scan_without_hash"
                               else lambda data: np.zeros(DIGEST_BYTES, np.uint8))
                wall, cpu, _ = _timed(check)
                best[name] = min(best[name], (wall, cpu))
        scan.sha256 = hashing
    return best


def fashion_mnist() -> dict[str, tuple[float, float]]:
    """(wall, CPU) of reading the arrays, hashing them, and the record of the splits."""
    import tftoolkit
    from tftoolkit.data import load_data
    from tftoolkit.data.content import array_digests, content_groups
    from tftoolkit.data.record import SplitRecord
    from tftoolkit.data.sources import FASHION_MNIST_FILES, _fashion_mnist_dir, _read_idx

    folder = _fashion_mnist_dir()
    if folder is None:
        raise SystemExit("Fashion-MNIST files not found (apt-get install "
                         "dataset-fashion-mnist)")
    images = [name for name, _ in FASHION_MNIST_FILES.values()]
    read = _timed(lambda: [_read_idx(folder / name, 16).reshape(-1, 28, 28)
                           for name in images])
    arrays = read[2]
    digests = _timed(lambda: [array_digests(x) for x in arrays])
    groups = _timed(lambda: [content_groups(d) for d in digests[2]])
    data = load_data(tftoolkit.load_recipe("fashion_transfer"))
    with tempfile.TemporaryDirectory() as tmp:
        record = _timed(lambda: SplitRecord.of(data.splits).write(tmp))
    return {"read": read[:2], "sha256": digests[:2], "groups": groups[:2],
            "record": record[:2], "examples": sum(len(x) for x in arrays),
            "recorded": sum(len(e) for e in data.splits.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    files = parser.parse_args().files
    load = os.getloadavg()[0]
    f = folder(files)
    for name, (wall, cpu) in f.items():
        print(f"{name:18s} {files} JPEGs: {wall:6.2f} s, {1000 * cpu / files:.3f} CPU ms "
              "per file")
    print(f"hashing in the scan: {f['scan'][1] / f['scan_without_hash'][1]:.3f}x the CPU "
          f"of the scan without it ({f['scan'][0] / f['scan_without_hash'][0]:.3f}x the "
          f"wall time); the scan is {f['plain'][0] / f['scan'][0]:.2f}x the plain loop")
    m = fashion_mnist()
    for name in ("read", "sha256", "groups", "record"):
        wall, cpu = m[name]
        count = m["recorded"] if name == "record" else m["examples"]
        print(f"Fashion-MNIST {name:7s}: {wall:6.3f} s, {1e6 * cpu / count:.2f} CPU us per "
              "example")
    extra = m["sha256"][0] + m["groups"][0] + m["record"][0]
    print(f"hashing, grouping and writing splits.csv: {extra:.2f} s, "
          f"{extra / m['read'][0]:.2f}x the plain read of the arrays")
    print(f"load average: {load:.1f} before, {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
