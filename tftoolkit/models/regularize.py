"""Kernel penalties that reach the loss, also on already-built pretrained layers.

Setting ``layer.kernel_regularizer`` after a layer is built changes nothing in Keras:
the penalty is read from each variable's ``regularizer``. So both are set: the variable
(for ``model.losses`` now) and the layer attribute (so a saved model keeps it).
"""

from __future__ import annotations

import keras

# variable attribute -> the layer attributes that may hold its regularizer
KERNEL_ATTRS = {"kernel": ("kernel_regularizer", "depthwise_regularizer"),
                "depthwise_kernel": ("depthwise_regularizer",),
                "pointwise_kernel": ("pointwise_regularizer",)}


def make_regularizer(kind: str, strength: float) -> keras.regularizers.Regularizer | None:
    """``l1`` / ``l2`` / ``l1_l2`` penalty of strength lambda, or None for ``none``."""
    if kind == "none" or strength == 0:
        return None
    if kind == "l1":
        return keras.regularizers.L1(strength)
    if kind == "l2":
        return keras.regularizers.L2(strength)
    return keras.regularizers.L1L2(l1=strength, l2=strength)


def apply_kernel_regularizer(model: keras.Model, kind: str, strength: float) -> int:
    """Put the penalty on every Conv/Dense kernel of ``model``, nested models included.

    Returns how many kernels were regularized. Only trainable kernels contribute to
    ``model.losses`` (a frozen kernel's penalty is a constant with no gradient).
    """
    regularizer = make_regularizer(kind, strength)
    if regularizer is None:
        return 0
    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for var_name, attrs in KERNEL_ATTRS.items():
            variable = getattr(layer, var_name, None)
            if isinstance(variable, keras.Variable):
                variable.regularizer = regularizer
                attr = next((a for a in attrs if hasattr(layer, a)), None)
                if attr:
                    setattr(layer, attr, regularizer)
                count += 1
    return count
