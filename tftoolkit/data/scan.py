"""A fast check, before training, that every file of an image folder decodes.

Files are decoded with the same TensorFlow op the input pipeline uses, so a file that
passes the scan cannot crash an epoch later.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


@dataclass
class ScanResult:
    """Files that decode, and ``(path, reason)`` for each that does not."""

    good: list[str]
    bad: list[tuple[str, str]]


def _check(path: Path) -> str | None:
    """Why ``path`` is not a usable image, or None when it is."""
    import tensorflow as tf

    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image file (extension {path.suffix or 'none'!r})"
    data = path.read_bytes()
    if not data:
        return "empty file (0 bytes)"
    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
        return "cannot be decoded: " + str(exc.message).split("[Op:")[0].strip()[-120:]
    return None


PROGRESS_FROM = 2000              # folders at least this large report progress


def scan_image_folder(paths: list[Path], workers: int = 8) -> ScanResult:
    """Decode every file in ``paths`` (in parallel threads: TensorFlow's decoders release
    the GIL); sort them into good files and bad ones. Large folders print a line at each
    tenth, with the files checked per second."""
    step = max(len(paths) // 10, 1) if len(paths) >= PROGRESS_FROM else 0
    start = time.perf_counter()
    reasons = []
    with ThreadPoolExecutor(workers) as pool:
        for done, reason in enumerate(pool.map(_check, paths), start=1):
            reasons.append(reason)
            if step and (done % step == 0 or done == len(paths)):
                rate = done / max(time.perf_counter() - start, 1e-9)
                print(f"tftoolkit: checked {done}/{len(paths)} image files "
                      f"({rate:.0f} files/s)", file=sys.stderr, flush=True)
    good = [str(p) for p, why in zip(paths, reasons) if why is None]
    bad = [(str(p), why) for p, why in zip(paths, reasons) if why is not None]
    return ScanResult(good, bad)
