"""Recipes: one typed, validated description of a complete job.

A recipe has six sections (``data``, ``model``, ``augment``, ``regularize``, ``train``,
``export``), each a dataclass whose fields carry their type, their range and a one-line
help. A recipe lives in a Python module that defines ``RECIPE``; it is loaded by name
(a module in the bundled ``recipes/`` folder) or by path, and ``--set section.key=value``
overrides are applied and validated before anything runs.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import traceback
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from tftoolkit.errors import RecipeError, did_you_mean
from tftoolkit.tasks import ENCODING_OF_LOSS
from tftoolkit.models.registry import check_architecture, mode_without_choice

BUNDLED_RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def _opt(default: Any, help: str, *, min: float | None = None, max: float | None = None,
         cli: bool = True, aliases: dict | None = None) -> Any:
    """A recipe field with its help text, allowed range, and other spellings it accepts
    (``aliases``: a value -> the one it means, such as ``None`` -> ``"none"``)."""
    meta = {"help": help, "min": min, "max": max, "cli": cli, "aliases": aliases or {}}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    """Where examples come from and how they are turned into batches."""

    source: Literal["synthetic", "arrays", "folder", "csv", "tfds", "fashion_mnist", "voc",
                    "coco"] = _opt(
        "synthetic", "kind of data source (voc, coco: object detection annotations)")
    task: Literal["auto", "detection"] = _opt(
        "auto", "what the labels are; auto: what the source implies (voc and coco: "
                "detection; csv: detection when its header names xmin, ymin, xmax and ymax "
                "columns, else classes or targets)")
    annotations: str = _opt("", "COCO instances file (source=coco); image file names are "
                                "relative to data.dir")
    name: str = _opt("", "synthetic generator (linear, sine_product) or TFDS dataset name")
    dir: str = _opt("", "image folder with one subfolder per class (source=folder); the "
                        "folder a table's paths are relative to and may not leave "
                        "(source=csv; empty: the CSV file's folder); the Pascal VOC folder "
                        "(source=voc: Annotations/ and JPEGImages/ or images/); the folder "
                        "of COCO's images (source=coco)")
    csv: str | object = _opt("", "table of images (source=csv): a CSV file's path (.tsv: "
                                 "tab-separated), or a pandas DataFrame in the Python API")
    path_column: str = _opt("path", "column of image paths (source=csv)")
    label_column: str = _opt("label", "column of labels (source=csv): class names, or "
                                      "numbers in every row for regression targets")
    label_delimiter: str = _opt("", "separator of several labels in one cell, e.g. ' ' or "
                                    "'|': multi-label (source=csv); empty: one label per row")
    split_column: str = _opt("", "column whose values train/val/test place each row "
                                 "(source=csv); empty: splits held out as for a folder")
    data_dir: str = _opt("", "TFDS data_dir (source=tfds); empty for the TFDS default")
    train_split: str = _opt("train", "TFDS split spec of the training data")
    val_split: str = _opt("", "TFDS split spec of the validation data; empty: split from train")
    test_split: str = _opt("", "TFDS split spec of the test data; empty: none")
    num_examples: int = _opt(100, "examples drawn by a synthetic generator", min=2)
    image_size: int = _opt(0, "square image size fed to the model; 0: the backbone's default",
                           min=0, max=2048)
    resize_method: Literal["bilinear", "nearest", "bicubic", "area"] = _opt(
        "bilinear", "resize interpolation, the same in training and in every served path; "
                    "downscales are antialiased (bilinear, bicubic; area always averages)")
    max_examples: int = _opt(0, "cap on examples per source split, for quick runs: the "
                                "splits held out of it (validation, test) shrink in "
                                "proportion, and no example changes split; 0: all", min=0)
    split_seed: int = _opt(42, "seed of the data: the validation and test splits held out, "
                               "the max_examples subset, synthetic data; independent of "
                               "train.seed, so runs of other seeds see the same splits",
                           min=0)
    validation_fraction: float = _opt(0.2, "share of training data held out when the source "
                                           "has no validation split", min=0.0, max=0.9)
    test_fraction: float = _opt(0.1, "share of the data held out as a test split when the "
                                     "source has none (image folders, arrays), stratified "
                                     "and seeded; 0: no test split", min=0.0, max=0.5)
    max_pixels: int = _opt(40_000_000, "largest image accepted, in pixels (width x height, "
                                       "read from the file's header before decoding); a "
                                       "file declaring more is a bad file (on_bad_file)",
                           min=1)
    on_bad_file: Literal["error", "skip"] = _opt(
        "error", "undecodable image files: stop with their list, or skip and record them")
    class_weight: Literal["none", "balanced"] = _opt("none", "per-class loss weights")
    cache: Literal["auto", "memory", "disk", "off"] = _opt(
        "auto", "keep decoded examples between epochs: memory (images as uint8 at the model's "
                "input size), disk (tf.data file cache, reused by runs of the same data and "
                "size), auto (memory when a split fits data.memory_budget_mb, else disk), "
                "off; true/false mean memory/off", aliases={True: "memory", False: "off"})
    cache_dir: str = _opt("", "folder of disk caches; empty: <train.run_dir>/<recipe>/"
                              "data_cache")
    memory_budget_mb: int = _opt(0, "memory one split may take under data.cache=auto, and "
                                    "the training split a private run holds; 0: a "
                                    "quarter of the memory available when the run starts",
                                 min=0)
    shuffle_buffer: int = _opt(2048, "training examples shuffled at a time in an uncached "
                                     "TFDS split, which is read in one order (every other "
                                     "split is re-permuted whole every epoch); 0: the "
                                     "whole split", min=0)
    autotune: bool = _opt(False, "tf.data's autotuning thread; off by default because ending "
                                 "an iterator waits for it (a 2-4 s stall after 1 to 3 of "
                                 "every 8 fit calls); parallel maps then use the default "
                                 "parallelism")
    arrays: dict | None = _opt(None, "in-memory arrays {'train': (x, y), 'val': ..., "
                                     "'test': ...} (source=arrays, Python API only)", cli=False)


@dataclass(frozen=True)
class ModelConfig:
    """Which network is built and how a pretrained backbone is adapted."""

    architecture: str = _opt("mlp", "linear, mlp, cnn, a keras.applications backbone "
                                    "(mobilenet_v2, resnet50, ...), efficientnet_lite0/1/2, "
                                    "hub:PRESET (KerasHub) or a .keras file")
    mode: Literal["auto", "scratch", "feature_extraction", "fine_tune", "two_stage"] = _opt(
        "auto", "transfer mode; auto: with pretrained weights, the linear probe, the probe "
                "then fine-tuning, and (for images unlike photos) a small CNN from scratch "
                "are tried within train.time_budget and the best on validation is kept; "
                "without pretrained weights (linear, mlp, cnn, weights=none): scratch")
    weights: str = _opt("imagenet", "imagenet, imagenet-torchvision, none, or a weights file",
                        aliases={None: "none"})
    backbone_layer: str = _opt("", "layer of a .keras model used as backbone; empty: "
                                   "the whole model minus its last layer")
    unfreeze: int | float | str = _opt(0.3, "top of the backbone trained when fine-tuning: "
                                            "a layer count, a fraction, or a layer/block name")
    hidden: list[int] = _opt([16], "hidden layer sizes (mlp)")
    activation: Literal["sigmoid", "tanh", "relu"] = _opt("relu", "hidden activation")
    filters: list[int] = _opt([16, 32], "convolution filters per block (cnn)")
    pixel_features: int = _opt(0, "a frozen pretrained backbone's linear head also reads the "
                                  "image's grey pixels on an N x N grid, solved as a "
                                  "separate expert whose weight is chosen on validation (0 "
                                  "included); used by feature_extraction and auto's linear "
                                  "probe, other modes train without it (their notes say "
                                  "so); 0: off", min=0)
    anchor_strides: list[int] = _opt([8, 16, 32], "detectors: the backbone strides the "
                                     "feature pyramid and its anchors sit on, finest "
                                     "first, each twice the one before (for example "
                                     "[16, 32] for large objects only)")


@dataclass(frozen=True)
class AugmentConfig:
    """Training-only image augmentation."""

    enabled: bool = _opt(False, "augment training images")
    placement: Literal["model", "pipeline"] = _opt(
        "model", "run augmentation in the training graph or in the tf.data pipeline")
    fused: bool = _opt(False, "compose flip/crop/rotation/zoom/translation into one "
                              "projective transform per image")
    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"] = _opt(
        "horizontal", "random flips")
    crop: float = _opt(0.0, "random crop: fraction of each side that may be cut away",
                       min=0.0, max=0.9)
    resized_crop_scale: float = _opt(0.0, "random resized crop: smallest area fraction kept "
                                          "(0: off)", min=0.0, max=1.0)
    rotation: float = _opt(0.0, "random rotation range, fraction of a full turn", min=0.0,
                           max=0.5)
    zoom: float = _opt(0.0, "random zoom range (fraction)", min=0.0, max=0.9)
    translation: float = _opt(0.0, "random translation range (fraction)", min=0.0, max=0.9)
    contrast: float = _opt(0.0, "random contrast factor range", min=0.0, max=1.0)
    brightness: float = _opt(0.0, "random brightness factor range", min=0.0, max=1.0)
    erasing: float = _opt(0.0, "random erasing probability", min=0.0, max=1.0)
    rand_augment: bool = _opt(False, "Keras RandAugment")
    cached_views: int = _opt(0, "with cached backbone features: augmented copies of each "
                                "training image to cache (0: augmentation turns the cache "
                                "off)", min=0, max=64)
    mixup: float = _opt(0.0, "MixUp alpha (0: off)", min=0.0, max=10.0)
    cutmix: float = _opt(0.0, "CutMix alpha (0: off)", min=0.0, max=10.0)


@dataclass(frozen=True)
class RegularizeConfig:
    """Weight penalties, dropout and label smoothing."""

    kernel: Literal["none", "l1", "l2", "l1_l2"] = _opt(
        "none", "kernel penalty on every Conv/Dense kernel (backbone and head)")
    strength: float = _opt(1e-4, "penalty strength lambda", min=0.0)
    dropout: float = _opt(0.0, "dropout rate before the output layer", min=0.0, max=0.95)
    label_smoothing: float = _opt(0.0, "label smoothing for classification", min=0.0, max=0.5)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, runtime and run-directory settings."""

    epochs: int = _opt(5, "training epochs (first stage of two_stage)", min=1)
    batch_size: int = _opt(32, "global batch size; 0 for gd means the whole training set",
                           min=0)
    learning_rate: float | str = _opt(1e-3, "peak learning rate; auto: run the learning-rate "
                                            "finder first and use its suggestion", min=0.0)
    scale_lr: bool = _opt(False, "multiply the learning rates by the number of replicas "
                                 "(batch_size is the global batch)")
    optimizer: Literal["gd", "sgd", "adam", "adamw", "rmsprop"] = _opt(
        "adam", "gd: full-batch gradient descent; sgd: mini-batch (momentum option); adam; "
                "adamw; rmsprop")
    momentum: float = _opt(0.0, "momentum for gd/sgd/rmsprop", min=0.0, max=0.999)
    weight_decay: float = _opt(0.0, "decoupled weight decay, never on BatchNorm parameters, "
                                    "biases or other 1-D weights", min=0.0)
    clip_norm: float = _opt(0.0, "clip the global gradient norm to this value; 0: off",
                            min=0.0)
    schedule: Literal["constant", "cosine", "one_cycle"] = _opt(
        "constant", "learning rate per step within each stage: constant, cosine decay to 0, "
                    "or one-cycle")
    warmup_epochs: float = _opt(0.0, "linear warmup from 0 at the start of each stage, in "
                                     "epochs (fractions allowed)", min=0.0)
    layer_decay: float = _opt(1.0, "fine-tuning: the k-th unfrozen backbone block from the "
                                   "top learns at lr * layer_decay**k; 1: off", min=1e-6,
                              max=1.0)
    ema: float = _opt(0.0, "decay of an exponential moving average of the trainable "
                           "weights, validated every epoch and kept when it validates "
                           "better; 0: off", min=0.0, max=0.99999)
    select_best: str = _opt("", "validation metric (val_accuracy, val_loss; "
                                "multi-label val_map, val_f1, ...) whose best "
                                "epoch's weights are kept, per stage and overall; empty: the "
                                "last epoch")
    loss: Literal["auto", "mse", "binary_crossentropy", "categorical_crossentropy",
                  "sparse_categorical_crossentropy"] = _opt(
        "auto", "loss; auto: mse for regression, cross-entropy from the labels otherwise")
    threshold: float | str = _opt("per_class", "multi-label: probability at or above which a "
                                               "class is predicted: per_class (each class's "
                                               "own, maximising its F1 on the validation "
                                               "split), global (one, maximising micro-F1 "
                                               "there) or a number", min=0.0, max=1.0)
    seed: int = _opt(42, "seed of every random generator", min=0)
    steps_per_epoch: int = _opt(0, "steps per epoch; 0: one pass over the training data",
                                min=0)
    min_steps: int = _opt(0, "fewest optimizer steps of each stage: a stage that would take "
                             "fewer makes each of its epochs several passes over the "
                             "training data, so schedules, warmup and validation keep their "
                             "shape per epoch; 0: off", min=0)
    solve_head: Literal["auto", "off"] = _opt(
        "auto", "auto: a linear head on cached frozen features is solved to convergence "
                "(L-BFGS logistic regression, its L2 strength chosen on validation) instead "
                "of trained by the optimizer; off: trained by the optimizer")
    refit_head: bool = _opt(True, "a head solved in the run's last stage is solved again, at "
                                  "the L2 strength chosen on validation, on the training "
                                  "and validation splits together (single-label; the "
                                  "validation figures reported are the ones before)")
    baselines: bool = _opt(True, "classification: fit a logistic regression on downsampled "
                                 "pixels and the linear probe on the frozen backbone's "
                                 "features, score them on validation and report them beside "
                                 "the model")
    time_budget: float = _opt(0.0, "seconds training may take: a stage stops after the "
                                   "epoch that ends past it, and model.mode=auto tries "
                                   "no candidate once it is spent; 0: no limit", min=0.0)
    fine_tune_learning_rate: float = _opt(0.0, "learning rate when fine-tuning; 0: "
                                               "learning_rate / 10", min=0.0)
    fine_tune_epochs: int = _opt(0, "epochs of the fine-tuning stage of two_stage; 0: epochs",
                                 min=0)
    cache_features: Literal["auto", "off"] = _opt(
        "auto", "run the frozen part of the model once and train the rest on its cached "
                "output: the head on backbone features (feature_extraction), the unfrozen "
                "blocks and the head on the frozen blocks' activations (fine_tune); both "
                "stages of two_stage")
    early_stopping: int = _opt(0, "patience in epochs on train.select_best (without it, "
                                     "val_loss), counted on across a resume; 0: off", min=0)
    distribute: Literal["auto", "default", "mirrored", "multi_worker", "tpu"] = _opt(
        "auto", "tf.distribute strategy; auto: multi_worker when TF_CONFIG names several "
                "workers, tpu when a TPU is attached, mirrored over several GPUs, else default")
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16"] = _opt(
        "float32", "compute precision")
    deterministic: bool = _opt(False, "enable TensorFlow op determinism")
    resume: bool = _opt(True, "resume the latest unfinished run of the same resolved recipe")
    run_dir: str = _opt("runs", "folder where run directories are created")
    tta: int = _opt(0, "test-time augmentation views (flips/crops) averaged in the final "
                       "evaluation, reported beside the plain figure; 0: off", min=0, max=7)
    verbose: int | str = _opt("auto", "0 silent, 1 progress bar, 2 one line per epoch; "
                                      "auto: the bar on a terminal, one line per epoch "
                                      "when output goes to a file or a pipe", min=0, max=2)


@dataclass(frozen=True)
class ExportConfig:
    """Where and how the trained model is exported for serving."""

    enabled: bool = _opt(True, "export a SavedModel after training")
    dir: str = _opt("saved_models", "root of exports: <dir>/<recipe>/<version>/")
    tolerance: float = _opt(1e-4, "max abs difference allowed by the parity check", min=0.0)
    formats: list[Literal["tflite", "tflite_dynamic", "tflite_float16", "tflite_int8",
                          "mediapipe", "mediapipe_int8", "onnx"]] = _opt(
        [], "extra formats beside the SavedModel: tflite (LiteRT, float), tflite_dynamic, "
            "tflite_float16, tflite_int8 (quantized), mediapipe, mediapipe_int8 (files "
            "MediaPipe Tasks' ImageClassifier loads; extra [mediapipe]) - each of these "
            "judged on the validation split, its test figures reported; onnx (ONNX Runtime, "
            "parity-checked; extra [onnx])")
    int8_io: Literal["float", "uint8", "int8"] = _opt(
        "float", "input and output type of tflite_int8 (float: the same pre-processing as "
                 "every other format)")
    calibration_steps: int = _opt(8, "training batches (no augmentation, a seeded sample "
                                     "with classes mixed) that calibrate tflite_int8 and "
                                     "mediapipe_int8", min=1)
    eval_examples: int = _opt(0, "validation and test examples each quantized file is "
                                 "measured on (a seeded sample); 0: all", min=0)
    max_accuracy_drop: float = _opt(0.02, "a quantized file that loses more validation "
                                          "accuracy than this against the float model (or "
                                          "gains more loss, for regression) is not written; "
                                          "test figures are only reported", min=0.0)


@dataclass(frozen=True)
class PrivacyConfig:
    """Differentially private training (DP-SGD) and its privacy budget."""

    enabled: bool = _opt(False, "train with DP-SGD: per-example gradients clipped, Gaussian "
                                "noise added, Poisson-sampled batches, (epsilon, delta) "
                                "accounted")
    l2_clip: float = _opt(1.0, "bound on each example's gradient norm", min=1e-9)
    noise_multiplier: float = _opt(0.0, "noise standard deviation / l2_clip; 0: found for "
                                        "privacy.target_epsilon", min=0.0)
    target_epsilon: float = _opt(0.0, "the epsilon not to exceed (the noise is found for the "
                                      "planned epochs; training stops before exceeding it); "
                                      "0: none", min=0.0)
    delta: float = _opt(0.0, "delta of the (epsilon, delta) guarantee; 0: 1 / (10 N)",
                        min=0.0, max=1.0)
    public_split: Literal["", "val"] = _opt(
        "", "a split that holds no private data (outside the guarantee): tflite_int8 "
            "calibrates on it; empty: none, and tflite_int8 is refused (its ranges would "
            "come from private examples)")
    insecure_reproducible: bool = _opt(
        False, "draw the noise and the batches from train.seed, so that the run repeats "
               "exactly; VOIDS the privacy guarantee (whoever knows the seed can regenerate "
               "and remove the noise): for tests and debugging only, and the model card "
               "says so")


SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "augment": AugmentConfig,
    "regularize": RegularizeConfig,
    "train": TrainConfig,
    "export": ExportConfig,
    "privacy": PrivacyConfig,
}

ModelFn = Callable[["Recipe", Any], Any]


@dataclass(frozen=True)
class Recipe:
    """One complete job: data, model, augmentation, regularization, training, export."""

    name: str
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    regularize: RegularizeConfig = field(default_factory=RegularizeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    # Optional code hooks: build_model(recipe, data_info) -> keras.Model, and
    # report(train_result) -> text printed after training.
    model_fn: ModelFn | None = None
    report: Callable[[Any], str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain values (arrays summarised)."""
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        for section in SECTIONS:
            values = dataclasses.asdict(getattr(self, section))
            if values.get("arrays") is not None:
                values["arrays"] = {k: f"{len(v[0])} examples"
                                    for k, v in values["arrays"].items()}
            if not isinstance(values.get("csv", ""), str):  # a DataFrame
                values["csv"] = f"<DataFrame of {len(values['csv'])} rows>"
            out[section] = values
        if self.model_fn is not None:
            out["model"]["model_fn"] = getattr(self.model_fn, "__qualname__", "custom")
        return out

    def with_overrides(self, overrides: dict[str, Any] | list[str] | None) -> "Recipe":
        """A copy with ``section.key`` overrides applied and validated."""
        if not overrides:
            return self
        if isinstance(overrides, (list, tuple)):
            overrides = parse_overrides(overrides)
        recipe = self
        for dotted, value in overrides.items():
            recipe = _apply_override(recipe, dotted, value)
        return recipe


def recipe_from_dict(values: dict[str, Any]) -> Recipe:
    """Rebuild a recipe from :meth:`Recipe.to_dict` output (as saved in run directories).

    Code hooks (model_fn, report) and in-memory arrays are not restored.
    """
    sections = {}
    for name, cls in SECTIONS.items():
        known = {f.name for f in dataclasses.fields(cls) if f.metadata.get("cli", True)}
        sections[name] = cls(**{k: v for k, v in values.get(name, {}).items() if k in known})
    return validate(Recipe(name=values["name"], description=values.get("description", ""),
                           **sections))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``["train.epochs=3", ...]`` into ``{"train.epochs": 3}``.

    Values are Python literals where they parse as one (``3``, ``0.1``, ``[8, 4]``,
    ``True``), else strings (``fine_tune``); ``true``/``false``/``none`` are accepted too.
    A value of whitespace alone is kept as it is (``data.label_delimiter=' '`` in a shell
    gives a space).
    """
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"override {item!r} is not of the form section.key=value "
                              "(for example --set train.epochs=3)")
        parsed[key.strip()] = _parse_value(raw.strip()) if raw.strip() else raw
    return parsed


def _parse_value(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _apply_override(recipe: Recipe, dotted: str, value: Any) -> Recipe:
    section_name, _, key = dotted.partition(".")
    if section_name not in SECTIONS:
        raise RecipeError(f"unknown recipe section {section_name!r} in {dotted!r}"
                          f"{did_you_mean(section_name, list(SECTIONS))} "
                          f"(sections: {', '.join(SECTIONS)})")
    section = getattr(recipe, section_name)
    fields = {f.name: f for f in dataclasses.fields(section) if f.metadata.get("cli", True)}
    if key not in fields:
        full = [f"{section_name}.{k}" for k in fields]
        raise RecipeError(f"unknown recipe key {dotted!r}{did_you_mean(dotted, full)} "
                          f"(keys of {section_name}: {', '.join(fields)})")
    coerced = _coerce(dotted, fields[key], value, section_types(type(section))[key])
    return dataclasses.replace(recipe, **{section_name: dataclasses.replace(section,
                                                                            **{key: coerced})})


def section_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a section dataclass."""
    return typing.get_type_hints(cls)


def _coerce(dotted: str, fld: dataclasses.Field, value: Any, hint: Any) -> Any:
    """Check ``value`` against the field's type and range; return it in that type.

    ``None`` (``--set key=none`` or ``null``) means the string ``"none"`` for a key whose
    values include it."""
    origin = typing.get_origin(hint)
    aliases = fld.metadata.get("aliases", {})
    if (value is None or isinstance(value, bool)) and value in aliases:
        value = aliases[value]
    if origin is Literal:
        choices = typing.get_args(hint)
        if value is None and "none" in choices:
            value = "none"
        if value not in choices:
            raise RecipeError(f"{dotted}={value!r} is not a valid choice"
                              f"{did_you_mean(str(value), [str(c) for c in choices])} "
                              f"(choices: {', '.join(map(str, choices))})")
        return value
    if origin in (list, tuple):
        (item_type,) = typing.get_args(hint)
        if isinstance(value, str):  # "a,b" or "[a, b]" from the command line
            value = [v.strip().strip("'\"") for v in value.strip("[]").split(",")
                     if v.strip()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{dotted}={value!r}: expected a list")
        return [_coerce(dotted, fld, v, item_type) for v in value]
    if origin in (typing.Union, types.UnionType):
        allowed = tuple(t for t in typing.get_args(hint) if t is not type(None))
        if value is None and type(None) in typing.get_args(hint):
            return None
        return _coerce_scalar(dotted, fld, value, allowed)
    return _coerce_scalar(dotted, fld, value, (hint,))


def _coerce_scalar(dotted: str, fld: dataclasses.Field, value: Any,
                   allowed: tuple[type, ...]) -> Any:
    names = " or ".join(t.__name__ for t in allowed)
    if isinstance(value, bool) and bool not in allowed:
        raise RecipeError(f"{dotted}={value!r}: expected {names}, got a boolean")
    if not isinstance(value, allowed):
        if float in allowed and isinstance(value, int):
            value = float(value)
        elif str in allowed and isinstance(value, (int, float)):
            value = str(value)
        else:
            raise RecipeError(f"{dotted}={value!r}: expected {names}, "
                              f"got {type(value).__name__}")
    lo, hi = fld.metadata.get("min"), fld.metadata.get("max")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
            raise RecipeError(f"{dotted}={value!r} is out of range: allowed {bounds}")
    return value


def validate(recipe: Recipe) -> Recipe:
    """Check every field of ``recipe`` (types, ranges, choices) and cross-field rules;
    returns the recipe with each value in its field's type (``1`` -> ``1.0`` for a float,
    an older alias -> the choice it means)."""
    if not isinstance(recipe, Recipe):
        raise RecipeError(f"expected a Recipe, got {type(recipe).__name__}")
    for section_name, cls in SECTIONS.items():
        section = getattr(recipe, section_name)
        if not isinstance(section, cls):
            raise RecipeError(f"recipe {recipe.name!r}: section {section_name!r} must be a "
                              f"{cls.__name__}, got {type(section).__name__}")
        hints = section_types(cls)
        coerced = {fld.name: _coerce(f"{section_name}.{fld.name}", fld,
                                     getattr(section, fld.name), hints[fld.name])
                   for fld in dataclasses.fields(section) if fld.metadata.get("cli", True)}
        changed = {k: v for k, v in coerced.items() if v is not getattr(section, k)}
        if changed:
            recipe = dataclasses.replace(recipe, **{
                section_name: dataclasses.replace(section, **changed)})
    _check_combinations(recipe)
    return recipe


def _check_combinations(recipe: Recipe) -> None:
    """Rules between fields that need no data, checked before anything runs."""
    if recipe.model_fn is None:
        check_architecture(recipe.model.architecture, recipe.model.mode)
    if recipe.regularize.label_smoothing and ENCODING_OF_LOSS.get(recipe.train.loss) in (
            "sparse", "regression"):
        raise RecipeError(f"regularize.label_smoothing={recipe.regularize.label_smoothing} "
                          f"needs one-hot labels, but train.loss={recipe.train.loss!r}; use "
                          "train.loss=categorical_crossentropy (or auto)")
    t = recipe.train
    if isinstance(t.learning_rate, str) and t.learning_rate != "auto":
        raise RecipeError(f"train.learning_rate={t.learning_rate!r}: expected a number or "
                          "'auto' (the learning-rate finder's suggestion)")
    if isinstance(t.verbose, str) and t.verbose != "auto":
        raise RecipeError(f"train.verbose={t.verbose!r}: expected 0, 1, 2 or 'auto'")
    if isinstance(t.threshold, str) and t.threshold not in ("per_class", "global"):
        raise RecipeError(f"train.threshold={t.threshold!r}: expected per_class, global or a "
                          "probability (0.5)")
    if t.select_best and not t.select_best.startswith("val_"):
        raise RecipeError(f"train.select_best={t.select_best!r}: epochs are selected on a "
                          "validation metric (val_accuracy, val_loss, ...), never on "
                          "training or test figures")
    strides = recipe.model.anchor_strides
    if not strides or strides[0] < 1 or any(b != 2 * a for a, b in zip(strides, strides[1:])):
        raise RecipeError(f"model.anchor_strides={strides}: expected one or more strides, "
                          "finest first, each twice the one before (such as [8, 16, 32])")
    if recipe.privacy.enabled:
        _check_private(recipe)
    if t.batch_size == 0 and t.optimizer != "gd":
        raise RecipeError("train.batch_size=0 (whole training set) is only for "
                          "train.optimizer='gd'")


def _check_private(recipe: Recipe) -> None:
    """What DP-SGD cannot bound: statistics or mixing across the examples of a batch."""
    p, a = recipe.privacy, recipe.augment
    if not p.noise_multiplier and not p.target_epsilon:
        raise RecipeError("privacy.enabled needs privacy.noise_multiplier or "
                          "privacy.target_epsilon")
    mode = mode_without_choice(recipe.model.architecture, recipe.model.mode,
                               recipe.model.weights, recipe.model_fn is not None)
    if mode is None:
        raise RecipeError("privacy.enabled with model.mode=auto: every mode tried would train "
                          "on the private data, spending the budget once each; set "
                          "model.mode (feature_extraction, fine_tune, two_stage or scratch)")
    if mode == "scratch" and recipe.model.architecture not in ("linear", "mlp"):
        raise RecipeError(f"privacy.enabled with model.mode='scratch' on "
                          f"{recipe.model.architecture!r}: its BatchNorm layers train on batch "
                          "statistics, which mix examples, so no example's influence is "
                          "bounded; use a transfer mode (BatchNorm frozen) or linear/mlp")
    if a.enabled and (a.mixup or a.cutmix):
        raise RecipeError("privacy.enabled with augment.mixup/cutmix: mixing examples breaks "
                          "the per-example bound; turn them off")
    if recipe.regularize.dropout > 0 or a.enabled:
        key = (f"regularize.dropout={recipe.regularize.dropout}"
               if recipe.regularize.dropout > 0 else "augment.enabled=true")
        fix = ("regularize.dropout=0" if recipe.regularize.dropout > 0
               else "augment.enabled=false")
        raise RecipeError(f"privacy.enabled with {key}: per-example gradients are "
                          "vectorised, so random layers draw once per batch and every "
                          "example gets the same mask or augmentation, which correlates "
                          f"the examples; set {fix}")
    if recipe.train.min_steps:
        raise RecipeError(f"privacy.enabled with train.min_steps={recipe.train.min_steps}: "
                          "a private epoch is the expected number of Poisson-sampled "
                          "batches, which the accountant counts; set train.min_steps=0 "
                          "(and train.epochs for the steps)")
    if recipe.train.steps_per_epoch:
        raise RecipeError(f"privacy.enabled with train.steps_per_epoch="
                          f"{recipe.train.steps_per_epoch}: a private epoch is the expected "
                          "number of Poisson-sampled batches (training examples / "
                          "train.batch_size), which the accountant counts; set "
                          "train.steps_per_epoch=0")
    if recipe.data.class_weight != "none":
        raise RecipeError("privacy.enabled with data.class_weight: the weights are computed "
                          "from the private labels; set data.class_weight=none")
    if recipe.train.learning_rate == "auto":
        raise RecipeError("privacy.enabled with train.learning_rate=auto: the learning-rate "
                          "finder trains without privacy on the private split, outside the "
                          "accountant; set train.learning_rate to a number")
    calibrated = [f for f in recipe.export.formats if f in ("tflite_int8", "mediapipe_int8")]
    if calibrated and p.public_split != "val":
        raise RecipeError(f"privacy.enabled with export.formats including {calibrated[0]}: "
                          "its calibration ranges would come from private training examples "
                          "and ship in the file, outside the accountant; set "
                          "privacy.public_split=val if the validation split is public data, "
                          f"or remove {calibrated[0]} from export.formats")
    if recipe.train.precision == "mixed_float16":
        raise RecipeError("privacy.enabled with train.precision=mixed_float16: its loss "
                          "scaling skips a step when any example's gradient overflows, a "
                          "decision taken on the private examples without noise, outside "
                          "the accountant; use train.precision=mixed_bfloat16 (no loss "
                          "scaling) or float32")
    if recipe.train.deterministic and not p.insecure_reproducible:
        raise RecipeError("privacy.enabled with train.deterministic=true: private noise comes "
                          "from OS entropy, which deterministic ops refuse; set "
                          "train.deterministic=false, or privacy.insecure_reproducible=true "
                          "for a run that is reproducible and not private")


def _module_from_path(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"tftoolkit_recipe_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise RecipeError(f"cannot import recipe file {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise RecipeError(f"recipe file {path}, line {exc.lineno}: {exc.msg} "
                          f"({(exc.text or '').strip()[:80]!r}); fix the Python syntax there"
                          ) from None
    except Exception as exc:
        line = next((f.lineno for f in reversed(traceback.extract_tb(exc.__traceback__))
                     if f.filename == str(path)), None)
        raise RecipeError(f"recipe file {path} fails to run{f' at line {line}' if line else ''}"
                          f": {type(exc).__name__}: {exc}; fix the file (--debug shows "
                          "the traceback)") from exc
    return module


def bundled_recipes() -> dict[str, Path]:
    """Names and paths of the recipes shipped in ``recipes/``."""
    return {p.stem: p for p in sorted(BUNDLED_RECIPES_DIR.glob("*.py"))
            if not p.stem.startswith("_")}


def load_recipe(name_or_path: str | Path | Recipe,
                overrides: dict[str, Any] | list[str] | None = None) -> Recipe:
    """Load a recipe by bundled name (``mlp``) or file path, apply overrides, validate."""
    if isinstance(name_or_path, Recipe):
        recipe = name_or_path
    else:
        text = str(name_or_path)
        path = Path(text)
        if text.endswith(".py") or path.is_file():
            if not path.is_file():
                raise RecipeError(f"recipe file {text} does not exist")
        else:
            known = bundled_recipes()
            if text not in known:
                raise RecipeError(f"unknown recipe {text!r}{did_you_mean(text, list(known))} "
                                  f"(bundled: {', '.join(known)}; or give a path to a .py file)")
            path = known[text]
        module = _module_from_path(path)
        recipe = getattr(module, "RECIPE", None)
        if not isinstance(recipe, Recipe):
            raise RecipeError(f"recipe file {path} must define RECIPE = Recipe(...)")
    return validate(recipe.with_overrides(overrides))
