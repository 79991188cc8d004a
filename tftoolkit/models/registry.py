"""The architecture registry: every model tftoolkit can build, by name.

Each :class:`ArchitectureSpec` says what an architecture is (a from-scratch
``tabular`` or ``image`` network, or a pretrained ``backbone`` that gets a new head),
its default input size, the preprocessing its Keras ImageNet weights expect and the
transfer modes it allows. ``build_model``, ``input_size``, recipe validation and
``compare`` all read it. A path to a ``.keras`` file is an architecture too: a saved
model whose layers become the next model's backbone; so is any name with a registered
prefix (``hub:PRESET``, a KerasHub preset), whose spec the prefix's resolver makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from tftoolkit.errors import RecipeError, did_you_mean
from tftoolkit.layers import AffinePreprocessing

MODES = ("scratch", "feature_extraction", "fine_tune", "two_stage")
TRANSFER_MODES = ("feature_extraction", "fine_tune", "two_stage")
# model.mode=auto: training chooses among modes on validation (tftoolkit.training.auto)
AUTO = "auto"


@dataclass(frozen=True)
class ArchitectureSpec:
    """How to build one architecture and feed it.

    Attributes:
        name: the ``model.architecture`` value.
        kind: ``tabular`` (feature vectors in), ``image`` (a from-scratch image network)
            or ``backbone`` (a pretrained network cut below its classifier).
        default_size: square input side; None for feature vectors, 0 for the data's own.
        modes: the ``model.mode`` values it supports.
        build: ``tabular``/``image``: ``build(*, input_shape, task, hidden, filters,
            activation, dropout)``; ``backbone``: ``build(*, weights, input_shape)`` returning
            the headless backbone.
        preprocessing: for backbones, the ``Preprocess`` mode of their ImageNet weights.
        affine: the parameters of the ``affine`` mode (a KerasHub preset's converter).
        imagenet: what ``model.weights=imagenet`` loads, as the model card records it.
    """

    name: str
    kind: Literal["tabular", "image", "backbone"]
    default_size: int | None
    modes: tuple[str, ...]
    build: Callable
    preprocessing: str = "none"
    affine: AffinePreprocessing | None = None
    imagenet: str = "Keras' ImageNet weights"


ARCHITECTURES: dict[str, ArchitectureSpec] = {}
# name prefix -> resolver: the spec of a name that starts with it
PREFIXES: dict[str, Callable[[str], ArchitectureSpec]] = {}


def register_architecture(spec: ArchitectureSpec) -> ArchitectureSpec:
    """Add ``spec`` to the registry (a name is registered once)."""
    if spec.name in ARCHITECTURES:
        raise ValueError(f"architecture {spec.name!r} is registered twice")
    ARCHITECTURES[spec.name] = spec
    return spec


def register_prefix(prefix: str, resolve: Callable[[str], ArchitectureSpec]) -> None:
    """Names starting with ``prefix`` are architectures that ``resolve(name)`` describes."""
    PREFIXES[prefix] = resolve


def _keras_file_spec(path: str) -> ArchitectureSpec:
    def build(*, weights, input_shape):  # built by models.transfer from the file
        raise NotImplementedError

    return ArchitectureSpec(path, "backbone", 224, MODES, build)


def get_architecture(name: str) -> ArchitectureSpec:
    """The spec of ``name``: a registered architecture, a name with a registered prefix
    (``hub:...``) or a ``.keras`` path."""
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    for prefix, resolve in PREFIXES.items():
        if name.startswith(prefix):
            return resolve(name)
    if name.endswith(".keras"):
        return _keras_file_spec(name)
    known = list(ARCHITECTURES)
    raise RecipeError(f"model.architecture={name!r} is unknown{did_you_mean(name, known)} "
                      f"(choices: {', '.join(known)}, hub:PRESET, or a path to a .keras "
                      "model)")


def check_architecture(architecture: str, mode: str) -> ArchitectureSpec:
    """The spec, after checking that it exists and supports ``mode`` (every architecture
    supports ``auto``)."""
    spec = get_architecture(architecture)
    if mode != AUTO and mode not in spec.modes:
        raise RecipeError(f"model.mode={mode!r} needs a pretrained backbone; "
                          f"model.architecture={architecture!r} is built from scratch "
                          f"(modes: {', '.join(spec.modes)})")
    return spec


def mode_without_choice(architecture: str, mode: str, weights: str,
                        custom_model: bool = False) -> str | None:
    """The mode a run trains in when nothing is left to choose: ``mode`` itself unless it
    is ``auto``; for ``auto``, ``scratch`` when there are no pretrained weights to
    transfer (a from-scratch architecture, ``model.weights=none``, or a recipe's own
    ``model_fn``); None when ``auto`` has modes to choose among."""
    if mode != AUTO:
        return mode
    if custom_model:
        return "scratch"
    spec = get_architecture(architecture)
    if not set(TRANSFER_MODES) & set(spec.modes) or weights == "none":
        return "scratch"
    return None
