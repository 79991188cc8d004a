"""What an example is, whatever it is called: the sha256 of its bytes, and the groups of
examples whose bytes are identical.

An image file's digest is of its encoded bytes (read once, by the bad-file scan that
decodes it), an in-memory example's of its array's bytes, a TFDS example's of its
encoded image. Examples of one group are the same picture under several names (or rows):
they are kept in one split, and single-label examples of one group must agree on their
class.
"""

from __future__ import annotations

import hashlib

import numpy as np

DIGEST_BYTES = 32  # sha256


def sha256(data: bytes) -> np.ndarray:
    """The digest of ``data`` as a row of :data:`DIGEST_BYTES` uint8."""
    return np.frombuffer(hashlib.sha256(data).digest(), np.uint8)


def array_digests(arrays: np.ndarray) -> np.ndarray:
    """``(N, 32)`` uint8: the digest of each example's bytes (C order)."""
    rows = np.ascontiguousarray(arrays).reshape(len(arrays), -1).view(np.uint8)
    joined = b"".join(hashlib.sha256(row).digest() for row in rows)
    return np.frombuffer(joined, np.uint8).reshape(len(arrays), DIGEST_BYTES)


def hex_digests(digests: np.ndarray) -> list[str]:
    """Each ``(N, 32)`` digest row as 64 hexadecimal digits."""
    return [row.tobytes().hex() for row in digests]


def content_groups(digests: np.ndarray) -> np.ndarray:
    """The group of each example: examples share a group id exactly when their digests
    are equal; ids count groups in the order of their first example (0, 1, ...)."""
    if len(digests) == 0:
        return np.zeros(0, np.int64)
    keys = np.ascontiguousarray(digests).view(f"V{DIGEST_BYTES}").ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.ravel()]


def duplicate_count(groups: np.ndarray) -> tuple[int, int]:
    """``(examples, groups)``: how many examples share their content with another, in
    how many groups."""
    sizes = np.bincount(groups) if len(groups) else np.zeros(0, np.int64)
    shared = sizes > 1
    return int(sizes[shared].sum()), int(shared.sum())


def conflicting_pairs(groups: np.ndarray, labels: np.ndarray) -> list[tuple[int, int]]:
    """Single-label examples of one group with different classes: per such group, the
    indices ``(first, other)`` of its first example and the first that disagrees."""
    first_of: dict[int, int] = {}
    pairs, seen, classes = [], set(), labels.tolist()
    for i, group in enumerate(groups.tolist()):
        first = first_of.setdefault(group, i)
        if classes[i] != classes[first] and group not in seen:
            seen.add(group)
            pairs.append((first, i))
    return pairs
