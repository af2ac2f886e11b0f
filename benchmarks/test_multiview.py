"""Multi-view cases: whitened cosine between images of the same source / series / patient."""

import pytest

from harness.case import CaseRun
from harness.protocols import invariance

PROTOCOL = "multiview"


def test_multiview(bench: CaseRun) -> None:
    card = bench.case.dataset
    rule = invariance.pairing_rule(card.pairing, card.source_file or card.name)
    config = bench.configure(
        invariance.MultiviewConfig.for_profile(bench.profile.name, pairing_rule=rule)
    )
    groups = bench.splits()[config.split].groups
    if groups is None:
        pytest.skip("dataset has no pairing groups")
    pairs = invariance.pairs_from_groups(groups, config.num_pairs, config.seed)

    features = bench.features(tuple(dict.fromkeys((config.split, config.cov_split))))
    cov_features = features[config.cov_split].features
    index = invariance.cov_indices(len(cov_features), config)
    key = {
        "model": bench.case.model.name,
        "dataset": card.name,
        "dataset_version": card.version,
        "split": config.cov_split,
        "cov_rule": [config.cov_images, config.cov_fraction, config.seed],
    }
    stats, stats_hit = invariance.cached_feature_stats(cov_features[index], config.epsilon, key)

    result = bench.run_protocol(
        invariance.run_multiview,
        features[config.split].features,
        pairs,
        stats,
        config,
        groups=groups,
    )
    result.details["stats_cache"] = "hit" if stats_hit else "miss"
    bench.record(result, invariance.VERSION, config.to_dict())
