"""Tests of the path solver's L-BFGS (harness.protocols.linear_lbfgs)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit

from harness.protocols.linear_lbfgs import minimize_lbfgs


def _quadratic(seed: int, dim: int, condition: float):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    hessian = q @ np.diag(np.geomspace(1.0, 1.0 / condition, dim)) @ q.T
    optimum = rng.normal(size=dim)

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        grad = hessian @ (x - optimum)
        return 0.5 * float((x - optimum) @ grad), grad

    return fun, optimum


@pytest.mark.parametrize("condition", [1.0, 1e2, 1e4])
def test_reaches_the_minimiser_of_a_quadratic(condition: float) -> None:
    fun, optimum = _quadratic(0, 40, condition)
    result = minimize_lbfgs(fun, np.zeros(40), gtol=1e-10, max_iter=10_000, ftol=0.0)
    assert result.converged
    assert np.max(np.abs(fun(result.x)[1])) <= 1e-10
    # gradient <= 1e-10 and the smallest curvature 1/condition bound the distance.
    assert np.max(np.abs(result.x - optimum)) <= 1e-10 * condition * np.sqrt(40)
    # A well-conditioned problem is solved in a handful of steps from the identity start.
    if condition == 1.0:
        assert result.n_iter <= 2


def test_starting_at_the_optimum_takes_no_step() -> None:
    fun, optimum = _quadratic(1, 10, 10.0)
    result = minimize_lbfgs(fun, optimum, gtol=1e-8, max_iter=100)
    assert result.n_iter == 0 and result.converged
    np.testing.assert_array_equal(result.x, optimum)


def test_exhausted_budget_is_not_converged() -> None:
    fun, _ = _quadratic(2, 30, 1e4)
    start = np.zeros(30)
    result = minimize_lbfgs(fun, start, gtol=1e-12, max_iter=3, ftol=0.0)
    assert result.n_iter == 3 and not result.converged
    np.testing.assert_array_equal(start, np.zeros(30))  # the start is not modified


def test_logistic_objective_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 8)) * np.exp(rng.normal(size=8))
    y = (x @ rng.normal(size=8) + rng.normal(size=200) > 0).astype(float)
    lam = 1e-2

    def fun(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ w
        value = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * lam * w @ w
        return float(value), x.T @ (expit(z) - y) / len(y) + lam * w

    ours = minimize_lbfgs(fun, np.zeros(8), gtol=1e-9, max_iter=10_000, ftol=0.0)
    reference = minimize(fun, np.zeros(8), jac=True, method="L-BFGS-B",
                         options={"gtol": 1e-12, "ftol": 0.0, "maxiter": 100_000})  # fmt: skip
    assert ours.converged
    np.testing.assert_allclose(ours.x, reference.x, atol=1e-6)
