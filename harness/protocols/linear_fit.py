"""Fitting the linear probe's logistic regressions (helpers of :mod:`harness.protocols.linear`).

A fitter serves one run of the probe. The default (``solver='path'``) is a
:class:`PathFitter`: every C on one preconditioned, warm-started path in ascending C
(:mod:`harness.protocols.linear_path`). With ``solver='sklearn'`` a :class:`Fitter` makes
every fit a fresh scikit-learn lbfgs estimator. With ``warm_start`` it reproduces
linusericsson/ssl-transfer@416913f:linear.py, whose single
``LogisticRegression(warm_start=True)`` is refitted for every C of the sweep, in sweep
order, and then once more for the train+val refit: each fit starts from the coefficients
of the fit before it (the refit from the last C of the sweep, not from the best one).

With ``binary_multinomial`` a binary task is fitted as the peers' two-class softmax
(``multi_class='multinomial'``; scikit-learn 1.8 removed the option). The sklearn solver
fits that softmax itself (:class:`~harness.protocols.linear_softmax.TwoClassSoftmax`):
the peers stop after 100 iterations, where the two parameterisations are not yet the
same model. The path solver converges, and at the optimum the softmax fit at ``C`` is
the binary logistic fit at ``2 C``: its L2 penalty ``(||w0||^2 + ||w1||^2) / 2`` is
smallest, for a given difference ``v = w1 - w0`` (all that the likelihood sees), at
``w1 = -w0 = v / 2``, where it equals ``||v||^2 / 4``; the unpenalised intercepts enter
only through their difference. So :class:`PathFitter` solves the binary path at ``2 C``.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from harness.protocols.linear_basis import Basis, extend_basis, principal_basis
from harness.protocols.linear_path import PathFit, solve_path
from harness.protocols.linear_path_torch import principal_basis_on, resolve_solver_device
from harness.protocols.linear_softmax import TwoClassSoftmax

if TYPE_CHECKING:
    from harness.protocols.linear_config import LinearConfig

Estimator = LogisticRegression | TwoClassSoftmax
Model = Estimator | list[LogisticRegression] | PathFit | list[PathFit]
Fitted = tuple[Model, int, bool]
# One C of a sweep: validation probabilities, iterations, converged.
Swept = tuple[np.ndarray, int, bool]


class Fitter:
    """Fits the probe's models for one run, fresh or carrying coefficients between fits.

    Args:
        task: Task type of the run ("binary", "multiclass", "ordinal", "multilabel").
        config: The probe's settings (solver limits, ``warm_start``, ``binary_multinomial``).

    Raises:
        ValueError: When ``warm_start`` is asked for a multilabel task (the peers carry
            coefficients across labels too, which medxfer does not reproduce).
    """

    device = "cpu"

    def __init__(self, task: str, config: LinearConfig) -> None:
        if config.warm_start and task == "multilabel":
            raise ValueError(
                "linear probe: warm_start is not implemented for multilabel tasks "
                "(ssl-transfer carries one estimator across labels and scores VOC mAP)"
            )
        self.task = task
        self.config = config
        self._carried: Estimator | None = None

    def fit_c(self, c: float) -> float:
        """The C handed to the estimator for the probe's C (the same C for this solver).

        Args:
            c: The probe's inverse regularisation strength.

        Returns:
            The estimator's C.
        """
        return c

    def sweep(
        self, x: np.ndarray, y: np.ndarray, sweep: list[float], x_val: np.ndarray
    ) -> dict[float, Swept]:
        """Fit every C of the sweep, in sweep order (warm starts carry in that order).

        Args:
            x: Features (N, D), float64.
            y: Labels (N,) or (N, C) for multilabel.
            sweep: The probe's C values in sweep order.
            x_val: The validation features every fit is scored on.

        Returns:
            C -> (validation probabilities, iterations, converged).
        """
        out: dict[float, Swept] = {}
        for c in sweep:
            model, n_iter, converged = self.fit(x, y, c)
            out[c] = (predict_proba(model, x_val), n_iter, converged)
        return out

    def refit(self, x: np.ndarray, y: np.ndarray, c: float) -> Fitted:
        """The train+val refit at the chosen C (with ``warm_start``: from the sweep's last fit).

        Args:
            x: Features (N, D), float64.
            y: Labels.
            c: The chosen C.

        Returns:
            (model, iterations, converged).
        """
        return self.fit(x, y, c)

    def fit(self, x: np.ndarray, y: np.ndarray, c: float) -> tuple[Model, int, bool]:
        """Fit one model (one per label for multilabel tasks).

        Args:
            x: Features (N, D), float64.
            y: Labels (N,) or (N, C) for multilabel.
            c: The probe's C.

        Returns:
            (model or list of per-label models, largest iteration count, converged).
        """
        if self.task != "multilabel":
            model, n_iter, converged = self._fit_one(x, y, self.fit_c(c), self._carried)
            if self.config.warm_start:
                self._carried = model
            return model, n_iter, converged
        models: list[LogisticRegression] = []
        n_iter, converged = 0, True
        for j in range(y.shape[1]):
            model, label_iter, label_converged = self._fit_one(x, y[:, j], c, None)
            models.append(model)
            n_iter = max(n_iter, label_iter)
            converged = converged and label_converged
        return models, n_iter, converged

    def _fit_one(
        self, x: np.ndarray, y: np.ndarray, c: float, start: Estimator | None
    ) -> tuple[Estimator, int, bool]:
        config = self.config
        max_iter = config.max_iter
        while True:
            model: Estimator
            if start is None and config.binary_multinomial and self.task == "binary":
                model = TwoClassSoftmax(
                    C=c, max_iter=max_iter, tol=config.tol, warm_start=config.warm_start
                )
            elif start is None:
                # L2 is the default penalty in every supported sklearn (``penalty`` is
                # deprecated in 1.8+); lbfgs fits a multinomial model for > 2 classes.
                model = LogisticRegression(
                    C=c,
                    solver="lbfgs",
                    max_iter=max_iter,
                    tol=config.tol,
                    random_state=config.seed,
                    warm_start=config.warm_start,
                )
            else:
                # A copy, so that a retry starts from the same coefficients again.
                model = copy.deepcopy(start)
                model.set_params(C=c, max_iter=max_iter)
            with warnings.catch_warnings(record=True) as caught:
                # "always" beats an outer "error" filter: non-convergence is seen, not raised.
                warnings.simplefilter("always", ConvergenceWarning)
                model.fit(x, y)
            converged = True
            for record in caught:
                if issubclass(record.category, ConvergenceWarning):
                    converged = False
                else:
                    warnings.warn_explicit(
                        record.message, record.category, record.filename, record.lineno
                    )
            n_iter = int(np.max(model.n_iter_))
            if converged or max_iter >= config.max_iter_cap:
                return model, n_iter, converged
            max_iter = min(max_iter * 4, config.max_iter_cap)


class PathFitter(Fitter):
    """The default solver: every C of the sweep on one warm-started path (``linear_path``).

    The path runs in ascending C whatever the sweep order, so the fits do not depend on
    it. The preconditioning basis of the training features is computed once and reused
    for the refit: as it is when it spans the whole feature space, else extended by the
    validation rows (:func:`~harness.protocols.linear_basis.extend_basis`); the refit
    starts from the sweep's fit at the chosen C. Multilabel tasks solve one binary path
    per label with the shared basis.

    Args:
        task: Task type of the run.
        config: The probe's settings (``tol``, ``max_iter_cap``, ``binary_multinomial``).

    Raises:
        ValueError: When ``warm_start`` is set (the peers' carried estimator needs
            ``solver='sklearn'``).
    """

    def __init__(self, task: str, config: LinearConfig) -> None:
        if config.warm_start:
            raise ValueError("linear probe: warm_start needs solver='sklearn'")
        super().__init__(task, config)
        self.device = resolve_solver_device(config.device)
        self._basis: Basis | None = None
        # The rows the sweep's basis came from: a refit on them plus more extends it.
        self._sweep_rows: np.ndarray | None = None
        # The validation rows the sweep scored, and their rotation into its basis.
        self._scored: tuple[np.ndarray, np.ndarray] | None = None
        self._fits: dict[float, PathFit | list[PathFit]] = {}

    def fit_c(self, c: float) -> float:
        """The C of the binary path: ``2 C`` for a peer two-class softmax (module docstring)."""
        return 2.0 * c if self.config.binary_multinomial and self.task == "binary" else c

    def _principal_basis(self, x: np.ndarray, rotate_rows: bool = False) -> Basis:
        if self.device == "cpu":
            return principal_basis(x, rotate_rows)
        return principal_basis_on(x, self.device, rotate_rows)

    def _path(
        self, x: np.ndarray, y: np.ndarray, cs: list[float], basis: Basis, start: dict[int, PathFit]
    ) -> list[dict[float, PathFit]]:
        config = self.config
        columns = [y[:, j] for j in range(y.shape[1])] if self.task == "multilabel" else [y]
        k = 2 if self.task in ("binary", "multilabel") else int(y.max()) + 1
        return [
            solve_path(
                x, col, k, cs, config.tol, config.max_iter_cap, basis, start.get(j), self.device
            )
            for j, col in enumerate(columns)
        ]

    def sweep(
        self, x: np.ndarray, y: np.ndarray, sweep: list[float], x_val: np.ndarray
    ) -> dict[float, Swept]:
        """Fit every C on one path in ascending C (see the class docstring).

        The validation rows are rotated into the basis once; each C is scored from its
        basis coordinates, never forming its weights in feature coordinates.
        """
        self._basis = self._principal_basis(x, rotate_rows=True)
        self._sweep_rows = x
        rotated = self._basis.rotate(x_val)
        self._scored = (x_val, rotated)
        by_fit_c = {self.fit_c(c): c for c in sweep}
        paths = self._path(x, y, sorted(by_fit_c), self._basis, {})
        out: dict[float, Swept] = {}
        for fit_c, c in by_fit_c.items():
            fits = [path[fit_c] for path in paths]
            self._fits[c] = fits if self.task == "multilabel" else fits[0]
            if self.task == "multilabel":
                probabilities = np.column_stack(
                    [f.predict_proba_rotated(rotated)[:, 1] for f in fits]
                )
            else:
                probabilities = fits[0].predict_proba_rotated(rotated)
            out[c] = (probabilities, max(f.n_iter for f in fits), all(f.converged for f in fits))
        return out

    def refit(self, x: np.ndarray, y: np.ndarray, c: float) -> Fitted:
        """The train+val fit at ``c``, started from the sweep's fit at ``c``."""
        basis, rows = self._basis, self._sweep_rows
        if basis is not None and basis.full and basis.axes.shape[0] == x.shape[1]:
            basis = dataclasses.replace(basis, mean=x.mean(axis=0), rotated=None)
        elif basis is not None and rows is not None and np.array_equal(x[: len(rows)], rows):
            inside = None
            if self._scored is not None and np.array_equal(x[len(rows) :], self._scored[0]):
                inside = self._scored[1]
            basis = extend_basis(basis, x, inside)
        else:
            basis = self._principal_basis(x)
        previous = self._fits.get(c)
        start = dict(enumerate(previous)) if isinstance(previous, list) else {0: previous}
        start = {j: f for j, f in start.items() if f is not None}
        fits = [path[self.fit_c(c)] for path in self._path(x, y, [self.fit_c(c)], basis, start)]
        model = fits if self.task == "multilabel" else fits[0]
        return model, max(f.n_iter for f in fits), all(f.converged for f in fits)


def make_fitter(task: str, config: LinearConfig) -> Fitter:
    """The fitter of ``config.solver`` ("path": :class:`PathFitter`, "sklearn": :class:`Fitter`)."""
    return PathFitter(task, config) if config.solver == "path" else Fitter(task, config)


def predict_proba(model: Model, x: np.ndarray) -> np.ndarray:
    """Probabilities (N, C) of a model, or of per-label models (column j: P(label j))."""
    if isinstance(model, list):
        return np.column_stack([m.predict_proba(x)[:, 1] for m in model])
    return model.predict_proba(x)


def make_scaler(x: np.ndarray, standardize: bool) -> Callable[[np.ndarray], np.ndarray]:
    """A ``StandardScaler`` fitted on ``x`` (the identity when ``standardize`` is off)."""
    if not standardize:
        return lambda z: z
    return StandardScaler().fit(x).transform
