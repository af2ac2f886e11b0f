"""Settings of the linear probe (:mod:`harness.protocols.linear`): one frozen dataclass."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from harness.config.profiles import check_profile
from harness.config.vocabulary import METRIC_HIGHER_IS_BETTER
from harness.protocols.linear_select import PER_CLASS_CLASSES, SELECTIONS

SOLVERS = ("path", "sklearn")
SOLVER_DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class LinearConfig:
    """Settings of the linear probe.

    Attributes:
        c_min: Smallest inverse regularisation strength C of the sweep.
        c_max: Largest C of the sweep.
        n_c: Number of C values, log-spaced from ``c_min`` to ``c_max``.
        c_values: An explicit sweep (in sweep order) that replaces ``c_min``/``c_max``/``n_c``.
        standardize: Fit a ``StandardScaler`` on the training fold before each fit (off by
            default: raw features, as the peers).
        max_iter: lbfgs iteration limit of the first attempt of every fit.
        max_iter_cap: Largest iteration limit a non-converged fit is retried with (4x steps);
            equal to ``max_iter``, a fit is never retried.
        tol: lbfgs gradient tolerance (sklearn's default).
        seed: ``random_state`` passed to the estimator (lbfgs itself is deterministic).
        warm_start: Carry the coefficients from each fit to the next, in sweep order, and
            from the last fit of the sweep into the train+val refit (ssl-transfer).
        selection: ``smallest-c`` (best score, ties to the smallest C) or ``first-strict``
            (ssl-transfer: strict ``>`` over the sweep order, starting from 0).
        selection_metric: The validation metric C is chosen on; None takes the task's
            primary metric. The test metrics always include it.
        binary_multinomial: Fit binary tasks as the peers' two-class softmax
            (``multi_class='multinomial'``), that is a binary fit with ``2 C``.
        per_class_classes: Classes that mean per-class accuracy averages over: ``labels``
            (those present) or ``labels-and-predictions`` (the peers' confusion matrix: a
            predicted class absent from the labels makes it NaN). Applies to selection and
            to the test metric.
        warn_unconverged: Raise a ``RuntimeWarning`` for fits that did not converge (they
            are listed in ``details`` either way).
        solver: ``path`` (default: every C on one preconditioned L-BFGS path in ascending
            C, :mod:`harness.protocols.linear_path`; ``max_iter_cap`` iterations per C,
            ``tol`` on the preconditioned gradient) or ``sklearn`` (one scikit-learn lbfgs
            estimator per C, the peers' solver; needed for ``warm_start``).
        device: Where the ``path`` solver's passes over the data run: ``auto`` (a GPU
            when torch sees one), ``cuda`` or ``cpu``. The records name the device used.
    """

    c_min: float = 1e-5
    c_max: float = 1e6
    n_c: int = 45
    c_values: tuple[float, ...] | None = None
    standardize: bool = False
    max_iter: int = 10_000
    max_iter_cap: int = 40_000
    tol: float = 1e-4
    seed: int = 0
    warm_start: bool = False
    selection: str = "smallest-c"
    selection_metric: str | None = None
    binary_multinomial: bool = False
    per_class_classes: str = "labels"
    warn_unconverged: bool = True
    solver: str = "path"
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.c_values is not None:
            values = tuple(float(c) for c in self.c_values)
            if not values:
                raise ValueError("LinearConfig.c_values must not be empty")
            if not all(math.isfinite(c) and c > 0 for c in values):
                raise ValueError(f"LinearConfig.c_values must be positive and finite: {values}")
            if len(set(values)) != len(values):
                raise ValueError(f"LinearConfig.c_values has duplicates: {values}")
            object.__setattr__(self, "c_values", values)
        else:
            if not (0 < self.c_min <= self.c_max and math.isfinite(self.c_max)):
                raise ValueError(
                    f"LinearConfig needs 0 < c_min <= c_max < inf, got {self.c_min}, {self.c_max}"
                )
            if self.n_c < 1:
                raise ValueError(f"LinearConfig.n_c must be >= 1, got {self.n_c}")
        if self.max_iter < 1 or self.max_iter_cap < self.max_iter:
            raise ValueError(
                f"LinearConfig needs 1 <= max_iter <= max_iter_cap, "
                f"got {self.max_iter}, {self.max_iter_cap}"
            )
        if not self.tol > 0:
            raise ValueError(f"LinearConfig.tol must be > 0, got {self.tol}")
        if self.solver not in SOLVERS:
            raise ValueError(f"LinearConfig.solver must be one of {SOLVERS}")
        if self.device not in SOLVER_DEVICES:
            raise ValueError(f"LinearConfig.device must be one of {SOLVER_DEVICES}")
        if self.warm_start and self.solver != "sklearn":
            raise ValueError("LinearConfig.warm_start needs solver='sklearn'")
        if self.selection not in SELECTIONS:
            raise ValueError(f"LinearConfig.selection must be one of {SELECTIONS}")
        if self.per_class_classes not in PER_CLASS_CLASSES:
            raise ValueError(f"LinearConfig.per_class_classes must be one of {PER_CLASS_CLASSES}")
        if self.selection_metric is not None and self.selection_metric not in (
            METRIC_HIGHER_IS_BETTER
        ):
            raise ValueError(
                f"LinearConfig.selection_metric {self.selection_metric!r} is not one of "
                f"{tuple(METRIC_HIGHER_IS_BETTER)}"
            )

    @classmethod
    def for_profile(cls, profile: str) -> LinearConfig:
        """The configuration of a run profile.

        ``smoke`` sweeps 12 values over the same C range; ``demo`` and ``paper`` sweep
        ssl-transfer's 45.

        Args:
            profile: "smoke", "demo" or "paper".

        Returns:
            The profile's configuration.

        Raises:
            ValueError: On an unknown profile.
        """
        check_profile(profile)
        return cls(n_c=12) if profile == "smoke" else cls(n_c=45)

    def grid(self) -> np.ndarray:
        """The C values in sweep order.

        Returns:
            float64 array of C values.
        """
        if self.c_values is not None:
            return np.asarray(self.c_values, dtype=np.float64)
        grid = np.logspace(np.log10(self.c_min), np.log10(self.c_max), self.n_c)
        # 12 significant digits: 1e-05 rather than 9.999999999999999e-06 in records.
        return np.array([float(f"{c:.12g}") for c in grid])

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-friendly dict (``c_values`` as a list or None).

        Returns:
            Field name -> value.
        """
        out = asdict(self)
        if self.c_values is not None:
            out["c_values"] = list(self.c_values)
        return out
