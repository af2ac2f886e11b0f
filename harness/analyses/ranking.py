"""Rank correlations, and how well transferability estimates rank models by probe accuracy.

A transferability estimate is judged by whether it orders the candidate models of one
target as the measured transfer does (You et al. 2021 and Nguyen et al. 2020 report
Kendall's tau / Pearson over a model zoo per target). :func:`estimate_rank_correlations`
does that over a suite's records: per dataset, the models' estimates (from the
``transferability`` protocol's records) against their linear-probe accuracy (from the
``linear`` protocol's records), as Spearman's rho and Kendall's tau-b, plus the mean over
datasets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_ESTIMATES = ("logme", "nleep", "leep")
MEAN_ROW = "(mean over datasets)"


def _pair(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(
            f"rank correlation needs two equal-length sequences, got {x.size} and {y.size}"
        )
    return x, y


def _defined(x: np.ndarray, y: np.ndarray) -> bool:
    return x.size >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties).

    Returns:
        rho in [-1, 1]; NaN with fewer than two values or when either side is constant.

    Raises:
        ValueError: When the lengths differ.
    """
    x, y = _pair(a, b)
    if not _defined(x, y):
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def kendall(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Kendall's tau-b (tie-corrected).

    Returns:
        tau in [-1, 1]; NaN with fewer than two values or when either side is constant.

    Raises:
        ValueError: When the lengths differ.
    """
    x, y = _pair(a, b)
    if not _defined(x, y):
        return math.nan
    return float(stats.kendalltau(x, y, variant="b").statistic)


def estimate_rank_correlations(
    records: pd.DataFrame,
    estimates: Sequence[str] = DEFAULT_ESTIMATES,
    *,
    estimate_protocol: str = "transferability",
    target_protocol: str = "linear",
    target_metric: str | None = "accuracy",
) -> pd.DataFrame:
    """Rank correlation of each transferability estimate with measured probe accuracy.

    Args:
        records: A suite's records as :func:`harness.records.table.load_records` returns
            them (one row per case; columns ``suite``, ``profile``, ``model``, ``dataset``,
            ``protocol``, ``primary_value`` and ``metric_<name>``). Rows of other protocols
            are ignored.
        estimates: Metric names of the ``estimate_protocol`` records to correlate.
        estimate_protocol: The protocol whose records carry the estimates.
        target_protocol: The protocol whose records carry the measured transfer.
        target_metric: Its metric to rank by (``metric_<name>`` column); None takes each
            record's ``primary_value``.

    Returns:
        One row per (estimate, dataset) with columns ``estimate``, ``dataset``,
        ``n_models`` (models with both values), ``spearman`` and ``kendall`` (NaN below
        two models or for constant values), then one row per estimate with ``dataset``
        :data:`MEAN_ROW`: the mean of the defined per-dataset values and the total model
        count. Empty (with these columns) when nothing pairs up. Where a suite's records
        hold several profiles or suites, each (suite, profile) pair is correlated on its
        own and the ``dataset`` column reads ``suite/profile/dataset``.
    """
    import pandas as pd

    columns = ["estimate", "dataset", "n_models", "spearman", "kendall"]
    if records.empty:
        return pd.DataFrame(columns=columns)
    target_column = "primary_value" if target_metric is None else f"metric_{target_metric}"
    keys = ["suite", "profile", "dataset", "model"]
    scope = records[["suite", "profile"]].drop_duplicates()
    several = len(scope) > 1
    target = records[records["protocol"] == target_protocol]
    found = records[records["protocol"] == estimate_protocol]
    if target_column not in target.columns:
        return pd.DataFrame(columns=columns)
    target = target[[*keys, target_column]].rename(columns={target_column: "_target"})
    rows: list[dict[str, object]] = []
    for estimate in estimates:
        column = f"metric_{estimate}"
        if column not in found.columns:
            continue
        merged = found[[*keys, column]].merge(target, on=keys).dropna(subset=[column, "_target"])
        per_dataset = []
        for (suite, profile, dataset), group in merged.groupby(["suite", "profile", "dataset"]):
            label = f"{suite}/{profile}/{dataset}" if several else str(dataset)
            row = {
                "estimate": estimate,
                "dataset": label,
                "n_models": len(group),
                "spearman": spearman(group[column], group["_target"]),
                "kendall": kendall(group[column], group["_target"]),
            }
            per_dataset.append(row)
        if not per_dataset:
            continue
        rows.extend(per_dataset)
        rows.append(
            {
                "estimate": estimate,
                "dataset": MEAN_ROW,
                "n_models": int(sum(int(r["n_models"]) for r in per_dataset)),  # type: ignore[call-overload]
                "spearman": _nanmean([float(r["spearman"]) for r in per_dataset]),  # type: ignore[arg-type]
                "kendall": _nanmean([float(r["kendall"]) for r in per_dataset]),  # type: ignore[arg-type]
            }
        )
    return pd.DataFrame(rows, columns=columns)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan
