"""Where a split's decoded examples are kept between epochs: memory, disk, or nowhere.

``data.cache``: ``memory`` keeps images as uint8 pixels at the model's input size (a
quarter of float32); ``disk`` writes them to a :class:`DiskCache` in a folder named by a
fingerprint of the data and of everything that shapes a decoded example (reused by
every run of the same data and size, and never by another); ``auto`` chooses memory
when the split fits ``data.memory_budget_mb`` and disk otherwise; ``off`` decodes every
epoch. Both caches are read in any order, so every mode trains on the same epochs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from tftoolkit.data.sources import Examples
from tftoolkit.tempfiles import (fsync, remove_stale_temporaries, replace_atomically,
                                 temporary_path)

DEFAULT_BUDGET_SHARE = 0.25       # of the memory available when the run starts


@dataclass(frozen=True)
class CachePlan:
    """How one split is cached, and the line that says so."""

    mode: str                     # memory | disk | off
    path: Path | None             # the disk cache's folder
    subject: str                  # data cache for train (and a worker's shard)
    detail: str

    @property
    def note(self) -> str:
        """``data cache for train: memory, uint8 pixels, 12 MB (...)``."""
        return f"{self.subject}: {self.detail}"


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable), or the physical total."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_budget(budget_mb: int) -> int:
    """Bytes of ``data.memory_budget_mb``; 0: a quarter of the memory available now."""
    return budget_mb * 2 ** 20 if budget_mb else int(DEFAULT_BUDGET_SHARE * available_memory())


def example_bytes(examples: Examples, image_size: int | None) -> int:
    """Bytes one cached example takes: uint8 pixels, or float32 features."""
    if image_size:
        return image_size * image_size * 3
    return int(np.prod(examples.arrays.shape[1:])) * 4


class DiskCache:
    """A split's decoded inputs on disk, one fixed-size record per example in read order,
    beside each example's source image shape (what a crop is drawn from): any record
    can be read on its own, so each epoch reads them in its own order. Written once
    through temporary files flushed to disk; ``cache.json``, written last, marks it
    complete."""

    INPUTS, SHAPES, COMPLETE = "inputs.bin", "shapes.npy", "cache.json"

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def complete(self, count: int) -> bool:
        """Whether the cache holds ``count`` whole records: a readable ``cache.json``,
        an ``inputs.bin`` of ``count`` records and ``count`` source shapes (anything
        else, e.g. a truncated file or a marker cut short by a kill, is rewritten)."""
        try:
            spec = self.spec
            shapes = np.load(self.folder / self.SHAPES, mmap_mode="r")
            return (spec["count"] == count and len(shapes) == count
                    and (self.folder / self.INPUTS).stat().st_size
                    == count * _record_bytes(spec))
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def write(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Store ``(inputs, source shapes)`` batches, in order."""
        (self.folder / self.COMPLETE).unlink(missing_ok=True)
        remove_stale_temporaries(self.folder)
        inputs, shapes_file = temporary_path(self.folder), temporary_path(self.folder)
        shapes, spec = [], None
        try:
            with open(inputs, "wb") as f:
                for x, shape in batches:
                    x = np.ascontiguousarray(x)
                    spec = spec or {"shape": list(x.shape[1:]), "dtype": x.dtype.name}
                    f.write(x.tobytes())
                    shapes.append(np.asarray(shape, np.int32))
            with open(shapes_file, "wb") as f:
                np.save(f, np.concatenate(shapes))
            fsync(inputs)
            fsync(shapes_file)
            os.replace(inputs, self.folder / self.INPUTS)
            os.replace(shapes_file, self.folder / self.SHAPES)
        finally:
            inputs.unlink(missing_ok=True)
            shapes_file.unlink(missing_ok=True)
        spec["count"] = sum(len(s) for s in shapes)
        replace_atomically(self.folder / self.COMPLETE,
                           lambda p: p.write_text(json.dumps(spec)))

    @property
    def spec(self) -> dict:
        """``{"shape": [...], "dtype": ..., "count": n}`` of the records."""
        return json.loads((self.folder / self.COMPLETE).read_text())

    def shapes(self) -> np.ndarray:
        """``[count, 2]``: each example's source image height and width."""
        return np.load(self.folder / self.SHAPES)

    def reader(self):
        """``rows -> their records`` (a NumPy array) of one row or an array of rows,
        reading only those records (the file is mapped once, not opened per read)."""
        spec = self.spec
        dtype, shape = np.dtype(spec["dtype"]), (spec["count"], *spec["shape"])
        records = (np.memmap(self.folder / self.INPUTS, dtype, "r", shape=shape)
                   if spec["count"] else np.empty(shape, dtype))  # (an empty file: no map)
        return lambda rows: np.array(records[rows])


def _record_bytes(spec: dict) -> int:
    """The size of one record of a :class:`DiskCache` of ``spec``."""
    return int(np.prod(spec["shape"], dtype=np.int64)) * np.dtype(spec["dtype"]).itemsize


def plan_cache(mode: str, examples: Examples, *, split: str, image_size: int | None,
               settings: dict, cache_root: Path, budget_mb: int,
               count: int | None = None, budget_share: float = 1.0) -> CachePlan:
    """The cache of one split: ``mode`` as asked, or what ``auto`` chooses.

    Args:
        settings: everything else that shapes a decoded example (resize method, order,
            the worker's shard).
        cache_root: the folder disk caches live in.
        budget_mb: the memory a split may take under ``auto``; 0: a quarter of what is
            available now.
        count: how many of ``examples`` are cached (a worker's shard); None: all.
        budget_share: the part of the budget this cache may take (one of a worker's
            several replica shards).
    """
    count = len(examples) if count is None else count
    subject = f"data cache for {split}"
    if "shard" in settings:
        subject += f" (shard {settings['shard']}, {count} examples)"
    size = count * example_bytes(examples, image_size)
    megabytes = size / 2 ** 20
    if mode == "auto":
        budget = budget_share * memory_budget(budget_mb)
        mode = "memory" if size <= budget else "disk"
        why = (f"{megabytes:.0f} MB {'fits' if mode == 'memory' else 'exceeds'} the memory "
               f"budget of {budget / 2 ** 20:.0f} MB")
    else:
        why = f"data.cache={mode}"
    if mode == "off":
        return CachePlan("off", None, subject, f"off ({why})")
    if mode == "memory":
        kind = "uint8 pixels" if image_size else "float32 features"
        return CachePlan("memory", None, subject,
                         f"memory, {kind}, {megabytes:.0f} MB ({why})")
    key = hashlib.sha1(json.dumps({"content": examples.fingerprint, "split": split,
                                   "image_size": image_size, "format": "records",
                                   **settings},
                                  sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_root / key
    folder.mkdir(parents=True, exist_ok=True)
    use = "reused" if DiskCache(folder).complete(count) else "written this run"
    return CachePlan("disk", folder, subject, f"disk, {folder} ({use}; {why})")
