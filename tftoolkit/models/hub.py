"""KerasHub presets as backbones: ``model.architecture=hub:PRESET`` or ``hub:/path/to/dir``.

A preset is a KerasHub model directory (``config.json``, ``model.weights.h5``,
``image_converter.json``, as ``save_to_preset`` writes it), or the name of one that
KerasHub downloads from Kaggle (``resnet_50_imagenet``, ``dinov2_small``, ...). Its
backbone becomes the model's nested ``backbone``; its image converter (resize to the
preset's size, then ``x * scale + offset`` per channel) becomes the model's
``Preprocess`` layer in the ``affine`` mode, so the model still takes raw pixels 0-255.
``model.weights=imagenet`` loads the preset's own weights (whatever they were trained
on), ``none`` none. KerasHub is the optional ``hub`` extra; nothing here imports it
until a ``hub:`` architecture is asked for.
"""

from __future__ import annotations

import functools
from pathlib import Path

import keras

from tftoolkit.errors import RecipeError, WeightsError, did_you_mean
from tftoolkit.layers import AffinePreprocessing
from tftoolkit.models.layout import BACKBONE
from tftoolkit.models.registry import MODES, ArchitectureSpec, register_prefix

HUB_PREFIX = "hub:"
DEFAULT_SIZE = 224  # for a preset whose converter does not resize


def _keras_hub():
    try:
        import keras_hub
    except ImportError:
        raise RecipeError("model.architecture='hub:...' needs KerasHub, which is not "
                          "installed: see the README's 'KerasHub presets' for the install "
                          "line (pip install --no-deps keras-hub beside tensorflow-cpu)"
                          ) from None
    return keras_hub


def _download_hint(keras_hub, preset: str) -> str:
    """What to download, and where to put it, for a preset that cannot be fetched here."""
    handle = keras_hub.models.Backbone.presets.get(preset, {}).get("kaggle_handle", preset)
    handle = handle.removeprefix("kaggle://")
    return (f"KerasHub downloads presets from Kaggle at first use. Offline: on a machine "
            f"with internet run `pip install kagglehub && python -c \"import kagglehub; "
            f"print(kagglehub.model_download('{handle}'))\"`, copy the folder it prints to "
            "this machine, and use --set model.architecture=hub:/path/to/that/folder")


def _load(preset: str, what: str, load):
    """``load(keras_hub)``, with a message naming the preset and the fix on failure."""
    keras_hub = _keras_hub()
    local = Path(preset).expanduser()
    if not local.is_dir():
        known = list(keras_hub.models.Backbone.presets)
        if "://" not in preset and preset not in known:
            raise RecipeError(f"model.architecture=hub:{preset}: no such KerasHub preset or "
                              f"folder{did_you_mean(preset, known)} (presets: "
                              "keras_hub.models.Backbone.presets; a folder written by "
                              "save_to_preset: hub:/path/to/it)")
    else:
        for file, writer in (("config.json", "backbone"), ("image_converter.json",
                                                           "image converter")):
            if not (local / file).is_file():
                raise RecipeError(f"model.architecture=hub:{preset}: the folder has no "
                                  f"{file}; a preset folder holds what the {writer}'s "
                                  "save_to_preset(folder) writes")
    try:
        return load(keras_hub)
    except (RecipeError, WeightsError):
        raise
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        fix = ("the folder's files are damaged or not a KerasHub preset" if local.is_dir()
               else _download_hint(keras_hub, preset))
        raise WeightsError(f"KerasHub preset {preset!r}: cannot load its {what} "
                           f"({type(exc).__name__}: {detail}). {fix}") from None


def _affine(converter) -> AffinePreprocessing:
    """A KerasHub image converter's resize and rescaling, as the Preprocess layer's."""
    def values(v) -> tuple[float, ...]:
        return () if v is None else tuple(float(x) for x in (v if isinstance(
            v, (list, tuple)) else [v]))

    size = converter.image_size
    return AffinePreprocessing(scale=values(converter.scale) or (1.0,),
                               offset=values(converter.offset),
                               size=tuple(int(s) for s in size) if size else None,
                               interpolation=converter.interpolation,
                               antialias=bool(converter.antialias))


def _build(preset: str, *, weights: str | None,
           input_shape: tuple[int, int, int]) -> keras.Model:
    """The preset's backbone, named ``backbone``; pretrained with ``weights="imagenet"``.
    (``input_shape`` is the model's input: the Preprocess layer resizes it to the
    preset's size, which is what the backbone takes.)"""
    backbone = _load(preset, "backbone", lambda keras_hub: keras_hub.models.Backbone.from_preset(
        preset, load_weights=weights == "imagenet", name=BACKBONE))
    if not isinstance(backbone.output, keras.KerasTensor) or len(backbone.output.shape) not in (
            3, 4):
        raise RecipeError(f"KerasHub preset {preset!r}: its backbone ({type(backbone).__name__}) "
                          "does not end in one feature map or token sequence")
    return backbone


@functools.lru_cache(maxsize=16)
def hub_spec(name: str) -> ArchitectureSpec:
    """The architecture ``hub:PRESET``: the preset's size and preprocessing, its build."""
    preset = name[len(HUB_PREFIX):]
    if not preset:
        raise RecipeError("model.architecture='hub:' names no preset: hub:PRESET_NAME or "
                          "hub:/path/to/preset_folder")
    converter = _load(preset, "image converter",
                      lambda keras_hub: keras_hub.layers.ImageConverter.from_preset(preset))
    affine = _affine(converter)
    return ArchitectureSpec(name, "backbone", affine.size[0] if affine.size else DEFAULT_SIZE,
                            MODES, functools.partial(_build, preset), "affine", affine,
                            imagenet=f"the weights of KerasHub preset {preset}")


register_prefix(HUB_PREFIX, hub_spec)
