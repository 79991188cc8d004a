"""What a run reads from its data outside the training steps, decided in one place.

Beside the gradient steps, a run reads data to log figures, to keep an epoch, to stop
early, to choose thresholds, to check and calibrate its export and to report.
:func:`unnoised_reads` decides each of those uses and the split it reads; the runner and
the export ask it, and nothing else decides them. For a private run (``privacy.enabled``)
the DP-SGD guarantee covers the training examples through the noised, clipped gradient
steps alone, so every use listed here is outside it: the model card's ``not_private``
list is this function's output, and the training split is never read for anything that
ships or selects (parity images come from the validation split, or are synthetic without
one; int8 calibration needs ``privacy.public_split=val``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from tftoolkit.recipe import Recipe

CALIBRATED_FORMATS = ("tflite_int8", "mediapipe_int8")
# formats judged on the validation split before they ship (quantized and MediaPipe files)
MEASURED_PREFIXES = ("tflite_", "mediapipe")


@dataclass(frozen=True)
class Read:
    """One use of data outside the training steps: its name, the split it reads (``""``:
    none, synthetic inputs instead) and what it is."""

    use: str
    split: str
    description: str

    def __str__(self) -> str:
        source = f"the {self.split} split" if self.split else "synthetic inputs"
        return f"{self.description} ({source})"


def unnoised_reads(recipe: Recipe, splits: Collection[str],
                   thresholded: bool = False) -> dict[str, Read]:
    """Each use of data a run of ``recipe`` makes outside its training steps, by name
    (``parity``, ``selection``, ``ema``, ``early_stopping``, ``thresholds``,
    ``calibration``, ``baselines``, ...), given the splits the run has and whether its
    task decides at thresholds chosen on validation. A use absent from the result does
    not happen (no epoch is selected, thresholds stay at their default)."""
    t, private, has_val = recipe.train, recipe.privacy.enabled, "val" in splits
    uses: list[tuple[str, str, str]] = [
        ("training_figures", "train", "the logged per-epoch training loss and figures, "
                                      "computed on the sampled batches for monitoring, and "
                                      "whether a non-finite loss stops the run"),
        ("split_sizes", "train", "the split sizes (N sets delta and the sampling rate, "
                                 "treated as public as the accountant assumes)"),
        ("parity", "val" if has_val else "" if private else "train",
         "the images the export's parity check serves")]
    if has_val:
        uses.append(("validation_figures", "val", "the validation figures logged each "
                                                  "epoch and reported"))
        if t.select_best or t.early_stopping:
            uses.append(("selection", "val", "the epoch and stage kept (train.select_best="
                                             f"{t.select_best or 'val_loss, for early stopping'}"
                                             ")"))
        if t.ema:
            uses.append(("ema", "val", "the choice between the weights and their moving "
                                       "average (train.ema)"))
        if t.early_stopping:
            uses.append(("early_stopping", "val", "when training stops "
                                                  "(train.early_stopping)"))
        if thresholded and isinstance(t.threshold, str):
            uses.append(("thresholds", "val", "the per-class decision thresholds, shipped "
                                              "in the export"))
        if not private:  # choices that would release private figures: not made then
            if t.solve_head == "auto":
                uses.append(("head_choice", "val", "a solved head's L2 strength, the blend "
                                                   "of its experts (model.pixel_features) "
                                                   "and whether its cached augmented "
                                                   "copies are kept"))
                if t.refit_head:
                    uses.append(("refit", "val", "the rows a solved head of the run's last "
                                                 "stage is refitted on beside the training "
                                                 "split (train.refit_head)"))
            if t.baselines:
                uses.append(("baselines", "val", "the baselines' L2 strengths and their "
                                                 "figures, reported beside the model"))
            if recipe.model.mode == "auto":
                uses.append(("mode_choice", "val", "the transfer mode model.mode=auto "
                                                   "keeps"))
        if any(f.startswith(MEASURED_PREFIXES) for f in recipe.export.formats):
            uses.append(("format_figures", "val", "the exported files' validation figures, "
                                                  "which decide whether each ships"))
    if any(f in CALIBRATED_FORMATS for f in recipe.export.formats):
        uses.append(("calibration", recipe.privacy.public_split if private else "train",
                     "the int8 calibration ranges, shipped in the file"))
    if "test" in splits:
        uses.append(("test_figures", "test", "the test figures reported"))
    return {use: Read(use, split, description) for use, split, description in uses}


def not_private(reads: dict[str, Read]) -> list[str]:
    """The model card's list of what a private run releases outside the guarantee."""
    return [str(read) for read in reads.values()]
