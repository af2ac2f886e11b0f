"""``medxfer compare``: two sets of result records, case by case, with fail rules.

A rule ``METRIC:DELTA`` fails when run B is worse than run A by more than DELTA
(absolute, e.g. ``roc_auc:0.01``, or relative, e.g. ``accuracy:2%``); ``primary``
names each case's primary metric. Like pytest-benchmark's ``--benchmark-compare-fail``.

Each case of both runs also goes through the regression check pytest runs
(:meth:`harness.baselines.check.Baselines.check` against the expected values of the
record's suite), so compare, the report and pytest say the same pass/fail per case;
``fail_on_expected`` makes a case of run B that fails that check a broken rule too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.baselines.check import Baselines
from harness.records.results import load_record
from harness.records.table import load_records


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


def compare_runs(
    run_a: Path, run_b: Path, rules: list[FailRule], fail_on_expected: bool = False
) -> tuple[pd.DataFrame, list[str]]:
    """Compare the newest record per case in two results folders.

    Args:
        run_a: the baseline results folder.
        run_b: the new results folder.
        rules: fail rules between A and B.
        fail_on_expected: also break when a case of B fails its expected-value check.

    Returns:
        A table with one row per (case, metric), with each run's expected-value check
        (``check_a``, ``check_b``), and the list of broken-rule messages.
    """
    a = load_records(run_a).set_index("case_id")
    b = load_records(run_b).set_index("case_id")
    if a.empty or b.empty:
        raise ValueError(f"no result records in {run_a if a.empty else run_b}")
    baselines: dict[str, Baselines] = {}
    checks_a = _checks(a, baselines)
    checks_b = _checks(b, baselines)
    metrics = [r.metric for r in rules] or ["primary"]
    rows, broken = [], []
    for case_id in sorted(set(a.index) | set(b.index)):
        in_a, in_b = case_id in a.index, case_id in b.index
        check_a, check_b = checks_a.get(case_id, "-"), checks_b.get(case_id, "-")
        if fail_on_expected and in_b and check_b.status != "pass":
            broken.append(f"{case_id}: run B {check_b.status}s its expected-value check")
        if not (in_a and in_b):
            status = "only in A" if in_a else "only in B"
            rows.append(_row(case_id, "-", None, None, status, check_a, check_b))
            continue
        for metric in dict.fromkeys(metrics):
            va = float(_metric(a.loc[[case_id]], metric).iloc[0])
            vb = float(_metric(b.loc[[case_id]], metric).iloc[0])
            failed = [r for r in rules if r.metric == metric and r.broken(va, vb)]
            rows.append(_row(case_id, metric, va, vb, "FAIL" if failed else "ok", check_a, check_b))
            broken += [f"{case_id}: {metric} {va:.4f} -> {vb:.4f} breaks {r}" for r in failed]
    return pd.DataFrame(rows), broken


def _checks(frame: pd.DataFrame, baselines: dict[str, Baselines]) -> dict[str, Any]:
    """Each case's expected-value check, one :class:`Baselines` per suite."""
    out = {}
    for case_id, row in frame.iterrows():
        suite = str(row["suite"])
        checker = baselines.setdefault(suite, Baselines(suite))
        out[str(case_id)] = checker.check(load_record(Path(row["path"])).to_dict())
    return out


def _row(
    case_id: str,
    metric: str,
    a: float | None,
    b: float | None,
    status: str,
    check_a: Any,
    check_b: Any,
) -> dict[str, Any]:
    return {
        "case_id": case_id,
        "metric": metric,
        "a": a,
        "b": b,
        "delta": None if a is None or b is None else b - a,
        "status": status,
        "check_a": getattr(check_a, "status", check_a),
        "check_b": getattr(check_b, "status", check_b),
    }


def format_table(table: pd.DataFrame) -> str:
    """Render the comparison as a fixed-width text table."""
    lines = [
        f"{'case':70s} {'metric':24s} {'A':>8s} {'B':>8s} {'delta':>8s}  "
        f"{'status':10s} {'expected A':11s} expected B"
    ]
    for row in table.itertuples():

        def num(v: object) -> str:
            return f"{v:8.4f}" if isinstance(v, float) and v == v else f"{'-':>8s}"

        lines.append(
            f"{row.case_id:70s} {row.metric:24s} {num(row.a)} {num(row.b)} {num(row.delta)}  "
            f"{row.status:10s} {row.check_a:11s} {row.check_b}"
        )
    return "\n".join(lines)
