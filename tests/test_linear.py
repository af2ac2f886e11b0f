"""Tests of the linear-probe protocol on synthetic features with known answers."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from harness.protocols import linear, linear_fit
from harness.protocols.base import SplitFeatures, TaskInfo
from harness.protocols.linear import LinearConfig, run
from harness.protocols.linear_path import solve_path

MULTICLASS = TaskInfo(
    "multiclass", 3, "accuracy", ("accuracy", "mean_per_class_accuracy", "roc_auc")
)
SMALL = LinearConfig(n_c=12)
STD_SKLEARN = {"standardize": True, "solver": "sklearn"}


def _blobs(
    rng: np.random.Generator, n: int, means: np.ndarray, scale: float = 1.0
) -> SplitFeatures:
    labels = np.arange(n) % len(means)
    features = means[labels] + scale * rng.normal(size=(n, means.shape[1]))
    return SplitFeatures(features.astype(np.float32), labels.astype(np.int64))


def _separable(seed: int = 0) -> tuple[SplitFeatures, SplitFeatures, SplitFeatures]:
    rng = np.random.default_rng(seed)
    means = 10.0 * np.eye(3, 20)
    return _blobs(rng, 60, means), _blobs(rng, 30, means), _blobs(rng, 30, means)


def _noisy(seed: int = 0, n_classes: int = 4, dim: int = 32, scale: float = 0.6):
    rng = np.random.default_rng(seed)
    means = scale * rng.normal(size=(n_classes, dim))
    return _blobs(rng, 300, means), _blobs(rng, 150, means), _blobs(rng, 150, means)


def test_separable_blobs_are_solved_perfectly() -> None:
    train, val, test = _separable()
    result = run(train, val, test, MULTICLASS, SMALL)
    assert result.metrics == {"accuracy": 1.0, "mean_per_class_accuracy": 1.0, "roc_auc": 1.0}
    assert result.hyperparameters["val_primary"] == 1.0
    assert result.details["n_train"] == 60
    assert result.details["n_val"] == 30
    assert result.details["n_test"] == 30
    assert result.details["standardize"] is False
    assert result.details["solver"] == "path"
    assert result.details["final_converged"] is True
    assert len(result.details["val_curve"]) == 12


def test_matches_bayes_accuracy_of_two_gaussians() -> None:
    # Classes N(+mu, S) and N(-mu, S) with equal priors: the Bayes rule is linear, its
    # accuracy is Phi(delta / 2) and its AUC is Phi(delta / sqrt 2), where delta is the
    # Mahalanobis distance between the means.
    rng = np.random.default_rng(1)
    dim = 5
    mu = np.array([0.4, -0.2, 0.3, 0.0, 0.1])
    a = rng.normal(size=(dim, dim))
    cov = a @ a.T / dim + 0.5 * np.eye(dim)
    chol = np.linalg.cholesky(cov)
    delta = math.sqrt((2 * mu) @ np.linalg.solve(cov, 2 * mu))
    bayes_accuracy = norm.cdf(delta / 2)
    bayes_auc = norm.cdf(delta / math.sqrt(2))

    def split(n: int) -> SplitFeatures:
        labels = rng.integers(0, 2, n)
        features = np.where(labels[:, None] == 1, mu, -mu) + rng.normal(size=(n, dim)) @ chol.T
        return SplitFeatures(features, labels)

    task = TaskInfo("binary", 2, "roc_auc", ("roc_auc", "accuracy"))
    result = run(split(4000), split(2000), split(20000), task, SMALL)
    assert 0.6 < bayes_accuracy < 0.9  # a problem where the probe has room to be wrong
    assert result.metrics["accuracy"] == pytest.approx(bayes_accuracy, abs=0.03)
    assert result.metrics["roc_auc"] == pytest.approx(bayes_auc, abs=0.03)


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_result_does_not_depend_on_sweep_order(order: str) -> None:
    train, val, test = _noisy(dim=64, scale=0.3)
    task = TaskInfo("multiclass", 4, "accuracy", ("accuracy", "roc_auc"))
    grid = tuple(SMALL.grid())
    if order == "reversed":
        permuted = grid[::-1]
    else:
        permuted = tuple(np.random.default_rng(3).permutation(grid))
    # Standardised: on these features the best validation score is then tied (see below).
    base = run(train, val, test, task, replace(SMALL, standardize=True))
    other = run(train, val, test, task, LinearConfig(c_values=permuted, standardize=True))
    assert other.hyperparameters == base.hyperparameters
    assert other.metrics == base.metrics
    assert other.details["val_curve"] == base.details["val_curve"]
    # The best score is inside the grid and tied between two Cs, so ssl-transfer's
    # "first strictly better in sweep order" would pick differently when reversed.
    scores = [score for _, score in base.details["val_curve"]]
    best = [i for i, score in enumerate(scores) if score == max(scores)]
    assert len(best) == 2
    assert base.hyperparameters["C_index"] == best[0] > 0


def test_ties_go_to_the_smallest_c() -> None:
    train, val, test = _separable()
    result = run(train, val, test, MULTICLASS, SMALL)
    curve = result.details["val_curve"]
    tied = [c for c, score in curve if score == 1.0]
    assert len(tied) > 5  # most of the grid ties on validation
    assert result.hyperparameters["C"] == min(tied)
    assert result.hyperparameters["C_index"] == [c for c, _ in curve].index(min(tied))

    reversed_config = LinearConfig(c_values=tuple(SMALL.grid()[::-1]))
    assert (
        run(train, val, test, MULTICLASS, reversed_config).hyperparameters["C"]
        == (result.hyperparameters["C"])
    )


def test_select_prefers_highest_then_smallest_and_ignores_nan() -> None:
    assert linear._select({1.0: 0.8, 0.1: 0.8, 10.0: 0.7, 0.01: math.nan}) == 0.1
    assert linear._select({10.0: 0.9, 1.0: 0.8}) == 10.0
    with pytest.raises(ValueError, match="NaN for every C"):
        linear._select({1.0: math.nan})


def test_no_convergence_warning_on_standardized_data() -> None:
    # Unscaled, badly conditioned features: standardising makes every sklearn lbfgs fit
    # converge (the reason version 1 standardised by default).
    train, val, test = _noisy(seed=2, dim=64)
    scale = np.logspace(-3, 3, 64, dtype=np.float32)
    scaled = [SplitFeatures(s.features * scale, s.labels) for s in (train, val, test)]
    task = TaskInfo("multiclass", 4, "accuracy", ("accuracy",))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        warnings.simplefilter("error", RuntimeWarning)
        result = run(*scaled, task, replace(LinearConfig.for_profile("paper"), **STD_SKLEARN))
    assert result.details["not_converged_C"] == []
    assert result.details["final_converged"] is True
    assert result.details["warnings"] == []
    assert max(result.details["val_n_iter"]) < 100

    # The same features unstandardised need hundreds to thousands of iterations (876 to
    # 14,161 over seeds 0-5 here; the exact count moves with the BLAS kernels, so a limit
    # near it flips between machines): 50 leaves a wide margin on both sides.
    raw = LinearConfig(
        c_values=(1e-3, 1.0), standardize=False, max_iter=50, max_iter_cap=50, solver="sklearn"
    )
    with pytest.warns(RuntimeWarning, match="did not converge"):
        result = run(*scaled, task, raw)
    assert result.details["not_converged_C"] == [1e-3, 1.0]


def test_non_convergence_is_reported_not_silenced() -> None:
    train, val, test = _noisy()
    task = TaskInfo("multiclass", 4, "accuracy", ("accuracy",))
    config = LinearConfig(c_values=(1e-2, 1e3), max_iter=1, max_iter_cap=4, solver="sklearn")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        with pytest.warns(RuntimeWarning, match="did not converge") as caught:
            result = run(train, val, test, task, config)
    assert result.details["not_converged_C"] == [1e-2, 1e3]
    assert result.details["final_converged"] is False
    assert result.details["n_iter"] == 4  # retried with 4x the iterations
    assert "final refit" in result.details["warnings"][0]
    ours = [w for w in caught if "did not converge" in str(w.message)]
    assert len(ours) == 2  # one for the sweep, one for the refit


def test_standardize_on_is_recorded() -> None:
    train, val, test = _separable()
    result = run(train, val, test, MULTICLASS, LinearConfig(n_c=3, standardize=True))
    assert result.details["standardize"] is True
    assert result.metrics["accuracy"] == 1.0


def _with(split: SplitFeatures, features=None, labels=None) -> SplitFeatures:
    return SplitFeatures(
        split.features if features is None else features,
        split.labels if labels is None else labels,
    )


def test_bad_inputs_name_the_split() -> None:
    train, val, test = _separable()
    config = LinearConfig(n_c=2)
    nan_val = val.features.copy()
    nan_val[3, 1] = np.nan
    cases = [
        ((train, _with(val, features=nan_val), test), r"val split: features contain NaN"),
        ((train, val, _with(test, features=test.features[:, :5])), r"test split: .*dimension 5"),
        ((train, _with(val, labels=np.zeros(len(val), int)), test), "val split has only one class"),
        ((train, val, _with(test, labels=np.ones(len(test), int))), "test split has only one"),
        (
            (_with(train, labels=train.labels % 2), val, test),
            r"train split lacks class\(es\) \[2\]",
        ),
        ((train, val, _with(test, features=test.features[0])), r"test split: .*2-D"),
        ((train, _with(val, labels=val.labels[:-1]), test), r"val split: labels must have shape"),
        ((train, _with(val, labels=val.labels + 1), test), r"val split: labels must lie in"),
    ]
    for splits, match in cases:
        with pytest.raises(ValueError, match=match):
            run(*splits, MULTICLASS, config)
    kappa_multilabel = TaskInfo("multilabel", 3, "quadratic_kappa", ("quadratic_kappa",))
    with pytest.raises(ValueError, match="not defined for multilabel"):
        run(train, val, test, kappa_multilabel, config)


def test_multilabel_one_vs_rest() -> None:
    rng = np.random.default_rng(4)

    def split(n: int) -> SplitFeatures:
        features = rng.normal(size=(n, 16))
        logits = 3.0 * features[:, :3] + 0.5 * rng.normal(size=(n, 3))
        return SplitFeatures(features, (logits > 0).astype(np.int64))

    task = TaskInfo("multilabel", 3, "roc_auc", ("roc_auc", "accuracy"))
    train, val, test = split(400), split(200), split(400)
    result = run(train, val, test, task, SMALL)
    assert result.metrics["roc_auc"] > 0.95
    assert result.metrics["accuracy"] > 0.85
    assert result.details["metric_notes"]["roc_auc_n_scored"] == 3

    # A label column with one value in test is skipped in the mean AUROC and recorded.
    labels = test.labels.copy()
    labels[:, 1] = 0
    result = run(train, val, _with(test, labels=labels), task, SMALL)
    assert result.details["metric_notes"]["roc_auc_skipped_labels"] == [1]
    assert result.details["metric_notes"]["roc_auc_n_scored"] == 2

    constant = train.labels.copy()
    constant[:, 2] = 1
    with pytest.raises(ValueError, match=r"train split: label column\(s\) \[2\]"):
        run(_with(train, labels=constant), val, test, task, SMALL)


def test_for_profile_values() -> None:
    smoke = LinearConfig.for_profile("smoke")
    assert smoke.n_c == 12
    assert smoke.grid()[0] == pytest.approx(1e-5)
    assert smoke.grid()[-1] == pytest.approx(1e6)
    for profile in ("demo", "paper"):
        config = LinearConfig.for_profile(profile)
        assert config.n_c == 45
        assert config.standardize is False
        assert config.solver == "path"
        # ssl-transfer: C = 1 / wd for wd in logspace(-6, 5, 45).
        np.testing.assert_allclose(config.grid(), np.sort(1 / np.logspace(-6, 5, 45)))
    with pytest.raises(ValueError, match="unknown profile"):
        LinearConfig.for_profile("huge")


def test_config_round_trips_and_validates() -> None:
    config = LinearConfig(c_values=(1.0, 0.1))
    as_dict = config.to_dict()
    assert as_dict["c_values"] == [1.0, 0.1]
    assert LinearConfig(**as_dict) == config
    assert LinearConfig(**LinearConfig().to_dict()) == LinearConfig()
    with pytest.raises(ValueError, match="duplicates"):
        LinearConfig(c_values=(1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        LinearConfig(c_values=(0.0,))
    with pytest.raises(ValueError, match="max_iter"):
        LinearConfig(max_iter=100, max_iter_cap=10)
    assert linear.VERSION == 2
    with pytest.raises(ValueError, match="solver must be one of"):
        LinearConfig(solver="newton")
    with pytest.raises(ValueError, match="warm_start needs solver='sklearn'"):
        LinearConfig(warm_start=True)


def _reference_proba(x: np.ndarray, y: np.ndarray, c: float, x_eval: np.ndarray) -> np.ndarray:
    """scikit-learn's lbfgs at a tight tolerance: the optimum the path solver must reach."""
    with threadpool_limits(limits=1):
        model = LogisticRegression(C=c, tol=1e-12, max_iter=100_000).fit(x, y)
    return model.predict_proba(x_eval)


@pytest.mark.parametrize(
    ("n", "dim", "n_classes"), [(240, 24, 3), (240, 24, 2), (60, 120, 4), (60, 120, 2)]
)
def test_path_solver_matches_a_tight_sklearn_fit(n: int, dim: int, n_classes: int) -> None:
    # Dimensions of very different scales (the raw-feature case the preconditioning is
    # for), and fewer samples than dimensions (the basis then spans the training rows).
    rng = np.random.default_rng(n + dim + n_classes)
    means = 0.5 * rng.normal(size=(n_classes, dim))
    scale = np.exp(rng.normal(size=dim))
    split = _blobs(rng, n, means)
    x = split.features.astype(np.float64) * scale
    x_eval = _blobs(rng, 100, means).features.astype(np.float64) * scale
    # Up to C = 10: beyond, n < d data are separable and the optimum's probabilities sit
    # on a flat objective where both solvers stop on its relative change, not on the optimum.
    grid = (1e-3, 0.1, 1.0, 10.0)
    fits = solve_path(x, split.labels, n_classes, grid[::-1], tol=1e-8, max_iter=10_000)
    assert sorted(fits) == list(grid)
    for c in grid:
        assert fits[c].converged
        ours = fits[c].predict_proba(x_eval)
        np.testing.assert_allclose(ours, _reference_proba(x, split.labels, c, x_eval), atol=1e-4)


def test_default_selects_the_same_c_as_separate_sklearn_fits() -> None:
    # A well-separated grid (a factor 100 between Cs): the validation scores of the two
    # solvers' (tightly converged) fits agree, so the choice and the test score do too.
    train, val, test = _noisy(seed=5, dim=48, scale=0.4)
    task = TaskInfo("multiclass", 4, "accuracy", ("accuracy", "roc_auc"))
    grid = (1e-4, 1e-2, 1.0, 100.0)
    path = run(train, val, test, task, LinearConfig(c_values=grid, tol=1e-8))
    sk = run(train, val, test, task, LinearConfig(c_values=grid, tol=1e-8, solver="sklearn"))
    assert path.hyperparameters == sk.hyperparameters
    assert path.details["val_curve"] == sk.details["val_curve"]  # accuracies: same predictions
    assert path.metrics == pytest.approx(sk.metrics, abs=1e-4)
    assert path.details["solver"] == "path" and sk.details["solver"] == "sklearn"
    assert path.details["not_converged_C"] == []


def test_path_multilabel_matches_per_label_sklearn() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(300, 10)) * np.exp(rng.normal(size=10))
    y = (x[:, :3] / x[:, :3].std(axis=0) + rng.normal(size=(300, 3)) > 0).astype(np.int64)
    split = SplitFeatures(x, y)
    task = TaskInfo("multilabel", 3, "roc_auc", ("roc_auc",))
    config = LinearConfig(c_values=(0.01, 1.0), tol=1e-8)
    result = run(split, split, split, task, config)
    c = result.hyperparameters["C"]
    ours = linear_fit.make_fitter("multilabel", config).refit(x, y, c)[0]
    for j, label_fit in enumerate(ours):
        np.testing.assert_allclose(
            label_fit.predict_proba(x), _reference_proba(x, y[:, j], c, x), atol=1e-4
        )
