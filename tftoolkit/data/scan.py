"""A fast check, before training, that every file of an image folder decodes.

Files are decoded with the same TensorFlow op the input pipeline uses, so a file that
passes the scan cannot crash an epoch later. The one read of each file also gives its
content's sha256 (:mod:`tftoolkit.data.content`).
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tftoolkit.data.content import DIGEST_BYTES, sha256
from tftoolkit.data.decode import DEFAULT_MAX_PIXELS, TOO_MANY_PIXELS, refusal

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

# Files and folders that operating systems and tools leave in folders of images; with
# every name that starts with a dot (macOS' .DS_Store and ._name.jpg AppleDouble files,
# .ipynb_checkpoints, .git), they are not part of a dataset.
SYSTEM_NAMES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r",
                          "__macosx"})


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is hidden or a system file (never an example)."""
    return name.startswith(".") or name.lower() in SYSTEM_NAMES


@dataclass
class ScanResult:
    """Files that decode, and ``(path, reason)`` for each that does not."""

    good: list[str]
    bad: list[tuple[str, str]]
    digests: np.ndarray     # (len(good), 32) uint8: the sha256 of each good file's bytes


def _check(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str | None, np.ndarray]:
    """Why ``path`` is not a usable image (None when it is), and the sha256 of its
    bytes (zeros when it could not be read)."""
    unread = np.zeros(DIGEST_BYTES, np.uint8)
    if path.is_symlink() and not path.exists():
        return f"a symbolic link to {os.readlink(path)!r}, which does not exist", unread
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image file (extension {path.suffix or 'none'!r})", unread
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})", unread
    if not data:
        return "empty file (0 bytes)", unread
    reason = refusal(data, max_pixels)
    if reason is not None and TOO_MANY_PIXELS in reason:  # refused from its header
        reason = (f"{reason}: a decompression bomb, or a picture to downscale first (or raise "
                  "data.max_pixels)")
    return reason, sha256(data)


PROGRESS_FROM = 2000              # folders at least this large report progress


@dataclass(frozen=True)
class WorkerShare:
    """One worker's part of work shared by the workers of a multi-worker run: every
    ``count``-th item from ``index``; ``sum_over_workers`` adds an array up across all
    workers (a collective all-reduce)."""

    index: int
    count: int
    sum_over_workers: Callable[[np.ndarray], np.ndarray]


def scan_image_folder(paths: list[Path], threads: int = 8,
                      share: WorkerShare | None = None,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> ScanResult:
    """Decode every file in ``paths`` (in parallel threads: TensorFlow's decoders release
    the GIL); sort them into good files and bad ones, an image declaring more than
    ``max_pixels`` pixels among the bad (refused from its header, never decoded). Large
    folders print a line at each tenth, with the files checked per second.

    With ``share``, this worker decodes only its share of the files; the workers then
    add up their marks of bad files and the digests of their good ones (one sum over
    the workers), and each checks the others' bad files again (they are few) for the
    reasons.
    """
    mine = (list(range(len(paths))) if share is None
            else list(range(share.index, len(paths), share.count)))
    step = max(len(mine) // 10, 1) if len(mine) >= PROGRESS_FROM else 0
    start = time.perf_counter()
    reasons: dict[int, str | None] = {}
    digests = np.zeros((len(paths), DIGEST_BYTES), np.uint8)
    with ThreadPoolExecutor(threads) as pool:
        for done, (i, (reason, digest)) in enumerate(
                zip(mine, pool.map(lambda path: _check(path, max_pixels),
                                  [paths[i] for i in mine])), start=1):
            reasons[i], digests[i] = reason, digest
            if step and (done % step == 0 or done == len(mine)):
                rate = done / max(time.perf_counter() - start, 1e-9)
                whose = "" if share is None else f" (this worker's share of {len(paths)})"
                print(f"tftoolkit: checked {done}/{len(mine)} image files{whose} "
                      f"({rate:.0f} files/s)", file=sys.stderr, flush=True)
    if share is not None:  # column 0: bad marks, then the digest bytes
        table = np.zeros((len(paths), 1 + DIGEST_BYTES), np.int32)
        table[mine, 0] = [reasons[i] is not None for i in mine]
        table[mine, 1:] = digests[mine]
        table = share.sum_over_workers(table)
        digests = table[:, 1:].astype(np.uint8)
        for i in np.flatnonzero(table[:, 0]):
            if i not in reasons:
                reasons[i] = (_check(paths[i], max_pixels)[0]
                              or "could not be read by another worker")
    good = [i for i in range(len(paths)) if reasons.get(i) is None]
    bad = [(str(p), reasons[i]) for i, p in enumerate(paths) if reasons.get(i) is not None]
    return ScanResult([str(paths[i]) for i in good], bad, digests[good])
