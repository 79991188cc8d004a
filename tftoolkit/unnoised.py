"""What a private run reads and releases without noise, decided in one place.

DP-SGD's guarantee (``privacy.enabled``) covers the training examples through the
noised, clipped gradient steps alone. Everything else a run computes from data is
outside it: :func:`unnoised_reads` lists each such use and the split it reads, and
nothing else in the toolkit decides it. The training split is never read without noise
for anything that ships or selects (parity images come from the validation split, or are
synthetic without one; int8 calibration needs ``privacy.public_split=val``); what is read
from it without noise is released for monitoring only and said so. The model card's
``not_private`` list is this function's output.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from tftoolkit.recipe import Recipe

CALIBRATED_FORMATS = ("tflite_int8", "mediapipe_int8")


@dataclass(frozen=True)
class Read:
    """One use of data outside the guarantee: what it is, and the split it reads
    (``""``: none, synthetic inputs instead)."""

    use: str
    split: str
    description: str

    def __str__(self) -> str:
        source = f"the {self.split} split" if self.split else "synthetic inputs"
        return f"{self.description} ({source})"


def unnoised_reads(recipe: Recipe, splits: Collection[str],
                   thresholded: bool = False) -> dict[str, Read]:
    """Each use of data a private run makes without noise, by name (``parity``,
    ``thresholds``, ``selection``, ...), given the splits the run has and whether its task
    decides at thresholds chosen on validation. A use absent from the result does not
    happen (thresholds stay at their default, nothing is selected)."""
    t, has_val = recipe.train, "val" in splits
    uses: list[tuple[str, str, str]] = [
        ("training_figures", "train", "the logged per-epoch training loss and figures, "
                                      "computed on the sampled batches for monitoring"),
        ("split_sizes", "train", "the split sizes (N sets delta and the sampling rate, "
                                 "treated as public as the accountant assumes)"),
        ("parity", "val" if has_val else "", "the images the export's parity check "
                                             "serves")]
    if has_val:
        uses.append(("validation_figures", "val", "the validation figures logged each "
                                                  "epoch and reported"))
        if t.select_best:
            uses.append(("selection", "val", f"the epoch and stage kept "
                                             f"(train.select_best={t.select_best})"))
        if t.ema:
            uses.append(("ema", "val", "the choice between the weights and their moving "
                                       "average (train.ema)"))
        if t.early_stopping:
            uses.append(("early_stopping", "val", "when training stops "
                                                  "(train.early_stopping)"))
        if thresholded and isinstance(t.threshold, str):
            uses.append(("thresholds", "val", "the per-class decision thresholds, shipped "
                                              "in the export"))
        if any(f in CALIBRATED_FORMATS for f in recipe.export.formats):
            uses.append(("calibration", recipe.privacy.public_split, "the int8 calibration "
                                                                     "ranges, shipped in "
                                                                     "the file"))
        if recipe.export.formats:
            uses.append(("format_figures", "val", "the exported files' validation figures, "
                                                  "which decide whether each ships"))
    if "test" in splits:
        uses.append(("test_figures", "test", "the test figures reported"))
    return {use: Read(use, split, description) for use, split, description in uses}


def not_private(reads: dict[str, Read]) -> list[str]:
    """The model card's list of what is released outside the guarantee."""
    return [str(read) for read in reads.values()]
