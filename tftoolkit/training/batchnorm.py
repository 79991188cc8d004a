"""Recalibrate BatchNorm moving statistics after training ("precise BatchNorm").

A network trained from scratch for a short budget has moving averages that lag far
behind its weights (ImageNet architectures use momentum 0.99-0.999), so inference mode
can be much worse than the training curve suggests. Re-estimating the statistics as
the exact average over training batches, with the final weights, removes that gap.
"""

from __future__ import annotations

import keras

# Training batches (a seeded, class-mixed sample: DataBundle.sample) the statistics are
# averaged over.
RECALIBRATION_BATCHES = 20


def trainable_batchnorms(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """BatchNorm layers that run in training mode during training (not frozen)."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]


def recalibrate_batchnorm(model: keras.Model, batches,
                          max_batches: int = RECALIBRATION_BATCHES) -> int:
    """Set each trainable BatchNorm's moving mean/variance to the average of its batch
    statistics over ``batches`` (un-augmented training inputs, classes mixed in each
    batch: per-batch statistics of one class miss the variance between classes).
    Returns batches used."""
    layers = trainable_batchnorms(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    used = 0
    try:
        for used, batch in enumerate(batches.take(max_batches), start=1):
            for layer in layers:  # running mean over batches: m_k = m_{k-1}(k-1)/k + b/k
                layer.momentum = (used - 1) / used
            model(batch[0], training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return used
