"""The linear probe's peer presets against oracles written from the peers' procedure.

The oracles re-implement linusericsson/ssl-transfer@416913f:linear.py (``LinearTester``
and its ``LogisticRegression`` wrapper; jonahanton/SSL_medicalimaging@77fceef:linear.py is
the same with its own dataset metrics) in a few lines of scikit-learn and torch: one
warm-started estimator over ``C = 1. / wd.item()`` for ``wd in torch.logspace(-6, 5, 45)``,
strict ``>`` from 0, refit on train+val from the sweep's last coefficients, the score
computed with ``clf.score`` or the confusion matrix. scikit-learn >= 1.8 has no
``multi_class``; the two-class softmax the peers fitted for binary tasks is written here
with scipy and checked against the binary fit at ``2 C`` that both the oracle and the
preset use.
"""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import logsumexp
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix
from threadpoolctl import threadpool_limits

from harness.protocols.base import SplitFeatures, TaskInfo
from harness.protocols.linear import LinearConfig, run
from harness.protocols.linear_fit import Fitter, predict_proba
from harness.protocols.linear_presets import peer_c_values
from harness.protocols.linear_select import mean_per_class_accuracy_with_predictions
from harness.protocols.registry import CaseNotApplicable, get_preset

PRESETS = ("ssl-transfer", "ssl-medicalimaging")


def _peer_oracle(
    train: SplitFeatures, val: SplitFeatures, test: SplitFeatures, metric: str, binary: bool
) -> tuple[float, float, list[float]]:
    """ssl-transfer's validate() + evaluate(); returns (C, test score in [0, 1], val scores)."""
    # sklearn 0.22 converted lbfgs inputs to float64.
    xs = [s.features.astype(np.float64) for s in (train, val, test)]
    clf = LogisticRegression(solver="lbfgs", warm_start=True)  # max_iter=100, tol=1e-4
    factor = 2.0 if binary else 1.0  # multi_class='multinomial' on two classes

    def fit_score(x: np.ndarray, y: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray) -> float:
        clf.fit(x, y)
        if metric == "accuracy":
            return 100.0 * clf.score(x_eval, y_eval)
        cm = confusion_matrix(y_eval, clf.predict(x_eval))
        with np.errstate(invalid="ignore"):
            return 100.0 * (cm.diagonal() / cm.sum(axis=1)).mean()

    best_score, best_c, curve = 0.0, None, []
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for wd in torch.logspace(-6, 5, 45):
            c = 1.0 / wd.item()
            clf.set_params(C=factor * c)
            score = fit_score(xs[0], train.labels, xs[1], val.labels)
            curve.append(score / 100.0)
            if score > best_score:
                best_score, best_c = score, c
        assert best_c is not None
        clf.set_params(C=factor * best_c)
        x_trainval = np.concatenate([xs[0], xs[1]])
        y_trainval = np.concatenate([train.labels, val.labels])
        test_score = fit_score(x_trainval, y_trainval, xs[2], test.labels)
    return best_c, test_score / 100.0, curve


def _splits(
    seed: int, n_classes: int, dim: int = 12, sizes: tuple[int, int, int] = (150, 75, 150)
) -> tuple[SplitFeatures, ...]:
    """Overlapping Gaussian classes on dimensions of very different scales (raw features)."""
    rng = np.random.default_rng(seed)
    means = 0.5 * rng.normal(size=(n_classes, dim))
    scale = np.logspace(-1, 1.5, dim)

    def split(n: int) -> SplitFeatures:
        labels = rng.permutation(np.arange(n) % n_classes)
        features = (means[labels] + rng.normal(size=(n, dim))) * scale
        return SplitFeatures(features.astype(np.float32), labels.astype(np.int64))

    return tuple(split(n) for n in sizes)


def _config(name: str, task: TaskInfo) -> LinearConfig:
    preset = get_preset("linear", name)
    assert preset is not None
    return preset.configure(SimpleNamespace(task=task))


def _val_curve_in_sweep_order(result) -> list[float]:
    by_c = dict((c, s) for c, s in result.details["val_curve"])
    return [by_c[c] for c in peer_c_values()]


@pytest.mark.parametrize(
    ("n_classes", "metric", "seed"),
    [(4, "accuracy", 0), (5, "mean_per_class_accuracy", 1)],
)
def test_multiclass_matches_the_peer_oracle(n_classes: int, metric: str, seed: int) -> None:
    train, val, test = _splits(seed, n_classes)
    task = TaskInfo("multiclass", n_classes, metric, ("accuracy", "mean_per_class_accuracy"))
    result = run(train, val, test, task, _config("ssl-transfer", task))
    best_c, test_score, curve = _peer_oracle(train, val, test, metric, binary=False)
    assert result.hyperparameters["C"] == best_c
    assert result.metrics[metric] == pytest.approx(test_score, abs=1e-6)
    np.testing.assert_allclose(_val_curve_in_sweep_order(result), curve, atol=1e-6)
    assert len(set(curve)) > 3  # the sweep has a real choice to make
    assert result.details["selection_metric"] == metric


@pytest.mark.parametrize(
    ("primary", "metric"), [("roc_auc", "accuracy"), ("mean_per_class_accuracy",) * 2]
)
def test_binary_matches_the_peer_oracle(primary: str, metric: str) -> None:
    # A binary card ranked on ROC AUC is selected on accuracy, as the peers would.
    train, val, test = _splits(2, 2)
    task = TaskInfo("binary", 2, primary, ("accuracy", "mean_per_class_accuracy", "roc_auc"))
    result = run(train, val, test, task, _config("ssl-transfer", task))
    best_c, test_score, curve = _peer_oracle(train, val, test, metric, binary=True)
    assert result.hyperparameters["C"] == best_c
    assert result.details["estimator_C"] == 2.0 * best_c
    assert result.metrics[metric] == pytest.approx(test_score, abs=1e-6)
    np.testing.assert_allclose(_val_curve_in_sweep_order(result), curve, atol=1e-6)
    assert len(set(curve)) > 3


def test_warm_start_and_selection_change_the_number() -> None:
    # The fields are acted on: without warm start lbfgs (100 iterations, raw features)
    # lands elsewhere, and the medxfer tie-break picks another C on the same curve.
    train, val, test = _splits(0, 4)
    task = TaskInfo("multiclass", 4, "accuracy", ("accuracy",))
    peer = _config("ssl-transfer", task)
    warm = run(train, val, test, task, peer)
    cold = run(train, val, test, task, LinearConfig(**{**peer.to_dict(), "warm_start": False}))
    assert warm.details["val_curve"] != cold.details["val_curve"]
    assert warm.details["not_converged_C"]  # the peers' max_iter=100 binds here
    smallest = run(
        train, val, test, task, LinearConfig(**{**peer.to_dict(), "selection": "smallest-c"})
    )
    assert smallest.details["val_curve"] == warm.details["val_curve"]
    curve = dict((c, s) for c, s in warm.details["val_curve"])
    best = max(curve.values())
    tied = [c for c in peer_c_values() if curve[c] == best]
    assert warm.hyperparameters["C"] == tied[0]  # first in sweep order: the largest C
    assert smallest.hyperparameters["C"] == min(tied)


@pytest.mark.parametrize(
    "task",
    [
        TaskInfo("binary", 2, "mean_per_class_accuracy", ("accuracy",)),
        TaskInfo("ordinal", 5, "mean_per_class_accuracy", ("accuracy",)),
        TaskInfo("multiclass", 3, "accuracy", ("accuracy",)),
    ],
)
def test_ssl_medicalimaging_is_ssl_transfers_procedure(task: TaskInfo) -> None:
    # SSL_medicalimaging's linear.py is ssl-transfer's with --wd-values 45 (the default):
    # the same config, so the oracle tests above cover both.
    assert _config("ssl-medicalimaging", task) == _config("ssl-transfer", task)


def test_two_class_softmax_is_the_binary_fit_at_2c() -> None:
    # The peers' multi_class='multinomial' on two classes, fitted here directly:
    # min_W,b  C * sum_i CE(softmax(W x_i + b), y_i) + ||W||^2 / 2  (b unpenalised).
    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 4))
    y = (x @ np.array([1.0, -0.5, 0.3, 0.0]) + 0.8 * rng.normal(size=80) > 0).astype(int)
    c = 0.05
    onehot = np.eye(2)[y]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:8].reshape(2, 4), theta[8:]
        logits = x @ w.T + b
        log_p = logits - logsumexp(logits, axis=1, keepdims=True)
        residual = np.exp(log_p) - onehot
        loss = -c * np.sum(onehot * log_p) + 0.5 * np.sum(w**2)
        grad_w = c * residual.T @ x + w
        return loss, np.concatenate([grad_w.ravel(), c * residual.sum(axis=0)])

    theta = minimize(objective, np.zeros(10), jac=True, method="BFGS", options={"gtol": 1e-12}).x
    w, b = theta[:8].reshape(2, 4), theta[8:]
    logits = x @ w.T + b
    softmax = np.exp(logits - logsumexp(logits, axis=1, keepdims=True))
    np.testing.assert_allclose(w[0], -w[1], atol=1e-6)  # the symmetric optimum

    def fitted(binary_multinomial: bool) -> np.ndarray:
        config = LinearConfig(
            c_values=(c,), max_iter=10_000, tol=1e-12, binary_multinomial=binary_multinomial
        )
        model, _, converged = Fitter("binary", config).fit(x, y, c)
        assert converged
        return predict_proba(model, x)

    np.testing.assert_allclose(fitted(True), softmax, atol=1e-6)
    assert np.max(np.abs(fitted(False) - softmax)) > 1e-2  # plain C is another model


def test_peer_mean_per_class_accuracy_is_nan_for_a_predicted_absent_class() -> None:
    labels = np.array([0, 0, 1, 1])
    assert mean_per_class_accuracy_with_predictions(labels, np.array([0, 1, 1, 1])) == 0.75
    assert math.isnan(mean_per_class_accuracy_with_predictions(labels, np.array([0, 2, 1, 1])))
    with np.errstate(invalid="ignore"):
        cm = confusion_matrix(labels, np.array([0, 2, 1, 1]))
        assert math.isnan((cm.diagonal() / cm.sum(axis=1)).mean())


def test_peer_grid_is_torch_logspace_in_sweep_order() -> None:
    grid = peer_c_values()
    assert grid == tuple(1.0 / wd.item() for wd in torch.logspace(-6, 5, 45))
    assert grid[0] > grid[-1]  # swept from C = 1e6 down
    # Best Cs that ssl-transfer's run_linear.sh lists (printed from this grid).
    for c in (10000.000252621256, 5623.413277133687, 999.999952502551, 9.99999985098839, 1.0):
        assert c in grid


@pytest.mark.parametrize("name", PRESETS)
def test_preset_registration_and_configuration(name: str) -> None:
    preset = get_preset("linear", name)
    assert preset is not None and preset.version == 1
    no_norm = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # SSL_medicalimaging's --no-norm
    assert dict(preset.preprocessing) == {
        "input_size": 224,
        "interpolation": "bicubic",
        "crop_pct": 1.0,
        "crop_mode": "center",
        **(no_norm if name == "ssl-medicalimaging" else {}),
    }
    assert preset.source.endswith(":linear.py")
    eyepacs = TaskInfo("ordinal", 5, "mean_per_class_accuracy", ("accuracy",))
    config = _config(name, eyepacs)
    assert config.selection_metric == "mean_per_class_accuracy"
    assert config.c_values == peer_c_values()
    assert (config.standardize, config.warm_start, config.max_iter, config.max_iter_cap) == (
        False,
        True,
        100,
        100,
    )
    assert config.selection == "first-strict" and config.binary_multinomial
    assert (
        _config(name, TaskInfo("ordinal", 5, "quadratic_kappa", ("accuracy",))).selection_metric
        == "accuracy"
    )
    with pytest.raises(CaseNotApplicable, match="multilabel"):
        _config(name, TaskInfo("multilabel", 5, "roc_auc", ("roc_auc",)))
