"""The report's reproducibility section: measured vs expected, and spread across seeds."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pandas as pd

from harness.expected import ExpectedFile


def render_tolerances(frame: pd.DataFrame, expected: ExpectedFile, table: Any) -> str:
    """Return the markdown of the tolerance table and the per-protocol seed spread.

    Args:
        frame: the newest record per case (as prepared by the report).
        expected: the suite's expected values.
        table: the report's markdown table renderer ``(headers, rows, right_aligned)``.
    """
    parts = [
        "## Reproducibility",
        f"Each case against its expected value in `{expected.path.name}` "
        "(pass when |measured − expected| ≤ tolerance; see `harness/expected.py`).",
    ]
    rows = []
    for record in frame.sort_values("case_id").itertuples():
        entry = expected.entries.get(record.case_id)
        measured = float(record.primary_value)
        if entry is None:
            rows.append([f"`{record.case_id}`", "—", "—", f"{measured:.4f}", "—", "missing", "—"])
            continue
        delta = measured - entry.value
        stale = entry.profile != record.profile or entry.protocol_version != record.protocol_version
        status = "stale" if stale else ("pass" if abs(delta) <= entry.tolerance + 1e-12 else "FAIL")
        rows.append(
            [
                f"`{record.case_id}`",
                f"{entry.value:.4f}",
                f"{entry.tolerance:.4f}",
                f"{measured:.4f}",
                f"{delta:+.4f}",
                status,
                entry.source.get("kind", "?"),
            ]
        )
    headers = ["case", "expected", "tolerance", "measured", "delta", "status", "source"]
    parts.append(table(headers, rows, {1, 2, 3, 4}))
    parts.append(_spread(expected, table))
    return "\n\n".join(parts)


def _spread(expected: ExpectedFile, table: Any) -> str:
    by_protocol: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for case_id, entry in expected.entries.items():
        if entry.source.get("kind") != "calibration":
            continue
        by_protocol[case_id.split("/", 1)[0]].append(
            (int(entry.source.get("seeds", 0)), float(entry.source.get("std", 0.0)))
        )
    if not by_protocol:
        return "No calibrated entries yet: run `medxfer calibrate <suite> --seeds N`."
    rows = []
    for protocol in sorted(by_protocol):
        items = by_protocol[protocol]
        stds = [std for _, std in items]
        rows.append(
            [
                f"`{protocol}`",
                str(len(items)),
                str(max(seeds for seeds, _ in items)),
                f"{sum(stds) / len(stds):.4f}",
                f"{max(stds):.4f}",
            ]
        )
    heading = "Spread of the primary metric across calibration seeds, per protocol:"
    headers = ["protocol", "cases", "seeds", "mean std", "max std"]
    return heading + "\n\n" + table(headers, rows, {1, 2, 3, 4})
