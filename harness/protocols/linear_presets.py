"""Peer presets of the linear probe: ssl-transfer's and SSL_medicalimaging's ``linear.py``.

Both peers run the same procedure (SSL_medicalimaging's file says it is modified from
ssl-transfer's), read from linusericsson/ssl-transfer@416913f:linear.py and
jonahanton/SSL_medicalimaging@77fceef:linear.py:

* one ``LogisticRegression(solver='lbfgs', multi_class='multinomial', warm_start=True)``
  with sklearn's defaults otherwise (``max_iter=100``, ``tol=1e-4``), refitted for every
  C and once more for the train+val refit, ``ConvergenceWarning`` ignored;
* C = ``1. / wd.item()`` for ``wd`` in ``torch.logspace(-6, 5, 45)`` (float32), swept in
  that order, C from 1e6 down to 1e-5 (``--wd-values 45``, the default of both);
* raw features (no standardisation);
* the validation score is accuracy or mean per-class accuracy (confusion-matrix
  diagonal over row sums), the best C taken with a strict ``>`` from 0;
* the refit on train+val starts from the coefficients of the sweep's last fit
  (C = 1e-5) and is scored once on test with the same metric;
* images: ``Resize(224, BICUBIC)`` (shorter side) then ``CenterCrop(224)``.

Binary tasks are fitted as the peers' two-class softmax itself
(:class:`~harness.protocols.linear_softmax.TwoClassSoftmax`, version 2). Version 1 fitted
the binomial model at ``2 C``, the same model at the optimum but not after 100
iterations: on the 8 binary demo feature sets it chose another C or scored another test
accuracy than scikit-learn 1.7.2's ``multi_class='multinomial'`` in 3, where version 2
agrees in C and score on all 12 demo sets. The validation metric is the dataset card's primary
metric when it is accuracy or mean per-class accuracy (SSL_medicalimaging: accuracy for
CheXpert, mean per-class accuracy for EyePACS and STOIC, as their cards say), otherwise
accuracy, the only other metric the peers' single-label path has. Multilabel cards are not
applicable: ssl-transfer scores them with VOC 11-point mAP on one estimator warm-started
across labels, SSL_medicalimaging raises.

Known limits: lbfgs stops at 100 iterations on raw features, so the numbers follow the
optimiser's path, which scikit-learn changed after the peers' 0.22 (the loss is now
averaged over samples); they are the peers' procedure, bit for bit only under the same
scikit-learn. The peers' torch 1.2 ``logspace`` differs from today's by one float32 step at
a few points (e.g. C = 177827.948 in ssl-transfer's ``run_linear.sh`` against 177827.934
here). Peer scores are percentages; the record keeps fractions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.protocols.linear import LinearConfig
from harness.protocols.peer_normalisation import with_normalisation
from harness.protocols.registry import CaseNotApplicable, register_preset

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun

PEER_METRICS = ("accuracy", "mean_per_class_accuracy")
PREPROCESSING = {
    "input_size": 224,
    "interpolation": "bicubic",
    "crop_pct": 1.0,
    "crop_mode": "center",
}


def peer_c_values(n: int = 45) -> tuple[float, ...]:
    """The peers' sweep, in their order: ``1 / wd`` for float32 ``wd = logspace(-6, 5, n)``.

    Args:
        n: Number of values (``--wd-values``).

    Returns:
        C values from 1e6 down to 1e-5.
    """
    wd = np.logspace(-6, 5, n).astype(np.float32)
    return tuple(1.0 / float(w) for w in wd)


def peer_selection_metric(primary_metric: str) -> str:
    """The metric the peers score a dataset with, given the card's primary metric.

    Args:
        primary_metric: The dataset card's primary metric.

    Returns:
        ``primary_metric`` when it is accuracy or mean per-class accuracy, else accuracy.
    """
    return primary_metric if primary_metric in PEER_METRICS else "accuracy"


def peer_linear_config(task: str, primary_metric: str, preset: str) -> LinearConfig:
    """The probe's config reproducing the peers' ``linear.py`` on one task.

    Args:
        task: Task type of the dataset card.
        primary_metric: The card's primary metric.
        preset: The preset's name (for the error message).

    Returns:
        The config.

    Raises:
        CaseNotApplicable: For multilabel tasks.
    """
    if task == "multilabel":
        raise CaseNotApplicable(
            f"linear preset {preset}: the peers' linear.py has no multilabel path that "
            "medxfer reproduces (ssl-transfer scores VOC 11-point mAP with one estimator "
            "warm-started across labels)"
        )
    return LinearConfig(
        c_values=peer_c_values(45),
        standardize=False,
        max_iter=100,
        max_iter_cap=100,
        tol=1e-4,
        warm_start=True,
        selection="first-strict",
        selection_metric=peer_selection_metric(primary_metric),
        binary_multinomial=True,
        per_class_classes="labels-and-predictions",
        warn_unconverged=False,
        solver="sklearn",
    )


@register_preset(
    "linear",
    "ssl-transfer",
    version=3,
    # its readme: --no-norm for SimCLR-v1 / -v2 only
    preprocessing=with_normalisation(PREPROCESSING, "raw-input-models"),
    source="linusericsson/ssl-transfer@416913f:linear.py",
    summary=(
        "ssl-transfer's linear.py: raw features, one warm-started lbfgs estimator "
        "(max_iter 100) over C = 1/logspace(-6, 5, 45) from 1e6 down and into the refit, "
        "first strict best on accuracy or mean per-class accuracy, binary as 2-class softmax"
    ),
)
def ssl_transfer_linear(case: CaseRun) -> LinearConfig:
    """ssl-transfer's linear probe for the case's dataset (see the module docstring).

    Args:
        case: The case; its ``task`` is read.

    Returns:
        The probe's config.
    """
    task = case.task
    return peer_linear_config(task.task, task.primary_metric, "ssl-transfer")


@register_preset(
    "linear",
    "ssl-medicalimaging",
    version=2,
    # every linear.py call of its runner_script.sh passes --no-norm
    preprocessing={**PREPROCESSING, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)},
    source="jonahanton/SSL_medicalimaging@77fceef:linear.py",
    summary=(
        "SSL_medicalimaging's linear.py (ssl-transfer's, --wd-values 45): accuracy for "
        "CheXpert, mean per-class accuracy for EyePACS and STOIC"
    ),
)
def ssl_medicalimaging_linear(case: CaseRun) -> LinearConfig:
    """SSL_medicalimaging's linear probe for the case's dataset (see the module docstring).

    Every linear run of its runner (jonahanton/SSL_medicalimaging@77fceef:runner_script.sh)
    passes ``--no-norm``: inputs keep [0, 1] (mean 0, std 1 instead of ImageNet's), stated
    in the preset's preprocessing; histogram normalisation of the MIMIC-CheXpert models
    stays the model card's.

    Args:
        case: The case; its ``task`` is read.

    Returns:
        The probe's config.
    """
    task = case.task
    return peer_linear_config(task.task, task.primary_metric, "ssl-medicalimaging")
