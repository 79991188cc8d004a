"""The exceptions tftoolkit raises for problems a user can fix.

Each message names what is wrong (a recipe key, a file, a value) and how to fix it;
the CLI prints the message alone, without a traceback. A message listing many files or
rows shows :data:`LISTED` of them and writes the whole list to a file it names.
"""

import os
import tempfile

LISTED = 20  # lines of a list a message shows


class TftoolkitError(Exception):
    """Base class of every user-facing tftoolkit error."""


class RecipeError(TftoolkitError):
    """A recipe, or an override of one, is invalid."""


class DataError(TftoolkitError):
    """Data is missing, unreadable or inconsistent: training data, or the images given to
    ``predict`` and ``explain``."""


class WeightsError(TftoolkitError):
    """Pretrained weights cannot be found, read or converted."""


class TrainingDiverged(TftoolkitError):
    """The training loss became infinite or NaN; the run stopped without finishing."""


class RunDirError(TftoolkitError):
    """A run directory is being written by another process."""


class ExportError(TftoolkitError):
    """An export failed; no partial version directory is left behind."""


def did_you_mean(word: str, choices: list[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or an empty string."""
    import difflib

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def bounded_list(lines: list[str], name: str) -> str:
    """``lines`` for a message, each on its own indented line: all of them up to
    :data:`LISTED`; beyond, the first ones, how many more, and the file in the temporary
    folder (``tftoolkit-NAME-*.txt``) that holds them all."""
    shown = "".join(f"\n  {line}" for line in lines[:LISTED])
    if len(lines) <= LISTED:
        return shown
    handle, path = tempfile.mkstemp(prefix=f"tftoolkit-{name}-", suffix=".txt")
    with os.fdopen(handle, "w") as f:
        f.write("".join(f"{line}\n" for line in lines))
    return shown + f"\n  ... and {len(lines) - LISTED} more (all {len(lines)} in {path})"
