"""The default linear probe's preconditioning basis: principal axes of the training features.

:func:`principal_basis` diagonalises the smaller of the two Gram matrices of the centred
features (``D x D``, or ``n x n`` when there are fewer samples than dimensions; then the
axes span the rows and are kept as combinations of them). :func:`extend_basis` adds the
axes of more rows (the refit's validation rows) to a basis without a second
eigendecomposition. The solver that uses them is :mod:`harness.protocols.linear_path`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

# Axes with less variance than this fraction of the largest are outside the data's span
# (only dropped when the basis comes from the n x n Gram matrix).
_RANK_TOLERANCE = 1e-10
# Relative rounding of a Gram matrix formed by subtraction (a generous multiple of eps).
_CANCELLATION = 64 * np.finfo(float).eps


@dataclass(frozen=True)
class Basis:
    """Principal axes of centred training features.

    The axes are held one of two ways. A full basis keeps them as a (D, R) matrix. One
    from fewer rows than dimensions keeps them as combinations of those rows,
    ``frame.T @ combination``: the (D, R) matrix is never needed whole (weights and
    projections are two thin products), and forming it would cost as much as the Gram
    matrix itself.

    Attributes:
        mean: Feature means (D,) the features are centred with.
        variance: Variance along each axis (R,).
        full: True when the axes span the whole feature space (then it preconditions any
            data of the same dimension exactly, not just the rows it came from).
        rotated: The centred rows the basis came from, in its axes (N, R); always there
            when not ``full``, and for a full basis when asked for (see
            :func:`principal_basis`).
        frame: The axes (D, R) when ``combination`` is None, else rows (M, D) they combine.
        combination: None, or (M, R): axis ``j`` is ``frame.T @ combination[:, j]``.
    """

    mean: np.ndarray
    variance: np.ndarray
    full: bool
    rotated: np.ndarray | None
    frame: np.ndarray
    combination: np.ndarray | None = None

    @property
    def rank(self) -> int:
        """Number of axes R."""
        return self.variance.shape[0]

    @cached_property
    def axes(self) -> np.ndarray:
        """The orthonormal axes as one (D, R) matrix (formed on first use)."""
        if self.combination is None:
            return self.frame
        return self.frame.T @ self.combination

    def to_features(self, v: np.ndarray) -> np.ndarray:
        """Weights in feature coordinates (D, K) from basis coordinates ``v`` (R, K)."""
        if self.combination is None:
            return self.frame @ v
        return self.frame.T @ (self.combination @ v)

    def rotate(self, x: np.ndarray) -> np.ndarray:
        """Rows of ``x`` (N, D) centred by ``mean`` and written in the axes (N, R)."""
        if self.combination is None:
            return (x - self.mean) @ self.frame
        return ((x - self.mean) @ self.frame.T) @ self.combination

    def to_basis(self, w: np.ndarray) -> np.ndarray:
        """Basis coordinates (R, K) of weights ``w`` (D, K): their projection on the axes."""
        if self.combination is None:
            return self.frame.T @ w
        return self.combination.T @ (self.frame @ w)


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
        return Basis(mean, np.clip(variance, 0.0, None), True, rotated, axes)
    variance, left = np.linalg.eigh(xc @ xc.T / n)
    keep = variance > _RANK_TOLERANCE * max(float(variance.max()), np.finfo(float).tiny)
    variance, left = variance[keep], left[:, keep]
    # x_c^T u_j / sqrt(n e_j) are orthonormal; rounding departs from it by about
    # eps * sqrt(e_max / e_j) <= 1e-11 for the axes kept, and x_c axes = u sqrt(n e).
    root = np.sqrt(n * variance)
    return Basis(mean, variance, False, left * root, xc, left / root)


def extend_basis(basis: Basis, x: np.ndarray, inside: np.ndarray | None = None) -> Basis:
    """A basis for all rows of ``x``, from one that came from its first rows.

    The refit on train+val needs the span of more rows than the sweep's basis covers. A
    fresh eigendecomposition of the larger Gram matrix would cost the most of a small
    probe; instead the new rows' components outside the old span add their own principal
    axes. The axes are orthonormal and span every centred row of ``x``, so the problem and
    its optimum are unchanged; only the preconditioning departs from a true eigenbasis:
    each axis is scaled by the variance along it (the diagonal of the rows' covariance in
    these axes). Everything is computed from inner products of rows (no D x R product):
    the outside components' Gram matrix is the new rows' minus their inside part's.

    Args:
        basis: A basis written in its rows (one that does not span the space, from
            :func:`principal_basis`) with those rows rotated: the first
            ``len(basis.rotated)`` rows of ``x``, centred by ``basis.mean``.
        x: Features (N, D), float64; its first rows are those the basis came from.
        inside: ``basis.rotate(x[len(basis.rotated):])`` when the caller has it already
            (a sweep that scored these rows); None computes it.

    Returns:
        The extended basis, with ``x``'s rows rotated into it and centred by ``x``'s mean.

    Raises:
        ValueError: When the basis does not keep its rows and their rotation.
    """
    if basis.rotated is None or basis.combination is None:
        raise ValueError("extend_basis needs a basis written in the rows it came from")
    n_old, n_all, rank = basis.rotated.shape[0], x.shape[0], basis.rank
    rows = x - basis.mean
    new = rows[n_old:]
    if inside is None:
        inside = (new @ basis.frame.T) @ basis.combination
    outside_gram = new @ new.T - inside @ inside.T
    outside_gram = (outside_gram + outside_gram.T) / (2 * n_all)
    if len(new):
        gram_values, left = np.linalg.eigh(outside_gram)
    else:
        gram_values, left = np.zeros(0), np.zeros((0, 0))
    # The subtraction leaves rounding of about eps * |new|^2: never an axis of its own.
    noise = _CANCELLATION * float(np.sum(new * new)) / n_all
    scale = max(float(gram_values.max(initial=0.0)), float(basis.variance.max(initial=0.0)))
    keep = gram_values > max(_RANK_TOLERANCE * scale, noise, np.finfo(float).tiny)
    root = np.sqrt(n_all * gram_values[keep])
    extra = left[:, keep] / root
    # Extra axis j: (new - inside axes^T)^T extra_j, written in the rows of x.
    combination = np.zeros((n_all, rank + extra.shape[1]))
    combination[:n_old, :rank] = basis.combination
    combination[:n_old, rank:] = -basis.combination @ (inside.T @ extra)
    combination[n_old:, rank:] = extra
    rotated = np.zeros((n_all, rank + extra.shape[1]))
    rotated[:n_old, :rank] = basis.rotated
    rotated[n_old:, :rank] = inside
    rotated[n_old:, rank:] = left[:, keep] * root
    rotated -= rotated.mean(axis=0)
    variance = np.mean(rotated * rotated, axis=0)
    full = rotated.shape[1] == x.shape[1]
    return Basis(x.mean(axis=0), variance, full, rotated, rows, combination)
