"""The words every stage shares, defined once: tasks, metrics, interval suffixes, packages.

Cards, protocols, records, baselines and the report import these names from here, so a
new task type or metric is added in one place. Profiles (``smoke``, ``demo``, ``paper``)
are defined in :mod:`harness.config.profiles` next to what each one sets.
"""

from __future__ import annotations

# Task types a dataset card may declare; ordinal tasks are single-label with ordered classes.
TASKS = ("binary", "multiclass", "ordinal", "multilabel")

# Every metric a card or protocol may name, with its direction (all are higher-is-better).
METRIC_HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True,
    "mean_per_class_accuracy": True,
    "roc_auc": True,
    "quadratic_kappa": True,
    # Keras' default AUC (one-hot entries flattened, 200 thresholds), as revisiting-transfer
    # scores: harness/protocols/metrics_keras.py
    "roc_auc_keras": True,
}
METRICS = tuple(METRIC_HIGHER_IS_BETTER)

# Metrics defined for multilabel tasks (label-wise accuracy at 0.5, macro ROC AUC).
MULTILABEL_METRICS = ("accuracy", "roc_auc", "roc_auc_keras")

# A record's metric ``<name>_ci95`` is the half-width of the 95% interval of ``<name>``.
INTERVAL_SUFFIX = "_ci95"

# Distribution names as pip knows them, in the order records and reports list them.
VERSIONED_PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "scikit-learn",
    "scipy",
    "pandas",
    # image libraries: they decode and resize, so an upgrade can move pixels
    "pillow",
    "opencv-python-headless",
    "opencv-python",
)


def interval_name(metric: str) -> str:
    """Return the record key of ``metric``'s 95% interval half-width."""
    return metric + INTERVAL_SUFFIX


def is_interval_name(name: str) -> bool:
    """Whether a record metric key is an interval half-width rather than a metric."""
    return name.endswith(INTERVAL_SUFFIX)
