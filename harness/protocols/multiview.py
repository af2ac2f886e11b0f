"""Multi-view invariance: how close frozen features of paired views are, against chance.

Follows the SSL_medicalimaging study's multi-view invariance (frontal/lateral chest
X-rays, left/right eyes): pairs of different images that share a group id (same source
image, series or patient) are compared with the whitened cosine and the Mahalanobis
distance of :mod:`harness.protocols.whitening`; a baseline of as many random pairs from
different groups shows what chance gives. Pairs are a seeded draw without replacement.
The dataset card's ``pairing.rule`` picks which images pair (:mod:`harness.protocols.pairing`):
``same_group``, ``frontal_lateral`` (a study's frontal and lateral chest X-ray) or
``left_right_equal_grade`` (a patient's two eyes with one grade).

Two settings, inert at their defaults, let a preset follow a peer
(:mod:`harness.protocols.multiview_presets`): ``pool_splits`` forms the pairs and estimates
the mean and covariance on the named splits concatenated (the peers'
``ConcatDataset([train, test])``) instead of ``split`` and ``cov_split``, and
``sampling="legacy"`` draws as SSL_medicalimaging does: covariance rows with NumPy's legacy
generator (with replacement) and ``num_pairs`` pairs with replacement through torch's
``DataLoader(shuffle=True)`` (:func:`harness.protocols.pairing.legacy_draws`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.config.profiles import check_profile
from harness.protocols.base import ProtocolResult, without_defaults
from harness.protocols.batch_statistics import check_batchnorm_mode, multiview_batch_statistics
from harness.protocols.pairing import (
    PAIRING_RULES,
    VIEW_RULES,
    PairingUnavailable,
    draw_pairs,
    legacy_draws,
    pairs_across_groups,
    pairs_from_groups,
    pooled_split,
)
from harness.protocols.registry import CaseNotApplicable, register_protocol
from harness.protocols.whitening import (
    as_features,
    cached_feature_stats,
    centred_cosine,
    check_cov_settings,
    check_epsilon,
    cov_indices,
    covariance_stats,
    nanmean,
    nanstd,
    similarity,
    stats_details,
)
from harness.protocols.whitening_peer import WHITENINGS, check_whitening

if TYPE_CHECKING:
    from harness.data.npz import SplitData
    from harness.protocols.case import CaseRun

VERSION = 1
PRIMARY = "mean_cosine"
SAMPLINGS = ("medxfer", "legacy")


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
        pool_splits: When not empty, pairs, mean and covariance all come from these
            splits concatenated in this order (``split`` and ``cov_split`` are then unused).
        sampling: ``medxfer`` (pairs and covariance images drawn without replacement) or
            ``legacy`` (SSL_medicalimaging's draws with replacement, NumPy's legacy
            generator for the covariance and torch's ``DataLoader`` shuffle for the pairs).
        batchnorm: ``eval`` (the cached features) or ``batch-statistics`` (the peer's
            training-mode batch norm: each view in a batch of its own, the covariance
            images in its loader's batches of 256; :mod:`harness.protocols.batch_statistics`).
            Needs ``pool_splits`` or legacy sampling.
        whitening: ``float64-eigh`` (medxfer) or ``float32-cholesky`` (the peers'
            arithmetic; :mod:`harness.protocols.whitening_peer`).
    """

    num_pairs: int = 100
    cov_images: int | None = 1000
    cov_fraction: float = 0.1
    epsilon: float = 1e-6
    split: str = "test"
    cov_split: str = "train"
    seed: int = 0
    pairing_rule: str = "same_group"
    pool_splits: tuple[str, ...] = ()
    sampling: str = "medxfer"
    batchnorm: str = "eval"
    whitening: str = WHITENINGS[0]

    def __post_init__(self) -> None:
        if self.num_pairs < 1:
            raise ValueError(f"MultiviewConfig.num_pairs must be >= 1, got {self.num_pairs}")
        check_batchnorm_mode("MultiviewConfig", self.batchnorm)
        check_whitening("MultiviewConfig", self.whitening)
        if self.batchnorm != "eval" and not self.pool_splits and self.sampling == "medxfer":
            raise ValueError(
                "MultiviewConfig.batchnorm='batch-statistics' needs pool_splits or legacy "
                "sampling (the peer's procedure)"
            )
        check_cov_settings("MultiviewConfig", self.cov_images, self.cov_fraction)
        check_epsilon("MultiviewConfig", self.epsilon)
        if self.pairing_rule not in PAIRING_RULES:
            raise ValueError(
                f"MultiviewConfig.pairing_rule {self.pairing_rule!r} is not supported; "
                f"known: {', '.join(PAIRING_RULES)}"
            )
        if self.sampling not in SAMPLINGS:
            raise ValueError(
                f"MultiviewConfig.sampling {self.sampling!r} is not supported; "
                f"known: {', '.join(SAMPLINGS)}"
            )
        pool = tuple(str(name) for name in self.pool_splits)
        if len(set(pool)) != len(pool):
            raise ValueError(f"MultiviewConfig.pool_splits has duplicates: {pool}")
        object.__setattr__(self, "pool_splits", pool)

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
            Field name -> value; ``batchnorm`` and ``whitening`` only when not at their
            defaults, so the records written before they existed keep their case keys.
        """
        out = asdict(self)
        out["pool_splits"] = list(self.pool_splits)
        return without_defaults(out, {"batchnorm": "eval", "whitening": WHITENINGS[0]})


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
    if config.pool_splits or config.sampling != "medxfer":
        return _run_pooled(case, config)
    data = case.splits()[config.split]
    pairs = split_pairs(data, config)
    groups = data.groups if data.groups is not None else data.studies
    features = case.features(tuple(dict.fromkeys((config.split, config.cov_split))))
    stats, stats_hit = covariance_stats(case, config)
    result = run_multiview(features[config.split].features, pairs, stats, config, groups=groups)
    result.details["stats_cache"] = "hit" if stats_hit else "miss"
    return result


def _run_pooled(case: CaseRun, config: MultiviewConfig) -> ProtocolResult:
    """A case under a peer's pooling and draws (``pool_splits`` / ``sampling="legacy"``)."""
    names = config.pool_splits or (config.split,)
    cov_names = config.pool_splits or (config.cov_split,)
    try:
        data = pooled_split(case.splits(), names)
    except PairingUnavailable as exc:
        raise CaseNotApplicable(str(exc)) from exc
    batch_statistics = config.batchnorm == "batch-statistics"
    if batch_statistics:
        n_cov = sum(len(case.splits()[name].labels) for name in cov_names)
    else:
        per_split = case.features(tuple(dict.fromkeys((*names, *cov_names))))
        features = np.concatenate([per_split[name].features for name in names])
        cov_features = np.concatenate([per_split[name].features for name in cov_names])
        n_cov = len(cov_features)
    if config.sampling == "legacy":
        candidates = candidate_pairs(data, config)
        cov_rows, picks = legacy_draws(
            n_cov,
            len(candidates),
            config.num_pairs,
            config.cov_images,
            config.cov_fraction,
            config.seed,
        )
        pairs = candidates[picks]
    else:
        pairs = split_pairs(data, config)
        cov_rows = cov_indices(n_cov, config)
    rule = {
        "split": "+".join(cov_names),
        "cov_rule": [config.sampling, config.cov_images, config.cov_fraction, config.seed],
    }
    groups = data.groups if data.groups is not None else data.studies
    if batch_statistics:
        features, pairs, cov_features = multiview_batch_statistics(
            case, config, tuple(names), pairs, tuple(cov_names)
        )
        cov_rows = np.arange(len(cov_features))
        rule["batchnorm"] = config.batchnorm
        groups = None  # the different-group baseline would need every image alone
    stats, stats_hit = cached_feature_stats(
        cov_features[cov_rows], config.epsilon, rule, case.cached_arrays, config.whitening
    )
    result = run_multiview(features, pairs, stats, config, groups=groups)
    result.details["stats_cache"] = "hit" if stats_hit else "miss"
    result.details["pool_splits"] = list(names)
    result.details["sampling"] = config.sampling
    result.details["n_distinct_pairs"] = len(np.unique(pairs, axis=0))
    return result


def candidate_pairs(data: SplitData, config: MultiviewConfig) -> np.ndarray:
    """Every pair of a split that ``config.pairing_rule`` forms (no draw).

    Raises:
        CaseNotApplicable: When the split lacks what the rule needs or gives no pair.
    """
    try:
        if config.pairing_rule == "same_group":
            if data.groups is None:
                raise PairingUnavailable("dataset has no pairing groups")
            groups = np.asarray(data.groups)
            total = int(sum(c * (c - 1) // 2 for c in np.unique(groups, return_counts=True)[1]))
            return pairs_from_groups(groups, max(total, 1), 0)
        candidates = VIEW_RULES[config.pairing_rule](data)
    except PairingUnavailable as exc:
        raise CaseNotApplicable(str(exc)) from exc
    except ValueError as exc:
        raise CaseNotApplicable(f"pairing rule {config.pairing_rule!r}: {exc}") from exc
    if not len(candidates):
        raise CaseNotApplicable(
            f"pairing rule {config.pairing_rule!r}: no image pairs can be formed"
        )
    return candidates


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
