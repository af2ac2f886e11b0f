"""Result records as one pandas table: the newest record per case, metrics as columns."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from harness.cache import atomic
from harness.records.results import RecordError, ResultRecord, load_record, parse_timestamp

# Columns of load_records() that exist even when no record was found, in three groups;
# one ``metric_<name>`` column per metric seen is inserted after ``primary_value``.
CASE_COLUMNS = (
    "case_id",
    "suite",
    "suite_version",
    "profile",
    "model",
    "model_category",
    "random_twin_of",
    "derived_parent",
    "derived_source",
    "dataset",
    "dataset_version",
    "semi_synthetic",
    "protocol",
    "protocol_version",
    "preset",
    "primary_metric",
    "primary_value",
)
RUN_COLUMNS = (
    "hyperparameters",
    "extraction_s",
    "protocol_s",
    "total_s",
    "feature_cache_hits",
    "feature_cache_misses",
)
PROVENANCE_COLUMNS = (
    "timestamp",
    "run_id",
    "git_commit",
    "git_dirty",
    "versions",
    "hardware",
    "path",
)
BASE_COLUMNS = (*CASE_COLUMNS, *RUN_COLUMNS, *PROVENANCE_COLUMNS)
# What a report needs from every row; the rest may be absent from older or foreign tables.
OPTIONAL_COLUMNS = frozenset(
    {"suite_version", "preset", *RUN_COLUMNS, "git_dirty", "versions", "hardware", "path"}
    | {"derived_parent", "derived_source"}
)
REQUIRED_COLUMNS = tuple(c for c in BASE_COLUMNS if c not in OPTIONAL_COLUMNS)


def load_records(results_dir: Path, latest_only: bool = True) -> pd.DataFrame:
    """Load every result record under ``results_dir`` into one flat table.

    Leftover temporary files and corrupt or invalid records are skipped with a
    warning naming the file; they never stop the load.

    Args:
        results_dir: the results root.
        latest_only: keep only the newest record per (suite, case_id, profile).

    Returns:
        One row per record with the columns of :data:`BASE_COLUMNS` plus one
        ``metric_<name>`` column per metric seen (inserted after ``primary_value``),
        sorted by suite, case_id, profile, timestamp.
    """
    rows = []
    root = Path(results_dir)
    paths = sorted(root.rglob("*.json")) if root.is_dir() else []
    for path in paths:
        if atomic.is_temporary(path):
            warnings.warn(
                f"{path}: skipping leftover temporary file of an interrupted write",
                stacklevel=2,
            )
            continue
        try:
            record = load_record(path)
        except RecordError as exc:
            warnings.warn(f"skipping result record: {exc}", stacklevel=2)
            continue
        rows.append(_flatten(record, path))

    metric_names = sorted({key for row in rows for key in row if key.startswith("metric_")})
    anchor = BASE_COLUMNS.index("primary_value") + 1
    columns = [*BASE_COLUMNS[:anchor], *metric_names, *BASE_COLUMNS[anchor:]]
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows)
    for name in metric_names:
        frame[name] = frame[name].astype(float)
    frame["_when"] = [parse_timestamp(text) for text in frame["timestamp"]]
    frame = frame.sort_values(["suite", "case_id", "profile", "_when", "path"], kind="stable")
    if latest_only:
        frame = frame.drop_duplicates(["suite", "case_id", "profile"], keep="last")
    return frame[columns].reset_index(drop=True)


def preset_text(preset: dict[str, Any] | None) -> str:
    """``ssl-transfer v1``, or ``medxfer`` for the default."""
    preset = preset or {}
    name = str(preset.get("name", "medxfer"))
    return name if preset.get("version") is None else f"{name} v{preset['version']}"


def _flatten(record: ResultRecord, path: Path) -> dict[str, Any]:
    cache_states = list(record.feature_cache.values())
    derived = record.model.derived_from if isinstance(record.model.derived_from, dict) else {}
    row: dict[str, Any] = {
        "case_id": record.case_id,
        "suite": record.suite,
        "suite_version": record.suite_version,
        "profile": record.profile,
        "model": record.model.name,
        "model_category": record.model.category,
        "random_twin_of": record.model.random_twin_of,
        # a model fine-tuned in the harness: its parent and source dataset (None otherwise)
        "derived_parent": derived.get("parent"),
        "derived_source": derived.get("dataset"),
        "dataset": record.dataset.name,
        "dataset_version": record.dataset.version,
        "semi_synthetic": bool(record.dataset.semi_synthetic),
        "protocol": record.protocol.name,
        "protocol_version": record.protocol.version,
        "preset": preset_text(record.protocol.preset),
        "primary_metric": record.primary_metric,
        "primary_value": record.primary_value,
        "hyperparameters": record.hyperparameters,
        "extraction_s": _number_or_nan(record.timings.get("extraction_s")),
        "protocol_s": _number_or_nan(record.timings.get("protocol_s")),
        "total_s": _number_or_nan(record.timings.get("total_s")),
        "feature_cache_hits": sum(state == "hit" for state in cache_states),
        "feature_cache_misses": sum(state == "miss" for state in cache_states),
        "timestamp": record.timestamp,
        "run_id": record.run_id,
        "git_commit": record.git.get("commit"),
        "git_dirty": record.git.get("dirty"),
        "versions": record.versions,
        "hardware": record.hardware,
        "path": str(path),
    }
    for name, value in record.metrics.items():
        row[f"metric_{name}"] = value
    return row


def _number_or_nan(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return math.nan
