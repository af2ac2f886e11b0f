"""The report's CSV: one row per case shown, with the numbers of every markdown table."""

from __future__ import annotations

import csv
import io

import pandas as pd

from harness.config.vocabulary import interval_name, is_interval_name
from harness.report.format import is_missing, text_or_none
from harness.report.frame import is_detail_metric, random_twins, report_sections
from harness.report.sections import relative_gain

CSV_COLUMNS = (
    "profile",
    "preset",
    "protocol",
    "dataset",
    "model",
    "category",
    "architecture",
    "random_twin",
    "primary_metric",
    "primary_value",
    "interval95",
    "runs",
    "sd_over_runs",
    "rank",
    "delta_vs_twin",
    "relative_gain",
)


def cases_csv(frame: pd.DataFrame) -> str:
    """Render the prepared report frame as CSV text (``\\n`` line ends, 6 decimals).

    Columns: :data:`CSV_COLUMNS`, then every other (non-interval, non-detail) metric as
    ``metric_<name>``; empty cells for missing values. Rows are sorted like the report
    (setting, protocol, dataset, model), so the same records give the same bytes.
    """
    metrics = sorted(
        c
        for c in frame.columns
        if c.startswith("metric_")
        and not is_interval_name(c[len("metric_") :])
        and not is_detail_metric(c[len("metric_") :])
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *metrics])
    for (_, protocol, _), group in frame.groupby(["_setting", "protocol", "dataset"], sort=True):
        sections = report_sections(protocol)
        twins = random_twins(group) if "twin_gain" in sections else {}
        for _, row in group.sort_values("model").iterrows():
            twin = twins.get(row["model"])
            delta = (
                row["primary_value"] - twin["primary_value"] if twin is not None else float("nan")
            )
            gain = (
                relative_gain(row["primary_value"], twin["primary_value"])
                if twin is not None
                else float("nan")
            )
            cells = [
                row["profile"],
                text_or_none(row.get("preset")) or "medxfer",
                protocol,
                row["dataset"],
                row["model"],
                row["model_category"],
                row["_arch"],
                "" if twin is None else twin["model"],
                row["primary_metric"],
                _number(row["primary_value"]),
                _number(row.get("metric_" + interval_name(row["primary_metric"]))),
                str(int(row["_runs"])),
                _number(row["_spread"]),
                _number(row["_rank"]) if "ranking" in sections else "",
                _number(delta),
                _number(gain),
                *(_number(row[c]) for c in metrics),
            ]
            writer.writerow(cells)
    return buffer.getvalue()


def _number(value: object) -> str:
    return "" if is_missing(value) else f"{float(value):.6f}"  # type: ignore[arg-type]
