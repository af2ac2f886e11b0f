"""Which records a report shows: filters over cases, and one row per case from its runs.

A case (one profile and preset, protocol, dataset, model) may have run several times
(re-runs, other seeds with ``--medxfer-seed``, the same case in two suites). The report
shows one row per case, chosen by ``runs``:

* ``latest``: the newest run's numbers (the default; what pytest last checked).
* ``best``: the run with the highest primary value (ties: the newest of them). An
  optimistic number: say so when you publish it.
* ``mean``: every metric averaged over the runs; the primary value's sample standard
  deviation over the runs (``ddof=1``) is the spread shown beside it, and an interval a
  protocol reports (few-shot's 95% CI) is the mean of the runs' half-widths.

Only runs made with the newest run's protocol and dataset versions take part in
``best`` and ``mean`` (older versions measured something else); every choice reports the
number of runs it was taken over.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import pandas as pd

from harness.report.format import text_or_none

RunChoice = Literal["latest", "best", "mean"]
RUN_CHOICES: tuple[str, ...] = ("latest", "best", "mean")
CASE_KEY = ["_setting", "protocol", "dataset", "model"]


class FilterError(ValueError):
    """A report filter is malformed (a bad ``-k`` expression or model pattern)."""


def filter_records(
    frame: pd.DataFrame,
    keyword: str | None = None,
    protocols: Sequence[str] = (),
    models: str | None = None,
    datasets: str | None = None,
) -> pd.DataFrame:
    """Keep the records of the cases the filters select.

    Args:
        frame: records as loaded by :func:`harness.records.table.load_records`.
        keyword: a pytest ``-k`` expression (``chexpert and not random``); each name
            matches, case-insensitively, any substring of the case id, suite, profile,
            preset or model category.
        protocols: keep only these protocols (empty: all).
        models: a regular expression the whole model name must match (``resnet50.*``).
        datasets: a regular expression the whole dataset name must match.

    Returns:
        The selected rows, in their original order.

    Raises:
        FilterError: on a malformed expression or pattern.
    """
    keep = pd.Series(True, index=frame.index)
    if protocols:
        keep &= frame["protocol"].isin(list(protocols))
    for column, pattern in (("model", models), ("dataset", datasets)):
        if pattern:
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise FilterError(f"bad --{column}s pattern {pattern!r}: {exc}") from exc
            keep &= frame[column].map(lambda name, c=compiled: c.fullmatch(str(name)) is not None)
    if keyword:
        matches = _keyword_matcher(keyword)
        keep &= pd.Series([matches(_keywords(row)) for _, row in frame.iterrows()], frame.index)
    return frame[keep]


def _keywords(row: pd.Series) -> list[str]:
    names = [row.get(key) for key in ("case_id", "suite", "profile", "preset", "model_category")]
    return [str(name).lower() for name in names if text_or_none(name) is not None]


def _keyword_matcher(expression: str) -> Any:
    """Compile a pytest ``-k`` expression into ``matches(keywords) -> bool``."""
    from _pytest.mark.expression import Expression

    # pytest's own -k grammar (and, or, not, parentheses); it raises SyntaxError (pytest
    # 8.4+) or its ParseError (older, a SyntaxError too in spirit) on a malformed one
    try:
        compiled = Expression.compile(expression)
    except Exception as exc:
        raise FilterError(f"bad -k expression {expression!r}: {exc}") from exc

    def matches(keywords: list[str]) -> bool:
        def one(name: str, **_: Any) -> bool:
            return any(name.lower() in keyword for keyword in keywords)

        return bool(compiled.evaluate(one))

    return matches


def select_runs(frame: pd.DataFrame, runs: str = "latest") -> pd.DataFrame:
    """Reduce every case's runs to one row (see the module docstring for the numbers).

    Args:
        frame: records with ``_setting`` and ``_when`` columns, sorted oldest first.
        runs: ``latest``, ``best`` or ``mean``.

    Returns:
        One row per case with ``_runs`` (runs taken part), ``_spread`` (standard
        deviation of the primary value over them; NaN for ``latest``/``best`` or one
        run), ``_first_when`` / ``_last_when`` (their time range).

    Raises:
        ValueError: on an unknown ``runs``.
    """
    if runs not in RUN_CHOICES:
        raise ValueError(f"--runs must be one of {', '.join(RUN_CHOICES)}, got {runs!r}")
    rows = []
    for _, group in frame.groupby(CASE_KEY, sort=True):
        newest = group.iloc[-1]
        same = group[
            (group["protocol_version"] == newest["protocol_version"])
            & (group["dataset_version"] == newest["dataset_version"])
        ]
        if runs == "latest":
            row = newest.copy()
        elif runs == "best":
            order = same.assign(_order=range(len(same)))
            best = order.sort_values(
                ["primary_value", "_order"], ascending=[False, False], na_position="last"
            )
            row = best.iloc[0].drop("_order").copy()
        else:
            row = _mean_row(same)
        row["_runs"] = len(same)
        row["_spread"] = (
            float(pd.to_numeric(same["primary_value"]).std(ddof=1))
            if runs == "mean" and len(same) > 1
            else float("nan")
        )
        row["_first_when"] = same["_when"].min()
        row["_last_when"] = same["_when"].max()
        rows.append(row)
    return pd.DataFrame(rows).reset_index(drop=True)


def _mean_row(runs: pd.DataFrame) -> pd.Series:
    """The newest run's row with every metric replaced by its mean over ``runs``."""
    row = runs.iloc[-1].copy()
    numeric = [c for c in runs.columns if c.startswith("metric_")] + ["primary_value"]
    for column in numeric:
        values = pd.to_numeric(runs[column], errors="coerce")
        row[column] = float(values.mean()) if values.notna().any() else float("nan")
    return row
