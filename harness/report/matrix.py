"""The models x datasets matrix of primary values, one per protocol (and setting)."""

from __future__ import annotations

import pandas as pd

from harness.report.format import fmt, markdown_table
from harness.report.frame import (
    dataset_label,
    protocol_label,
    protocols_with,
    report_sections,
    semi_synthetic,
)


def primary_matrix(group: pd.DataFrame) -> pd.DataFrame:
    """Primary values of one (setting, protocol) group as a models x datasets frame.

    Rows and columns are sorted by name; a case that did not run is NaN.
    """
    matrix = group.pivot(index="model", columns="dataset", values="primary_value")
    return matrix.reindex(index=sorted(matrix.index), columns=sorted(matrix.columns))


def matrices(frame: pd.DataFrame, multi_profile: bool) -> str:
    """The ``## Models × datasets`` section: one matrix per protocol that contributes one.

    In a ranked protocol the best value of each dataset (column) is bold.
    """
    parts = [
        "## Models × datasets",
        "Primary metric of every model (rows) on every dataset (columns), one table per "
        "protocol; the best value of each dataset is **bold** where the protocol ranks models.",
    ]
    semi = semi_synthetic(frame)
    shown = frame[frame["protocol"].isin(protocols_with(frame, "matrix"))]
    for (setting, protocol), group in shown.groupby(["_setting", "protocol"], sort=True):
        matrix = primary_matrix(group)
        ranked = "ranking" in report_sections(protocol)
        best = matrix.max(axis=0)
        metrics = ", ".join(sorted(set(group["primary_metric"])))
        rows = []
        for model in matrix.index:
            cells = [f"`{model}`"]
            for dataset in matrix.columns:
                value = matrix.at[model, dataset]
                text = fmt(value)
                if ranked and not pd.isna(value) and value == best[dataset]:
                    text = f"**{text}**"
                cells.append(text)
            rows.append(cells)
        headers = ["model", *(dataset_label(name, semi) for name in matrix.columns)]
        parts += [
            f"### {protocol_label(protocol, setting, multi_profile)} ({metrics})",
            markdown_table(headers, rows, set(range(1, len(headers)))),
        ]
    return "\n\n".join(parts)
