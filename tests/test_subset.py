"""Seeded stratified subsets: proportions, every class kept, the limit respected, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from harness.data.subset import stratified_indices


def shuffled_labels(counts: list[int], seed: int = 7) -> np.ndarray:
    labels = np.concatenate([np.full(count, cls) for cls, count in enumerate(counts)])
    return np.random.default_rng(seed).permutation(labels)


def test_keeps_proportions_at_limit() -> None:
    labels = shuffled_labels([900, 100])
    index = stratified_indices(labels, 100, seed=0)
    assert len(index) == 100
    assert np.bincount(labels[index]).tolist() == [90, 10]


def test_keeps_proportions_of_three_classes() -> None:
    labels = shuffled_labels([500, 300, 200])
    index = stratified_indices(labels, 50, seed=3)
    assert np.bincount(labels[index]).tolist() == [25, 15, 10]


def test_indices_are_sorted_unique_and_in_range() -> None:
    labels = shuffled_labels([70, 20, 10])
    index = stratified_indices(labels, 33, seed=1)
    assert len(index) == 33
    assert np.all(np.diff(index) > 0)
    assert index.min() >= 0 and index.max() < len(labels)


def test_rare_class_kept_at_least_once() -> None:
    labels = shuffled_labels([995, 5])
    index = stratified_indices(labels, 20, seed=0)
    assert np.bincount(labels[index], minlength=2).tolist() == [19, 1]


def test_rare_classes_do_not_push_past_the_limit() -> None:
    # floor(5 * 10 / 1000) = 0 for both rare classes; their one-item floor must be taken
    # back from the large class, not added on top of the limit
    labels = shuffled_labels([990, 5, 5])
    index = stratified_indices(labels, 10, seed=0)
    assert len(index) == 10
    assert np.bincount(labels[index]).tolist() == [8, 1, 1]


def test_more_classes_than_limit_returns_limit_items_from_largest_classes() -> None:
    labels = shuffled_labels([50, 40, 30, 2, 1])
    index = stratified_indices(labels, 3, seed=0)
    assert len(index) == 3
    assert sorted(labels[index].tolist()) == [0, 1, 2]


def test_zero_limit_returns_nothing() -> None:
    assert len(stratified_indices(shuffled_labels([5, 5]), 0, seed=0)) == 0


@pytest.mark.parametrize("limit", [100, 101, 1000])
def test_limit_at_or_above_size_returns_everything(limit: int) -> None:
    labels = shuffled_labels([60, 40])
    assert stratified_indices(labels, limit, seed=0).tolist() == list(range(100))


def test_deterministic_per_seed() -> None:
    labels = shuffled_labels([600, 300, 100])
    first = stratified_indices(labels, 90, seed=5)
    again = stratified_indices(labels, 90, seed=5)
    other = stratified_indices(labels, 90, seed=6)
    assert first.tolist() == again.tolist()
    assert first.tolist() != other.tolist()
    # another seed draws other items but the same class counts
    assert np.bincount(labels[first]).tolist() == np.bincount(labels[other]).tolist() == [54, 27, 9]


def test_multilabel_stratifies_on_first_positive_label() -> None:
    rng = np.random.default_rng(0)
    # 400 rows first-positive class 0, 100 rows class 2 only, 100 rows with no label
    labels = np.zeros((600, 3), dtype=bool)
    labels[:400, 0] = True
    labels[:400, 1] = rng.random(400) < 0.5  # co-occurring labels do not change the stratum
    labels[400:500, 2] = True
    order = rng.permutation(600)
    labels = labels[order]
    index = stratified_indices(labels, 60, seed=0)
    chosen = labels[index]
    assert len(index) == 60
    assert int(chosen[:, 0].sum()) == 40
    assert int((chosen[:, 2] & ~chosen[:, 0]).sum()) == 10
    assert int((~chosen.any(1)).sum()) == 10


def test_multilabel_rare_label_kept() -> None:
    labels = np.zeros((300, 2), dtype=np.uint8)
    labels[:297, 0] = 1
    labels[297:, 1] = 1
    index = stratified_indices(labels, 10, seed=2)
    assert len(index) == 10
    assert int(labels[index, 1].sum()) == 1


def test_random_configurations_respect_limit_and_keep_classes() -> None:
    rng = np.random.default_rng(42)
    for trial in range(300):
        n = int(rng.integers(2, 400))
        num_classes = int(rng.integers(1, 10))
        weights = rng.dirichlet(np.full(num_classes, 0.5))
        labels = rng.choice(num_classes, size=n, p=weights)
        limit = int(rng.integers(1, n + 5))
        index = stratified_indices(labels, limit, seed=trial)
        assert len(index) == min(limit, n)
        assert len(np.unique(index)) == len(index)
        present = np.unique(labels)
        if len(present) <= limit:
            assert set(labels[index].tolist()) == set(present.tolist())
        if limit < n:
            # no class gets more than one item beyond its share (or its one-item floor)
            counts = np.bincount(labels, minlength=num_classes)
            taken = np.bincount(labels[index], minlength=num_classes)
            assert np.all(taken <= np.maximum(1, np.ceil(counts * limit / n)))
