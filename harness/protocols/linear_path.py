"""The default linear probe's solver: the whole C path of L2 logistic regression at once.

It minimises exactly scikit-learn's objective (``LogisticRegression(solver='lbfgs')``,
L2 penalty, unpenalised intercept; multinomial softmax for 3+ classes, one sigmoid for
two), written as the mean loss plus ``||W||^2 / (2 C n)``, but gets there in far fewer
passes over the data:

* **Centred features.** ``x W + b = (x - mean) W + (b + mean W)``: with an unpenalised
  intercept the optimum ``W`` is the same, and the intercept no longer couples to every
  weight.
* **Preconditioning in the principal axes.** The Gram matrix of the centred training
  features (``d x d``, or ``n x n`` when there are fewer samples than dimensions) is
  diagonalised once per run (:mod:`harness.protocols.linear_basis`). The weights are written as ``W = V diag(h)^-1/2 U`` with
  ``h_j = e_j / 4 + 1 / (C n)`` (``e_j``: variance along axis ``j``; ``1/4`` bounds the
  curvature of the logistic loss), and L-BFGS runs on ``U``. The L2 penalty is
  invariant under the rotation ``V``, so the minimiser is the same; only the conditioning
  changes (this is what standardising bought before, without changing the problem).
  With fewer samples than dimensions the optimum lies in the span of the training rows,
  so ``V`` keeps those ``n`` axes only and every iteration is cheaper; the axes are then
  held as combinations of the rows (``V = X_c^T L``), never formed as a ``D x n`` matrix.
* **A warm-started path in a fixed order.** The C values are solved in ascending order
  (most regularised first). Each fit starts on the secant through the two previous
  solutions, in log C (the path is smooth there; this start took a third of the
  iterations of starting from the last solution on the demo features). The order is
  the sorted grid, never the order the sweep was given in, so the result is the same for
  every permutation of the sweep (bit for bit: the same arithmetic in the same order).
* **The refit reuses the sweep's basis.** Train+val has more rows than the sweep's
  basis spans (when it spans fewer than all dimensions); ``extend_basis`` adds the
  validation rows' own axes instead of a second eigendecomposition, from the rotation of
  those rows the sweep already made to score every C (:meth:`PathFit.predict_proba_rotated`).

Each fit stops when the largest gradient component in the preconditioned coordinates is
below ``tol`` (there, the Hessian is close to the identity, so the gradient is a
distance to the optimum in natural units) or after ``max_iter`` iterations. The
minimiser is :mod:`harness.protocols.linear_lbfgs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.special import expit, log_softmax

from harness.protocols.linear_basis import Basis, principal_basis
from harness.protocols.linear_lbfgs import minimize_lbfgs

# Curvature of the logistic loss is at most 1/4 (sigmoid); used to scale the preconditioner.
_CURVATURE = 0.25
# Rows per block of an objective evaluation: about this many bytes of features (cache-sized).
_BLOCK_BYTES = 1 << 20
# Data up to this size stays in the last-level cache between the two reads of one pass.
_ONE_PASS_BYTES = 4 << 20


@dataclass
class PathFit:
    """One solved C of a path, held in its basis (feature coordinates formed on demand).

    Attributes:
        c: The estimator's C.
        basis: The basis the fit was solved in.
        v: Weights in basis coordinates (R, K), K = 1 for a sigmoid.
        centred_intercept: Intercepts (K,) for features centred by ``basis.mean``.
        n_iter: L-BFGS iterations.
        converged: Whether the gradient criterion was met within the iteration limit.
    """

    c: float
    basis: Basis
    v: np.ndarray
    centred_intercept: np.ndarray
    n_iter: int
    converged: bool

    @cached_property
    def coef(self) -> np.ndarray:
        """Weights (D, K) in feature coordinates."""
        return self.basis.to_features(self.v)

    @cached_property
    def intercept(self) -> np.ndarray:
        """Intercepts (K,) for uncentred features."""
        return self.centred_intercept - self.basis.mean @ self.coef

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 2) for a sigmoid model, (N, K) for a softmax one."""
        return _probabilities(x @ self.coef + self.intercept)

    def predict_proba_rotated(self, rotated: np.ndarray) -> np.ndarray:
        """:meth:`predict_proba` of rows given as ``self.basis.rotate(x)``.

        A sweep scores every C on the same validation rows: rotated once, each C costs an
        ``N x R`` product instead of forming its ``D``-dimensional weights.
        """
        return _probabilities(rotated @ self.v + self.centred_intercept)


def _probabilities(logits: np.ndarray) -> np.ndarray:
    if logits.shape[1] == 1:
        p = expit(logits[:, 0])
        return np.column_stack([1.0 - p, p])
    return np.exp(log_softmax(logits, axis=1))


class _Problem:
    """The L2 logistic objective of one (features, labels) pair in preconditioned form."""

    def __init__(self, x: np.ndarray, y: np.ndarray, n_classes: int, basis: Basis) -> None:
        self.n = x.shape[0]
        self.basis = basis
        self.sigmoid = n_classes == 2
        self.k = 1 if self.sigmoid else n_classes
        if self.sigmoid:
            self.target = y.astype(np.float64)[:, None]
        else:
            self.target = np.zeros((self.n, self.k))
            self.target[np.arange(self.n), y] = 1.0
        self.rank = basis.rank
        # Rotated rows (always when fewer samples than dimensions, R <= N < D): each pass
        # costs N R K instead of N D K plus two rotations.
        self.rotated = basis.rotated
        if not basis.full and self.rotated is None:
            raise ValueError("a basis that does not span the space must come from these rows")
        if self.rotated is not None and self.rotated.shape[0] != self.n:
            raise ValueError("a basis with rotated rows must come from these rows")
        # What every pass reads: the rotated rows, else the centred ones (never both held).
        self.data = x - basis.mean if self.rotated is None else self.rotated
        self.lam = 0.0
        self.scale = np.ones(self.rank)
        # The last solution in basis coordinates (``solve``): the next start.
        self.coordinates: np.ndarray | None = None

    def set_c(self, c: float) -> None:
        self.lam = 1.0 / (c * self.n)
        self.scale = 1.0 / np.sqrt(_CURVATURE * self.basis.variance + self.lam)

    def split(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = theta[: self.rank * self.k].reshape(self.rank, self.k)
        return u, theta[self.rank * self.k :] / np.sqrt(_CURVATURE)

    def value_and_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        u, b = self.split(theta)
        v = self.scale[:, None] * u
        w = self.basis.axes @ v if self.rotated is None else v
        loss, grad_w, residual_sum = self._data_term(w, b)
        # ||W|| = ||v||: the axes are orthonormal.
        value = loss / self.n + 0.5 * self.lam * float(np.sum(v * v))
        if self.rotated is None:
            grad_w = self.basis.axes.T @ grad_w
        grad_v = grad_w / self.n + self.lam * v
        grad_u = self.scale[:, None] * grad_v
        grad_b = residual_sum / self.n / np.sqrt(_CURVATURE)
        return float(value), np.concatenate([grad_u.ravel(), grad_b])

    def _data_term(self, w: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Summed loss, ``data^T residual`` and the residuals' column sums at (w, b).

        Large data goes in row blocks that stay in cache: each block's logits and its share
        of the gradient are computed while it is there. Two whole passes (logits, then
        gradient) would read a large matrix from memory twice, and with K <= a few classes
        that reading, not the arithmetic, is the cost. Small data goes in one block: there
        the cost is the number of NumPy calls.
        """
        data = self.data
        step = max(1, _BLOCK_BYTES // (data.shape[1] * data.itemsize))
        if data.nbytes <= _ONE_PASS_BYTES:
            step = self.n
        loss = 0.0
        grad_w = np.zeros((data.shape[1], self.k))
        residual_sum = np.zeros(self.k)
        for start in range(0, self.n, step):
            block = data[start : start + step]
            target = self.target[start : start + step]
            logits = block @ w + b
            if self.sigmoid:
                # -[t log s(z) + (1 - t) log s(-z)] = log(1 + e^z) - t z, soft t included.
                loss += float(np.sum(np.logaddexp(0.0, logits)) - np.vdot(target, logits))
                residual = expit(logits) - target
            else:
                shifted = logits - logits.max(axis=1, keepdims=True)
                exp = np.exp(shifted)
                total = exp.sum(axis=1, keepdims=True)
                # Targets sum to one per row: -sum t log p = sum log(total) - sum t shifted.
                loss += float(np.sum(np.log(total)) - np.vdot(target, shifted))
                residual = exp / total - target
            grad_w += block.T @ residual
            residual_sum += residual.sum(axis=0)
        return loss, grad_w, residual_sum

    def to_coordinates(self, w: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Weights (D, K) and centred-feature intercepts (K,) as basis coordinates."""
        return np.concatenate([self.basis.to_basis(w).ravel(), b])

    def solve(self, c: float, start: np.ndarray | None, tol: float, max_iter: int) -> PathFit:
        """Minimise at ``c`` from ``start`` (basis coordinates; None: zeros).

        The solution's basis coordinates (``v`` then the centred intercepts) are kept as
        ``self.coordinates`` for the next start.
        """
        self.set_c(c)
        rk = self.rank * self.k
        theta0 = np.zeros(rk + self.k)
        if start is not None:
            theta0[:rk] = (start[:rk].reshape(self.rank, self.k) / self.scale[:, None]).ravel()
            theta0[rk:] = start[rk:] * np.sqrt(_CURVATURE)
        result = minimize_lbfgs(self.value_and_grad, theta0, tol, max_iter)
        u, b = self.split(result.x)
        v = self.scale[:, None] * u
        self.coordinates = np.concatenate([v.ravel(), b])
        return PathFit(c, self.basis, v, b, result.n_iter, result.converged)


def solve_path(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    c_values: Sequence[float],
    tol: float,
    max_iter: int,
    basis: Basis | None = None,
    start: PathFit | None = None,
    device: str = "cpu",
) -> dict[float, PathFit]:
    """Fit L2 logistic regression for every C, warm-started in ascending C.

    Args:
        x: Features (N, D), float64.
        y: Class ids (N,) in ``0..n_classes-1`` (0/1 for a sigmoid).
        n_classes: Number of classes (2: one sigmoid, as scikit-learn fits binary tasks).
        c_values: The C values, in any order (they are solved in ascending order).
        tol: Largest gradient component allowed in preconditioned coordinates.
        max_iter: L-BFGS iteration limit per C.
        basis: A precomputed :func:`principal_basis`; None computes it from ``x``. A
            basis that does not span the whole space must come from ``x`` itself.
        start: A fit to start the smallest C from (None: zeros).
        device: ``cpu`` (NumPy) or a torch device such as ``cuda``
            (:mod:`harness.protocols.linear_path_torch`: the same path, its passes over
            the data on that device).

    Returns:
        C -> fit, for every C.
    """
    if device == "cpu":
        problem = _Problem(x, y, n_classes, principal_basis(x) if basis is None else basis)
    else:
        from harness.protocols.linear_path_torch import TorchProblem, principal_basis_on

        basis = principal_basis_on(x, device) if basis is None else basis
        problem = TorchProblem(x, y, n_classes, basis, device)
    guess = None
    if start is not None:
        guess = problem.to_coordinates(
            start.coef, start.intercept + problem.basis.mean @ start.coef
        )
    fits: dict[float, PathFit] = {}
    solved: list[tuple[float, np.ndarray]] = []
    for c in sorted(float(v) for v in c_values):
        if len(solved) >= 2:
            guess = _extrapolate(solved[-2], solved[-1], np.log(c))
        fits[c] = problem.solve(c, guess, tol, max_iter)
        guess = problem.coordinates
        solved.append((float(np.log(c)), guess))
    return fits


def _extrapolate(
    before: tuple[float, np.ndarray], last: tuple[float, np.ndarray], log_c: float
) -> np.ndarray:
    """The secant through the last two solutions (in log C), evaluated at ``log_c``.

    Along the path the solution moves smoothly with log C, so the secant starts the next
    fit closer to its optimum than the last solution does; only the start changes, not
    the optimum or the stopping rule.
    """
    (log_a, a), (log_b, b) = before, last
    return b + (b - a) * ((log_c - log_b) / (log_b - log_a))
