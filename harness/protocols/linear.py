"""Linear probe on frozen features: L2 logistic regression, C chosen on validation.

Follows linusericsson/ssl-transfer@416913f:linear.py: lbfgs
logistic regression, C swept over 45 log-spaced values from 1e-5 to 1e6 (``C = 1/wd``
for ``wd = logspace(-6, 5, 45)``), the best C chosen on the validation split, a refit on
train+val, and the test split scored once. By default (the ``medxfer`` preset) it fixes
the peers' pitfalls:

* One converged fit per C, independent of the sweep order. The default solver
  (:mod:`harness.protocols.linear_path`) minimises scikit-learn's lbfgs objective exactly,
  preconditioned in the principal axes of the training features, on one path warm-started
  in ascending C: the sorted grid, whatever order the sweep was given in. ssl-transfer
  carried one estimator's coefficients across the sweep in its order, 100 iterations each,
  and into the refit (``warm_start=True``, ``solver="sklearn"``).
* The best C has the highest validation score of the task's primary metric; ties (scores
  within ``TIE_TOLERANCE``) go to the smallest C, the most regularised model. ssl-transfer
  kept the first C in sweep order that beat the best so far with a strict ``>``, which
  depends on the order (``selection="first-strict"``). NaN scores never win.
* Convergence is checked, not silenced: a fit that has not met the gradient tolerance
  after ``max_iter_cap`` iterations (the path solver; the sklearn solver retries with 4x
  the iterations from ``max_iter``) is listed in ``details["not_converged_C"]`` and
  reported with a ``RuntimeWarning``.
* Raw features by default, as the peers. Standardising (``standardize=True``, a
  ``StandardScaler`` fitted on the training fold) changes the model, not just the
  conditioning: the same L2 penalty then weighs low-variance (often noise) dimensions as
  much as informative ones; docs/performance.md has the measured effect (version 1
  standardised, to help lbfgs converge, which the preconditioning now does).
* ROC AUC comes from probabilities (``harness.protocols.metrics``), never from argmax
  predictions.

Every one of these is a field of :class:`LinearConfig`, so the peer presets
(:mod:`harness.protocols.linear_presets`) reproduce the peers' procedure with the same code;
fitting is in :mod:`harness.protocols.linear_fit`, selection in
:mod:`harness.protocols.linear_select`.

Multilabel tasks fit one binary logistic regression per label (one-vs-rest) with the same
C for every label, and score the mean per-label AUROC.
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING

import numpy as np
import sklearn
from threadpoolctl import threadpool_limits

from harness.data.soft_targets import expected_targets
from harness.protocols.base import ProtocolResult, SplitFeatures, TaskInfo
from harness.protocols.inputs import check_split
from harness.protocols.linear_config import LinearConfig
from harness.protocols.linear_fit import make_fitter, make_scaler, predict_proba
from harness.protocols.linear_select import (
    TIE_TOLERANCE,
    peer_per_class_accuracy,
    score,
    select,
    select_smallest_c,
)
from harness.protocols.metrics import check_metric_names, compute_metrics_with_notes
from harness.protocols.registry import register_protocol

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun

VERSION = 2

# Kept under their former private names (tests and notebooks use them).
_TIE_TOLERANCE = TIE_TOLERANCE
_select = select_smallest_c


def run(
    train: SplitFeatures,
    val: SplitFeatures,
    test: SplitFeatures,
    task: TaskInfo,
    config: LinearConfig,
) -> ProtocolResult:
    """Sweep C on train/val, refit the chosen C on train+val and score the test split.

    Args:
        train: Features and labels the sweep fits on.
        val: Features and labels the sweep is scored on (``config.selection_metric``, by
            default ``task.primary_metric``).
        test: Features and labels the final model is scored on (all ``task.metrics``, and
            the selection metric).
        task: Task type, number of classes and metrics.
        config: Sweep, selection and solver settings.

    Returns:
        ``metrics``: test metrics. ``hyperparameters``: ``C``, ``C_index`` (its position in
        the grid sorted ascending) and ``val_primary`` (its validation score).
        ``details``: ``val_curve`` (``[C, val score]`` sorted by C), ``val_n_iter``, split
        sizes, ``standardize``, ``selection_metric``, ``tie_break``, ``warm_start``,
        ``n_iter`` and ``final_converged`` of the refit, ``not_converged_C`` (sweep),
        timings, ``metric_notes`` and ``sklearn_version``.

    Raises:
        ValueError: On malformed inputs (the message names the split at fault), or a
            setting the task does not support.
    """
    x_train, y_train, x_val, y_val, x_test, y_test = _check_inputs(train, val, test, task)
    selection_metric = config.selection_metric or task.primary_metric
    check_metric_names(task.task, (selection_metric,))
    # One BLAS/OpenMP thread: these problems are too small to gain from threads, pytest-xdist
    # already runs one case per core (oversubscription made the sweep ~15x slower on a
    # loaded 2-core machine), and single-threaded BLAS sums in a fixed order.
    fit_targets = _fit_targets(train, val, y_train, y_val, config)
    with threadpool_limits(limits=1):
        return _run(
            x_train, y_train, x_val, y_val, x_test, y_test, task, config, selection_metric,
            fit_targets,
        )  # fmt: skip


def _fit_targets(
    train: SplitFeatures,
    val: SplitFeatures,
    y_train: np.ndarray,
    y_val: np.ndarray,
    config: LinearConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """The targets the fits see: hard labels, or label-smoothed entries at their midpoint.

    Binary cross-entropy is linear in its target, so a full-batch fit at the midpoint of
    an LSR range minimises the expected loss over the draws
    (:mod:`harness.data.soft_targets`); every score still uses the hard labels.
    """
    if train.soft is None and val.soft is None:
        return y_train, y_val
    if config.solver != "path":
        raise ValueError(
            "linear probe: label-smoothed targets (CheXpert LSR) need solver 'path'; "
            f"solver {config.solver!r} fits hard class labels only"
        )
    return expected_targets(y_train, train.soft), expected_targets(y_val, val.soft)


def _run(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    task: TaskInfo,
    config: LinearConfig,
    selection_metric: str,
    fit_targets: tuple[np.ndarray, np.ndarray],
) -> ProtocolResult:
    t_train, t_val = fit_targets
    sweep = [float(c) for c in config.grid()]
    fitter = make_fitter(task.task, config)

    start = time.perf_counter()
    train_scaler = make_scaler(x_train, config.standardize)
    xs_train, xs_val = train_scaler(x_train), train_scaler(x_val)
    scores: dict[float, float] = {}
    iterations: dict[float, int] = {}
    not_converged: list[float] = []
    for c, (probabilities, n_iter, converged) in fitter.sweep(
        xs_train, t_train, sweep, xs_val
    ).items():
        scores[c] = score(
            task.task, y_val, probabilities, selection_metric, config.per_class_classes
        )
        iterations[c] = n_iter
        if not converged:
            not_converged.append(c)
    sweep_seconds = time.perf_counter() - start

    not_converged.sort()
    if not_converged and config.warn_unconverged:
        warnings.warn(
            f"linear probe: logistic regression did not converge within "
            f"{config.max_iter_cap} iterations for C in {not_converged}",
            RuntimeWarning,
            stacklevel=3,
        )
    best_c = select(config.selection, sweep, scores)
    ascending = sorted(scores)

    start = time.perf_counter()
    x_fit = np.concatenate([x_train, x_val])
    y_fit = np.concatenate([t_train, t_val])
    fit_scaler = make_scaler(x_fit, config.standardize)
    # With warm_start the refit starts from the last fit of the sweep, as ssl-transfer's did.
    model, n_iter, converged = fitter.refit(fit_scaler(x_fit), y_fit, best_c)
    probabilities = predict_proba(model, fit_scaler(x_test))
    names = task.metrics
    if config.selection_metric is not None:
        names = tuple(dict.fromkeys([*names, config.selection_metric]))
    metrics, notes = compute_metrics_with_notes(task.task, y_test, probabilities, names)
    if config.per_class_classes == "labels-and-predictions":
        peer_per_class_accuracy(task.task, metrics, notes, y_test, probabilities)
    refit_seconds = time.perf_counter() - start
    refit_warnings: list[str] = []
    if not converged:
        message = (
            f"linear probe: the final refit (C={best_c}) did not converge within "
            f"{config.max_iter_cap} iterations"
        )
        refit_warnings.append(message)
        if config.warn_unconverged:
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    return ProtocolResult(
        metrics=metrics,
        hyperparameters={
            "C": best_c,
            "C_index": ascending.index(best_c),
            "val_primary": scores[best_c],
        },
        details={
            "val_curve": [[c, scores[c]] for c in ascending],
            "val_n_iter": [iterations[c] for c in ascending],
            "n_train": len(y_train),
            "label_smoothed_entries": int(np.count_nonzero(t_train != y_train))
            + int(np.count_nonzero(t_val != y_val)),
            "n_val": len(y_val),
            "n_test": len(y_test),
            "standardize": config.standardize,
            "selection_metric": selection_metric,
            "warm_start": config.warm_start,
            "solver": config.solver,
            "solver_device": fitter.device,
            "estimator_C": fitter.fit_c(best_c),
            "n_iter": n_iter,
            "final_converged": converged,
            "not_converged_C": not_converged,
            "warnings": refit_warnings,
            "tie_break": (
                "first strict improvement in sweep order"
                if config.selection == "first-strict"
                else "smallest C"
            ),
            "sweep_seconds": sweep_seconds,
            "refit_seconds": refit_seconds,
            "metric_notes": notes,
            "sklearn_version": sklearn.__version__,
        },
    )


def _check_inputs(
    train: SplitFeatures, val: SplitFeatures, test: SplitFeatures, task: TaskInfo
) -> tuple[np.ndarray, ...]:
    check_metric_names(task.task, (task.primary_metric, *task.metrics))
    if task.num_classes < 2:
        raise ValueError(f"task needs at least 2 classes, got num_classes={task.num_classes}")
    out: list[np.ndarray] = []
    n_features: int | None = None
    for name, split in (("train", train), ("val", val), ("test", test)):
        x, y = check_split(f"{name} split", split, task, n_features)
        n_features = x.shape[1]
        _check_class_coverage(name, y, task)
        out += [np.ascontiguousarray(x, dtype=np.float64), y]
    return tuple(out)


def _check_class_coverage(name: str, y: np.ndarray, task: TaskInfo) -> None:
    """A probe must see every class in train, and every split needs two classes to score."""
    k = task.num_classes
    if task.task == "multilabel":
        constant = [j for j in range(k) if y[:, j].min() == y[:, j].max()]
        if name == "train" and constant:
            raise ValueError(
                f"train split: label column(s) {constant} hold a single value; "
                "a classifier cannot be fitted for them"
            )
        if len(constant) == k:
            raise ValueError(
                f"{name} split has only one class in every label column; ROC AUC is undefined"
            )
        return
    present = np.unique(y)
    if name == "train" and present.size < k:
        missing = sorted(set(range(k)) - set(present.tolist()))
        raise ValueError(
            f"train split lacks class(es) {missing} of {k}; the probe cannot learn them"
        )
    if present.size < 2:
        raise ValueError(f"{name} split has only one class (class {present[0]})")


@register_protocol(
    "linear",
    version=VERSION,
    marker="linear-probe benchmark cases (frozen features, logistic regression)",
    config=LinearConfig,
)
def run_case(case: CaseRun, config: LinearConfig) -> ProtocolResult:
    """One linear-probe case: C chosen on val, refit on train+val, scored on test."""
    features = case.features()
    return run(features["train"], features["val"], features["test"], case.task, config)
