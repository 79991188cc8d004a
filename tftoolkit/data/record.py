"""The record of a run's splits, ``splits.csv``: which example is in which split.

One row per example, split by split (train, val, test), each in its order in the run:

- ``split``: ``train``, ``val`` or ``test``;
- ``source``: where the example comes from: an image file's path (as the folder or the
  table names it), ``array:SPLIT:INDEX`` (``data.arrays``), ``fashion_mnist:SPLIT:INDEX``,
  ``synthetic:NAME:INDEX`` or the TFDS id (``tf_flowers-train.tfrecord-00000-of-00016__7``);
- ``sha256``: of the file's bytes, of the example's array bytes, or of a TFDS example's
  encoded image.

Training writes it before its first epoch. A resumed run checks that the data still
gives it (:meth:`SplitRecord.changes_since`); ``evaluate``, ``export`` and ``compare``
take their splits from it (:meth:`SplitRecord.select`), so a later command sees the
examples the run saw, whatever was added to the data or removed from it since. Examples
``data.max_examples`` leaves out are not listed.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tftoolkit.data.content import hex_digests
from tftoolkit.data.sources import Examples
from tftoolkit.errors import DataError, bounded_list
from tftoolkit.tempfiles import replace_atomically

SPLITS_FILE = "splits.csv"
COLUMNS = ["split", "source", "sha256"]
SPLIT_NAMES = ("train", "val", "test")
NAMED = 3  # examples a line of changes names


class RecordRow(NamedTuple):
    """One example of the record."""

    split: str
    source: str
    sha256: str     # 64 hexadecimal digits


@dataclass
class RecordMatch:
    """How the examples of a record were found in the data as it is now."""

    recorded: dict[str, int]                    # split -> examples recorded
    missing: dict[str, list[str]] = field(default_factory=dict)  # split -> what is gone
    unrecorded: int = 0                         # examples of the data the record lacks

    def notes(self) -> list[str]:
        """What a command reading these splits says about them."""
        notes = [f"{SPLITS_FILE}: {len(gone)} of the {self.recorded[split]} {split} "
                 f"examples the run recorded are not in the data now and are left out:"
                 f"{bounded_list(gone, f'missing-{split}')}"
                 for split, gone in self.missing.items()]
        if self.unrecorded:
            notes.append(f"{self.unrecorded} example(s) of the data are not in "
                         f"{SPLITS_FILE} (added since the run, or left out by "
                         "data.max_examples) and are left out")
        return notes


@dataclass
class SplitRecord:
    """The rows of ``splits.csv``."""

    rows: list[RecordRow]

    @classmethod
    def of(cls, splits: dict[str, Examples]) -> "SplitRecord":
        """The record of ``splits`` (their examples' sources and digests)."""
        rows = []
        for split in SPLIT_NAMES:
            if split in splits:
                examples = splits[split]
                rows += map(RecordRow, [split] * len(examples), examples.sources.tolist(),
                            hex_digests(examples.digests))
        return cls(rows)

    def write(self, folder: str | Path) -> Path:
        """Write ``folder/splits.csv`` (atomically); returns its path."""
        path = Path(folder) / SPLITS_FILE

        def write(target: Path) -> None:
            with open(target, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(COLUMNS)
                writer.writerows(self.rows)

        replace_atomically(path, write)
        return path

    @classmethod
    def read(cls, folder: str | Path) -> "SplitRecord | None":
        """The record in ``folder``; None when it has none (a run from before
        records)."""
        path = Path(folder) / SPLITS_FILE
        if not path.is_file():
            return None
        rows = []
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            if next(reader, None) != COLUMNS:
                raise DataError(f"{path} is not a record of splits (its header is not "
                                f"{','.join(COLUMNS)}); it was damaged or replaced")
            for cells in reader:
                if len(cells) != 3 or cells[0] not in SPLIT_NAMES or len(cells[2]) != 64:
                    raise DataError(f"{path} line {reader.line_num} is not a split, a "
                                    f"source and a sha256 ({cells!r}); the file was "
                                    "damaged or edited")
                rows.append(RecordRow._make(cells))
        return cls(rows)

    def split_names(self) -> list[str]:
        return [s for s in SPLIT_NAMES if any(r.split == s for r in self.rows)]

    def fingerprints(self) -> dict[str, str]:
        """Per split, the sha256 of its examples' sorted sha256s (one per line): the
        split's content, whatever its files are called."""
        digests = defaultdict(list)
        for row in self.rows:
            digests[row.split].append(row.sha256)
        return {split: hashlib.sha256("\n".join(sorted(digests[split])).encode()).hexdigest()
                for split in self.split_names()}

    def changes_since(self, earlier: "SplitRecord") -> list[str]:
        """Per split that differs from ``earlier``: how many examples were added,
        removed, or changed content (same source), with the first of each named."""
        lines = []
        for split in SPLIT_NAMES:
            now = Counter((r.source, r.sha256) for r in self.rows if r.split == split)
            before = Counter((r.source, r.sha256) for r in earlier.rows if r.split == split)
            added, removed = now - before, before - now
            changed = sorted({s for s, _ in added} & {s for s, _ in removed})
            added = sorted({s for s, _ in added} - set(changed))
            removed = sorted({s for s, _ in removed} - set(changed))
            parts = [f"{len(names)} {what} ({', '.join(names[:NAMED])}"
                     f"{', ...' if len(names) > NAMED else ''})"
                     for what, names in (("added", added), ("removed", removed),
                                         ("with other content", changed)) if names]
            if parts:
                lines.append(f"split {split!r}: {', '.join(parts)}")
        return lines

    def select(self, pool: Examples) -> tuple[dict[str, Examples], RecordMatch]:
        """The recorded splits of the examples in ``pool`` (all the data gives now), in
        their recorded order; an example is recorded when its source and its content
        are. What the record lists but the pool lacks, and what the pool has that the
        record does not list, are in the match."""
        found: dict[tuple[str, str], deque[int]] = defaultdict(deque)
        sources = pool.sources.tolist()
        for i, key in enumerate(zip(sources, hex_digests(pool.digests))):
            found[key].append(i)
        present = set(sources)
        chosen: dict[str, list[int]] = {split: [] for split in self.split_names()}
        match = RecordMatch(Counter(r.split for r in self.rows))
        for row in self.rows:
            queue = found.get((row.source, row.sha256))
            if queue:
                chosen[row.split].append(queue.popleft())
            else:
                why = "its content changed" if row.source in present else "missing"
                match.missing.setdefault(row.split, []).append(f"{row.source} ({why})")
        match.unrecorded = len(pool) - sum(map(len, chosen.values()))
        return {split: pool.subset(np.array(indices, np.int64))
                for split, indices in chosen.items()}, match


def check_resumable(folder: str | Path, record: SplitRecord) -> str | None:
    """Refuse, naming what changed, to resume the unfinished run in ``folder`` when the
    data gives other splits now than the run recorded; a note when the run recorded none
    (it started before runs kept their splits: nothing to check against)."""
    saved = SplitRecord.read(folder)
    if saved is None:
        return (f"{folder} has no {SPLITS_FILE} to check its data against (a run from "
                "before runs recorded their splits); resuming it on the data as it is now")
    changes = record.changes_since(saved)
    if changes:
        raise DataError(f"the unfinished run {folder} trained on other data than the recipe "
                        f"gives now ({SPLITS_FILE} there):{bounded_list(changes, 'changes')}"
                        "\nRestore that data to resume the run, or --set train.resume=false "
                        "to train a new run beside it.")
    return None
