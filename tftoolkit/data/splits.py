"""Seeded, stratified splitting and capping of labelled examples."""

from __future__ import annotations

import numpy as np


def stratified_split(labels: np.ndarray, fraction: float, seed: int,
                     groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, held_out)``: ``fraction`` of each class held out, seeded.

    With ``groups`` (a group id per example: identical content), whole groups are held
    out or kept, ``fraction`` of each class's groups, a group's class being its first
    example's; without duplicates this is the split of the examples themselves.
    Regression targets (float labels) are split uniformly at random.
    """
    if groups is None:
        return _stratified_split(labels, fraction, seed)
    _, first = np.unique(groups, return_index=True)
    first = np.sort(first)  # one example per group, in example order
    _, held = _stratified_split(labels[first], fraction, seed)
    out = np.isin(groups, groups[first[held]])
    return np.flatnonzero(~out), np.flatnonzero(out)


def _stratified_split(labels: np.ndarray, fraction: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if not np.issubdtype(labels.dtype, np.integer):
        order = rng.permutation(len(labels))
        n_out = int(round(fraction * len(labels)))
        return np.sort(order[n_out:]), np.sort(order[:n_out])
    keep, held = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_out = int(round(fraction * len(idx)))
        if fraction > 0 and len(idx) > 1:
            n_out = min(max(n_out, 1), len(idx) - 1)
        held.append(idx[:n_out])
        keep.append(idx[n_out:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def stratified_cap(labels: np.ndarray, max_examples: int, seed: int) -> np.ndarray:
    """Sorted indices of ``max_examples`` examples keeping class proportions, seeded: the
    first of :func:`stratified_order`, so a smaller cap keeps a subset of what a larger
    one keeps."""
    if max_examples <= 0 or max_examples >= len(labels):
        return np.arange(len(labels))
    return np.sort(stratified_order(labels, seed)[:max_examples])


def proportional_counts(sizes: list[int], total: int) -> list[int]:
    """``total`` shared out in proportion to ``sizes`` (largest remainders), each count at
    most its size."""
    whole = sum(sizes)
    if total >= whole:
        return list(sizes)
    exact = [size * total / whole for size in sizes]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[:total - sum(counts)]:
        counts[i] += 1
    return counts


def shard_positions(n: int, index: int, count: int, *, equal: bool = False) -> np.ndarray:
    """Positions of shard ``index`` of ``count`` over ``n`` examples: every ``count``-th
    one from ``index``, so the shards are disjoint and cover all positions. ``equal``
    pads a shorter shard with its own first positions, so that every shard has
    ``ceil(n / count)`` (and every worker steps through as many batches)."""
    if n < count:
        raise ValueError(f"{n} example(s) cannot be shared among {count} input shards")
    positions = np.arange(index, n, count)
    return np.resize(positions, -(-n // count)) if equal else positions


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded order of all examples in which every prefix holds each class in its
    share of the whole (within one example): each example is ranked by its seeded
    quantile within its class, ties in a seeded order. Regression targets (and labels
    that are not one class id per example) are shuffled uniformly."""
    rng = np.random.default_rng(seed)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        return rng.permutation(len(labels))
    quantile = np.empty(len(labels))
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        quantile[rng.permutation(idx)] = (np.arange(len(idx)) + 0.5) / len(idx)
    return np.lexsort((rng.permutation(len(labels)), quantile))
