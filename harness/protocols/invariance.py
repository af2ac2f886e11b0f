"""Feature invariance: how much frozen features move under image transforms or across views.

Follows linusericsson/ssl-invariances' ``eval_synthetic_invariance.py`` (below:
ssl-invariances) and jonahanton/SSL_medicalimaging's ``invariances/`` (below:
SSL_medicalimaging):

* The feature mean ``mu`` and covariance ``Sigma`` are estimated on one split
  (``cov_split``, train by default) and ``epsilon = 1e-6`` is added to the diagonal of
  ``Sigma`` (SSL_medicalimaging).
* Similarity is the cosine between the whitened vectors ``(mu - f) W`` of a clean and a
  transformed image, where ``W W^T = (Sigma + epsilon I)^-1``; distance is the Mahalanobis
  distance ``sqrt((a - b)^T (Sigma + epsilon I)^-1 (a - b))``. Both are averaged over images
  with ``nanmean``.
* Synthetic invariance evaluates ``num_images`` images (100, as SSL_medicalimaging;
  ssl-invariances used 1000 on ImageNet) of ``split`` under each named transform of
  :mod:`image_transforms`. Multi-view invariance compares pairs of different images that
  share a group id (same source image, series or patient), as SSL_medicalimaging's
  frontal/lateral and left/right-eye pairs.

Choices that differ from the peers, and why:

* ``W`` comes from an eigendecomposition of ``Sigma`` in float64 (eigenvalues clipped at 0,
  then ``W = V diag((lambda + epsilon)^-1/2)``) instead of the peers' float32
  ``cholesky(inv(Sigma))`` (``whitening="float32-cholesky"``,
  :mod:`harness.protocols.whitening_peer`). Any ``W`` with ``W W^T = (Sigma + epsilon
  I)^-1`` gives the same cosines and distances, so the measure is the peers'; the
  eigendecomposition does not fail or lose digits when ``Sigma`` is rank-deficient, which
  it is whenever there are fewer images than feature dimensions.
* Covariance images: all images of ``cov_split`` when it has at most ``cov_images`` (1000)
  of them; otherwise ``max(cov_images, ceil(cov_fraction * N))`` of them drawn **without**
  replacement (seeded). SSL_medicalimaging draws ``max(1000, 10%)`` with replacement, which
  only repeats rows and lowers the rank of ``Sigma``. ``cov_images=None`` always uses the
  whole split.
* The evaluated images are a seeded draw without replacement (ssl-invariances'
  ``np.random.choice`` draws with replacement, so some images counted twice).
* One magnitude per transform entry (ssl-invariances sweeps k values of each transform and
  averages); the defaults are listed in :data:`image_transforms.DEFAULT_TRANSFORMS`.
* Both protocols register their own measure as the primary metric: ``mean_cosine``, the mean
  over transforms (synthetic, this module) or pairs (multi-view,
  :mod:`harness.protocols.multiview`). The statistics live in
  :mod:`harness.protocols.whitening`.

Peer-faithful presets (:mod:`harness.protocols.invariance_presets`) reproduce the peers
through four more settings, each inert at its default: ``pool_splits`` (mean, covariance
and evaluated images from the named splits pooled, as the peers' train+test
``ConcatDataset``), ``sampling`` (``numpy-legacy``: the peers' draws with replacement,
:mod:`harness.protocols.invariance_sampling`), ``aggregate`` (``name``: one value per
transform name, the mean over its magnitudes of the per-magnitude mean over images, the
peers' ``nanmean(S, axis=0).mean()`` over a sweep that includes the identity) and
``transform_backend`` (``torchvision-pil``: the peers' kernels,
:mod:`harness.protocols.image_transforms.pil`). A transform entry at its identity
magnitude reuses the clean features (its cosine is 1 wherever it is defined), unless
``transformed_normalisation`` normalises the transformed images differently
(:mod:`harness.protocols.invariance_eval`).

Caveat (also the peers'): with ``n`` covariance images and ``D`` feature dimensions,
``D - n + 1`` directions have zero variance and are scaled by ``epsilon^-1/2`` (1000) in the
whitened space, so features that move off the covariance images' subspace dominate the
cosine. ``details`` records ``cov_dims_below_epsilon`` and the un-whitened
``centred_cosine`` so a reader can see when this happens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.config.profiles import check_profile
from harness.data.transforms import describe
from harness.protocols.base import ProtocolResult, without_defaults
from harness.protocols.batch_statistics import check_batchnorm_mode, invariance_batch_statistics
from harness.protocols.image_transforms import (
    BACKENDS,
    DEFAULT_TRANSFORMS,
    get_transform,
    transform_tag,
)
from harness.protocols.invariance_eval import (
    eval_mode_features,
    transformed_images_preprocessing,
)
from harness.protocols.invariance_sampling import (
    SAMPLINGS,
    image_indices,
    is_default,
    pooled_images,
)
from harness.protocols.peer_normalisation import TRANSFORMED_NORMALISATIONS
from harness.protocols.registry import DetailTable, register_protocol
from harness.protocols.whitening import (
    as_features,
    centred_cosine,
    check_cov_settings,
    check_epsilon,
    nanmean,
    nanstd,
    similarity,
    stats_details,
)
from harness.protocols.whitening_peer import WHITENINGS, check_whitening

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun

VERSION = 1
PRIMARY = "mean_cosine"
AGGREGATES = ("entry", "name")


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
        pool_splits: When not empty, the mean, covariance and evaluated images all come
            from these splits concatenated in this order (``split`` and ``cov_split`` are
            then not used).
        sampling: ``medxfer`` (draws without replacement) or ``numpy-legacy`` (the
            peers' draws with replacement; see :mod:`invariance_sampling`).
        aggregate: ``entry`` (one ``cos_<tag>`` per transform entry) or ``name`` (one
            ``cos_<name>`` per transform name: the mean over its entries of the mean over
            images; the per-entry values go to ``details``).
        transform_backend: Whose transform kernels: a key of
            :data:`image_transforms.BACKENDS`.
        batchnorm: ``eval`` (the cached features) or ``batch-statistics`` (the peer's
            training-mode batch norm: each clean image alone, an image's transformed
            copies of one transform together, the covariance images in the loader's
            batches of 256; :mod:`harness.protocols.batch_statistics`). Needs
            ``pool_splits`` or legacy sampling.
        whitening: ``float64-eigh`` (medxfer) or ``float32-cholesky`` (the peers'
            arithmetic; :mod:`harness.protocols.whitening_peer`).
        transformed_normalisation: ``same`` (the transformed images are normalised as the
            clean ones) or ``imagenet-if-histogram`` (SSL_medicalimaging's
            ``ManualTransform.T``: ImageNet's mean / std instead of a histogram
            normalisation; :func:`~harness.protocols.peer_normalisation.transformed_preprocessing`).
            Identity entries then have features of their own.
    """

    transforms: tuple[tuple[str, float], ...] = DEFAULT_TRANSFORMS
    num_images: int = 100
    cov_images: int | None = 1000
    cov_fraction: float = 0.1
    epsilon: float = 1e-6
    split: str = "test"
    cov_split: str = "train"
    seed: int = 0
    pool_splits: tuple[str, ...] = ()
    sampling: str = "medxfer"
    aggregate: str = "entry"
    transform_backend: str = "medxfer"
    batchnorm: str = "eval"
    whitening: str = WHITENINGS[0]
    transformed_normalisation: str = "same"

    def __post_init__(self) -> None:
        transforms = tuple((str(name), float(magnitude)) for name, magnitude in self.transforms)
        if not transforms:
            raise ValueError("InvarianceConfig.transforms must not be empty")
        for field, value, known in (
            ("sampling", self.sampling, SAMPLINGS),
            ("aggregate", self.aggregate, AGGREGATES),
            ("transform_backend", self.transform_backend, tuple(BACKENDS)),
            (
                "transformed_normalisation",
                self.transformed_normalisation,
                TRANSFORMED_NORMALISATIONS,
            ),
        ):
            if value not in known:
                raise ValueError(f"InvarianceConfig.{field} must be one of {known}, got {value!r}")
        pool = tuple(str(name) for name in self.pool_splits)
        if len(set(pool)) != len(pool):
            raise ValueError(f"InvarianceConfig.pool_splits has duplicates: {pool}")
        object.__setattr__(self, "pool_splits", pool)
        probe = np.zeros((8, 8, 3), dtype=np.uint8)
        tags = []
        for name, magnitude in transforms:
            try:
                get_transform(name, self.transform_backend)(probe, magnitude)
            except (KeyError, ValueError) as exc:
                raise ValueError(f"InvarianceConfig.transforms: {exc}") from exc
            tags.append(transform_tag(name, magnitude))
        duplicates = sorted({tag for tag in tags if tags.count(tag) > 1})
        if duplicates:
            raise ValueError(f"InvarianceConfig.transforms has duplicates: {duplicates}")
        object.__setattr__(self, "transforms", transforms)
        if self.num_images < 1:
            raise ValueError(f"InvarianceConfig.num_images must be >= 1, got {self.num_images}")
        check_cov_settings("InvarianceConfig", self.cov_images, self.cov_fraction)
        check_epsilon("InvarianceConfig", self.epsilon)
        check_batchnorm_mode("InvarianceConfig", self.batchnorm)
        check_whitening("InvarianceConfig", self.whitening)
        if self.batchnorm != "eval" and is_default(self):
            raise ValueError(
                "InvarianceConfig.batchnorm='batch-statistics' needs pool_splits or "
                "numpy-legacy sampling (the peer's procedure)"
            )

    @classmethod
    def for_profile(cls, profile: str) -> InvarianceConfig:
        """The configuration of a run profile.

        ``smoke`` evaluates 16 images and ``demo`` 32 (each image costs one forward pass
        per transform, the demo's budget on a 2-core CPU); ``paper`` evaluates SSL_medicalimaging's 100.
        All profiles use every default transform.

        Args:
            profile: "smoke", "demo" or "paper".

        Returns:
            The profile's configuration.

        Raises:
            ValueError: On an unknown profile.
        """
        check_profile(profile)
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
        out["pool_splits"] = list(self.pool_splits)
        return without_defaults(
            out,
            {"batchnorm": "eval", "whitening": WHITENINGS[0], "transformed_normalisation": "same"},
        )


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
        ``mean_mahalanobis``. ``details``: ``n_images``,
        ``transforms`` (tags evaluated), ``skipped_transforms``, ``cosine_std``,
        ``centred_cosine`` (un-whitened, per tag), ``n_nan`` and the statistics' ``epsilon``,
        ``cov_n``, ``feature_dim``, ``cov_rank``, ``cov_dims_below_epsilon``.

    Raises:
        ValueError: When no transform is given or the shapes disagree.
    """
    if not transformed:
        raise ValueError("run_synthetic: no transformed features given")
    dim = len(stats["mean"])
    clean = as_features("clean images", clean_features, dim)
    metrics: dict[str, float] = {}
    cosine_std: dict[str, float] = {}
    centred: dict[str, float] = {}
    n_nan: dict[str, int] = {}
    for tag, features in transformed.items():
        moved = as_features(f"transform {tag}", features, dim)
        if moved.shape != clean.shape:
            raise ValueError(
                f"transform {tag}: {moved.shape[0]} feature rows, but {clean.shape[0]} clean ones"
            )
        cosine, distance = similarity(clean, moved, stats)
        metrics[f"cos_{tag}"] = nanmean(cosine)
        metrics[f"mahal_{tag}"] = nanmean(distance)
        cosine_std[tag] = nanstd(cosine)
        centred[tag] = nanmean(centred_cosine(clean, moved, stats))
        n_nan[tag] = int(np.isnan(cosine).sum())
    tags = list(transformed)
    extra: dict[str, Any] = {}
    if config.aggregate == "name":
        metrics, extra["per_magnitude"] = _by_name(metrics, tags, config)
    keys = [key[4:] for key in metrics if key.startswith("cos_")]
    metrics[PRIMARY] = nanmean(np.array([metrics[f"cos_{key}"] for key in keys]))
    metrics["mean_mahalanobis"] = nanmean(np.array([metrics[f"mahal_{key}"] for key in keys]))
    if config.pool_splits:
        extra["pool_splits"] = list(config.pool_splits)
    return ProtocolResult(
        metrics=metrics,
        details={
            **extra,
            "n_images": int(clean.shape[0]),
            "transforms": tags,
            "skipped_transforms": dict(skipped or {}),
            "cosine_std": cosine_std,
            "centred_cosine": centred,
            "n_nan": n_nan,
            "split": config.split,
            "cov_split": config.cov_split,
            **stats_details(stats),
        },
    )


def _by_name(
    per_tag: dict[str, float], tags: list[str], config: InvarianceConfig
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Average the per-entry values over each transform name's evaluated entries.

    A plain mean over entries (NaN when one entry is NaN), as the peers'
    ``nanmean(S, axis=0).mean()``: ``nanmean`` over images per magnitude, then ``mean``.
    """
    name_of = {transform_tag(name, magnitude): name for name, magnitude in config.transforms}
    unknown = [tag for tag in tags if tag not in name_of]
    if unknown:
        raise ValueError(f"run_synthetic: tags {unknown} are not transforms of the config")
    grouped: dict[str, list[str]] = {}
    for tag in tags:
        grouped.setdefault(name_of[tag], []).append(tag)
    metrics: dict[str, float] = {}
    for name, members in grouped.items():
        for kind in ("cos", "mahal"):
            values = np.array([per_tag[f"{kind}_{tag}"] for tag in members])
            metrics[f"{kind}_{name}"] = float(values.mean())
    per_magnitude = {
        tag: {"cos": per_tag[f"cos_{tag}"], "mahal": per_tag[f"mahal_{tag}"]} for tag in tags
    }
    return metrics, per_magnitude


@register_protocol(
    "invariance",
    version=VERSION,
    marker="synthetic-transform feature-invariance benchmark cases",
    config=InvarianceConfig,
    primary_metric=PRIMARY,
    display="descriptive",
    detail_metric_prefixes=("mahal_", "centred_cos_"),
    detail_tables=(
        DetailTable(
            "cos_",
            "Invariance per transform",
            "Mean whitened cosine similarity between the features of clean and transformed "
            "images (1 = invariant). Transforms that cannot change the image (colour on "
            "grayscale data) are left out.",
            summary_header="mean",
        ),
    ),
)
def run_case(case: CaseRun, config: InvarianceConfig) -> ProtocolResult:
    """One invariance case: a seeded draw of ``config.split`` (or the pooled splits) under
    every transform."""
    images = pooled_images(case, config)
    index = image_indices(len(images), config)
    # a draw with replacement repeats images: transform each once, expand afterwards
    unique, inverse = np.unique(index, return_inverse=True)
    subset = images[unique]
    if config.batchnorm == "batch-statistics":
        stats, clean, transformed, skipped = invariance_batch_statistics(case, config, subset)
        details: dict[str, Any] = {"batchnorm": config.batchnorm}
    else:
        stats, hit, clean, transformed, skipped = eval_mode_features(case, config, subset)
        details = {"stats_cache": "hit" if hit else "miss"}
    order = [tag for tag in config.tags() if tag in transformed]
    transformed = {tag: transformed[tag][inverse] for tag in order}
    result = run_synthetic(clean[inverse], transformed, stats, config, skipped=skipped)
    transformed_pre = transformed_images_preprocessing(case, config)
    if transformed_pre is not None:
        details["transformed_preprocessing"] = describe(transformed_pre)
    result.details.update(details)
    return result
