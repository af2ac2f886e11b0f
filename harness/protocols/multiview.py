"""Multi-view invariance: how close frozen features of paired views are, against chance.

Follows the SSL_medicalimaging study's multi-view invariance (frontal/lateral chest
X-rays, left/right eyes): pairs of different images that share a group id (same source
image, series or patient) are compared with the whitened cosine and the Mahalanobis
distance of :mod:`harness.protocols.whitening`; a baseline of as many random pairs from
different groups shows what chance gives. Pairs are a seeded draw without replacement.
The dataset card's ``pairing.rule`` picks which images pair (:mod:`harness.protocols.pairing`):
``same_group``, ``frontal_lateral`` (a study's frontal and lateral chest X-ray) or
``left_right_equal_grade`` (a patient's two eyes with one grade).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.config.profiles import check_profile
from harness.protocols.base import ProtocolResult
from harness.protocols.pairing import (
    PAIRING_RULES,
    VIEW_RULES,
    PairingUnavailable,
    draw_pairs,
)
from harness.protocols.registry import CaseNotApplicable, register_protocol
from harness.protocols.whitening import (
    as_features,
    centred_cosine,
    check_cov_settings,
    check_epsilon,
    covariance_stats,
    nanmean,
    nanstd,
    similarity,
    stats_details,
)

if TYPE_CHECKING:
    from harness.data.npz import SplitData
    from harness.protocols.case import CaseRun

VERSION = 1
PRIMARY = "mean_cosine"


@dataclass(frozen=True)
class MultiviewConfig:
    """Settings of the multi-view invariance protocol.

    Attributes:
        num_pairs: Pairs of views compared (all pairs when fewer exist);
            SSL_medicalimaging compares 100.
        cov_images: As :attr:`InvarianceConfig.cov_images`.
        cov_fraction: As :attr:`InvarianceConfig.cov_fraction`.
        epsilon: Added to the diagonal of the covariance before inverting it.
        split: The split whose image pairs are compared.
        cov_split: The split the feature mean and covariance are estimated on.
        seed: Seed of the pair, baseline and covariance draws.
        pairing_rule: How pairs are formed: ``same_group``, ``frontal_lateral`` or
            ``left_right_equal_grade`` (see :mod:`harness.protocols.pairing`).
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
        check_cov_settings("MultiviewConfig", self.cov_images, self.cov_fraction)
        check_epsilon("MultiviewConfig", self.epsilon)
        if self.pairing_rule not in PAIRING_RULES:
            raise ValueError(
                f"MultiviewConfig.pairing_rule {self.pairing_rule!r} is not supported; "
                f"known: {', '.join(PAIRING_RULES)}"
            )

    @classmethod
    def for_profile(cls, profile: str, pairing_rule: str = "same_group") -> MultiviewConfig:
        """The configuration of a run profile (every profile compares SSL_medicalimaging's 100 pairs).

        Args:
            profile: "smoke", "demo" or "paper".
            pairing_rule: The dataset's pairing rule (see :func:`pairing_rule`).

        Returns:
            The profile's configuration.

        Raises:
            ValueError: On an unknown profile or pairing rule.
        """
        check_profile(profile)
        return cls(pairing_rule=pairing_rule)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-friendly dict.

        Returns:
            Field name -> value.
        """
        return asdict(self)


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
        ``details``: ``cosine_std``, ``centred_cosine``,
        ``n_nan``, ``baseline_cosine``, ``baseline_mahalanobis``, ``n_baseline_pairs``,
        ``cosine_gap`` (pairs minus baseline; NaN without a baseline) and the statistics'
        ``epsilon``, ``cov_n``, ``feature_dim``, ``cov_rank``, ``cov_dims_below_epsilon``.

    Raises:
        ValueError: On malformed pairs or shapes.
    """
    x = as_features("features", features, len(stats["mean"]))
    pairs = _check_pairs("pairs", pairs, len(x))
    if len(pairs) == 0:
        raise ValueError("run_multiview: no pairs given")
    cosine, distance = similarity(x[pairs[:, 0]], x[pairs[:, 1]], stats)
    mean_cosine = nanmean(cosine)
    details: dict[str, Any] = {
        "pairing_rule": config.pairing_rule,
        "cosine_std": nanstd(cosine),
        "centred_cosine": nanmean(centred_cosine(x[pairs[:, 0]], x[pairs[:, 1]], stats)),
        "n_nan": int(np.isnan(cosine).sum()),
        "baseline_cosine": float("nan"),
        "baseline_mahalanobis": float("nan"),
        "n_baseline_pairs": 0,
        "cosine_gap": float("nan"),
        "split": config.split,
        "cov_split": config.cov_split,
        **stats_details(stats),
    }
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (len(x),):
            raise ValueError(f"groups must have shape ({len(x)},), got {groups.shape}")
        baseline = pairs_across_groups(groups, len(pairs), config.seed)
        details["n_baseline_pairs"] = len(baseline)
        if len(baseline):
            base_cosine, base_distance = similarity(x[baseline[:, 0]], x[baseline[:, 1]], stats)
            details["baseline_cosine"] = nanmean(base_cosine)
            details["baseline_mahalanobis"] = nanmean(base_distance)
            details["cosine_gap"] = mean_cosine - details["baseline_cosine"]
        else:
            details["baseline_note"] = "all images share one group: no baseline pairs"
    return ProtocolResult(
        metrics={
            PRIMARY: mean_cosine,
            "mean_mahalanobis": nanmean(distance),
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


def _configure(case: CaseRun) -> MultiviewConfig:
    card = case.case.dataset
    rule = pairing_rule(card.pairing, card.source_file or card.name)
    return MultiviewConfig.for_profile(case.profile.name, pairing_rule=rule)


@register_protocol(
    "multiview",
    version=VERSION,
    marker="multi-view (same patient/study) feature-invariance benchmark cases",
    config=MultiviewConfig,
    primary_metric=PRIMARY,
    display="descriptive",
    configure=_configure,
)
def run_case(case: CaseRun, config: MultiviewConfig) -> ProtocolResult:
    """One multi-view case: pairs of ``config.split`` images by the card's pairing rule.

    Raises:
        CaseNotApplicable: When the dataset lacks what the rule needs (groups, views) or
            no pair can be formed.
    """
    data = case.splits()[config.split]
    pairs = split_pairs(data, config)
    groups = data.groups if data.groups is not None else data.studies
    features = case.features(tuple(dict.fromkeys((config.split, config.cov_split))))
    stats, stats_hit = covariance_stats(case, config)
    result = run_multiview(features[config.split].features, pairs, stats, config, groups=groups)
    result.details["stats_cache"] = "hit" if stats_hit else "miss"
    return result


def split_pairs(data: SplitData, config: MultiviewConfig) -> np.ndarray:
    """The pairs of one split that ``config.pairing_rule`` forms, at most ``config.num_pairs``.

    Raises:
        CaseNotApplicable: When the split lacks what the rule needs or gives no pair.
    """
    if config.pairing_rule == "same_group":
        if data.groups is None:
            raise CaseNotApplicable("dataset has no pairing groups")
        return pairs_from_groups(data.groups, config.num_pairs, config.seed)
    try:
        candidates = VIEW_RULES[config.pairing_rule](data)
        return draw_pairs(candidates, config.num_pairs, config.seed)
    except PairingUnavailable as exc:
        raise CaseNotApplicable(str(exc)) from exc
    except ValueError as exc:
        raise CaseNotApplicable(f"pairing rule {config.pairing_rule!r}: {exc}") from exc
