"""L-BFGS for the path solver's objectives (smooth, strictly convex, preconditioned).

The path solver (:mod:`harness.protocols.linear_path`) runs thousands of short
minimisations on small parameter vectors; there, the bookkeeping of a general-purpose
driver (scipy's L-BFGS-B: bounds, Fortran state machine, function wrappers) cost about as
much as the objective itself. This is the textbook method (Nocedal and Wright, Numerical
Optimization, 2nd ed., algorithms 7.4 and 7.5) specialised to what the path needs:

* no bounds;
* the two-loop recursion over the last ``memory`` curvature pairs, scaled by
  ``s.y / y.y``; the first step of a fit uses the identity, the right scale in the
  preconditioned coordinates, where the Hessian is at most about the identity;
* a backtracking line search on the sufficient-decrease (Armijo) condition with a
  safeguarded quadratic step. The objectives are strictly convex, so every accepted step
  gives ``s.y > 0`` and the curvature condition of a Wolfe search adds nothing; a pair
  that rounding makes non-positive is skipped.

The stopping rules are those the solver used with scipy: the largest gradient component at
most ``gtol``, or a relative decrease of the objective at most ``ftol`` (a flat optimum),
or no decrease left to find along the search direction (rounding); each counts as
converged. Only an exhausted iteration budget does not.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Objective = Callable[[np.ndarray], tuple[float, np.ndarray]]

# Sufficient decrease: f(x + a p) <= f(x) + _ARMIJO a g.p.
_ARMIJO = 1e-4
_LINE_STEPS = 50


@dataclass(frozen=True)
class LbfgsResult:
    """Where a minimisation stopped.

    Attributes:
        x: The last iterate.
        n_iter: Iterations (accepted steps).
        converged: False only when ``max_iter`` ran out before a stopping rule held.
    """

    x: np.ndarray
    n_iter: int
    converged: bool


def minimize_lbfgs(
    fun: Objective,
    x0: np.ndarray,
    gtol: float,
    max_iter: int,
    ftol: float = 64 * np.finfo(float).eps,
    memory: int = 10,
) -> LbfgsResult:
    """Minimise ``fun`` from ``x0``.

    Args:
        fun: Objective returning (value, gradient).
        x0: Starting point (not modified).
        gtol: Stop when the largest absolute gradient component is at most this.
        max_iter: Iteration limit.
        ftol: Stop when a step lowers the objective by at most this fraction of its size.
        memory: Number of curvature pairs kept.

    Returns:
        The result.
    """
    x = np.array(x0, dtype=np.float64)
    f, g = fun(x)
    steps: deque[np.ndarray] = deque(maxlen=memory)
    changes: deque[np.ndarray] = deque(maxlen=memory)
    for iteration in range(max_iter):
        if float(np.max(np.abs(g), initial=0.0)) <= gtol:
            return LbfgsResult(x, iteration, True)
        direction = -_two_loop(g, steps, changes)
        slope = float(g @ direction)
        if not slope < 0.0:
            # Not a descent direction (rounding in the pairs): restart from the gradient.
            steps.clear()
            changes.clear()
            direction, slope = -g, -float(g @ g)
        accepted = _line_search(fun, x, f, direction, slope)
        if accepted is None:
            return LbfgsResult(x, iteration, True)
        x_new, f_new, g_new = accepted
        step, change = x_new - x, g_new - g
        if float(step @ change) > 0.0:
            steps.append(step)
            changes.append(change)
        decrease = (f - f_new) / max(abs(f), abs(f_new), 1.0)
        x, f, g = x_new, f_new, g_new
        if decrease <= ftol:
            return LbfgsResult(x, iteration + 1, True)
    converged = float(np.max(np.abs(g), initial=0.0)) <= gtol
    return LbfgsResult(x, max_iter, converged)


def _two_loop(g: np.ndarray, steps: deque[np.ndarray], changes: deque[np.ndarray]) -> np.ndarray:
    """The inverse-Hessian approximation applied to ``g``."""
    q = g.copy()
    alphas: list[tuple[float, float]] = []
    for s, y in zip(reversed(steps), reversed(changes), strict=True):
        rho = 1.0 / float(s @ y)
        alpha = rho * float(s @ q)
        q -= alpha * y
        alphas.append((rho, alpha))
    if steps:
        s, y = steps[-1], changes[-1]
        q *= float(s @ y) / float(y @ y)
    for (rho, alpha), s, y in zip(reversed(alphas), steps, changes, strict=True):
        beta = rho * float(y @ q)
        q += (alpha - beta) * s
    return q


def _line_search(
    fun: Objective, x: np.ndarray, f: float, direction: np.ndarray, slope: float
) -> tuple[np.ndarray, float, np.ndarray] | None:
    """First step along ``direction`` (from 1, shrinking) that decreases ``f`` enough."""
    step = 1.0
    for _ in range(_LINE_STEPS):
        x_new = x + step * direction
        f_new, g_new = fun(x_new)
        if f_new <= f + _ARMIJO * step * slope:
            return x_new, f_new, g_new
        # Minimiser of the quadratic through f, the slope and f_new, kept in [0.1, 0.5] step.
        curvature = f_new - f - slope * step
        trial = -slope * step * step / (2.0 * curvature) if curvature > 0.0 else 0.5 * step
        step = min(max(trial, 0.1 * step), 0.5 * step)
    return None
