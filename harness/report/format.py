"""Cell formatting and the markdown table renderer of the report (deterministic text)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from harness.config.vocabulary import METRICS

MISSING = "—"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """Render a padded markdown table; columns in ``right`` are right-aligned."""
    cells = [[_escape(cell) for cell in row] for row in [list(headers), *rows]]
    widths = [max(3, *(len(row[i]) for row in cells)) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        padded = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = [
        ("-" * (widths[i] - 1) + ":") if i in right else "-" * widths[i]
        for i in range(len(headers))
    ]
    return "\n".join([line(cells[0]), "| " + " | ".join(rule) + " |", *map(line, cells[1:])])


def _escape(cell: str) -> str:
    return str(cell).replace("|", "\\|").replace("\n", " ")


def is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def truthy(value: Any) -> bool:
    return not is_missing(value) and bool(value)


def fmt(value: Any) -> str:
    if is_missing(value):
        return MISSING
    return f"{float(value):.3f}"


def fmt_delta(value: Any) -> str:
    if is_missing(value):
        return MISSING
    value = float(value)
    if round(value, 3) == 0:
        value = 0.0  # no "-0.000"
    return f"{value:+.3f}"


def fmt_gain(value: Any) -> str:
    """A relative gain as a signed percentage with one decimal (``+52.3%``)."""
    if is_missing(value):
        return MISSING
    value = float(value) * 100
    if round(value, 1) == 0:
        value = 0.0
    return f"{value:+.1f}%"


def fmt_rank(value: Any) -> str:
    if is_missing(value):
        return MISSING
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:g}"


def fmt_hparams(params: Any) -> str:
    if not isinstance(params, dict) or not params:
        return MISSING
    return ", ".join(f"{key}={_fmt_param(params[key])}" for key in sorted(params, key=str))


def _fmt_param(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1e}" if math.isfinite(value) else str(value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return str(value)


def fmt_with_interval(value: Any, interval: Any) -> str:
    if is_missing(interval):
        return fmt(value)
    return f"{fmt(value)} ± {fmt(interval)}"


def ordered_metrics(names: Iterable[str]) -> list[str]:
    names = set(names)
    known = [name for name in METRICS if name in names]
    return known + sorted(names - set(known))


def versions_text(values: pd.Series) -> str:
    found = sorted({int(v) for v in values if not is_missing(v)})
    return " / ".join(str(v) for v in found) if found else MISSING


def column_values(frame: pd.DataFrame, name: str) -> list[Any]:
    return list(frame[name]) if name in frame.columns else [None] * len(frame)


def total(values: Iterable[Any]) -> float:
    return float(sum(float(v) for v in values if not is_missing(v)))


def count_text(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n} {singular if n == 1 else (plural or singular + 's')}"


def text_or_none(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    return str(value)
