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
  diagonalised once per run. The weights are written as ``W = V diag(h)^-1/2 U`` with
  ``h_j = e_j / 4 + 1 / (C n)`` (``e_j``: variance along axis ``j``; ``1/4`` bounds the
  curvature of the logistic loss), and L-BFGS runs on ``U``. The L2 penalty is
  invariant under the rotation ``V``, so the minimiser is the same; only the conditioning
  changes (this is what standardising bought before, without changing the problem).
  With fewer samples than dimensions the optimum lies in the span of the training rows,
  so ``V`` keeps those ``n`` axes only and every iteration is cheaper.
* **A warm-started path in a fixed order.** The C values are solved in ascending order
  (most regularised first), each fit starting from the previous solution. The order is
  the sorted grid, never the order the sweep was given in, so the result is the same for
  every permutation of the sweep (bit for bit: the same arithmetic in the same order).

Each fit stops when the largest gradient component in the preconditioned coordinates is
below ``tol`` (there, the Hessian is close to the identity, so the gradient is a
distance to the optimum in natural units) or after ``max_iter`` iterations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit, log_softmax

# Curvature of the logistic loss is at most 1/4 (sigmoid); used to scale the preconditioner.
_CURVATURE = 0.25
# Axes with less variance than this fraction of the largest are outside the data's span
# (only dropped when the basis comes from the n x n Gram matrix).
_RANK_TOLERANCE = 1e-10
# Rows per block of an objective evaluation: about this many bytes of features (cache-sized).
_BLOCK_BYTES = 1 << 20


@dataclass(frozen=True)
class Basis:
    """Principal axes of centred training features.

    Attributes:
        mean: Feature means (D,) the features are centred with.
        axes: Orthonormal axes (D, R), R = D or the rank of the training rows.
        variance: Variance along each axis (R,).
        full: True when ``axes`` span the whole feature space (then it preconditions any
            data of the same dimension exactly, not just the rows it came from).
        rotated: The centred rows the basis came from, in its axes (N, R); always there
            when not ``full``, and for a full basis when asked for (see
            :func:`principal_basis`).
    """

    mean: np.ndarray
    axes: np.ndarray
    variance: np.ndarray
    full: bool
    rotated: np.ndarray | None = None


def principal_basis(x: np.ndarray, rotate_rows: bool = False) -> Basis:
    """Principal axes of ``x`` (N, D) from the smaller of its two Gram matrices.

    Args:
        x: Features, float64.
        rotate_rows: Also keep the rows rotated into a full basis. A path over these rows
            then iterates on them: one ``N x D x D`` product up front instead of two
            ``D x D x K`` products in every objective evaluation (worth it for a sweep's
            thousands of evaluations, not for one refit).

    Returns:
        The basis.
    """
    n, d = x.shape
    mean = x.mean(axis=0)
    xc = x - mean
    if n >= d:
        variance, axes = np.linalg.eigh(xc.T @ xc / n)
        rotated = xc @ axes if rotate_rows else None
        return Basis(mean, axes, np.clip(variance, 0.0, None), True, rotated)
    variance, left = np.linalg.eigh(xc @ xc.T / n)
    keep = variance > _RANK_TOLERANCE * max(float(variance.max()), np.finfo(float).tiny)
    variance, left = variance[keep], left[:, keep]
    # x_c^T u_j / sqrt(n e_j) are orthonormal; rounding departs from it by about
    # eps * sqrt(e_max / e_j) <= 1e-11 for the axes kept, and x_c axes = u sqrt(n e).
    root = np.sqrt(n * variance)
    return Basis(mean, xc.T @ (left / root), variance, False, left * root)


@dataclass
class PathFit:
    """One solved C of a path: the model in original feature coordinates.

    Attributes:
        c: The estimator's C.
        coef: Weights (D, K), K = 1 for a sigmoid.
        intercept: Intercepts (K,) for uncentred features.
        n_iter: L-BFGS iterations.
        converged: Whether the gradient criterion was met within the iteration limit.
    """

    c: float
    coef: np.ndarray
    intercept: np.ndarray
    n_iter: int
    converged: bool

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 2) for a sigmoid model, (N, K) for a softmax one."""
        logits = x @ self.coef + self.intercept
        if self.coef.shape[1] == 1:
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
        self.rank = basis.axes.shape[1]
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

    def set_c(self, c: float) -> None:
        self.lam = 1.0 / (c * self.n)
        self.scale = 1.0 / np.sqrt(_CURVATURE * self.basis.variance + self.lam)

    def split(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = theta[: self.rank * self.k].reshape(self.rank, self.k)
        return u, theta[self.rank * self.k :] / np.sqrt(_CURVATURE)

    def to_weights(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u, b = self.split(theta)
        return self.basis.axes @ (self.scale[:, None] * u), b

    def from_weights(self, w: np.ndarray, b: np.ndarray) -> np.ndarray:
        u = (self.basis.axes.T @ w) / self.scale[:, None]
        return np.concatenate([u.ravel(), b * np.sqrt(_CURVATURE)])

    def value_and_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        u, b = self.split(theta)
        v = self.scale[:, None] * u
        data = self.data
        w = self.basis.axes @ v if self.rotated is None else v
        # One pass over the data in row blocks that stay in cache: each block's logits and
        # its share of the gradient are computed while it is there. Two whole passes
        # (logits, then gradient) read a large matrix from memory twice, and with K <= a
        # few classes that reading, not the arithmetic, is the cost.
        loss = 0.0
        grad_w = np.zeros((data.shape[1], self.k))
        residual_sum = np.zeros(self.k)
        step = max(1, _BLOCK_BYTES // (data.shape[1] * data.itemsize))
        for start in range(0, self.n, step):
            block = data[start : start + step]
            target = self.target[start : start + step]
            logits = block @ w + b
            if self.sigmoid:
                loss -= float(
                    np.sum(target * log_expit(logits) + (1.0 - target) * log_expit(-logits))
                )
                residual = expit(logits) - target
            else:
                log_p = log_softmax(logits, axis=1)
                loss -= float(np.sum(target * log_p))
                residual = np.exp(log_p) - target
            grad_w += block.T @ residual
            residual_sum += residual.sum(axis=0)
        # ||W|| = ||v||: the axes are orthonormal.
        value = loss / self.n + 0.5 * self.lam * float(np.sum(v * v))
        if self.rotated is None:
            grad_w = self.basis.axes.T @ grad_w
        grad_v = grad_w / self.n + self.lam * v
        grad_u = self.scale[:, None] * grad_v
        grad_b = residual_sum / self.n / np.sqrt(_CURVATURE)
        return float(value), np.concatenate([grad_u.ravel(), grad_b])

    def solve(
        self, c: float, start: tuple[np.ndarray, np.ndarray] | None, tol: float, max_iter: int
    ) -> PathFit:
        self.set_c(c)
        if start is None:
            theta0 = np.zeros(self.rank * self.k + self.k)
        else:
            theta0 = self.from_weights(*start)
        result = minimize(
            self.value_and_grad,
            theta0,
            jac=True,
            method="L-BFGS-B",
            options={
                "maxiter": max_iter,
                "maxls": 50,
                "gtol": tol,
                "ftol": 64 * np.finfo(float).eps,
            },
        )
        w, b = self.to_weights(result.x)
        # scipy also stops on a relative change of the objective below ftol (a flat
        # optimum); that counts as converged, an exhausted iteration budget does not.
        converged = bool(result.success) or int(result.nit) < max_iter
        intercept = b - self.basis.mean @ w
        return PathFit(c, w, intercept, int(result.nit), converged)


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
    previous = (
        None if start is None else (start.coef, start.intercept + problem.basis.mean @ start.coef)
    )
    fits: dict[float, PathFit] = {}
    for c in sorted(float(v) for v in c_values):
        fit = problem.solve(c, previous, tol, max_iter)
        fits[c] = fit
        previous = (fit.coef, fit.intercept + problem.basis.mean @ fit.coef)
    return fits
