"""Tests of the transferability estimates and rank correlations against independent routes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import optimize
from scipy.stats import multivariate_normal

from harness.analyses.ranking import MEAN_ROW, estimate_rank_correlations, kendall, spearman
from harness.analyses.transferability import (
    frechet_distance,
    frechet_distance_gaussians,
    leep,
    leep_from_logits,
    logme,
    logme_evidence,
    nleep,
)


def _evidence_by_optimisation(f: np.ndarray, y: np.ndarray) -> float:
    """max over (alpha, beta) of log N(y; 0, I / beta + F F^T / alpha), per image.

    The marginal likelihood of Bayesian linear regression written directly as a Gaussian
    density and maximised by a generic optimiser: no SVD, no fixed-point updates.
    """
    n = len(y)

    def negative(log_params: np.ndarray) -> float:
        alpha, beta = np.exp(log_params)
        cov = np.eye(n) / beta + f @ f.T / alpha
        return -multivariate_normal(np.zeros(n), cov).logpdf(y)

    best = min(
        (
            optimize.minimize(
                negative,
                start,
                method="Nelder-Mead",
                options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000},
            )
            for start in ([0.0, 0.0], [2.0, -1.0])
        ),
        key=lambda r: r.fun,
    )
    return -best.fun / n


@pytest.mark.parametrize(("n", "d"), [(40, 5), (12, 20)])
def test_logme_matches_direct_evidence_maximisation(n: int, d: int) -> None:
    rng = np.random.default_rng(n)
    f = rng.normal(size=(n, d))
    y = f @ rng.normal(size=d) * 0.5 + rng.normal(size=n)
    value, alpha, beta = logme_evidence(f, y)
    assert alpha > 0 and beta > 0
    assert value == pytest.approx(_evidence_by_optimisation(f, y), abs=1e-6)


def test_logme_in_the_noise_free_limit_matches_direct_maximisation() -> None:
    # 30 images in 60 dimensions, a 0/1 target: the evidence grows up to beta -> inf
    rng = np.random.default_rng(2)
    f = rng.normal(size=(30, 60))
    y = (np.arange(30) % 3 == 0).astype(float)
    f[:, :3] += 3 * y[:, None]
    value, alpha, beta = logme_evidence(f, y)
    assert math.isinf(beta) and alpha > 0
    assert value == pytest.approx(_evidence_by_optimisation(f, y), abs=1e-6)


def test_logme_skips_a_class_without_images() -> None:
    rng = np.random.default_rng(8)
    f = rng.normal(size=(20, 4))
    labels = np.arange(20) % 2
    assert logme(f, labels, 3) == pytest.approx(logme(f, labels, 2), rel=1e-12)


def test_logme_of_classes_is_the_mean_over_one_hot_columns() -> None:
    rng = np.random.default_rng(1)
    f = rng.normal(size=(30, 4))
    labels = np.arange(30) % 3
    columns = [logme_evidence(f, (labels == c).astype(float))[0] for c in range(3)]
    assert logme(f, labels, 3) == pytest.approx(np.mean(columns), rel=1e-12)
    multilabel = np.eye(3)[labels]
    assert logme(f, multilabel) == pytest.approx(np.mean(columns), rel=1e-12)


def test_logme_ranks_informative_features_above_noise() -> None:
    rng = np.random.default_rng(2)
    labels = np.arange(120) % 2
    informative = rng.normal(size=(120, 8)) + 3.0 * labels[:, None]
    noise = rng.normal(size=(120, 8))
    assert logme(informative, labels) > logme(noise, labels)


def test_leep_matches_a_hand_computed_example() -> None:
    theta = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    labels = np.array([0, 0, 1, 1])
    # P(z, y) = sum_i theta_iz [y_i = y] / N; P(y | z) = P(z, y) / P(z)
    joint = np.zeros((2, 2))
    for i in range(4):
        for z in range(2):
            joint[z, labels[i]] += theta[i, z] / 4
    conditional = joint / joint.sum(axis=1, keepdims=True)
    expected = np.mean(
        [math.log(sum(conditional[z, labels[i]] * theta[i, z] for z in range(2))) for i in range(4)]
    )
    assert leep(theta, labels, 2) == pytest.approx(expected, rel=1e-12)
    logits = np.log(theta) + 1.5  # softmax is shift-invariant
    assert leep_from_logits(logits, labels, 2) == pytest.approx(expected, rel=1e-12)


def test_leep_of_a_source_that_is_the_target_is_zero() -> None:
    labels = np.array([0, 1, 2, 1, 0])
    assert leep(np.eye(3)[labels], labels, 3) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="summing to 1"):
        leep(np.full((5, 3), 0.5), labels, 3)


def test_nleep_prefers_separable_features() -> None:
    rng = np.random.default_rng(3)
    labels = np.arange(90) % 3
    separable = rng.normal(size=(90, 6)) + 8.0 * np.eye(3, 6)[labels]
    noise = rng.normal(size=(90, 6))
    good = nleep(separable, labels, 3)
    assert good == pytest.approx(0.0, abs=0.05)  # clusters = classes: P(y | z) ~ 1
    assert nleep(noise, labels, 3) < good - 0.3


def test_frechet_distance_of_identical_samples_is_zero() -> None:
    x = np.random.default_rng(4).normal(size=(200, 5))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_samples_of_one_gaussian_is_near_zero() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(20000, 3)), rng.normal(size=(20000, 3))
    shifted = rng.normal(size=(20000, 3)) + 1.0
    assert frechet_distance(a, b) < 0.01
    assert frechet_distance(a, shifted) == pytest.approx(3.0, abs=0.1)


def test_frechet_distance_closed_form_of_diagonal_gaussians() -> None:
    mu_1, mu_2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    var_1, var_2 = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 0.25])
    # diagonal: |mu1 - mu2|^2 + sum (sqrt(v1) - sqrt(v2))^2
    expected = 5.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0.0
    value = frechet_distance_gaussians(mu_1, np.diag(var_1), mu_2, np.diag(var_2))
    assert value == pytest.approx(expected, rel=1e-12)
    # a common rotation of both Gaussians leaves the distance unchanged
    q, _ = np.linalg.qr(np.random.default_rng(6).normal(size=(3, 3)))
    rotated = frechet_distance_gaussians(
        q @ mu_1, q @ np.diag(var_1) @ q.T, q @ mu_2, q @ np.diag(var_2) @ q.T
    )
    assert rotated == pytest.approx(expected, rel=1e-10)


def test_rank_correlations_of_a_known_permutation() -> None:
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert kendall([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx((5 - 1) / 6)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(kendall([1, 2, 3], [5, 5, 5]))
    assert math.isnan(spearman([1], [2]))


def _row(model: str, dataset: str, protocol: str, **metrics: float) -> dict[str, object]:
    row: dict[str, object] = {"suite": "demo", "profile": "smoke", "model": model}
    row.update(dataset=dataset, protocol=protocol, primary_value=next(iter(metrics.values())))
    row.update({f"metric_{name}": value for name, value in metrics.items()})
    return row


def test_estimate_rank_correlations_per_dataset_and_mean() -> None:
    rows = []
    accuracy = {"a": 0.9, "b": 0.8, "c": 0.6}
    logme_values = {"d1": {"a": 1.0, "b": 0.5, "c": 0.1}, "d2": {"a": 0.1, "b": 0.5, "c": 1.0}}
    for dataset, values in logme_values.items():
        for model in "abc":
            rows.append(_row(model, dataset, "linear", accuracy=accuracy[model]))
            rows.append(_row(model, dataset, "transferability", logme=values[model]))
    rows.append(_row("a", "d1", "knn", accuracy=0.1))  # other protocols are ignored
    out = estimate_rank_correlations(pd.DataFrame(rows), estimates=("logme", "leep"))
    table = out.set_index(["estimate", "dataset"])
    assert table.loc[("logme", "d1"), "spearman"] == pytest.approx(1.0)
    assert table.loc[("logme", "d2"), "kendall"] == pytest.approx(-1.0)
    assert table.loc[("logme", MEAN_ROW), "spearman"] == pytest.approx(0.0)
    assert table.loc[("logme", MEAN_ROW), "n_models"] == 6
    assert "leep" not in set(out["estimate"])  # no record carries it


def test_estimate_rank_correlations_of_no_records_is_empty() -> None:
    out = estimate_rank_correlations(pd.DataFrame())
    assert list(out.columns) == ["estimate", "dataset", "n_models", "spearman", "kendall"]
    assert out.empty


def test_frechet_distance_of_wide_features_matches_the_covariance_route() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(12, 30)), rng.normal(size=(9, 30)) * 1.5 + 0.2
    expected = frechet_distance_gaussians(
        a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    )
    # the covariance route takes square roots of rounding-level eigenvalues: ~1e-8 each
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
