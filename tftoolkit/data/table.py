"""Labels from a table: a CSV file (read with Python's ``csv`` module) or a pandas
DataFrame, one row per image, with a column of image paths and a column of labels.

:func:`read_table` turns the rows into image paths, labels and splits, and sorts out
the rows that cannot be used, each named by its line (a file) or index (a DataFrame):

- the label column holds class names, several per row when ``data.label_delimiter`` is
  set (multi-label, multi-hot targets), or numbers in every row (regression targets);
- paths are relative to ``data.dir`` when it is set, else to the CSV file's folder
  (a DataFrame: the working folder); with ``data.dir``, no path may leave it;
- ``data.split_column`` puts each row in ``train``, ``val`` or ``test``;
- a path named by several rows is one image: single-label rows must agree on its class
  and split (a path listed twice is kept twice, as one group of identical content);
  multi-label rows are merged into one example with the union of their labels;
- labels with a control character (a line break, a tab) are bad rows: a class name is
  one line of the export's ``labels.txt``.
"""

from __future__ import annotations

import csv
import math
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tftoolkit.errors import DataError, bounded_list, did_you_mean

SPLIT_VALUES = ("train", "val", "test")
DATAFRAME_MARK = "<DataFrame"   # how a saved recipe names the DataFrame it was given
# Separators of label sets written in one cell, which data.label_delimiter would split;
# a table with such cells and no delimiter gets a warning when their parts recur across
# at least SEPARATED_VALUES distinct labels.
USUAL_SEPARATORS, SEPARATED_VALUES = (" ", "|", ",", ";"), 3


@dataclass
class Row:
    """One row of the table as read: where it is, and its cells as text."""

    where: str          # "labels.csv line 3" or "DataFrame row 7"
    path: str
    label: str
    split: str          # "" without a split column


@dataclass
class Table:
    """The usable rows of a table: resolved image paths, labels, split per row."""

    paths: list[str]
    rows: list[str]                 # where each path was named ("t.csv line 3")
    labels: np.ndarray              # int64 class ids, float32 multi-hot (N, K), or targets
    splits: list[str]               # "train", "val" or "test" per row ("train" by default)
    class_names: list[str] | None   # None for regression
    multilabel: bool
    description: str
    bad_rows: list[tuple[str, str]]  # (row and path, why) of rows left out
    notes: list[str] = field(default_factory=list)  # warnings about the table


def control_characters(text: str) -> list[str]:
    """The control characters in ``text`` (line breaks, tabs, ...), as escapes."""
    return [repr(c)[1:-1] for c in dict.fromkeys(text) if unicodedata.category(c) == "Cc"]


def read_rows(source: Any, path_column: str, label_column: str,
              split_column: str = "") -> tuple[list[Row], Path | None, str]:
    """The rows of ``source`` (a CSV path or a pandas DataFrame), the folder of the CSV
    file (None for a DataFrame) and a description of the table."""
    columns = [path_column, label_column] + ([split_column] if split_column else [])
    if isinstance(source, str) and source.startswith(DATAFRAME_MARK):
        raise DataError(f"data.csv={source!r}: this run was trained on a DataFrame, which its "
                        "files do not keep; pass the DataFrame again (data.csv=frame) or save "
                        "it as a CSV file")
    if isinstance(source, (str, os.PathLike)):
        return _read_csv_file(Path(source).expanduser(), columns)
    if type(source).__name__ == "DataFrame" and hasattr(source, "columns"):
        return _read_dataframe(source, columns)
    raise DataError(f"data.csv must be a CSV file's path or a pandas DataFrame, not "
                    f"{type(source).__name__}")


def _check_columns(found: list[str], wanted: list[str], what: str) -> None:
    keys = ("data.path_column", "data.label_column", "data.split_column")
    for key, column in zip(keys, wanted):
        if column not in found:
            raise DataError(f"{key}={column!r} is not a column of {what}"
                            f"{did_you_mean(column, found)} (columns: {', '.join(found)})")


def _read_csv_file(path: Path, columns: list[str]) -> tuple[list[Row], Path, str]:
    if not path.is_file():
        raise DataError(f"data.csv={str(path)!r}: no such file")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise DataError(f"data.csv={str(path)!r} is empty; it needs a header row "
                            f"naming its columns ({', '.join(columns)})")
        header = [h.strip() for h in header]
        _check_columns(header, columns, str(path))
        index = [header.index(c) for c in columns]
        ended = reader.line_num  # a quoted field may hold line breaks: a row's first line
        for cells in reader:
            line, ended = ended + 1, reader.line_num
            where = f"{path.name} line {line}"
            if not any(c.strip() for c in cells):
                continue  # a blank line
            if len(cells) != len(header):
                raise DataError(f"{path} line {line} has {len(cells)} fields, "
                                f"the header {len(header)}; quote fields that contain "
                                f"{delimiter!r}")
            values = [cells[i].strip() for i in index] + [""] * (3 - len(index))
            rows.append(Row(where, *values))
    return rows, path.resolve().parent, f"csv {path}"


def _read_dataframe(frame: Any, columns: list[str]) -> tuple[list[Row], None, str]:
    _check_columns([str(c) for c in frame.columns], columns, "the DataFrame")

    def text(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return str(value).strip()

    rows = []
    for index, *values in frame[columns].itertuples(name=None):
        values = [text(v) for v in values] + [""] * (3 - len(columns))
        rows.append(Row(f"DataFrame row {index}", *values))
    return rows, None, f"DataFrame ({len(frame)} rows)"


def resolve_path(path: str, base: Path, root: Path | None) -> tuple[str | None, str | None]:
    """``path`` (relative to ``base``) resolved to an existing file that does not leave
    ``root`` (when given): ``(resolved path, None)``, or ``(None, why it cannot be used)``."""
    if not path:
        return None, "empty path"
    full = (base / Path(path).expanduser()).resolve()
    if root is not None and not full.is_relative_to(root):
        return None, f"path {path!r} leaves data.dir ({root})"
    if not full.is_file():
        return None, f"no such file: {full}"
    return str(full), None


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def read_table(source: Any, *, path_column: str, label_column: str,
               label_delimiter: str = "", split_column: str = "",
               data_dir: str = "") -> Table:
    """The rows of ``source`` as image paths, labels and splits; rows that cannot be
    used (an empty or missing path, a path leaving ``data_dir``, an empty label or one
    with a control character, an unknown split value) are in ``bad_rows``, each with its
    reason. Rows naming one path that disagree on its class or split are refused."""
    rows, csv_folder, description = read_rows(source, path_column, label_column,
                                              split_column)
    if not rows:
        raise DataError(f"{description} has no rows")
    root = Path(data_dir).expanduser().resolve() if data_dir else None
    if root is not None and not root.is_dir():
        raise DataError(f"data.dir={data_dir!r}: no such directory")
    base = root or csv_folder or Path.cwd()
    multilabel = bool(label_delimiter)
    labelled = [row.label for row in rows if row.label]
    regression = not multilabel and bool(labelled) and all(map(_is_number, labelled))
    kept, bad = [], []
    for row in rows:
        full, why = resolve_path(row.path, base, root)
        if why is None and not row.label and not multilabel:
            why = f"empty {label_column!r}"
        names = "".join(_tags(row.label, label_delimiter)) if multilabel else row.label
        if why is None and control_characters(names):
            why = (f"{label_column!r} {row.label!r} holds the control character(s) "
                   f"{', '.join(control_characters(names))}; a class name is one line "
                   "of the export's labels.txt")
        if why is None and split_column and row.split not in SPLIT_VALUES:
            why = (f"{split_column!r} is {row.split!r}"
                   f"{did_you_mean(row.split, list(SPLIT_VALUES))} (allowed: "
                   f"{', '.join(SPLIT_VALUES)})")
        if why is None:
            kept.append((row, full))
        else:
            bad.append((f"{row.where} ({row.path or 'no path'})", why))
    notes = []
    if multilabel:
        kept, merged = _merge_rows_of_one_path(kept, label_delimiter, description)
        if merged:
            notes.append(f"{description}: {merged} row(s) name an image an earlier row "
                         "names: their labels are merged into that row's")
    else:
        _refuse_disagreeing_rows(kept, float if regression else str, description)
        separator, why = _separated_labels(row.label for row, _ in kept)
        if separator and not regression:
            notes.append(f"warning: {description}: {why}, and data.label_delimiter is not "
                         "set, so each combination is one class; if a cell holds several "
                         f"labels, --set data.label_delimiter='{separator}' trains one "
                         "output per label")
    paths, where = [full for _, full in kept], [row.where for row, _ in kept]
    splits = [row.split or "train" for row, _ in kept]
    if regression:
        labels = np.array([float(row.label) for row, _ in kept], "float32").reshape(-1, 1)
        return Table(paths, where, labels, splits, None, False, description, bad, notes)
    if multilabel:
        tags = [_tags(row.label, label_delimiter) for row, _ in kept]
        class_names = sorted({t for row_tags in tags for t in row_tags})
        column = {name: i for i, name in enumerate(class_names)}
        labels = np.zeros((len(kept), len(class_names)), "float32")
        for i, row_tags in enumerate(tags):
            labels[i, [column[t] for t in row_tags]] = 1.0
        return Table(paths, where, labels, splits, class_names, True, description, bad, notes)
    class_names = sorted({row.label for row, _ in kept})
    column = {name: i for i, name in enumerate(class_names)}
    labels = np.array([column[row.label] for row, _ in kept], "int64")
    return Table(paths, where, labels, splits, class_names, False, description, bad, notes)


def _tags(label: str, delimiter: str) -> list[str]:
    """The labels of one multi-label cell."""
    return [t.strip() for t in label.split(delimiter) if t.strip()]


def _refuse_disagreeing_rows(kept: list[tuple[Row, str]], value: type,
                             description: str) -> None:
    """Refuse rows naming one image with another label (read as ``value``) or split
    than the first row naming it."""
    first: dict[str, Row] = {}
    disagreeing = []
    for row, full in kept:
        earlier = first.setdefault(full, row)
        if earlier is not row and (value(earlier.label) != value(row.label)
                                   or earlier.split != row.split):
            what = ("label" if value(earlier.label) != value(row.label) else "split")
            disagreeing.append(f"{earlier.where} and {row.where} ({row.path}): {what} "
                               f"{getattr(earlier, what)!r} and {getattr(row, what)!r}")
    if disagreeing:
        raise DataError(f"{len(disagreeing)} row(s) of {description} name an image an "
                        f"earlier row names, with another label or split:"
                        f"{bounded_list(disagreeing, 'disagreeing-rows')}\nAn image has one "
                        "class and one split: remove the wrong rows (several labels per "
                        "image: set data.label_delimiter and write them in one cell, or "
                        "in rows that all name it).")


def _merge_rows_of_one_path(kept: list[tuple[Row, str]], delimiter: str,
                            description: str) -> tuple[list[tuple[Row, str]], int]:
    """Multi-label rows naming one image as one row, the union of their labels; how
    many rows were merged. Rows naming one image in two splits are refused."""
    merged: dict[str, tuple[Row, str]] = {}
    disagreeing = []
    for row, full in kept:
        if full not in merged:
            merged[full] = (row, full)
            continue
        first = merged[full][0]
        if first.split != row.split:
            disagreeing.append(f"{first.where} and {row.where} ({row.path}): split "
                               f"{first.split!r} and {row.split!r}")
        union = list(dict.fromkeys(_tags(first.label, delimiter) + _tags(row.label,
                                                                          delimiter)))
        merged[full] = (Row(first.where, first.path, delimiter.join(union), first.split),
                        full)
    if disagreeing:
        raise DataError(f"{len(disagreeing)} row(s) of {description} put an image in "
                        f"another split than an earlier row:"
                        f"{bounded_list(disagreeing, 'disagreeing-rows')}\nAn image is in "
                        "one split: fix the split column of those rows.")
    return list(merged.values()), len(kept) - len(merged)


def _separated_labels(labels) -> tuple[str, str]:
    """The usual separator the distinct labels look like label sets written with (at
    least :data:`SEPARATED_VALUES` contain it, and their parts recur: fewer distinct
    parts than labels) and why; ``("", "")`` when they do not."""
    distinct = set(labels)
    for separator in USUAL_SEPARATORS:
        joined = sorted((label for label in distinct if separator in label.strip()),
                        key=lambda label: (len(label), label))
        if len(joined) < SEPARATED_VALUES:
            continue
        parts = {part.strip() for label in distinct for part in label.split(separator)
                 if part.strip()}
        if len(parts) < len(distinct):
            return separator, (f"{len(joined)} of its {len(distinct)} distinct labels "
                               f"contain {separator!r} (such as {joined[0]!r}) and are made "
                               f"of {len(parts)} parts")
    return "", ""
