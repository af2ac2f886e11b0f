"""The peers' binary logistic regression: a two-class softmax (``multi_class='multinomial'``).

ssl-transfer's probe (linusericsson/ssl-transfer@416913f:linear.py, and
SSL_medicalimaging's copy) builds ``LogisticRegression(solver='lbfgs',
multi_class='multinomial', warm_start=True)`` and keeps scikit-learn's ``max_iter=100``.
On a binary task scikit-learn before 1.8 (read in 1.7.2,
``sklearn/linear_model/_logistic.py``, ``_logistic_regression_path``) then minimises
the softmax loss over two class vectors, not the binomial loss over one:

- parameters ``W`` of shape (2, D + 1) (weights and intercept per class), handed to
  scipy's L-BFGS-B raveled in Fortran order, the classes of one feature side by side;
- objective ``mean(softmax cross-entropy) + ||W[:, :D]||^2 / (2 C n)``;
- options ``maxiter=max_iter, maxls=50, gtol=tol, ftol=64 eps``;
- it keeps ``W[1]`` as ``coef_`` and ``intercept_``, predicts ``softmax([-d, d])`` for
  ``d = x . coef_ + intercept_``, and a warm start begins at ``W = [-start; start]``.

At the optimum this is the binomial fit of ``2 W[1]`` at ``2 C``. The peers stop after
100 iterations, though, far from the optimum on raw features, and L-BFGS walks a
different path in the two parameterisations: on the 8 binary demo feature sets the
binomial fit at ``2 C`` chose another C, or scored another test accuracy, in 3.
:class:`TwoClassSoftmax` runs the softmax objective itself, with scikit-learn's own loss.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import optimize
from sklearn._loss.loss import HalfMultinomialLoss
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model._linear_loss import LinearModelLoss
from sklearn.utils.extmath import softmax


class TwoClassSoftmax:
    """scikit-learn < 1.8's ``LogisticRegression(multi_class='multinomial')`` on two classes.

    The estimator interface the probe's :class:`~harness.protocols.linear_fit.Fitter`
    uses: ``set_params``, ``fit`` (a ``ConvergenceWarning`` when L-BFGS stops before its
    tolerance, as scikit-learn warns), ``n_iter_`` and ``predict_proba``. Always L2 with
    an intercept and no sample weights, as the peers fit it.

    Args:
        C: Inverse regularisation strength.
        max_iter: L-BFGS iterations at most.
        tol: Gradient tolerance (scipy's ``gtol``).
        warm_start: Start each fit from the previous fit's coefficients.
    """

    def __init__(
        self, C: float = 1.0, max_iter: int = 100, tol: float = 1e-4, warm_start: bool = False
    ) -> None:
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.warm_start = warm_start
        self.coef_: np.ndarray | None = None
        self.intercept_: np.ndarray | None = None
        self.classes_: np.ndarray | None = None
        self.n_iter_ = np.zeros(1, dtype=np.int32)

    def set_params(self, **params: float | int | bool) -> TwoClassSoftmax:
        """Set constructor parameters (``C``, ``max_iter``, ``tol``, ``warm_start``).

        Args:
            **params: Parameter values by name.

        Returns:
            The estimator.

        Raises:
            ValueError: For a name that is not a parameter.
        """
        for name, value in params.items():
            if name not in ("C", "max_iter", "tol", "warm_start"):
                raise ValueError(f"TwoClassSoftmax has no parameter {name!r}")
            setattr(self, name, value)
        return self

    def fit(self, x: np.ndarray, y: np.ndarray) -> TwoClassSoftmax:
        """Minimise the two-class softmax objective on ``(x, y)``.

        Args:
            x: Features (N, D); the coefficients start in their dtype, as scikit-learn's.
            y: Labels (N,) of exactly two distinct values.

        Returns:
            The fitted estimator.

        Raises:
            ValueError: When ``y`` does not hold exactly two classes.
        """
        classes = np.unique(y)
        if classes.size != 2:
            raise ValueError(f"TwoClassSoftmax needs two classes, got {classes.tolist()}")
        n, d = x.shape
        target = (y == classes[1]).astype(x.dtype)
        start = np.zeros((2, d + 1), order="F", dtype=x.dtype)
        if self.warm_start and self.coef_ is not None and self.intercept_ is not None:
            previous = np.append(self.coef_, self.intercept_[:, np.newaxis], axis=1)
            start[0] = -previous
            start[1] = previous
        loss = LinearModelLoss(base_loss=HalfMultinomialLoss(n_classes=2), fit_intercept=True)
        result = optimize.minimize(
            loss.loss_gradient,
            start.ravel(order="F"),
            method="L-BFGS-B",
            jac=True,
            args=(x, target, None, 1.0 / (self.C * n), 1),
            options={
                "maxiter": self.max_iter,
                "maxls": 50,
                "gtol": self.tol,
                "ftol": 64 * np.finfo(float).eps,
            },
        )
        n_iter = min(int(result.nit), self.max_iter)
        if result.status != 0:
            warnings.warn(
                f"lbfgs failed to converge after {n_iter} iteration(s) "
                f"(status={result.status}): {result.message}",
                ConvergenceWarning,
                stacklevel=2,
            )
        second = result.x.reshape((2, -1), order="F")[1]
        self.coef_ = second[np.newaxis, :d].copy()
        self.intercept_ = second[d:].copy()
        self.classes_ = classes
        self.n_iter_ = np.array([n_iter], dtype=np.int32)
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """``x . coef_ + intercept_`` (N,): half the log-odds of the second class.

        Raises:
            RuntimeError: Before ``fit``.
        """
        if self.coef_ is None or self.intercept_ is None:
            raise RuntimeError("TwoClassSoftmax: fit before predicting")
        return (x @ self.coef_.T + self.intercept_).ravel()

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 2): ``softmax([-d, d])``, as scikit-learn < 1.8 gave."""
        decision = self.decision_function(x)
        return softmax(np.c_[-decision, decision], copy=False)
