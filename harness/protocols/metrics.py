"""Classification metrics for the protocols, computed from predicted probabilities.

Every metric is "higher is better"; all lie in [0, 1] except quadratic kappa (at most 1,
negative when worse than chance).
A metric that is undefined for the given labels (for example ROC AUC when ``labels``
holds a single class) is returned as ``float("nan")``, and
:func:`compute_metrics_with_notes` says why in its notes; it never raises for that.

Conventions (the peers differ on these):

* ``roc_auc`` is computed from probabilities, never from argmax hard predictions.
  Binary: AUC of P(class 1). Multiclass and ordinal: macro one-vs-rest AUC over the
  classes present in ``labels``. Multilabel: mean over labels of the per-label AUC,
  skipping labels whose ``labels`` column holds a single value; the number of labels
  scored is recorded in the notes.
* ``mean_per_class_accuracy`` is balanced accuracy: the mean of per-class recall over
  the classes present in ``labels``.
* ``quadratic_kappa`` is Cohen's kappa with quadratic weights on the argmax, with the
  weights laid out over all ``C`` classes (not only those that occur), so the distance
  between classes 0 and 2 stays 2 even when class 1 is absent.
* ``roc_auc_keras`` is Keras' default ``AUC`` (revisiting-transfer's score): the one-hot
  labels and the probabilities flattened into one binary problem, 200 thresholds
  (:mod:`harness.protocols.metrics_keras`).
* Multilabel ``accuracy`` is the label-wise (Hamming) accuracy at threshold 0.5.
  ``mean_per_class_accuracy`` and ``quadratic_kappa`` are not defined for multilabel
  tasks and raise ``ValueError``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import cohen_kappa_score

from harness.config.vocabulary import METRIC_HIGHER_IS_BETTER, MULTILABEL_METRICS, TASKS
from harness.protocols.metrics_keras import keras_roc_auc, one_hot


def compute_metrics(
    task: str, labels: np.ndarray, probabilities: np.ndarray, names: tuple[str, ...]
) -> dict[str, float]:
    """Compute the named metrics from labels and predicted probabilities.

    Args:
        task: One of "binary", "multiclass", "ordinal", "multilabel".
        labels: Integer class ids (N,) for single-label tasks, or 0/1 (N, C) for multilabel.
        probabilities: (N, C) predicted probabilities; two columns for binary tasks.
            For multilabel tasks column ``c`` is P(label ``c`` = 1).
        names: Metric names, each a key of ``METRIC_HIGHER_IS_BETTER``.

    Returns:
        Metric name -> value, in the order of ``names``. Undefined metrics are NaN;
        use :func:`compute_metrics_with_notes` to learn why.

    Raises:
        ValueError: On an unknown task or metric, a metric not defined for the task,
            or labels/probabilities of the wrong shape or range.
    """
    values, _ = compute_metrics_with_notes(task, labels, probabilities, names)
    return values


def compute_metrics_with_notes(
    task: str, labels: np.ndarray, probabilities: np.ndarray, names: tuple[str, ...]
) -> tuple[dict[str, float], dict[str, Any]]:
    """Like :func:`compute_metrics`, also returning notes on how each metric was computed.

    The notes hold ``"<metric>_undefined"``: a reason, for each NaN metric; for
    multiclass/ordinal/multilabel ``roc_auc`` also ``"roc_auc_n_scored"`` (classes or labels
    that entered the mean) and for multilabel ``"roc_auc_skipped_labels"`` (label indices
    skipped because ``labels`` holds a single value in that column). ``"resolution"``
    maps each metric to :func:`metric_resolution`.

    Args:
        task: One of "binary", "multiclass", "ordinal", "multilabel".
        labels: Integer class ids (N,) for single-label tasks, or 0/1 (N, C) for multilabel.
        probabilities: (N, C) predicted probabilities.
        names: Metric names.

    Returns:
        (metric name -> value, notes).

    Raises:
        ValueError: As for :func:`compute_metrics`.
    """
    labels, probabilities = _check_inputs(task, labels, probabilities, names)
    values: dict[str, float] = {}
    notes: dict[str, Any] = {}
    for name in names:
        if name == "roc_auc_keras":
            onehot = labels if task == "multilabel" else one_hot(labels, probabilities.shape[1])
            value, reason = keras_roc_auc(onehot, probabilities)
        elif task == "multilabel":
            value, reason = _multilabel_metric(name, labels, probabilities, notes)
        else:
            value, reason = _single_label_metric(name, task, labels, probabilities, notes)
        values[name] = float(value)
        if reason is not None:
            notes[f"{name}_undefined"] = reason
    notes["resolution"] = {
        name: metric_resolution(task, name, labels, probabilities) for name in names
    }
    return values, notes


def metric_resolution(task: str, name: str, labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The largest change of a metric that one test image's prediction can make.

    A fresh run on another machine can flip the prediction of an image that lies on a
    decision boundary (or swap two nearly tied scores); no tolerance below this step
    can be met there, so the tolerance rule never goes under it.

    Args:
        task: Task type.
        name: Metric name.
        labels: Labels as for :func:`compute_metrics` (already checked).
        probabilities: (N, C) probabilities (already checked).

    Returns:
        accuracy: ``1/N`` (multilabel: ``1/(N*C)``); mean per-class accuracy: ``1/(K * n_min)``
        over the K classes present; ROC AUC: one swap of two adjacent scores,
        ``1/(P*N)`` of the class (or label) where that is largest, divided by the
        number of classes averaged; quadratic kappa: the largest change from moving one
        prediction by one grade, over up to 64 images.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if name == "roc_auc_keras":  # one image moves its C entries of the flattened problem
        flat = labels if task == "multilabel" else one_hot(labels, probabilities.shape[1])
        p = int(flat.sum())
        q = flat.size - p
        return 0.0 if p == 0 or q == 0 else probabilities.shape[1] / (p * q)
    if task == "multilabel":
        if name == "accuracy":
            return 1.0 / labels.size
        pairs = [(c.sum(), len(c) - c.sum()) for c in labels.T if 0 < c.sum() < len(c)]
        return max((1.0 / (p * q * len(pairs)) for p, q in pairs), default=0.0)
    present, counts = np.unique(labels, return_counts=True)
    if name == "accuracy":
        return 1.0 / n
    if name == "mean_per_class_accuracy":
        return 1.0 / (len(present) * int(counts.min()))
    if name == "roc_auc":
        if len(present) < 2:
            return 0.0
        if task == "binary":
            return 1.0 / (int(counts[present == 1].sum()) * int(counts[present == 0].sum()))
        return max(1.0 / (len(present) * int(c) * (n - int(c))) for c in counts)
    return _kappa_resolution(labels, probabilities.argmax(axis=1), probabilities.shape[1])


def _kappa_resolution(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    def kappa(pred: np.ndarray) -> float:
        return float(
            cohen_kappa_score(labels, pred, labels=np.arange(n_classes), weights="quadratic")
        )

    if np.unique(np.concatenate([labels, predicted])).size < 2:
        return 0.0
    base = kappa(predicted)
    largest = 0.0
    for i in np.linspace(0, len(labels) - 1, min(64, len(labels))).astype(int):
        for step in (-1, 1):
            moved = predicted.copy()
            moved[i] = min(max(moved[i] + step, 0), n_classes - 1)
            if moved[i] != predicted[i]:
                value = kappa(moved)
                if math.isfinite(value) and math.isfinite(base):
                    largest = max(largest, abs(value - base))
    return largest


def check_metric_names(task: str, names: tuple[str, ...]) -> None:
    """Check that the task is known and every metric is defined for it.

    Args:
        task: Task type.
        names: Metric names.

    Raises:
        ValueError: On an unknown task or metric, or a metric not defined for the task.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    for name in names:
        if name not in METRIC_HIGHER_IS_BETTER:
            raise ValueError(
                f"unknown metric {name!r}; expected one of {tuple(METRIC_HIGHER_IS_BETTER)}"
            )
        if task == "multilabel" and name not in MULTILABEL_METRICS:
            raise ValueError(
                f"metric {name!r} is not defined for multilabel tasks; "
                f"use one of {MULTILABEL_METRICS}"
            )


def _check_inputs(
    task: str, labels: np.ndarray, probabilities: np.ndarray, names: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    check_metric_names(task, names)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if probabilities.ndim != 2:
        raise ValueError(f"probabilities must be 2-D (N, C), got shape {probabilities.shape}")
    n, n_classes = probabilities.shape
    if n == 0:
        raise ValueError("no samples: probabilities has 0 rows")
    if not np.all(np.isfinite(probabilities)):
        raise ValueError("probabilities contain NaN or infinite values")
    if task == "binary" and n_classes != 2:
        raise ValueError(f"binary task needs two probability columns, got {n_classes}")
    if task == "multilabel":
        if labels.shape != probabilities.shape:
            raise ValueError(
                f"multilabel labels must have the shape of probabilities {probabilities.shape}, "
                f"got {labels.shape}"
            )
        if not np.all((labels == 0) | (labels == 1)):
            raise ValueError("multilabel labels must be 0/1")
        return labels.astype(np.int64), probabilities
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    if not is_integer_valued(labels):
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(
            f"labels must lie in [0, {n_classes}) to match the probability columns, "
            f"got range [{labels.min()}, {labels.max()}]"
        )
    return labels, probabilities


def is_integer_valued(values: np.ndarray) -> bool:
    """Whether an array can hold class ids.

    Args:
        values: Any array.

    Returns:
        True for integer and bool arrays, and for float arrays holding only whole numbers.
    """
    if values.dtype.kind in "iub":
        return True
    return values.dtype.kind == "f" and bool(np.all(np.mod(values, 1) == 0))


def _single_label_metric(
    name: str, task: str, labels: np.ndarray, probabilities: np.ndarray, notes: dict[str, Any]
) -> tuple[float, str | None]:
    n_classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    if name == "accuracy":
        return float(np.mean(predicted == labels)), None
    if name == "mean_per_class_accuracy":
        present = np.unique(labels)
        recalls = [np.mean(predicted[labels == k] == k) for k in present]
        return float(np.mean(recalls)), None
    if name == "quadratic_kappa":
        confusion = np.zeros((n_classes, n_classes))
        np.add.at(confusion, (labels, predicted), 1)
        expected = np.outer(confusion.sum(axis=1), confusion.sum(axis=0))
        weights = (np.arange(n_classes)[:, None] - np.arange(n_classes)[None, :]) ** 2
        if np.sum(weights * expected) == 0:
            return math.nan, "kappa is 0/0: labels and predictions are the same single class"
        # labels=arange(C) keeps ordinal distances right when some classes are absent;
        # without it sklearn re-indexes the classes that occur.
        kappa = cohen_kappa_score(
            labels, predicted, labels=np.arange(n_classes), weights="quadratic"
        )
        return float(kappa), None
    # roc_auc
    present = np.unique(labels)
    if present.size < 2:
        return math.nan, f"ROC AUC needs two classes in labels, found only class {present[0]}"
    if task == "binary":
        return binary_roc_auc(labels == 1, probabilities[:, 1]), None
    aucs = [binary_roc_auc(labels == k, probabilities[:, k]) for k in present]
    notes["roc_auc_n_scored"] = int(present.size)
    return float(np.mean(aucs)), None


def _multilabel_metric(
    name: str, labels: np.ndarray, probabilities: np.ndarray, notes: dict[str, Any]
) -> tuple[float, str | None]:
    if name == "accuracy":
        return float(np.mean((probabilities >= 0.5) == (labels == 1))), None
    # roc_auc
    aucs: list[float] = []
    skipped: list[int] = []
    for j in range(labels.shape[1]):
        column = labels[:, j]
        if column.min() == column.max():
            skipped.append(j)
            continue
        aucs.append(binary_roc_auc(column == 1, probabilities[:, j]))
    notes["roc_auc_n_scored"] = len(aucs)
    notes["roc_auc_skipped_labels"] = skipped
    if not aucs:
        return math.nan, "ROC AUC needs both values in at least one label column; none has"
    return float(np.mean(aucs)), None


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average (``scipy.stats.rankdata``'s default).

    The ranks are whole or half numbers, exact in float64; one sort, without rankdata's
    per-call overhead (it was most of the time of scoring one fit on a few hundred rows).
    """
    order = np.argsort(values)
    ordered = values[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    ends = np.append(starts[1:], len(values))
    ranks = np.empty(len(values))
    # A tie group at sorted positions start..end-1 has ranks start+1..end: average (start+end+1)/2.
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def binary_roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the ``positive`` rows (both classes present).

    The Mann-Whitney form: the probability that a positive row scores above a negative
    one, ties counting one half, from the average ranks of all scores. It equals
    scikit-learn's ``roc_auc_score`` (whose trapezoids give a tie the same half) up to
    float rounding, without its input validation, which cost more than the sum itself
    when a linear sweep scores 45 fits.

    Args:
        positive: Boolean (N,) mask of the positive class.
        scores: (N,) scores, higher meaning more positive.

    Returns:
        The AUC in [0, 1].
    """
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
