"""Which images the invariance protocol evaluates and estimates its statistics on.

Two rules, chosen by ``InvarianceConfig.sampling``:

* ``medxfer`` (the default): the evaluated images are a seeded draw **without**
  replacement from ``split``; the covariance images a draw without replacement from
  ``cov_split`` (:func:`harness.protocols.whitening.cov_indices`).
* ``numpy-legacy``: the peers' draws with NumPy's legacy global generator
  (``np.random.seed(seed)`` then ``np.random.choice``), both **with** replacement. The
  covariance uses every image when there are fewer than ``cov_images`` of them, else
  ``max(cov_images, int(cov_fraction * N))`` draws (jonahanton/SSL_medicalimaging@77fceef:
  invariances/invariances.py; ``cov_images=None`` is ssl-invariances' whole split); the
  evaluated images are ``np.random.choice(N, num_images)``
  (linusericsson/ssl-invariances@62d5085:eval_synthetic_invariance.py, the same in
  SSL_medicalimaging). Each draw starts from a freshly seeded generator, as in a peer run
  whose covariance is already cached (see :mod:`harness.protocols.invariance_presets`).

``pool_splits`` (the peers' ``ConcatDataset([train, test])``) makes both draws come from
the concatenation of the named splits, in that order, instead of ``split`` and
``cov_split``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from harness.protocols.whitening import (
    cached_feature_stats,
    cov_indices,
    covariance_stats,
    sample_indices,
)

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun

SAMPLINGS = ("medxfer", "numpy-legacy")


class SamplingSettings(Protocol):
    """The settings the draws read from an ``InvarianceConfig``."""

    num_images: int
    cov_images: int | None
    cov_fraction: float
    epsilon: float
    split: str
    cov_split: str
    seed: int
    pool_splits: tuple[str, ...]
    sampling: str
    whitening: str


def legacy_cov_indices(
    n_total: int, cov_images: int | None, cov_fraction: float, seed: int
) -> np.ndarray:
    """The peers' covariance rows: all when fewer than ``cov_images``, else a draw with replacement.

    Args:
        n_total: Images in the pool.
        cov_images: Below this many images all are used; None: always all.
        cov_fraction: A larger pool draws ``max(cov_images, int(cov_fraction * n_total))``.
        seed: Seed of NumPy's legacy generator.

    Returns:
        int64 row indices (unsorted, repeats kept: each repeat is a row of the covariance).
    """
    if cov_images is None or n_total < cov_images:
        return np.arange(n_total, dtype=np.int64)
    size = max(cov_images, int(cov_fraction * n_total))
    return np.random.RandomState(seed).choice(n_total, size).astype(np.int64)


def legacy_image_indices(n_total: int, n: int, seed: int) -> np.ndarray:
    """The peers' evaluated images: ``np.random.choice(n_total, n)`` after ``seed(seed)``.

    Args:
        n_total: Images in the pool (>= 1).
        n: Draws (with replacement, so some images are counted more than once).
        seed: Seed of NumPy's legacy generator.

    Returns:
        int64 indices in draw order.
    """
    if n_total < 1:
        raise ValueError("legacy_image_indices: the pool has no images")
    return np.random.RandomState(seed).choice(n_total, n).astype(np.int64)


def image_indices(n_total: int, config: SamplingSettings) -> np.ndarray:
    """The evaluated images of a pool of ``n_total`` under ``config.sampling``."""
    if config.sampling == "numpy-legacy":
        return legacy_image_indices(n_total, config.num_images, config.seed)
    return sample_indices(n_total, config.num_images, config.seed)


def stats_indices(n_total: int, config: SamplingSettings) -> np.ndarray:
    """The covariance rows of a pool of ``n_total`` under ``config.sampling``."""
    if config.sampling == "numpy-legacy":
        return legacy_cov_indices(n_total, config.cov_images, config.cov_fraction, config.seed)
    return cov_indices(n_total, config)


def is_default(config: SamplingSettings) -> bool:
    """Whether the draws are medxfer's own (one split each, no pooling)."""
    return not config.pool_splits and config.sampling == "medxfer"


def eval_source(config: SamplingSettings) -> str:
    """The name of what the evaluated images come from (a split, or ``a+b+c``)."""
    return "+".join(config.pool_splits) if config.pool_splits else config.split


def pooled_images(case: CaseRun, config: SamplingSettings) -> np.ndarray:
    """The images the evaluated draw picks from: ``split``, or the pooled splits."""
    splits = case.splits()
    if not config.pool_splits:
        return splits[config.split].images
    return np.concatenate([splits[name].images for name in config.pool_splits])


def invariance_stats(case: CaseRun, config: SamplingSettings) -> tuple[dict[str, np.ndarray], bool]:
    """Feature mean and whitening of a case under the config's pooling and sampling.

    The medxfer default goes through :func:`harness.protocols.whitening.covariance_stats`
    (its cache key unchanged); pooled or legacy draws key the cache by their rule too.

    Returns:
        The statistics (as :func:`harness.protocols.whitening.feature_stats`) and whether
        they came from the cache.
    """
    if is_default(config):
        return covariance_stats(case, config)
    names = config.pool_splits or (config.cov_split,)
    per_split = case.features(tuple(names))
    features = np.concatenate([per_split[name].features for name in names])
    index = stats_indices(len(features), config)
    rule: dict[str, Any] = {
        "split": "+".join(names),
        "cov_rule": [config.sampling, config.cov_images, config.cov_fraction, config.seed],
    }
    return cached_feature_stats(
        features[index], config.epsilon, rule, case.cached_arrays, config.whitening
    )
