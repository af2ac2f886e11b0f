"""Seeded, stratified subsets of a split (profiles cap the images per split)."""

from __future__ import annotations

import numpy as np


def stratified_indices(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Return sorted indices of at most ``limit`` items, keeping class proportions.

    Every class keeps at least one item when ``limit`` allows (when there are more
    classes than ``limit``, the largest classes get one item each). Multilabel (N, C)
    labels are stratified on their first positive label (or "none").

    Args:
        labels: (N,) class ids or (N, C) multilabel indicators.
        limit: maximum number of items.
        seed: seed of the draw.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if limit >= n:
        return np.arange(n)
    if limit <= 0:
        return np.arange(0)
    keys = labels if labels.ndim == 1 else np.where(labels.any(1), labels.argmax(1), -1)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(keys, return_counts=True)
    share = counts * limit / n
    if len(classes) >= limit:
        # too few places for every class: one item for each of the largest classes
        quota = np.zeros(len(classes), dtype=int)
        quota[np.argsort(-counts, kind="stable")[:limit]] = 1
    else:
        quota = np.maximum(1, np.floor(share)).astype(int)
        # the one-item floor of rare classes can overshoot: take back from the classes
        # furthest above their share (never below one item)
        while quota.sum() > limit:
            over = np.where(quota > 1, quota - share, -np.inf)
            quota[int(np.argmax(over))] -= 1
        # hand out what flooring left over to the largest remainders, deterministically
        for index in np.argsort(-(share - quota), kind="stable"):
            if quota.sum() >= limit:
                break
            if quota[index] < counts[index]:
                quota[index] += 1
    chosen = [
        rng.permutation(np.flatnonzero(keys == cls))[:take]
        for cls, take in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(chosen))
