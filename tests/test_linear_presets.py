"""The linear probe's peer presets against oracles written from the peers' procedure.

The oracles re-implement linusericsson/ssl-transfer@416913f:linear.py (``LinearTester``
and its ``LogisticRegression`` wrapper; jonahanton/SSL_medicalimaging@77fceef:linear.py is
the same with its own dataset metrics) in a few lines of scikit-learn and torch: one
warm-started estimator over ``C = 1. / wd.item()`` for ``wd in torch.logspace(-6, 5, 45)``,
strict ``>`` from 0, refit on train+val from the sweep's last coefficients, the score
computed with ``clf.score`` or the confusion matrix.

scikit-learn >= 1.8 has no ``multi_class``. For binary tasks the peers' estimator was a
two-class softmax, which the binary oracle writes as scikit-learn 1.7.2's
``_logistic_regression_path`` ran it: scipy's L-BFGS-B on scikit-learn's multinomial loss,
the two class vectors raveled side by side. That loss is checked against the softmax
objective written in numpy. The chained fits cannot be checked against numpy end to end:
the peers stop every fit after 100 iterations on raw, badly scaled features, and 45 fits,
each warm-started from the last, amplify a difference in the last bit of the loss into a
different validation curve (measured: 1e-14 after one fit of 15 iterations, 5e-8 after
six). So the numpy objective is compared fit by fit, over a few iterations.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import logsumexp
from sklearn._loss.loss import HalfMultinomialLoss
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.linear_model._linear_loss import LinearModelLoss
from sklearn.metrics import confusion_matrix
from threadpoolctl import threadpool_limits

from harness.config.cards import get_model_card
from harness.protocols.base import SplitFeatures, TaskInfo
from harness.protocols.linear import LinearConfig, run
from harness.protocols.linear_fit import Fitter, predict_proba
from harness.protocols.linear_presets import peer_c_values
from harness.protocols.linear_select import mean_per_class_accuracy_with_predictions
from harness.protocols.linear_softmax import TwoClassSoftmax
from harness.protocols.registry import CaseNotApplicable, get_preset

PRESETS = ("ssl-transfer", "ssl-medicalimaging")
LBFGS_OPTIONS = {"maxls": 50, "gtol": 1e-4, "ftol": 64 * np.finfo(float).eps}


class _PeerBinarySoftmax:
    """scikit-learn 1.7.2's ``multi_class='multinomial'`` lbfgs fit on two classes."""

    def __init__(self, max_iter: int = 100) -> None:
        self.max_iter = max_iter
        self.c = 1.0
        self.u: np.ndarray | None = None  # W[1]: weights and intercept of the second class

    def set_params(self, C: float) -> None:
        self.c = C

    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        n, d = x.shape
        loss = LinearModelLoss(base_loss=HalfMultinomialLoss(n_classes=2), fit_intercept=True)
        w = np.zeros((2, d + 1))
        if self.u is not None:  # warm start
            w[0], w[1] = -self.u, self.u
        result = minimize(
            loss.loss_gradient,
            w.T.ravel(),
            jac=True,
            method="L-BFGS-B",
            args=(x, y.astype(np.float64), None, 1.0 / (self.c * n), 1),
            options={"maxiter": self.max_iter, **LBFGS_OPTIONS},
        )
        self.u = result.x.reshape(d + 1, 2).T[1]

    def predict(self, x: np.ndarray) -> np.ndarray:
        assert self.u is not None
        return (x @ self.u[:-1] + self.u[-1] > 0).astype(int)

    def score(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(self.predict(x) == y))


def _peer_oracle(
    train: SplitFeatures,
    val: SplitFeatures,
    test: SplitFeatures,
    metric: str,
    binary: bool,
    binary_as_2c: bool = False,
) -> tuple[float, float, list[float]]:
    """ssl-transfer's validate() + evaluate(); returns (C, test score in [0, 1], val scores).

    ``binary_as_2c`` fits a binary task as a binomial logistic regression at ``2 C``
    instead: the same model at the optimum, another one after 100 iterations.
    """
    # sklearn 0.22 converted lbfgs inputs to float64.
    xs = [s.features.astype(np.float64) for s in (train, val, test)]
    factor = 2.0 if binary_as_2c else 1.0
    clf: LogisticRegression | _PeerBinarySoftmax
    if binary and not binary_as_2c:
        clf = _PeerBinarySoftmax()
    else:
        clf = LogisticRegression(solver="lbfgs", warm_start=True)  # max_iter=100, tol=1e-4

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
    assert result.details["estimator_C"] == best_c
    assert result.metrics[metric] == pytest.approx(test_score, abs=1e-6)
    np.testing.assert_allclose(_val_curve_in_sweep_order(result), curve, atol=1e-6)
    assert len(set(curve)) > 3
    # The binomial fit at 2 C, equal at the optimum, walks elsewhere in 100 iterations.
    _, _, as_2c = _peer_oracle(train, val, test, metric, binary=True, binary_as_2c=True)
    assert np.max(np.abs(np.subtract(as_2c, curve))) > 0.01


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
    assert preset is not None and preset.version == {"ssl-transfer": 3}.get(name, 2)
    no_norm = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # SSL_medicalimaging's --no-norm
    imagenet = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    moco = SimpleNamespace(case=SimpleNamespace(model=get_model_card("resnet50.moco_v2")))
    assert preset.overrides(moco) == {
        "input_size": 224,
        "interpolation": "bicubic",
        "crop_pct": 1.0,
        "crop_mode": "center",
        **(no_norm if name == "ssl-medicalimaging" else imagenet),
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


def _softmax_objective(
    x: np.ndarray, y: np.ndarray, c: float
) -> tuple[np.ndarray, Callable[[np.ndarray], tuple[float, np.ndarray]]]:
    """The peers' binary objective in numpy: mean softmax cross-entropy + ||W||^2 / (2 C n).

    Parameters are (2, D + 1) raveled in Fortran order (classes side by side), the
    intercepts last and unpenalised. Returns (x with a ones column, objective).
    """
    n, d = x.shape
    onehot = np.eye(2)[y]
    xb = np.hstack([x, np.ones((n, 1))])

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = theta.reshape(d + 1, 2).T
        logits = xb @ w.T
        log_p = logits - logsumexp(logits, axis=1, keepdims=True)
        grad = (np.exp(log_p) - onehot).T @ xb / n
        grad[:, :d] += w[:, :d] / (c * n)
        loss = -np.sum(onehot * log_p) / n + np.sum(w[:, :d] ** 2) / (2 * c * n)
        return loss, grad.T.ravel()

    return xb, objective


def test_two_class_softmax_fits_the_peers_objective_fit_by_fit() -> None:
    train, _, _ = _splits(2, 2)
    x, y = train.features.astype(np.float64), train.labels
    n, d = x.shape
    rng = np.random.default_rng(0)
    for c in (1e-3, 1.0, 1e3):
        _, objective = _softmax_objective(x, y, c)
        loss = LinearModelLoss(base_loss=HalfMultinomialLoss(n_classes=2), fit_intercept=True)
        for _ in range(3):  # scikit-learn's loss is that objective
            theta = 0.1 * rng.normal(size=2 * (d + 1))
            value, grad = objective(theta)
            sk_value, sk_grad = loss.loss_gradient(theta, x, y.astype(float), None, 1 / (c * n), 1)
            assert sk_value == pytest.approx(value, rel=1e-12)
            np.testing.assert_allclose(sk_grad, grad, rtol=1e-10, atol=1e-12)
        # One warm-started fit of 10 iterations follows the numpy objective's L-BFGS-B.
        previous = rng.normal(size=d + 1) / np.r_[np.logspace(-1, 1.5, d), 1.0]
        start = np.stack([-previous, previous]).T.ravel()
        reference = (
            minimize(
                objective,
                start,
                jac=True,
                method="L-BFGS-B",
                options={"maxiter": 10, **LBFGS_OPTIONS},
            )
            .x.reshape(d + 1, 2)
            .T[1]
        )
        model = TwoClassSoftmax(C=c, max_iter=10, warm_start=True)
        model.coef_, model.intercept_ = previous[np.newaxis, :d], previous[d:]
        with pytest.warns(ConvergenceWarning):
            model.fit(x, y)
        fitted = np.r_[model.coef_[0], model.intercept_]
        np.testing.assert_allclose(
            fitted, reference, rtol=1e-8, atol=1e-10 * np.abs(reference).max()
        )
        assert model.n_iter_.tolist() == [10]
        # The binomial fit at 2 C from the same start is elsewhere after 10 iterations.
        binomial = LogisticRegression(C=2 * c, max_iter=10, warm_start=True)
        binomial.coef_, binomial.intercept_ = 2 * previous[np.newaxis, :d], 2 * previous[d:]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            binomial.fit(x, y)
        as_2c = np.r_[binomial.coef_[0], binomial.intercept_] / 2
        assert np.abs(as_2c - reference).max() > 1e-3 * np.abs(reference).max()
        probabilities = model.predict_proba(x)
        logits = x @ model.coef_[0] + model.intercept_[0]
        np.testing.assert_allclose(probabilities[:, 1], 1 / (1 + np.exp(-2 * logits)), rtol=1e-12)


def test_two_class_softmax_rejects_other_than_two_classes() -> None:
    x = np.zeros((6, 2))
    with pytest.raises(ValueError, match="two classes"):
        TwoClassSoftmax().fit(x, np.array([0, 1, 2, 0, 1, 2]))
    with pytest.raises(ValueError, match="no parameter 'penalty'"):
        TwoClassSoftmax().set_params(penalty="l1")
    with pytest.raises(RuntimeError, match="fit before"):
        TwoClassSoftmax().predict_proba(x)
