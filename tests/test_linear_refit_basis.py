"""The refit's basis: the sweep's principal axes extended by the validation rows."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from harness.protocols import linear_fit
from harness.protocols.linear import LinearConfig
from harness.protocols.linear_basis import extend_basis, principal_basis
from harness.protocols.linear_path import solve_path


def _features(seed: int, n: int, dim: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = 0.6 * rng.normal(size=(n_classes, dim))
    y = np.arange(n) % n_classes
    # Pretrained-like: a few strong directions and per-dimension scales.
    low_rank = rng.normal(size=(n, 6)) @ rng.normal(size=(6, dim))
    x = (means[y] + low_rank + 0.3 * rng.normal(size=(n, dim))) * np.exp(rng.normal(size=dim))
    return x, y


def test_extended_axes_are_orthonormal_and_span_every_row() -> None:
    x, _ = _features(0, 90, 150, 3)
    first = principal_basis(x[:60], rotate_rows=True)
    basis = extend_basis(first, x)
    assert not first.full and basis.axes.shape == (150, 89)  # 90 centred rows: rank 89
    np.testing.assert_allclose(basis.axes.T @ basis.axes, np.eye(89), atol=1e-10)
    centred = x - x.mean(axis=0)
    np.testing.assert_allclose(basis.mean, x.mean(axis=0))
    # Every centred row is its rotation mapped back: nothing lies outside the span.
    np.testing.assert_allclose(basis.rotated @ basis.axes.T, centred, atol=1e-9)
    np.testing.assert_allclose(basis.variance, np.mean(basis.rotated**2, axis=0))
    # The sweep's axes come first, unchanged.
    np.testing.assert_allclose(basis.axes[:, : first.rank], first.axes, rtol=0, atol=1e-12)


def test_extension_reaching_the_full_space_is_full() -> None:
    x, _ = _features(1, 40, 30, 2)
    basis = extend_basis(principal_basis(x[:20], rotate_rows=True), x)
    assert basis.full and basis.axes.shape == (30, 30)
    np.testing.assert_allclose(basis.axes.T @ basis.axes, np.eye(30), atol=1e-10)


def test_rows_inside_the_old_span_add_no_axis() -> None:
    x, _ = _features(2, 50, 80, 2)
    repeated = np.concatenate([x, x[:10]])
    basis = extend_basis(principal_basis(x, rotate_rows=True), repeated)
    assert basis.axes.shape[1] == 49


def test_extension_from_the_scored_rotation_equals_its_own() -> None:
    x, _ = _features(4, 90, 150, 3)
    first = principal_basis(x[:60], rotate_rows=True)
    given = extend_basis(first, x, first.rotate(x[60:]))
    own = extend_basis(first, x)
    np.testing.assert_allclose(given.axes, own.axes, rtol=0, atol=1e-12)
    np.testing.assert_allclose(given.rotated, own.rotated, rtol=0, atol=1e-9)


def test_rotated_rows_score_as_the_features_do() -> None:
    # A sweep scores validation rows in basis coordinates: the same probabilities as the
    # weights in feature coordinates give (binary, softmax and per-label fits).
    x, y = _features(5, 120, 200, 3)
    labels = np.column_stack([y == 0, y != 1]).astype(float)
    for task, target in (("binary", y % 2), ("multiclass", y), ("multilabel", labels)):
        fitter = linear_fit.make_fitter(task, LinearConfig(c_values=(0.01, 1.0), tol=1e-6))
        swept = fitter.sweep(x[:80], target[:80], [1.0, 0.01], x[80:])
        for c, (probabilities, _, _) in swept.items():
            features = linear_fit.predict_proba(fitter._fits[c], x[80:])
            assert probabilities.shape == (40, 3 if task == "multiclass" else 2)
            np.testing.assert_allclose(probabilities, features, rtol=0, atol=1e-12)


def _sklearn_proba(x: np.ndarray, y: np.ndarray, c: float) -> np.ndarray:
    with threadpool_limits(limits=1):
        model = LogisticRegression(C=c, tol=1e-12, max_iter=100_000).fit(x, y)
    return model.predict_proba(x)


def test_refit_on_the_extended_basis_reaches_sklearns_optimum() -> None:
    for n_classes in (2, 4):
        x, y = _features(3 + n_classes, 120, 200, n_classes)
        config = LinearConfig(c_values=(0.01, 0.1), tol=1e-8)
        fitter = linear_fit.make_fitter("binary" if n_classes == 2 else "multiclass", config)
        fitter.sweep(x[:80], y[:80], [0.01, 0.1], x[80:])
        model, _, converged = fitter.refit(x, y, 0.1)
        assert converged
        np.testing.assert_allclose(model.predict_proba(x), _sklearn_proba(x, y, 0.1), atol=1e-5)
        # The same optimum as a path on a fresh eigenbasis of all rows.
        fresh = solve_path(x, y, n_classes, [0.1], tol=1e-8, max_iter=10_000)[0.1]
        np.testing.assert_allclose(model.predict_proba(x), fresh.predict_proba(x), atol=1e-6)


def test_refit_on_other_rows_computes_a_fresh_basis() -> None:
    # Standardised features are rescaled for the refit: the sweep's rows are not its first.
    x, y = _features(7, 90, 120, 2)
    fitter = linear_fit.make_fitter("binary", LinearConfig(c_values=(0.1,), tol=1e-8))
    fitter.sweep(x[:60], y[:60], [0.1], x[60:])
    other = x * 1.5
    model, _, _ = fitter.refit(other, y, 0.1)
    np.testing.assert_allclose(model.predict_proba(other), _sklearn_proba(other, y, 0.1), atol=1e-5)
