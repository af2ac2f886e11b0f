"""Keras' default ``AUC`` metric, as revisiting-transfer scores its test folds.

DovileDo/revisiting-transfer@54853c3:src/fine-tuning.py (and ``src/AUC.py``) score a
fold with ``keras.metrics.AUC()`` on the one-hot labels and the softmax outputs: a binary
target has two softmax outputs, a multiclass one ``C``. Keras' defaults decide the number:

* ``multi_label=False``: the ``(N, C)`` labels and predictions are flattened, so every
  (image, class) entry is one sample of one binary problem (a micro average);
* ``num_thresholds=200``: a prediction is positive at threshold ``t`` when it is strictly
  greater than ``t``, over ``t`` in ``{-eps, 1/199, 2/199, ..., 198/199, 1 + eps}`` with
  ``eps = 1e-7``;
* ``curve="ROC"`` with ``summation_method="interpolation"``: the trapezoidal area under the
  (false positive rate, true positive rate) points of those thresholds, a rate with a zero
  denominator counting as 0.

This differs from scikit-learn's ROC AUC of ``P(class 1)`` (``roc_auc``): the flattened
problem also pairs the class-0 column, and the 200 thresholds bin close scores together.
Keras compares in float32; so does this.
"""

from __future__ import annotations

import math

import numpy as np

NUM_THRESHOLDS = 200
EPSILON = 1e-7


def keras_thresholds(num_thresholds: int = NUM_THRESHOLDS) -> np.ndarray:
    """The thresholds of ``keras.metrics.AUC(num_thresholds=...)``, ascending, float32."""
    if num_thresholds < 2:
        raise ValueError(f"num_thresholds must be at least 2, got {num_thresholds}")
    inner = [(i + 1) / (num_thresholds - 1) for i in range(num_thresholds - 2)]
    return np.array([0.0 - EPSILON, *inner, 1.0 + EPSILON], dtype=np.float32)


def keras_roc_auc(
    onehot: np.ndarray, predictions: np.ndarray, num_thresholds: int = NUM_THRESHOLDS
) -> tuple[float, str | None]:
    """Keras' default ROC AUC of flattened one-hot labels against predictions.

    Args:
        onehot: 0/1 labels, ``(N, C)`` (one-hot classes, or multilabel targets).
        predictions: ``(N, C)`` probabilities in [0, 1].
        num_thresholds: Keras' ``num_thresholds``.

    Returns:
        (AUC, None), or (NaN, reason) when the flattened labels hold one value only.

    Raises:
        ValueError: When the shapes differ or a prediction lies outside [0, 1].
    """
    labels = np.asarray(onehot).reshape(-1).astype(bool)
    scores = np.asarray(predictions, dtype=np.float32).reshape(-1)
    if np.asarray(onehot).shape != np.asarray(predictions).shape:
        raise ValueError(
            f"labels {np.asarray(onehot).shape} and predictions "
            f"{np.asarray(predictions).shape} differ in shape"
        )
    if scores.size and (scores.min() < 0 or scores.max() > 1):
        raise ValueError("Keras' AUC needs predictions in [0, 1]")
    if labels.all() or not labels.any():
        return math.nan, "Keras' AUC needs positive and negative entries in the labels"
    thresholds = keras_thresholds(num_thresholds)
    # entries above threshold i = entries whose score is > thresholds[i]: count by
    # searchsorted on the sorted scores instead of an (entries x thresholds) comparison
    positives = np.sort(scores[labels])
    negatives = np.sort(scores[~labels])
    tp = positives.size - np.searchsorted(positives, thresholds, side="right")
    fp = negatives.size - np.searchsorted(negatives, thresholds, side="right")
    tpr = tp / positives.size
    fpr = fp / negatives.size
    area = np.sum((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2.0)
    return float(area), None


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``(N,)`` class ids as ``(N, n_classes)`` 0/1 columns."""
    encoded = np.zeros((len(labels), n_classes), dtype=np.int64)
    encoded[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)] = 1
    return encoded
