"""``medxfer compare``: two sets of result records, case by case, with fail rules.

A rule ``METRIC:DELTA`` fails when run B is worse than run A by more than DELTA
(absolute, e.g. ``roc_auc:0.01``, or relative, e.g. ``accuracy:2%``); ``primary``
names each case's primary metric. Like pytest-benchmark's ``--benchmark-compare-fail``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.records.results import load_records


@dataclass(frozen=True)
class FailRule:
    """Fail when B's metric is lower than A's by more than ``delta`` (or ``delta`` percent)."""

    metric: str
    delta: float
    relative: bool

    @classmethod
    def parse(cls, text: str) -> FailRule:
        """Parse ``METRIC:DELTA`` or ``METRIC:DELTA%``.

        Raises:
            ValueError: naming the malformed rule.
        """
        metric, sep, amount = text.partition(":")
        if not sep or not metric or not amount:
            raise ValueError(f"fail rule {text!r} must look like METRIC:DELTA or METRIC:DELTA%")
        relative = amount.endswith("%")
        try:
            delta = float(amount.rstrip("%"))
        except ValueError as exc:
            raise ValueError(f"fail rule {text!r}: {amount!r} is not a number") from exc
        if delta < 0:
            raise ValueError(f"fail rule {text!r}: DELTA must be >= 0")
        return cls(metric, delta, relative)

    def broken(self, a: float, b: float) -> bool:
        """True when ``b`` regressed from ``a`` beyond the allowed delta."""
        allowed = abs(a) * self.delta / 100 if self.relative else self.delta
        return (a - b) > allowed + 1e-12

    def __str__(self) -> str:
        return f"{self.metric}:{self.delta:g}{'%' if self.relative else ''}"


def _metric(df: pd.DataFrame, metric: str) -> pd.Series:
    if metric == "primary":
        return df["primary_value"]
    column = f"metric_{metric}"
    return df[column] if column in df else pd.Series(float("nan"), index=df.index)


def compare_runs(run_a: Path, run_b: Path, rules: list[FailRule]) -> tuple[pd.DataFrame, list[str]]:
    """Compare the newest record per case in two results folders.

    Returns:
        A table with one row per (case, metric) and the list of broken-rule messages.
    """
    a = load_records(run_a).set_index("case_id")
    b = load_records(run_b).set_index("case_id")
    if a.empty or b.empty:
        raise ValueError(f"no result records in {run_a if a.empty else run_b}")
    shared = sorted(set(a.index) & set(b.index))
    metrics = [r.metric for r in rules] or ["primary"]
    rows, broken = [], []
    for case_id in shared:
        for metric in dict.fromkeys(metrics):
            va = float(_metric(a.loc[[case_id]], metric).iloc[0])
            vb = float(_metric(b.loc[[case_id]], metric).iloc[0])
            failed = [r for r in rules if r.metric == metric and r.broken(va, vb)]
            rows.append(
                {
                    "case_id": case_id,
                    "metric": metric,
                    "a": va,
                    "b": vb,
                    "delta": vb - va,
                    "status": "FAIL" if failed else "ok",
                }
            )
            broken += [f"{case_id}: {metric} {va:.4f} -> {vb:.4f} breaks {r}" for r in failed]
    only_a = sorted(set(a.index) - set(b.index))
    only_b = sorted(set(b.index) - set(a.index))
    for case_id in only_a:
        rows.append(
            {
                "case_id": case_id,
                "metric": "-",
                "a": None,
                "b": None,
                "delta": None,
                "status": "only in A",
            }
        )
    for case_id in only_b:
        rows.append(
            {
                "case_id": case_id,
                "metric": "-",
                "a": None,
                "b": None,
                "delta": None,
                "status": "only in B",
            }
        )
    return pd.DataFrame(rows), broken


def format_table(table: pd.DataFrame) -> str:
    """Render the comparison as a fixed-width text table."""
    lines = [f"{'case':70s} {'metric':24s} {'A':>8s} {'B':>8s} {'delta':>8s}  status"]
    for row in table.itertuples():

        def num(v: object) -> str:
            return f"{v:8.4f}" if isinstance(v, float) and v == v else f"{'-':>8s}"

        lines.append(
            f"{row.case_id:70s} {row.metric:24s} {num(row.a)} {num(row.b)} {num(row.delta)}  {row.status}"
        )
    return "\n".join(lines)
