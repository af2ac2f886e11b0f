"""Unit tests for harness.protocols.metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from harness.config.vocabulary import METRIC_HIGHER_IS_BETTER, METRICS
from harness.protocols.metrics import (
    binary_roc_auc,
    compute_metrics,
    compute_metrics_with_notes,
)


def _binary_probs(p1: list[float]) -> np.ndarray:
    p1 = np.asarray(p1)
    return np.column_stack([1 - p1, p1])


def test_metric_table_matches_card_vocabulary() -> None:
    assert set(METRIC_HIGHER_IS_BETTER) == set(METRICS)
    assert all(METRIC_HIGHER_IS_BETTER.values())


def test_binary_auc_uses_probabilities_not_argmax() -> None:
    labels = np.array([0, 0, 1, 1])
    probs = _binary_probs([0.1, 0.6, 0.4, 0.8])
    got = compute_metrics("binary", labels, probs, ("accuracy", "roc_auc"))
    # Pairs (pos, neg): (.4,.1) (.4,.6) (.8,.1) (.8,.6) -> 3 of 4 ranked right.
    assert got["roc_auc"] == pytest.approx(0.75)
    # argmax = [0, 1, 0, 1]: half right; the AUC of those hard predictions is only 0.5.
    assert got["accuracy"] == pytest.approx(0.5)
    hard_auc = roc_auc_score(labels, probs.argmax(axis=1))
    assert hard_auc == pytest.approx(0.5)
    assert got["roc_auc"] != pytest.approx(hard_auc)


def test_balanced_accuracy_differs_from_accuracy_when_imbalanced() -> None:
    labels = np.array([0] * 8 + [1] * 2)
    probs = _binary_probs([0.1] * 10)  # always predicts class 0
    got = compute_metrics("binary", labels, probs, ("accuracy", "mean_per_class_accuracy"))
    assert got["accuracy"] == pytest.approx(0.8)
    assert got["mean_per_class_accuracy"] == pytest.approx(0.5)  # (8/8 + 0/2) / 2


def test_multiclass_hand_computed() -> None:
    labels = np.array([0, 1, 2, 2])
    probs = np.array(
        [[0.7, 0.2, 0.1], [0.3, 0.4, 0.3], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6]],
    )
    names = ("accuracy", "mean_per_class_accuracy", "roc_auc", "quadratic_kappa")
    got, notes = compute_metrics_with_notes("multiclass", labels, probs, names)
    # argmax = [0, 1, 1, 2]
    assert got["accuracy"] == pytest.approx(0.75)
    assert got["mean_per_class_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3)
    # One-vs-rest AUCs: class 0 -> 1, class 1 -> 2/3, class 2 -> 3.5/4 (one tie).
    assert got["roc_auc"] == pytest.approx((1 + 2 / 3 + 0.875) / 3)
    assert got["roc_auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"))
    # Quadratic kappa: sum(w*O) = 1, sum(w*E) = 5 -> 1 - 1/5.
    assert got["quadratic_kappa"] == pytest.approx(0.8)
    assert notes["roc_auc_n_scored"] == 3
    assert list(got) == list(names)


def test_multiclass_auc_macro_over_present_classes_only() -> None:
    labels = np.array([0, 1, 2, 2])
    probs = np.array(
        [[0.6, 0.2, 0.1, 0.1], [0.2, 0.4, 0.3, 0.1], [0.1, 0.5, 0.3, 0.1], [0.1, 0.2, 0.6, 0.1]],
    )
    got, notes = compute_metrics_with_notes("multiclass", labels, probs, ("roc_auc",))
    assert got["roc_auc"] == pytest.approx((1 + 2 / 3 + 0.875) / 3)
    assert notes["roc_auc_n_scored"] == 3


def test_quadratic_kappa_keeps_ordinal_distance_of_absent_classes() -> None:
    # Grades 0..3; grade 2 never occurs. The true distance between 1 and 3 is 2.
    labels = np.array([0, 1, 3, 3])
    probs = np.eye(4)[[0, 1, 1, 3]]
    got = compute_metrics("ordinal", labels, probs, ("quadratic_kappa",))
    # sum(w*O) = (3-1)^2 = 4; sum(w*E) = (11 + 5 + 34) / 4 = 12.5.
    assert got["quadratic_kappa"] == pytest.approx(1 - 4 / 12.5)
    # sklearn without labels= would re-index {0, 1, 3} to {0, 1, 2} and give 0.8.
    assert cohen_kappa_score(labels, [0, 1, 1, 3], weights="quadratic") == pytest.approx(0.8)


def test_multilabel_hand_computed_skips_single_class_label() -> None:
    labels = np.array([[0, 1, 0], [1, 1, 0], [0, 1, 1], [1, 1, 1]])
    probs = np.array([[0.2, 0.9, 0.1], [0.8, 0.9, 0.2], [0.6, 0.1, 0.3], [0.4, 0.9, 0.9]])
    got, notes = compute_metrics_with_notes("multilabel", labels, probs, ("roc_auc", "accuracy"))
    # Label 0: 3/4 pairs right; label 1 is all ones (skipped); label 2: perfect.
    assert got["roc_auc"] == pytest.approx((0.75 + 1.0) / 2)
    assert notes["roc_auc_n_scored"] == 2
    assert notes["roc_auc_skipped_labels"] == [1]
    # Threshold 0.5: label 0 gets 2/4, label 1 gets 3/4, label 2 gets 3/4 right.
    assert got["accuracy"] == pytest.approx(8 / 12)


def test_undefined_auc_is_nan_with_reason() -> None:
    labels = np.array([1, 1, 1])
    got, notes = compute_metrics_with_notes(
        "binary", labels, _binary_probs([0.9, 0.2, 0.7]), ("accuracy", "roc_auc")
    )
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert math.isnan(got["roc_auc"])
    assert "only class 1" in notes["roc_auc_undefined"]

    got, notes = compute_metrics_with_notes(
        "multiclass", np.array([2, 2]), np.full((2, 3), 1 / 3), ("roc_auc",)
    )
    assert math.isnan(got["roc_auc"])

    got, notes = compute_metrics_with_notes(
        "multilabel", np.ones((3, 2), dtype=int), np.full((3, 2), 0.5), ("roc_auc",)
    )
    assert math.isnan(got["roc_auc"])
    assert notes["roc_auc_n_scored"] == 0
    assert "roc_auc_undefined" in notes


def test_undefined_kappa_is_nan() -> None:
    got, notes = compute_metrics_with_notes(
        "ordinal", np.array([1, 1]), np.eye(3)[[1, 1]], ("quadratic_kappa", "accuracy")
    )
    assert math.isnan(got["quadratic_kappa"])
    assert "0/0" in notes["quadratic_kappa_undefined"]
    assert got["accuracy"] == 1.0


@pytest.mark.parametrize(
    ("task", "labels", "probs", "names", "match"),
    [
        ("regression", [0, 1], np.eye(2), ("accuracy",), "unknown task"),
        ("binary", [0, 1], np.eye(2), ("f1",), "unknown metric"),
        ("multilabel", np.eye(2), np.eye(2), ("quadratic_kappa",), "not defined for multilabel"),
        ("binary", [0, 1, 2], np.eye(3), ("accuracy",), "two probability columns"),
        ("multiclass", [0, 3], np.eye(3)[:2], ("accuracy",), r"lie in \[0, 3\)"),
        ("multiclass", [0, 1, 2], np.eye(3)[:2], ("accuracy",), "shape"),
        ("multiclass", [0, 1], np.array([[np.nan, 1, 0], [0, 1, 0]]), ("accuracy",), "NaN"),
        ("multilabel", [[0, 2]], np.eye(2)[:1], ("roc_auc",), "0/1"),
    ],
)
def test_bad_input_raises(task, labels, probs, names, match) -> None:
    with pytest.raises(ValueError, match=match):
        compute_metrics(task, np.asarray(labels), probs, names)


def test_float_labels_holding_whole_numbers_are_accepted() -> None:
    probs = _binary_probs([0.2, 0.7])
    assert compute_metrics("binary", np.array([0.0, 1.0]), probs, ("accuracy",)) == {
        "accuracy": 1.0
    }
    with pytest.raises(ValueError, match="integer class ids"):
        compute_metrics("binary", np.array([0.0, 0.5]), probs, ("accuracy",))
    with pytest.raises(ValueError, match="integer class ids"):
        compute_metrics("binary", np.array(["a", "b"]), probs, ("accuracy",))


def test_resolution_is_what_one_test_image_can_change() -> None:
    from harness.protocols.metrics import compute_metrics_with_notes, metric_resolution

    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    probs = np.eye(3)[labels] * 0.8 + 0.1 / 1.5
    names = ("accuracy", "mean_per_class_accuracy", "roc_auc", "quadratic_kappa")
    _, notes = compute_metrics_with_notes("ordinal", labels, probs, names)
    step = notes["resolution"]
    assert step["accuracy"] == pytest.approx(1 / 10)
    assert step["mean_per_class_accuracy"] == pytest.approx(1 / (3 * 2))  # the class of 2
    assert step["roc_auc"] == pytest.approx(1 / (3 * 2 * 8))  # one swap, class of 2
    # moving one prediction by a grade really changes kappa by that much, no more
    predicted = probs.argmax(axis=1)
    moved = predicted.copy()
    moved[3] = 2
    from sklearn.metrics import cohen_kappa_score

    delta = abs(
        cohen_kappa_score(labels, moved, labels=[0, 1, 2], weights="quadratic")
        - cohen_kappa_score(labels, predicted, labels=[0, 1, 2], weights="quadratic")
    )
    assert 0 < delta <= step["quadratic_kappa"] + 1e-12
    binary = np.array([0, 1, 1, 0, 1])
    assert metric_resolution("binary", "roc_auc", binary, np.eye(2)[binary]) == pytest.approx(1 / 6)
    multilabel = np.array([[0, 1], [1, 1], [0, 0], [1, 0]])
    assert metric_resolution("multilabel", "accuracy", multilabel, multilabel * 1.0) == 1 / 8


@pytest.mark.parametrize("decimals", [0, 1, 3])
def test_binary_roc_auc_equals_scikit_learn_with_and_without_ties(decimals: int) -> None:
    rng = np.random.default_rng(decimals)
    for _ in range(50):
        n = int(rng.integers(3, 300))
        positive = np.arange(n) % 3 == 0
        rng.shuffle(positive)
        scores = np.round(rng.normal(size=n) + 0.5 * positive, decimals)
        assert binary_roc_auc(positive, scores) == pytest.approx(
            roc_auc_score(positive, scores), abs=1e-12
        )
    assert binary_roc_auc(np.array([True, False]), np.array([0.9, 0.1])) == 1.0
    assert binary_roc_auc(np.array([True, False]), np.array([0.5, 0.5])) == 0.5
