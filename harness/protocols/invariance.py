"""Feature invariance: how much frozen features move under image transforms or across views.

Follows ssl-invariances' ``eval_synthetic_invariance.py`` and SSL_medicalimaging's
``invariances/`` (``shared/reference/peers.md`` sections 2.2 and 2.3):

* The feature mean ``mu`` and covariance ``Sigma`` are estimated on one split (``cov_split``,
  train by default) and ``epsilon = 1e-6`` is added to the diagonal of ``Sigma`` (SM).
* Similarity is the cosine between the whitened vectors ``(mu - f) W`` of a clean and a
  transformed image, where ``W W^T = (Sigma + epsilon I)^-1``; distance is the Mahalanobis
  distance ``sqrt((a - b)^T (Sigma + epsilon I)^-1 (a - b))``. Both are averaged over
  images with ``nanmean``.
* Synthetic invariance evaluates ``num_images`` images (100, as SM; SI used 1000 on
  ImageNet) of ``split`` under each named transform of :mod:`image_transforms`. Multi-view
  invariance compares pairs of different images that share a group id (same source
  image, series or patient), as SM's frontal/lateral and left/right-eye pairs.

Choices that differ from the peers, and why:

* ``W`` comes from an eigendecomposition of ``Sigma`` in float64 (eigenvalues clipped at 0,
  then ``W = V diag((lambda + epsilon)^-1/2)``) instead of SI/SM's float32
  ``cholesky(inv(Sigma))``. Any ``W`` with ``W W^T = (Sigma + epsilon I)^-1`` gives the same
  cosines and distances (``a W (b W)^T = a (Sigma + epsilon I)^-1 b^T``), so the measure is
  the peers'; the eigendecomposition does not fail or lose digits when ``Sigma`` is
  rank-deficient, which it is whenever there are fewer images than feature dimensions.
* Covariance images: all images of ``cov_split`` when it has at most ``cov_images`` (1000)
  of them; otherwise ``max(cov_images, ceil(cov_fraction * N))`` of them drawn **without**
  replacement (seeded). SM draws ``max(1000, 10%)`` with replacement, which only repeats
  rows and lowers the rank of ``Sigma``. ``cov_images=None`` always uses the whole split.
* The evaluated images are a seeded draw without replacement (SI's ``np.random.choice``
  draws with replacement, so some images counted twice).
* One magnitude per transform entry (SI sweeps k values of each transform and averages);
  the defaults are listed in :data:`image_transforms.DEFAULT_TRANSFORMS`.
* Both protocols report their own measure: ``details["primary_metric_override"]`` is
  ``"mean_cosine"``, the mean over transforms (synthetic) or pairs (multi-view).

Caveat (also the peers'): with ``n`` covariance images and ``D`` feature dimensions,
``D - n + 1`` directions have zero variance and are scaled by ``epsilon^-1/2`` (1000) in the
whitened space, so features that move off the covariance images' subspace dominate the
cosine. ``details`` records ``cov_dims_below_epsilon`` and the un-whitened
``centred_cosine`` so a reader can see when this happens.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from harness.arraycache import cached_arrays
from harness.protocols.base import ProtocolResult
from harness.protocols.image_transforms import DEFAULT_TRANSFORMS, get_transform, transform_tag

VERSION = 1

_PROFILES = ("smoke", "demo", "paper")
STATS_NAMESPACE = "invariance-stats"
PAIRING_RULES = ("same_group",)
PRIMARY = "mean_cosine"


def _check_profile(profile: str) -> None:
    if profile not in _PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {_PROFILES}")


def _check_cov_settings(owner: str, cov_images: int | None, cov_fraction: float) -> None:
    if cov_images is not None and cov_images < 2:
        raise ValueError(f"{owner}.cov_images must be >= 2 or None, got {cov_images}")
    if not 0 <= cov_fraction <= 1:
        raise ValueError(f"{owner}.cov_fraction must lie in [0, 1], got {cov_fraction}")


def _check_epsilon(owner: str, epsilon: float) -> None:
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"{owner}.epsilon must be finite and >= 0, got {epsilon}")


@dataclass(frozen=True)
class InvarianceConfig:
    """Settings of the synthetic-transform invariance protocol.

    Attributes:
        transforms: ``(name, magnitude)`` pairs from :data:`image_transforms.TRANSFORMS`.
        num_images: Images of ``split`` evaluated (all of them when the split is smaller).
        cov_images: Covariance images: the whole ``cov_split`` up to this many, else
            ``max(cov_images, ceil(cov_fraction * N))`` drawn without replacement; None
            always uses the whole split.
        cov_fraction: See ``cov_images``.
        epsilon: Added to the diagonal of the covariance before inverting it.
        split: The split whose images are transformed and evaluated.
        cov_split: The split the feature mean and covariance are estimated on.
        seed: Seed of the image and covariance draws.
    """

    transforms: tuple[tuple[str, float], ...] = DEFAULT_TRANSFORMS
    num_images: int = 100
    cov_images: int | None = 1000
    cov_fraction: float = 0.1
    epsilon: float = 1e-6
    split: str = "test"
    cov_split: str = "train"
    seed: int = 0

    def __post_init__(self) -> None:
        transforms = tuple((str(name), float(magnitude)) for name, magnitude in self.transforms)
        if not transforms:
            raise ValueError("InvarianceConfig.transforms must not be empty")
        probe = np.zeros((8, 8, 3), dtype=np.uint8)
        tags = []
        for name, magnitude in transforms:
            try:
                get_transform(name)(probe, magnitude)
            except (KeyError, ValueError) as exc:
                raise ValueError(f"InvarianceConfig.transforms: {exc}") from exc
            tags.append(transform_tag(name, magnitude))
        duplicates = sorted({tag for tag in tags if tags.count(tag) > 1})
        if duplicates:
            raise ValueError(f"InvarianceConfig.transforms has duplicates: {duplicates}")
        object.__setattr__(self, "transforms", transforms)
        if self.num_images < 1:
            raise ValueError(f"InvarianceConfig.num_images must be >= 1, got {self.num_images}")
        _check_cov_settings("InvarianceConfig", self.cov_images, self.cov_fraction)
        _check_epsilon("InvarianceConfig", self.epsilon)

    @classmethod
    def for_profile(cls, profile: str) -> InvarianceConfig:
        """The configuration of a run profile.

        ``smoke`` evaluates 16 images and ``demo`` 32 (each image costs one forward pass
        per transform, the demo's budget on a 2-core CPU); ``paper`` evaluates SM's 100.
        All profiles use every default transform.

        Args:
            profile: "smoke", "demo" or "paper".

        Returns:
            The profile's configuration.

        Raises:
            ValueError: On an unknown profile.
        """
        _check_profile(profile)
        return cls(num_images={"smoke": 16, "demo": 32}.get(profile, 100))

    def tags(self) -> list[str]:
        """The transforms' tags, in order (see :func:`image_transforms.transform_tag`).

        Returns:
            One tag per transform.
        """
        return [transform_tag(name, magnitude) for name, magnitude in self.transforms]

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-friendly dict (transforms as ``[name, magnitude]`` lists).

        Returns:
            Field name -> value.
        """
        out = asdict(self)
        out["transforms"] = [[name, magnitude] for name, magnitude in self.transforms]
        return out


@dataclass(frozen=True)
class MultiviewConfig:
    """Settings of the multi-view invariance protocol.

    Attributes:
        num_pairs: Pairs of images sharing a group compared (all pairs when fewer exist);
            SM compares 100.
        cov_images: As :attr:`InvarianceConfig.cov_images`.
        cov_fraction: As :attr:`InvarianceConfig.cov_fraction`.
        epsilon: Added to the diagonal of the covariance before inverting it.
        split: The split whose image pairs are compared.
        cov_split: The split the feature mean and covariance are estimated on.
        seed: Seed of the pair, baseline and covariance draws.
        pairing_rule: How pairs are formed; only ``same_group`` is supported.
    """

    num_pairs: int = 100
    cov_images: int | None = 1000
    cov_fraction: float = 0.1
    epsilon: float = 1e-6
    split: str = "test"
    cov_split: str = "train"
    seed: int = 0
    pairing_rule: str = "same_group"

    def __post_init__(self) -> None:
        if self.num_pairs < 1:
            raise ValueError(f"MultiviewConfig.num_pairs must be >= 1, got {self.num_pairs}")
        _check_cov_settings("MultiviewConfig", self.cov_images, self.cov_fraction)
        _check_epsilon("MultiviewConfig", self.epsilon)
        if self.pairing_rule not in PAIRING_RULES:
            raise ValueError(
                f"MultiviewConfig.pairing_rule {self.pairing_rule!r} is not supported; "
                f"known: {', '.join(PAIRING_RULES)}"
            )

    @classmethod
    def for_profile(cls, profile: str, pairing_rule: str = "same_group") -> MultiviewConfig:
        """The configuration of a run profile (every profile compares SM's 100 pairs).

        Args:
            profile: "smoke", "demo" or "paper".
            pairing_rule: The dataset's pairing rule (see :func:`pairing_rule`).

        Returns:
            The profile's configuration.

        Raises:
            ValueError: On an unknown profile or pairing rule.
        """
        _check_profile(profile)
        return cls(pairing_rule=pairing_rule)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-friendly dict.

        Returns:
            Field name -> value.
        """
        return asdict(self)


# --------------------------------------------------------------------------- sampling


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


def cov_indices(n_total: int, config: InvarianceConfig | MultiviewConfig) -> np.ndarray:
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


def pairs_from_groups(groups: np.ndarray, max_pairs: int, seed: int) -> np.ndarray:
    """Pairs of different images that share a group id, seeded.

    Every unordered pair ``(i, j)``, ``i < j``, with ``groups[i] == groups[j]`` is a
    candidate. All candidates are returned when there are at most ``max_pairs`` of them,
    otherwise ``max_pairs`` distinct ones drawn uniformly without replacement (without
    listing all candidates, so large groups stay cheap).

    Args:
        groups: (N,) group ids (any sortable dtype).
        max_pairs: Most pairs returned, >= 1.
        seed: Seed of the draw.

    Returns:
        int64 array (P, 2) of image indices, ``pairs[:, 0] < pairs[:, 1]``, ordered by
        group then position.

    Raises:
        ValueError: When no two images share a group, or on malformed input.
    """
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError(f"groups must be 1-D (N,), got shape {groups.shape}")
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    if len(groups) == 0:
        raise ValueError("groups is empty: no image pairs can be formed")
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    per_group = (counts.astype(np.int64) * (counts - 1)) // 2
    total = int(per_group.sum())
    if total == 0:
        raise ValueError(
            f"no two of the {len(groups)} images share a group id ({len(counts)} groups): "
            "multi-view pairs need groups with at least 2 images"
        )
    if total <= max_pairs:
        flat = np.arange(total, dtype=np.int64)
    else:
        rng = np.random.default_rng(seed)
        flat = np.sort(rng.choice(total, size=max_pairs, replace=False)).astype(np.int64)
    ends = np.cumsum(per_group)
    group = np.searchsorted(ends, flat, side="right")
    local = flat - (ends[group] - per_group[group])
    # Pair number k within a group -> (a, b), a < b, numbered by b: k = b(b-1)/2 + a.
    b = np.floor((1 + np.sqrt(1 + 8 * local.astype(np.float64))) / 2).astype(np.int64)
    b -= (b * (b - 1)) // 2 > local
    b += ((b + 1) * b) // 2 <= local
    a = local - (b * (b - 1)) // 2
    first = order[starts[group] + a]
    second = order[starts[group] + b]
    # The stable sort keeps positions ascending within a group, so first < second.
    return np.stack([first, second], axis=1).astype(np.int64)


def pairs_across_groups(groups: np.ndarray, n_pairs: int, seed: int) -> np.ndarray:
    """Random pairs of images from different groups (the chance baseline), seeded.

    Each ordered pair of images with different group ids is equally likely; pairs are
    drawn with replacement.

    Args:
        groups: (N,) group ids.
        n_pairs: Number of pairs.
        seed: Seed of the draw.

    Returns:
        int64 array (n_pairs, 2); empty (0, 2) when all images share one group.
    """
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError(f"groups must be 1-D (N,), got shape {groups.shape}")
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    n = len(groups)
    if len(counts) < 2 or n_pairs < 1:
        return np.zeros((0, 2), dtype=np.int64)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    others = n - counts[inverse]  # images outside each image's group
    rng = np.random.default_rng([seed, 1])
    # First image weighted by how many partners it has, second uniform among them.
    first = rng.choice(n, size=n_pairs, p=others / others.sum())
    g = inverse[first]
    r = (rng.random(n_pairs) * others[first]).astype(np.int64)
    # Position r in the group-sorted list with the first image's group cut out.
    position = np.where(r < starts[g], r, r + counts[g])
    second = order[position]
    return np.stack([first, second], axis=1).astype(np.int64)


def pairing_rule(pairing: Mapping[str, Any], source: str) -> str:
    """The multi-view pairing rule a dataset card names (``same_group`` when it names none).

    Args:
        pairing: The card's ``pairing`` mapping.
        source: The card file or name, for error messages.

    Returns:
        The rule name.

    Raises:
        ValueError: On an unknown rule, naming the card.
    """
    rule = pairing.get("rule", "same_group") if pairing else "same_group"
    if rule not in PAIRING_RULES:
        raise ValueError(
            f"{source}: pairing rule {rule!r} is not supported by the multiview protocol; "
            f"known: {', '.join(PAIRING_RULES)}"
        )
    return str(rule)


# --------------------------------------------------------------------------- statistics


def _as_features(name: str, features: np.ndarray, dim: int | None = None) -> np.ndarray:
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


def _decompose(features: np.ndarray, epsilon: float) -> dict[str, np.ndarray]:
    """Mean and eigendecomposition of the sample covariance (ddof 1), float64."""
    x = _as_features("covariance features", features)
    n, dim = x.shape
    if n < 2:
        raise ValueError(f"the covariance needs at least 2 feature vectors, got {n}")
    _check_epsilon("feature_stats", epsilon)
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


def _expand(decomposed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    eigenvalues = np.asarray(decomposed["eigenvalues"], dtype=np.float64)
    eigenvectors = np.asarray(decomposed["eigenvectors"], dtype=np.float64)
    epsilon = float(decomposed["epsilon"])
    with threadpool_limits(limits=1):
        whitening = eigenvectors / np.sqrt(eigenvalues + epsilon)
        covariance = (eigenvectors * eigenvalues) @ eigenvectors.T
    tolerance = eigenvalues.max(initial=0.0) * len(eigenvalues) * np.finfo(np.float64).eps
    return {
        "mean": np.asarray(decomposed["mean"], dtype=np.float64),
        "covariance": covariance,
        "whitening": whitening,
        "eigenvalues": eigenvalues,
        "n": np.asarray(decomposed["n"]),
        "epsilon": np.asarray(epsilon),
        "rank": np.array(int(np.sum(eigenvalues > tolerance))),
        "dims_below_epsilon": np.array(int(np.sum(eigenvalues <= epsilon))),
    }


def feature_stats(features: np.ndarray, epsilon: float) -> dict[str, np.ndarray]:
    """Feature mean, covariance and whitening matrix.

    Args:
        features: (n, D) feature vectors the statistics are estimated from (n >= 2).
        epsilon: Added to the covariance's diagonal (>= 0; > 0 when n <= D).

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
    return _expand(_decompose(features, epsilon))


def _digest(array: np.ndarray) -> str:
    digest = hashlib.sha256(f"{array.shape}|{array.dtype}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def cached_feature_stats(
    features: np.ndarray, epsilon: float, key_payload: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], bool]:
    """:func:`feature_stats` through the array cache.

    The key is the caller's payload (model, weights id, dataset and version, split...)
    plus this module's ``VERSION``, ``epsilon``, the number and dimension of the vectors
    and the sha256 of the features themselves, so different features never share an
    entry. The cache stores the eigendecomposition (not the two D x D matrices derived
    from it), half the bytes.

    Args:
        features: (n, D) feature vectors.
        epsilon: Added to the covariance's diagonal.
        key_payload: JSON-serialisable description of where the features come from.

    Returns:
        The statistics (as :func:`feature_stats`) and whether they came from the cache.
    """
    x = np.asarray(features)
    payload = {
        **dict(key_payload),
        "kind": "feature_stats",
        "protocol_version": VERSION,
        "epsilon": float(epsilon),
        "shape": list(x.shape),
        "features_sha256": _digest(x),
    }
    arrays, hit = cached_arrays(STATS_NAMESPACE, payload, lambda: _decompose(x, epsilon))
    return _expand(arrays), hit


# --------------------------------------------------------------------------- similarity


def whiten(features: np.ndarray, stats: Mapping[str, np.ndarray]) -> np.ndarray:
    """Whitened vectors ``(mean - f) W`` (ssl-invariances' sign convention).

    Args:
        features: (N, D) feature vectors.
        stats: From :func:`feature_stats`.

    Returns:
        float64 (N, D).
    """
    mean = np.asarray(stats["mean"], dtype=np.float64)
    x = _as_features("features", features, len(mean))
    with threadpool_limits(limits=1):
        return (mean - x) @ np.asarray(stats["whitening"], dtype=np.float64)


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
        ``sqrt((c - t)^T (Sigma + epsilon I)^-1 (c - t))``.
    """
    a = whiten(clean, stats)
    b = whiten(transformed, stats)
    if a.shape != b.shape:
        raise ValueError(f"clean and transformed features differ in shape: {a.shape}, {b.shape}")
    return _row_cosine(a, b), np.linalg.norm(a - b, axis=1)


def _centred_cosine(
    clean: np.ndarray, transformed: np.ndarray, stats: Mapping[str, np.ndarray]
) -> np.ndarray:
    mean = np.asarray(stats["mean"], dtype=np.float64)
    return _row_cosine(
        np.asarray(clean, np.float64) - mean, np.asarray(transformed, np.float64) - mean
    )


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _nanstd(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.std()) if finite.size else float("nan")


def _stats_details(stats: Mapping[str, np.ndarray]) -> dict[str, Any]:
    return {
        "epsilon": float(stats["epsilon"]),
        "cov_n": int(stats["n"]),
        "feature_dim": len(stats["mean"]),
        "cov_rank": int(stats["rank"]),
        "cov_dims_below_epsilon": int(stats["dims_below_epsilon"]),
    }


# --------------------------------------------------------------------------- protocols


def run_synthetic(
    clean_features: np.ndarray,
    transformed: Mapping[str, np.ndarray],
    stats: Mapping[str, np.ndarray],
    config: InvarianceConfig,
    skipped: Mapping[str, str] | None = None,
) -> ProtocolResult:
    """Score invariance to each transform: clean vs transformed features of the same images.

    Args:
        clean_features: (N, D) features of the clean images.
        transformed: Transform tag -> (N, D) features of the transformed images, row i
            the transform of clean image i.
        stats: Mean / whitening from :func:`feature_stats` (``config.cov_split``).
        config: The protocol's settings (recorded, not re-applied here).
        skipped: Transform tag -> reason, for transforms the caller left out (e.g. colour
            transforms on grayscale images); recorded in ``details``.

    Returns:
        ``metrics``: ``cos_<tag>`` and ``mahal_<tag>`` per transform (nanmean over images),
        ``mean_cosine`` (the mean of the per-transform cosines; the primary measure) and
        ``mean_mahalanobis``. ``details``: ``primary_metric_override``, ``n_images``,
        ``transforms`` (tags evaluated), ``skipped_transforms``, ``cosine_std``,
        ``centred_cosine`` (un-whitened, per tag), ``n_nan`` and the statistics' ``epsilon``,
        ``cov_n``, ``feature_dim``, ``cov_rank``, ``cov_dims_below_epsilon``.

    Raises:
        ValueError: When no transform is given or the shapes disagree.
    """
    if not transformed:
        raise ValueError("run_synthetic: no transformed features given")
    dim = len(stats["mean"])
    clean = _as_features("clean images", clean_features, dim)
    metrics: dict[str, float] = {}
    cosine_std: dict[str, float] = {}
    centred: dict[str, float] = {}
    n_nan: dict[str, int] = {}
    for tag, features in transformed.items():
        moved = _as_features(f"transform {tag}", features, dim)
        if moved.shape != clean.shape:
            raise ValueError(
                f"transform {tag}: {moved.shape[0]} feature rows, but {clean.shape[0]} clean ones"
            )
        cosine, distance = similarity(clean, moved, stats)
        metrics[f"cos_{tag}"] = _nanmean(cosine)
        metrics[f"mahal_{tag}"] = _nanmean(distance)
        cosine_std[tag] = _nanstd(cosine)
        centred[tag] = _nanmean(_centred_cosine(clean, moved, stats))
        n_nan[tag] = int(np.isnan(cosine).sum())
    tags = list(transformed)
    metrics[PRIMARY] = _nanmean(np.array([metrics[f"cos_{tag}"] for tag in tags]))
    metrics["mean_mahalanobis"] = _nanmean(np.array([metrics[f"mahal_{tag}"] for tag in tags]))
    return ProtocolResult(
        metrics=metrics,
        details={
            "primary_metric_override": PRIMARY,
            "n_images": int(clean.shape[0]),
            "transforms": tags,
            "skipped_transforms": dict(skipped or {}),
            "cosine_std": cosine_std,
            "centred_cosine": centred,
            "n_nan": n_nan,
            "split": config.split,
            "cov_split": config.cov_split,
            **_stats_details(stats),
        },
    )


def run_multiview(
    features: np.ndarray,
    pairs: np.ndarray,
    stats: Mapping[str, np.ndarray],
    config: MultiviewConfig,
    groups: np.ndarray | None = None,
) -> ProtocolResult:
    """Score how close the features of paired views (same group) are, against chance.

    Args:
        features: (N, D) features of the split's images.
        pairs: (P, 2) indices of paired images (see :func:`pairs_from_groups`).
        stats: Mean / whitening from :func:`feature_stats` (``config.cov_split``).
        config: Supplies the seed of the baseline draw.
        groups: (N,) group ids; when given, ``details`` carries the baseline of as many
            random pairs of images from different groups.

    Returns:
        ``metrics``: ``mean_cosine`` (primary), ``mean_mahalanobis`` and ``n_pairs``.
        ``details``: ``primary_metric_override``, ``cosine_std``, ``centred_cosine``,
        ``n_nan``, ``baseline_cosine``, ``baseline_mahalanobis``, ``n_baseline_pairs``,
        ``cosine_gap`` (pairs minus baseline; NaN without a baseline) and the statistics'
        ``epsilon``, ``cov_n``, ``feature_dim``, ``cov_rank``, ``cov_dims_below_epsilon``.

    Raises:
        ValueError: On malformed pairs or shapes.
    """
    x = _as_features("features", features, len(stats["mean"]))
    pairs = _check_pairs("pairs", pairs, len(x))
    if len(pairs) == 0:
        raise ValueError("run_multiview: no pairs given")
    cosine, distance = similarity(x[pairs[:, 0]], x[pairs[:, 1]], stats)
    mean_cosine = _nanmean(cosine)
    details: dict[str, Any] = {
        "primary_metric_override": PRIMARY,
        "pairing_rule": config.pairing_rule,
        "cosine_std": _nanstd(cosine),
        "centred_cosine": _nanmean(_centred_cosine(x[pairs[:, 0]], x[pairs[:, 1]], stats)),
        "n_nan": int(np.isnan(cosine).sum()),
        "baseline_cosine": float("nan"),
        "baseline_mahalanobis": float("nan"),
        "n_baseline_pairs": 0,
        "cosine_gap": float("nan"),
        "split": config.split,
        "cov_split": config.cov_split,
        **_stats_details(stats),
    }
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (len(x),):
            raise ValueError(f"groups must have shape ({len(x)},), got {groups.shape}")
        baseline = pairs_across_groups(groups, len(pairs), config.seed)
        details["n_baseline_pairs"] = len(baseline)
        if len(baseline):
            base_cosine, base_distance = similarity(x[baseline[:, 0]], x[baseline[:, 1]], stats)
            details["baseline_cosine"] = _nanmean(base_cosine)
            details["baseline_mahalanobis"] = _nanmean(base_distance)
            details["cosine_gap"] = mean_cosine - details["baseline_cosine"]
        else:
            details["baseline_note"] = "all images share one group: no baseline pairs"
    return ProtocolResult(
        metrics={
            PRIMARY: mean_cosine,
            "mean_mahalanobis": _nanmean(distance),
            "n_pairs": float(len(pairs)),
        },
        details=details,
    )


def _check_pairs(name: str, pairs: np.ndarray, n: int) -> np.ndarray:
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"{name} must have shape (P, 2), got {pairs.shape}")
    if pairs.size and not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError(f"{name} must hold integer indices, got {pairs.dtype}")
    pairs = pairs.astype(np.int64)
    if pairs.size and (pairs.min() < 0 or pairs.max() >= n):
        raise ValueError(f"{name} index out of range [0, {n})")
    if np.any(pairs[:, 0] == pairs[:, 1]):
        raise ValueError(f"{name} pair an image with itself")
    return pairs
