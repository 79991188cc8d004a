"""A fast check, before training, that every file of an image folder decodes.

Files are decoded with the same TensorFlow op the input pipeline uses, so a file that
passes the scan cannot crash an epoch later.
"""

from __future__ import annotations

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


def scan_image_folder(paths: list[Path], workers: int = 8) -> ScanResult:
    """Decode every file in ``paths``; sort them into good files and bad ones."""
    with ThreadPoolExecutor(workers) as pool:
        reasons = list(pool.map(_check, paths))
    good = [str(p) for p, why in zip(paths, reasons) if why is None]
    bad = [(str(p), why) for p, why in zip(paths, reasons) if why is not None]
    return ScanResult(good, bad)
