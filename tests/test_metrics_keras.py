"""``roc_auc_keras``: Keras' default AUC, as revisiting-transfer scores its folds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from harness.protocols.metrics import compute_metrics, compute_metrics_with_notes
from harness.protocols.metrics_keras import keras_roc_auc, keras_thresholds, one_hot


def _oracle(onehot: np.ndarray, predictions: np.ndarray) -> float:
    """keras.metrics.AUC() written out: a confusion matrix per threshold, then trapezoids."""
    y = onehot.reshape(-1) == 1
    p = predictions.reshape(-1).astype(np.float32)
    thresholds = [np.float32(-1e-7)]
    thresholds += [np.float32((i + 1) / 199) for i in range(198)]
    thresholds += [np.float32(1 + 1e-7)]
    tpr, fpr = [], []
    for t in thresholds:
        tp = sum(1 for yi, pi in zip(y, p, strict=True) if yi and pi > t)
        fn = sum(1 for yi, pi in zip(y, p, strict=True) if yi and not pi > t)
        fp = sum(1 for yi, pi in zip(y, p, strict=True) if not yi and pi > t)
        tn = sum(1 for yi, pi in zip(y, p, strict=True) if not yi and not pi > t)
        tpr.append(tp / (tp + fn) if tp + fn else 0.0)
        fpr.append(fp / (fp + tn) if fp + tn else 0.0)
    return sum(
        (fpr[i] - fpr[i + 1]) * (tpr[i] + tpr[i + 1]) / 2 for i in range(len(thresholds) - 1)
    )


def test_thresholds_are_keras_defaults() -> None:
    t = keras_thresholds()
    assert t.shape == (200,) and t.dtype == np.float32
    assert t[0] == np.float32(-1e-7) and t[-1] == np.float32(1 + 1e-7)
    assert t[1] == np.float32(1 / 199) and t[198] == np.float32(198 / 199)


def test_separated_scores_give_one_and_scores_in_one_bin_tie() -> None:
    assert keras_roc_auc(np.array([[0, 1], [1, 0]]), np.array([[0.2, 0.8], [0.7, 0.3]]))[0] == 1.0
    # 0.500 and 0.501 share the bin (99/199, 100/199]: Keras sees a tie, scikit-learn does not
    onehot, scores = np.array([[1], [0]]), np.array([[0.500], [0.501]])
    assert keras_roc_auc(onehot, scores)[0] == pytest.approx(0.5, abs=1e-12)
    assert roc_auc_score([1, 0], [0.500, 0.501]) == 0.0


@pytest.mark.parametrize("n_classes", [2, 4])
def test_matches_the_written_out_keras_procedure(n_classes: int) -> None:
    rng = np.random.default_rng(n_classes)
    labels = rng.integers(0, n_classes, 60)
    logits = rng.normal(size=(60, n_classes)) + 1.5 * np.eye(n_classes)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    onehot = one_hot(labels, n_classes)
    value, reason = keras_roc_auc(onehot, probabilities)
    assert reason is None
    assert value == pytest.approx(_oracle(onehot, probabilities), abs=1e-9)
    task = "binary" if n_classes == 2 else "multiclass"
    metrics = compute_metrics(task, labels, probabilities, ("roc_auc_keras", "roc_auc"))
    assert metrics["roc_auc_keras"] == pytest.approx(value, abs=1e-12)
    # the flattened one-hot problem with fine thresholds is close to, not equal to, sklearn
    flat = roc_auc_score(onehot.reshape(-1), probabilities.reshape(-1))
    assert abs(metrics["roc_auc_keras"] - flat) < 0.01


def test_multilabel_flattens_the_label_matrix() -> None:
    labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    scores = np.array([[0.9, 0.2, 0.6], [0.1, 0.7, 0.3], [0.8, 0.4, 0.5], [0.3, 0.1, 0.95]])
    metrics = compute_metrics("multilabel", labels, scores, ("roc_auc_keras",))
    assert metrics["roc_auc_keras"] == pytest.approx(_oracle(labels, scores), abs=1e-12)


def test_undefined_and_bad_inputs() -> None:
    value, notes = compute_metrics_with_notes(
        "multilabel", np.ones((3, 2)), np.full((3, 2), 0.5), ("roc_auc_keras",)
    )
    assert math.isnan(value["roc_auc_keras"]) and "roc_auc_keras_undefined" in notes
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        keras_roc_auc(np.array([[1, 0]]), np.array([[1.5, -0.5]]))
    with pytest.raises(ValueError, match="differ in shape"):
        keras_roc_auc(np.array([[1, 0]]), np.array([[0.5, 0.5, 0.0]]))
