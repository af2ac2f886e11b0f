"""Choosing the linear probe's C and scoring it (helpers of :mod:`harness.protocols.linear`).

Two selection rules:

* ``smallest-c`` (medxfer): the highest validation score; scores within
  ``TIE_TOLERANCE`` tie and the tie goes to the smallest C; NaN never wins. The result
  does not depend on the sweep order.
* ``first-strict`` (linusericsson/ssl-transfer@416913f:linear.py ``LinearTester.validate``):
  walk the sweep in its order from ``best_score = 0`` and keep a C only when its score is
  strictly greater, so a tie goes to the C met first (ssl-transfer sweeps C from 1e6 down,
  so the largest C), NaN never wins, and a score of 0 never wins either (with no score
  above 0 the peer fails with a ``KeyError``; here a ``ValueError`` says why).

The peers score mean per-class accuracy as
``confusion_matrix(y, pred).diagonal() / confusion_matrix(y, pred).sum(axis=1)``, averaged:
the classes are those in the labels or the predictions, so a predicted class absent from
the labels gives 0/0 and the mean is NaN (:func:`mean_per_class_accuracy_with_predictions`).
medxfer averages over the classes present in the labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from harness.protocols.metrics import compute_metrics

# Validation scores this close count as a tie (guards against summation-order noise).
TIE_TOLERANCE = 1e-12

SELECTIONS = ("smallest-c", "first-strict")
PER_CLASS_CLASSES = ("labels", "labels-and-predictions")


def select_smallest_c(scores: dict[float, float]) -> float:
    """Best C: highest score, ties to the smallest C; independent of dict order.

    Args:
        scores: C -> validation score.

    Returns:
        The chosen C.

    Raises:
        ValueError: When every score is NaN.
    """
    finite = {c: s for c, s in scores.items() if not math.isnan(s)}
    if not finite:
        raise ValueError("linear probe: the validation metric is NaN for every C")
    best = max(finite.values())
    return min(c for c, s in finite.items() if s >= best - TIE_TOLERANCE)


def select_first_strict(sweep: Sequence[float], scores: dict[float, float]) -> float:
    """ssl-transfer's rule: the first C in sweep order whose score beats all before it and 0.

    Args:
        sweep: The C values in sweep order.
        scores: C -> validation score.

    Returns:
        The chosen C.

    Raises:
        ValueError: When no score is above 0.
    """
    best_score, best_c = 0.0, None
    for c in sweep:
        if scores[c] > best_score:
            best_score, best_c = scores[c], c
    if best_c is None:
        raise ValueError(
            "linear probe: no C scored above 0 on validation (ssl-transfer's linear.py "
            "leaves best_params empty and fails with a KeyError here)"
        )
    return best_c


def select(rule: str, sweep: Sequence[float], scores: dict[float, float]) -> float:
    """The chosen C under ``rule`` (one of :data:`SELECTIONS`).

    Args:
        rule: Selection rule.
        sweep: The C values in sweep order.
        scores: C -> validation score.

    Returns:
        The chosen C.
    """
    if rule == "first-strict":
        return select_first_strict(sweep, scores)
    return select_smallest_c(scores)


def mean_per_class_accuracy_with_predictions(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean per-class recall over the classes in the labels or predictions (peers' way).

    Args:
        labels: Class ids (N,).
        predicted: Predicted class ids (N,).

    Returns:
        The mean recall; NaN when a predicted class does not occur in ``labels``.
    """
    recalls = []
    for k in np.union1d(labels, predicted):
        member = labels == k
        if not member.any():
            return math.nan
        recalls.append(float(np.mean(predicted[member] == k)))
    return float(np.mean(recalls))


def score(
    task: str, labels: np.ndarray, probabilities: np.ndarray, metric: str, per_class_classes: str
) -> float:
    """One metric of a split, with the chosen mean-per-class-accuracy semantics.

    Args:
        task: Task type.
        labels: Labels of the split.
        probabilities: (N, C) predicted probabilities.
        metric: Metric name.
        per_class_classes: One of :data:`PER_CLASS_CLASSES`.

    Returns:
        The metric's value.
    """
    if (
        metric == "mean_per_class_accuracy"
        and per_class_classes == "labels-and-predictions"
        and task != "multilabel"
    ):
        return mean_per_class_accuracy_with_predictions(labels, probabilities.argmax(axis=1))
    return compute_metrics(task, labels, probabilities, (metric,))[metric]


def peer_per_class_accuracy(
    task: str,
    metrics: dict[str, float],
    notes: dict[str, Any],
    labels: np.ndarray,
    probabilities: np.ndarray,
) -> None:
    """Replace a test's mean per-class accuracy in place by the peers' (see module doc).

    Args:
        task: Task type (multilabel tasks have no mean per-class accuracy: unchanged).
        metrics: The test metrics; changed in place.
        notes: The metric notes; a NaN value gets its reason.
        labels: Test labels.
        probabilities: (N, C) test probabilities.
    """
    if task == "multilabel" or "mean_per_class_accuracy" not in metrics:
        return
    value = mean_per_class_accuracy_with_predictions(labels, probabilities.argmax(axis=1))
    metrics["mean_per_class_accuracy"] = value
    if math.isnan(value):
        notes["mean_per_class_accuracy_undefined"] = (
            "a predicted class is absent from the test labels (the peers' confusion matrix "
            "divides 0 by 0)"
        )
