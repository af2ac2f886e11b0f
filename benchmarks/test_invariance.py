"""Synthetic-invariance cases: whitened cosine of clean vs transformed features (SI / SM)."""

import numpy as np

from harness.case import CaseRun
from harness.protocols import image_transforms, invariance

PROTOCOL = "invariance"


def test_invariance(bench: CaseRun) -> None:
    config = bench.configure(invariance.InvarianceConfig.for_profile(bench.profile.name))
    stats, stats_hit = _stats(bench, config)

    images = bench.splits()[config.split].images
    index = invariance.sample_indices(len(images), config.num_images, config.seed)
    subset = images[index]
    prefix = f"subset{len(index)}-seed{config.seed}"
    sets, skipped = {"identity": subset}, {}
    for name, magnitude in config.transforms:
        tag = image_transforms.transform_tag(name, magnitude)
        reason = image_transforms.applicable(name, subset)
        if reason is not None:
            skipped[tag] = reason
            continue
        sets[tag] = image_transforms.apply_transform(name, subset, magnitude)
    transformed = bench.derived_feature_sets(config.split, prefix, sets)
    clean = transformed.pop("identity")

    result = bench.run_protocol(
        invariance.run_synthetic, clean, transformed, stats, config, skipped=skipped
    )
    result.details["stats_cache"] = "hit" if stats_hit else "miss"
    bench.record(result, invariance.VERSION, config.to_dict())


def _stats(
    bench: CaseRun, config: invariance.InvarianceConfig
) -> tuple[dict[str, np.ndarray], bool]:
    """Feature mean / whitening of the covariance split, through the array cache."""
    features = bench.features((config.cov_split,))[config.cov_split].features
    index = invariance.cov_indices(len(features), config)
    key = {
        "model": bench.case.model.name,
        "dataset": bench.case.dataset.name,
        "dataset_version": bench.case.dataset.version,
        "split": config.cov_split,
        "cov_rule": [config.cov_images, config.cov_fraction, config.seed],
    }
    return invariance.cached_feature_stats(features[index], config.epsilon, key)
