"""The image pool few-shot episodes are drawn from: pooled splits, optionally capped.

Both peers pool a dataset's splits with ``ConcatDataset([train, test])`` and draw every
episode from the result (linusericsson/ssl-transfer@416913f:datasets/few_shot_dataset.py,
jonahanton/SSL_medicalimaging@77fceef:datasets/few_shot_dataset.py). Where a medxfer card
carves a validation split out of the peer's train split, the peer's ``train`` is medxfer's
train + val, so the whole dataset is the pool ``train+val+test``.

SSL_medicalimaging loads a pre-built ``sub_meta`` for its largest datasets instead:
jonahanton/SSL_medicalimaging@77fceef:datasets/prepare_submeta.py walks
``ConcatDataset([train, test])`` and stops after index 10,000 (``if i > 10000: break``),
keeping the first 10,001 images. Its train and test datasets are each shuffled by
``pandas.sample(frac=1, random_state=42)`` first, so the kept images are a uniformly random
subset of the peer's train split whenever that split holds at least 10,001 images, topped
up from the shuffled test split otherwise. medxfer cards do not store the peer's pandas
order, so :func:`capped_indices` reproduces that subset in distribution: the pool is cut
into the peer's two blocks (every pool split but ``test``, then ``test``), each block is
shuffled with a seeded generator, and the first ``cap`` images of the concatenation are kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from harness.protocols.base import SplitFeatures

POOLS: dict[str, tuple[str, ...]] = {
    "train+test": ("train", "test"),
    "test": ("test",),
    "train+val+test": ("train", "val", "test"),
    "train+val": ("train", "val"),
}
# Second entropy word of the cap's generator, so the cap and the episodes draw from
# independent streams of one seed.
_CAP_STREAM = 1


def pool_splits(pool: str) -> tuple[str, ...]:
    """The split names a pool is made of.

    Args:
        pool: A key of :data:`POOLS`.

    Returns:
        Split names, in concatenation order.

    Raises:
        ValueError: On an unknown pool.
    """
    if pool not in POOLS:
        raise ValueError(f"unknown few-shot pool {pool!r}; expected one of {tuple(POOLS)}")
    return POOLS[pool]


def make_pool(features: Mapping[str, SplitFeatures], pool: str) -> SplitFeatures:
    """Concatenate the splits of a pool, in :data:`POOLS` order.

    Args:
        features: Split name -> features; must hold every split of the pool.
        pool: A key of :data:`POOLS`.

    Returns:
        The pooled features and labels (groups kept only if every split has them).

    Raises:
        ValueError: On an unknown pool or a missing split.
    """
    names = pool_splits(pool)
    missing = [name for name in names if name not in features]
    if missing:
        raise ValueError(f"few-shot pool {pool!r} needs split(s) {missing}, got {sorted(features)}")
    parts = [features[name] for name in names]
    groups = None
    if all(part.groups is not None for part in parts):
        groups = np.concatenate([np.asarray(part.groups) for part in parts])
    return SplitFeatures(
        np.concatenate([np.asarray(part.features) for part in parts]),
        np.concatenate([np.asarray(part.labels) for part in parts]),
        groups,
    )


def capped_indices(split_sizes: Mapping[str, int], cap: int, seed: int) -> np.ndarray:
    """Rows of the pooled splits that a ``sub_meta`` of ``cap`` images keeps.

    Args:
        split_sizes: Split name -> number of images, in pool order (as :func:`make_pool`
            concatenates them).
        cap: Images kept (SSL_medicalimaging's 10,001).
        seed: Seed of the shuffles (an independent stream of the episode seed).

    Returns:
        Sorted int64 row indices into the pool: the first ``cap`` images of the peer's
        train block (every split but ``test``) then its ``test`` block, each block in a
        seeded random order. All rows when the pool holds at most ``cap`` images.
    """
    if cap < 1:
        raise ValueError(f"pool cap must be >= 1, got {cap}")
    offsets: dict[str, np.ndarray] = {}
    start = 0
    for name, size in split_sizes.items():
        offsets[name] = np.arange(start, start + int(size), dtype=np.int64)
        start += int(size)
    if start <= cap:
        return np.arange(start, dtype=np.int64)
    rng = np.random.default_rng((seed, _CAP_STREAM))
    train_block = [rows for name, rows in offsets.items() if name != "test"]
    blocks = [np.concatenate(train_block) if train_block else np.empty(0, np.int64)]
    if "test" in offsets:
        blocks.append(offsets["test"])
    order = np.concatenate([rng.permutation(block) for block in blocks])
    return np.sort(order[:cap])


def build_pool(
    features: Mapping[str, SplitFeatures], pool: str, cap: int | None, seed: int
) -> tuple[SplitFeatures, dict[str, Any]]:
    """The pool of a few-shot run: the pooled splits, capped when ``cap`` is set.

    Args:
        features: Split name -> features; must hold every split of the pool.
        pool: A key of :data:`POOLS`.
        cap: Images kept (see :func:`capped_indices`), or None for the whole pool.
        seed: Seed of the cap's shuffles.

    Returns:
        ``(pool, details)``: the pooled (capped) features and the sizes of every split and
        of the pool before the cap.
    """
    pooled = make_pool(features, pool)
    sizes = {name: len(features[name]) for name in pool_splits(pool)}
    details: dict[str, Any] = {"pool_split_sizes": sizes, "pool_size_uncapped": len(pooled)}
    if cap is None:
        return pooled, details
    keep = capped_indices(sizes, cap, seed)
    groups = None if pooled.groups is None else np.asarray(pooled.groups)[keep]
    capped = SplitFeatures(
        np.asarray(pooled.features)[keep], np.asarray(pooled.labels)[keep], groups
    )
    return capped, details
