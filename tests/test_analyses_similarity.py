"""Tests of the representation-similarity functions against independently computed values."""

from __future__ import annotations

import numpy as np
import pytest

from harness.analyses.similarity import (
    agreement_summary,
    cca_correlations,
    cca_similarity,
    chance_agreement,
    gram_cka,
    linear_cka,
    prediction_agreement,
    rbf_cka,
    svcca,
    svd_reduce,
)


def _random(seed: int, n: int = 60, d: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def _orthogonal(seed: int, d: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


def _centred_orthonormal(seed: int, n: int, k: int) -> np.ndarray:
    """k orthonormal columns, each summing to zero."""
    raw = np.random.default_rng(seed).normal(size=(n, k))
    q, _ = np.linalg.qr(raw - raw.mean(axis=0))
    return q


def _hsic_trace(k: np.ndarray, m: np.ndarray) -> float:
    """HSIC as trace(K H L H), the textbook formula (an independent route)."""
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ m @ h))


def _rbf_by_loops(x: np.ndarray, threshold: float) -> np.ndarray:
    n = len(x)
    d2 = np.array([[np.sum((x[i] - x[j]) ** 2) for j in range(n)] for i in range(n)])
    return np.exp(-d2 / (2 * threshold**2 * np.median(d2)))


def test_cka_of_a_representation_with_itself_is_one() -> None:
    x = _random(0)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert rbf_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_isotropic_scaling_and_shifts() -> None:
    x = _random(1)
    y = 3.7 * x @ _orthogonal(2, x.shape[1]) + 5.0
    assert linear_cka(x, y) == pytest.approx(1.0, abs=1e-10)
    assert rbf_cka(x, y, threshold=0.5) == pytest.approx(1.0, abs=1e-10)
    z = _random(3, d=5)
    assert linear_cka(y, z) == pytest.approx(linear_cka(x, z), abs=1e-10)
    assert rbf_cka(y, z) == pytest.approx(rbf_cka(x, z), abs=1e-10)


def test_cka_is_not_invariant_to_anisotropic_scaling() -> None:
    x = _random(4)
    assert linear_cka(x, x * np.linspace(0.1, 10.0, x.shape[1])) < 0.99


def test_linear_cka_of_single_columns_is_their_squared_correlation() -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(size=40)
    b = 0.5 * a + rng.normal(size=40)
    expected = np.corrcoef(a, b)[0, 1] ** 2
    assert linear_cka(a[:, None], b[:, None]) == pytest.approx(expected, rel=1e-12)


def test_linear_cka_closed_form_of_two_scaled_orthogonal_directions() -> None:
    # X = [s1 u, s2 v], Y = u with u, v centred orthonormal:
    # ||Y^T X||^2 = s1^2, ||X^T X|| = sqrt(s1^4 + s2^4), ||Y^T Y|| = 1.
    basis = _centred_orthonormal(6, 30, 2)
    s1, s2 = 2.0, 3.0
    x = np.column_stack([s1 * basis[:, 0], s2 * basis[:, 1]])
    y = basis[:, :1]
    assert linear_cka(x, y) == pytest.approx(s1**2 / np.sqrt(s1**4 + s2**4), rel=1e-12)


def test_linear_cka_equals_cka_of_linear_gram_matrices() -> None:
    x, y = _random(7, d=6), _random(8, d=3)
    expected = _hsic_trace(x @ x.T, y @ y.T) / np.sqrt(
        _hsic_trace(x @ x.T, x @ x.T) * _hsic_trace(y @ y.T, y @ y.T)
    )
    assert linear_cka(x, y) == pytest.approx(expected, rel=1e-10)
    assert gram_cka(x @ x.T, y @ y.T) == pytest.approx(expected, rel=1e-10)


def test_rbf_cka_matches_the_trace_formula_on_a_small_example() -> None:
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [1.0, 1.0]])
    y = np.array([[1.0], [0.0], [2.0], [5.0], [0.5]])
    k, m = _rbf_by_loops(x, 0.8), _rbf_by_loops(y, 0.8)
    expected = _hsic_trace(k, m) / np.sqrt(_hsic_trace(k, k) * _hsic_trace(m, m))
    assert rbf_cka(x, y, threshold=0.8) == pytest.approx(expected, rel=1e-10)


def test_cka_rejects_different_images() -> None:
    with pytest.raises(ValueError, match="same images"):
        linear_cka(_random(0, n=10), _random(1, n=11))
    with pytest.raises(ValueError, match="non-finite"):
        linear_cka(np.full((4, 2), np.nan), _random(1, n=4))


def test_cca_of_single_columns_is_the_absolute_correlation() -> None:
    rng = np.random.default_rng(9)
    a = rng.normal(size=50)
    b = -0.3 * a + rng.normal(size=50)
    expected = abs(np.corrcoef(a, b)[0, 1])
    assert cca_correlations(a[:, None], b[:, None]) == pytest.approx([expected], rel=1e-10)
    assert svcca(a[:, None], b[:, None]) == pytest.approx(expected, rel=1e-10)


def test_cca_matches_the_eigenvalues_of_the_covariance_product() -> None:
    rng = np.random.default_rng(10)
    x = rng.normal(size=(200, 3))
    y = np.column_stack([x @ rng.normal(size=(3, 2)), rng.normal(size=(200, 2))])
    y = y + 0.5 * rng.normal(size=y.shape)
    # rho^2 are the eigenvalues of Sxx^-1 Sxy Syy^-1 Syx (Hotelling 1936)
    c = np.cov(np.column_stack([x, y]), rowvar=False)
    sxx, syy, sxy = c[:3, :3], c[3:, 3:], c[:3, 3:]
    product = np.linalg.solve(sxx, sxy) @ np.linalg.solve(syy, sxy.T)
    expected = np.sqrt(np.sort(np.linalg.eigvals(product).real)[::-1])
    assert cca_correlations(x, y) == pytest.approx(expected, rel=1e-8)
    assert cca_similarity(x, y) == pytest.approx(expected.mean(), rel=1e-8)


def test_svcca_drops_directions_below_one_percent_of_the_variance() -> None:
    # X = [10 u, 0.01 v]: v holds 1e-6 of the variance, so SVD keeps u alone.
    # Y = [u, w] contains u: SVCCA = 1; plain CCA also pairs v with Y: (1 + 0) / 2.
    u, v, w = _centred_orthonormal(11, 40, 3).T
    x = np.column_stack([10 * u, 0.01 * v])
    y = np.column_stack([u, w])
    assert svd_reduce(x).shape == (40, 1)
    assert svcca(x, y) == pytest.approx(1.0, abs=1e-10)
    assert cca_similarity(x, y) == pytest.approx(0.5, abs=1e-10)


def test_svd_reduce_keeps_the_fewest_directions_reaching_the_variance() -> None:
    basis = _centred_orthonormal(12, 50, 3)
    x = basis * np.sqrt([0.9, 0.095, 0.005])  # variance shares 90%, 9.5%, 0.5%
    assert svd_reduce(x, 0.99).shape[1] == 2
    assert svd_reduce(x, 0.9).shape[1] == 1
    assert svd_reduce(x, 1.0).shape[1] == 3


def test_agreement_with_itself_is_one_and_chance_level_as_defined() -> None:
    predictions = np.array([0, 1, 1, 2, 0, 1])
    assert prediction_agreement(predictions, predictions) == 1.0
    assert chance_agreement(0.8) == pytest.approx(0.8**2 + 0.2**2)
    assert chance_agreement(0.9, 0.6) == pytest.approx(0.9 * 0.6 + 0.1 * 0.4)
    assert chance_agreement(1.0, 1.0) == 1.0
    assert chance_agreement(0.5) == 0.5
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        chance_agreement(1.2)


def test_agreement_summary_of_two_binary_classifiers() -> None:
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    first = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0])  # 8 of 10 right
    second = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 0])  # 7 of 10 right
    out = agreement_summary(first, second, labels)
    assert out["accuracy_1"] == 0.8
    assert out["accuracy_2"] == 0.7
    assert out["agreement"] == 0.9  # they differ on image 3 only
    assert out["chance_agreement"] == pytest.approx(0.8 * 0.7 + 0.2 * 0.3)
    assert out["excess_agreement"] == pytest.approx(0.9 - 0.62)


def test_multilabel_agreement_needs_every_label() -> None:
    a = np.array([[1, 0], [0, 1], [1, 1]])
    b = np.array([[1, 0], [0, 0], [1, 1]])
    assert prediction_agreement(a, b) == pytest.approx(2 / 3)
