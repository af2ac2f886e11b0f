"""Feature statistics shared by the invariance protocols: covariance, whitening, similarity.

The feature mean ``mu`` and covariance ``Sigma`` are estimated on one split and
``epsilon`` is added to the diagonal of ``Sigma``; similarity is the cosine between the
whitened vectors ``(mu - f) W`` with ``W W^T = (Sigma + epsilon I)^-1``, distance the
Mahalanobis distance. See :mod:`harness.protocols.invariance` for the peers' choices and
where medxfer differs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from threadpoolctl import threadpool_limits

from harness.protocols.whitening_peer import (
    PEER_WHITENING,
    WHITENINGS,
    PeerCholeskyError,
    check_whitening,
    peer_decompose,
    peer_similarity,
)

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun

#: Version of the cached statistics' layout (part of their cache key).
STATS_VERSION = 1
STATS_NAMESPACE = "invariance-stats"


class CovarianceSettings(Protocol):
    """The settings a covariance estimate reads from a protocol config."""

    cov_images: int | None
    cov_fraction: float
    cov_split: str
    epsilon: float
    seed: int
    whitening: str


ArrayStore = Callable[
    [str, dict[str, Any], Callable[[], dict[str, np.ndarray]]],
    tuple[dict[str, np.ndarray], bool],
]


def check_cov_settings(owner: str, cov_images: int | None, cov_fraction: float) -> None:
    """Raise ``ValueError`` on covariance settings no draw can honour."""
    if cov_images is not None and cov_images < 2:
        raise ValueError(f"{owner}.cov_images must be >= 2 or None, got {cov_images}")
    if not 0 <= cov_fraction <= 1:
        raise ValueError(f"{owner}.cov_fraction must lie in [0, 1], got {cov_fraction}")


def check_epsilon(owner: str, epsilon: float) -> None:
    """Raise ``ValueError`` unless ``epsilon`` is finite and non-negative."""
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"{owner}.epsilon must be finite and >= 0, got {epsilon}")


def sample_indices(n_total: int, n: int, seed: int | tuple[int, ...]) -> np.ndarray:
    """A seeded draw of ``n`` distinct indices out of ``n_total``, sorted (all when fewer).

    Args:
        n_total: Population size.
        n: How many to draw.
        seed: Seed of the draw (an int or a tuple of ints for ``numpy.random.default_rng``).

    Returns:
        int64 array of sorted indices.
    """
    if n_total < 0 or n < 0:
        raise ValueError(f"sample_indices needs non-negative sizes, got {n_total}, {n}")
    if n >= n_total:
        return np.arange(n_total, dtype=np.int64)
    rng = np.random.default_rng(list(seed) if isinstance(seed, tuple) else seed)
    return np.sort(rng.choice(n_total, size=n, replace=False)).astype(np.int64)


def cov_sample_size(n_total: int, cov_images: int | None, cov_fraction: float) -> int:
    """How many images the covariance is estimated from (the rule in the module docstring).

    Args:
        n_total: Images in the covariance split.
        cov_images: The cap below which the whole split is used; None: always all.
        cov_fraction: Fraction of a larger split used when it exceeds ``cov_images``.

    Returns:
        The number of covariance images.
    """
    if cov_images is None or n_total <= cov_images:
        return n_total
    return min(n_total, max(cov_images, math.ceil(cov_fraction * n_total)))


def cov_indices(n_total: int, config: CovarianceSettings) -> np.ndarray:
    """The covariance images of a split: all, or a seeded draw without replacement.

    Args:
        n_total: Images in the covariance split.
        config: Supplies ``cov_images``, ``cov_fraction`` and ``seed``.

    Returns:
        int64 array of sorted indices.
    """
    size = cov_sample_size(n_total, config.cov_images, config.cov_fraction)
    # A stream apart from the evaluated-image draw, which uses the bare seed.
    return sample_indices(n_total, size, (config.seed, 2))


def as_features(name: str, features: np.ndarray, dim: int | None = None) -> np.ndarray:
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"{name}: features must be 2-D (N, D), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{name}: features must be real numbers, got {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name}: features have dimension {x.shape[1]}, the statistics {dim}")
    if not np.all(np.isfinite(x)):
        bad = int(np.sum(~np.all(np.isfinite(x), axis=1)))
        raise ValueError(f"{name}: features contain NaN or inf ({bad} rows)")
    return np.ascontiguousarray(x, dtype=np.float64)


def _covariance_input(features: np.ndarray, epsilon: float) -> np.ndarray:
    x = as_features("covariance features", features)
    if len(x) < 2:
        raise ValueError(f"the covariance needs at least 2 feature vectors, got {len(x)}")
    check_epsilon("feature_stats", epsilon)
    return x


def _decompose(x: np.ndarray, epsilon: float) -> dict[str, np.ndarray]:
    """Mean and eigendecomposition of the sample covariance (ddof 1), float64.

    ``x`` comes from :func:`_covariance_input`.
    """
    n, dim = x.shape
    with threadpool_limits(limits=1):
        mean = x.mean(axis=0)
        centred = x - mean
        covariance = centred.T @ centred / (n - 1)
        eigenvalues, eigenvectors = np.linalg.eigh((covariance + covariance.T) / 2)
    # Sigma is positive semi-definite; negative eigenvalues are rounding noise.
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    if epsilon == 0 and eigenvalues.min() <= 0:
        raise ValueError(
            f"the feature covariance is singular ({n} vectors, {dim} dimensions); use epsilon > 0"
        )
    return {
        "mean": mean,
        "eigenvalues": eigenvalues,
        "eigenvectors": eigenvectors,
        "n": np.array(n, dtype=np.int64),
        "epsilon": np.array(epsilon, dtype=np.float64),
    }


def _rank_facts(eigenvalues: np.ndarray, epsilon: float) -> dict[str, np.ndarray]:
    tolerance = eigenvalues.max(initial=0.0) * len(eigenvalues) * np.finfo(np.float64).eps
    return {
        "rank": np.array(int(np.sum(eigenvalues > tolerance))),
        "dims_below_epsilon": np.array(int(np.sum(eigenvalues <= epsilon))),
    }


def _expand(decomposed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    eigenvalues = np.asarray(decomposed["eigenvalues"], dtype=np.float64)
    epsilon = float(decomposed["epsilon"])
    common = {
        "eigenvalues": eigenvalues,
        "n": np.asarray(decomposed["n"]),
        "epsilon": np.asarray(epsilon),
        **_rank_facts(eigenvalues, epsilon),
    }
    if "cholesky32" in decomposed:
        return {
            **common,
            "arithmetic": np.array(PEER_WHITENING),
            "mean": np.asarray(decomposed["mean32"], dtype=np.float64),  # float32 values
            "cholesky32": np.asarray(decomposed["cholesky32"], dtype=np.float32),
            "precision": np.asarray(decomposed["precision"], dtype=np.float64),
        }
    if "whitening_note" in decomposed:
        common["whitening_note"] = np.asarray(decomposed["whitening_note"])
    eigenvectors = np.asarray(decomposed["eigenvectors"], dtype=np.float64)
    with threadpool_limits(limits=1):
        whitening = eigenvectors / np.sqrt(eigenvalues + epsilon)
        covariance = (eigenvectors * eigenvalues) @ eigenvectors.T
    return {
        **common,
        "arithmetic": np.array(WHITENINGS[0]),
        "mean": np.asarray(decomposed["mean"], dtype=np.float64),
        "covariance": covariance,
        "whitening": whitening,
    }


def _decompose_as(features: np.ndarray, epsilon: float, whitening: str) -> dict[str, np.ndarray]:
    x = _covariance_input(features, epsilon)
    if whitening != PEER_WHITENING:
        return _decompose(x, epsilon)
    try:
        return peer_decompose(x, epsilon)
    except PeerCholeskyError as exc:
        return {**_decompose(x, epsilon), "whitening_note": np.array(f"{exc}; float64-eigh used")}


def feature_stats(
    features: np.ndarray, epsilon: float, whitening: str = WHITENINGS[0]
) -> dict[str, np.ndarray]:
    """Feature mean, covariance and whitening matrix.

    Args:
        features: (n, D) feature vectors the statistics are estimated from (n >= 2).
        epsilon: Added to the covariance's diagonal (>= 0; > 0 when n <= D).
        whitening: ``float64-eigh`` (medxfer) or ``float32-cholesky`` (the peers'
            arithmetic, :mod:`harness.protocols.whitening_peer`: the returned mapping then
            holds ``cholesky32`` and ``precision`` instead of ``covariance`` and
            ``whitening``).

    Returns:
        ``mean`` (D,), ``covariance`` (D, D) (sample covariance, ddof 1, projected onto
        the positive semi-definite matrices), ``whitening`` W (D, D) with
        ``W W^T = (covariance + epsilon I)^-1`` so that ``(f - mean) W`` has identity
        covariance up to the epsilon shrinkage, ``eigenvalues`` (D,) of the covariance
        (ascending), ``n``, ``epsilon``, ``rank`` (numerical rank of the covariance) and
        ``dims_below_epsilon`` (directions where epsilon dominates); all float64 or int64.

    Raises:
        ValueError: On fewer than 2 vectors, non-finite features, a negative epsilon, or a
            singular covariance with ``epsilon == 0``.
    """
    check_whitening("feature_stats", whitening)
    return _expand(_decompose_as(features, epsilon, whitening))


def cached_feature_stats(
    features: np.ndarray,
    epsilon: float,
    depends_on: Mapping[str, Any],
    store: ArrayStore,
    whitening: str = WHITENINGS[0],
) -> tuple[dict[str, np.ndarray], bool]:
    """:func:`feature_stats` through the statistics cache.

    The arrays depend on the caller's ``depends_on`` (split, covariance rule...) plus
    ``STATS_VERSION``, ``epsilon``, the number and dimension of the vectors and the
    features themselves (the cache keys them by their digest), so different features
    never share an entry. The cache stores the eigendecomposition (not the two D x D
    matrices derived from it), half the bytes.

    Args:
        features: (n, D) feature vectors.
        epsilon: Added to the covariance's diagonal.
        depends_on: JSON-serialisable description of where the features come from.
        store: The statistics cache: a case's
            :meth:`harness.protocols.case.CaseRun.cached_arrays`, which adds the model,
            weights and dataset to the key.
        whitening: As :func:`feature_stats` (keyed when not the default).

    Returns:
        The statistics (as :func:`feature_stats`) and whether they came from the cache.
    """
    x = np.asarray(features)
    payload = {
        **dict(depends_on),
        "kind": "feature_stats",
        "protocol_version": STATS_VERSION,
        "epsilon": float(epsilon),
        "shape": list(x.shape),
        "features": x,
    }
    check_whitening("feature_stats", whitening)
    if whitening != WHITENINGS[0]:
        payload["whitening"] = whitening
    arrays, hit = store(STATS_NAMESPACE, payload, lambda: _decompose_as(x, epsilon, whitening))
    return _expand(arrays), hit


def covariance_stats(
    case: CaseRun, config: CovarianceSettings
) -> tuple[dict[str, np.ndarray], bool]:
    """Mean and whitening of a case's ``config.cov_split`` features, through its array cache.

    Returns:
        The statistics (as :func:`feature_stats`) and whether they came from the cache.
    """
    features = case.features((config.cov_split,))[config.cov_split].features
    index = cov_indices(len(features), config)
    rule = {
        "split": config.cov_split,
        "cov_rule": [config.cov_images, config.cov_fraction, config.seed],
    }
    return cached_feature_stats(
        features[index], config.epsilon, rule, case.cached_arrays, config.whitening
    )


def whiten(features: np.ndarray, stats: Mapping[str, np.ndarray]) -> np.ndarray:
    """Whitened vectors ``(mean - f) W`` (ssl-invariances' sign convention).

    Args:
        features: (N, D) feature vectors.
        stats: From :func:`feature_stats` in the default arithmetic.

    Returns:
        float64 (N, D).
    """
    return _whitened(as_features("features", features, len(stats["mean"])), stats)


def _whitened(x: np.ndarray, stats: Mapping[str, np.ndarray]) -> np.ndarray:
    with threadpool_limits(limits=1):
        return (np.asarray(stats["mean"], np.float64) - x) @ np.asarray(
            stats["whitening"], np.float64
        )


def _row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.nan)


def similarity(
    clean: np.ndarray, transformed: np.ndarray, stats: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image whitened cosine similarity and Mahalanobis distance.

    Args:
        clean: (N, D) features of the clean images (or first views).
        transformed: (N, D) features of the transformed images (or second views), row i
            paired with ``clean[i]``.
        stats: From :func:`feature_stats`.

    Returns:
        ``cosine`` (N,): cosine between ``(mean - clean) W`` and ``(mean - transformed) W``,
        NaN where a whitened vector is zero; ``mahalanobis`` (N,):
        ``sqrt((c - t)^T (Sigma + epsilon I)^-1 (c - t))``. With the peers' statistics,
        their float32 arithmetic (:func:`~harness.protocols.whitening_peer.peer_similarity`).
    """
    dim = len(stats["mean"])
    c = as_features("features", clean, dim)
    t = as_features("features", transformed, dim)
    if c.shape != t.shape:
        raise ValueError(f"clean and transformed features differ in shape: {c.shape}, {t.shape}")
    if str(stats["arithmetic"]) == PEER_WHITENING:
        return peer_similarity(c, t, stats)
    a, b = _whitened(c, stats), _whitened(t, stats)
    return _row_cosine(a, b), np.linalg.norm(a - b, axis=1)


def centred_cosine(
    clean: np.ndarray, transformed: np.ndarray, stats: Mapping[str, np.ndarray]
) -> np.ndarray:
    mean = np.asarray(stats["mean"], dtype=np.float64)
    return _row_cosine(
        np.asarray(clean, np.float64) - mean, np.asarray(transformed, np.float64) - mean
    )


def nanmean(values: np.ndarray) -> float:
    """Mean over the finite entries (NaN when there are none)."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def nanstd(values: np.ndarray) -> float:
    """Standard deviation over the finite entries (NaN when there are none)."""
    finite = values[~np.isnan(values)]
    return float(finite.std()) if finite.size else float("nan")


def stats_details(stats: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The statistics' facts every invariance record carries."""
    return {
        "epsilon": float(stats["epsilon"]),
        "cov_n": int(stats["n"]),
        "feature_dim": len(stats["mean"]),
        "whitening": str(stats["arithmetic"]),
        "cov_rank": int(stats["rank"]),
        "cov_dims_below_epsilon": int(stats["dims_below_epsilon"]),
    } | ({"whitening_note": str(stats["whitening_note"])} if "whitening_note" in stats else {})
