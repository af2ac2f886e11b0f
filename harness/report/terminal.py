"""A compact leaderboard of the cases just run, as lines for the terminal summary.

The pytest plugin prints these at the end of a session (like pytest-benchmark's table)::

    medxfer results: 4 cases, 1 protocol, 2 datasets
    linear · demo_modality (accuracy)
      rank  model                            accuracy        Δ random
         1  tf_efficientnet_lite0.in1k_pip   0.797             +0.467
         2  tf_efficientnet_lite0.random     0.330

Numbers are rounded to 3 decimals; ``±`` is the protocol's 95% interval where it has
one; ``Δ random`` is the difference to the random-init twin (the model whose record
names it, else the random-init model of the same architecture).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from harness.config.vocabulary import interval_name
from harness.records.results import ResultRecord

RANDOM_INIT = "random-init"


def summary_lines(
    records: Iterable[ResultRecord | Mapping[str, Any]], max_width: int = 100
) -> list[str]:
    """Return a leaderboard of ``records`` as lines of text (no trailing newlines).

    Args:
        records: the records of the cases just run (:class:`ResultRecord` or their
            ``to_dict()`` form). When one case appears more than once, the newest
            (by timestamp) is shown.
        max_width: model names are shortened with ``…`` so that a line fits.

    Returns:
        A header line, then per (protocol, dataset), sorted by name, a title line, a
        column header and one line per model, best first (ties share the mean rank,
        a missing value ranks last without a rank). Empty when there are no records.
    """
    newest: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for record in records:
        data = record.to_dict() if isinstance(record, ResultRecord) else dict(record)
        key = (
            str(data["profile"]),
            str(data["protocol"]["name"]),
            str(data["dataset"]["name"]),
            str(data["model"]["name"]),
        )
        if key not in newest or str(data["timestamp"]) >= str(newest[key]["timestamp"]):
            newest[key] = data
    if not newest:
        return []
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for (profile, protocol, dataset, _), data in sorted(newest.items()):
        groups.setdefault((profile, protocol, dataset), []).append(data)
    profiles = {key[0] for key in groups}
    protocols = {key[1] for key in groups}
    datasets = {key[2] for key in groups}
    lines = [
        f"medxfer results: {_count(len(newest), 'case')}, {_count(len(protocols), 'protocol')}, "
        f"{_count(len(datasets), 'dataset')}"
    ]
    name_width = min(
        max(len(str(d["model"]["name"])) for d in newest.values()), max(12, max_width - 48)
    )
    for (profile, protocol, dataset), rows in groups.items():
        metric = "/".join(sorted({str(row["primary_metric"]) for row in rows}))
        where = f" [profile {profile}]" if len(profiles) > 1 else ""
        lines.append(f"{protocol} · {dataset} ({metric}){where}")
        lines.append(f"  {'rank':>4}  {'model':<{name_width}}  {metric:<15}  {'Δ random':>8}")
        ranks = _ranks([_value(row) for row in rows])
        twins = _twins(rows)
        order = sorted(range(len(rows)), key=lambda i: (math.isnan(ranks[i]), ranks[i], i))
        for i in order:
            row = rows[i]
            twin = twins.get(str(row["model"]["name"]))
            delta = "" if twin is None else _signed(_value(row) - _value(twin))
            lines.append(
                f"  {_rank_text(ranks[i]):>4}  {_short(row['model']['name'], name_width)}  "
                f"{_value_text(row):<15}  {delta:>8}".rstrip()
            )
    return lines


def _value(row: Mapping[str, Any]) -> float:
    value = row.get("primary_value")
    return math.nan if value is None else float(value)


def _value_text(row: Mapping[str, Any]) -> str:
    value = _value(row)
    if math.isnan(value):
        return "—"
    interval = (row.get("metrics") or {}).get(interval_name(str(row["primary_metric"])))
    return f"{value:.3f}" + ("" if interval is None else f" ± {float(interval):.3f}")


def _ranks(values: list[float]) -> list[float]:
    """Descending ranks, ties averaged, NaN unranked (like pandas ``rank(method="average")``)."""
    ranks = [math.nan] * len(values)
    present = sorted((v, i) for i, v in enumerate(values) if not math.isnan(v))
    present.reverse()
    position = 0
    while position < len(present):
        end = position
        while end + 1 < len(present) and present[end + 1][0] == present[position][0]:
            end += 1
        for k in range(position, end + 1):
            ranks[present[k][1]] = (position + end) / 2 + 1
        position = end + 1
    return ranks


def _twins(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    twins: dict[str, dict[str, Any]] = {}
    randoms = [row for row in rows if row["model"].get("category") == RANDOM_INIT]
    for row in randoms:
        target = row["model"].get("random_twin_of")
        if target and target not in twins:
            twins[str(target)] = row
    for row in rows:
        name = str(row["model"]["name"])
        if row["model"].get("category") == RANDOM_INIT or name in twins:
            continue
        same = [
            r for r in randoms if r["model"].get("architecture") == row["model"].get("architecture")
        ]
        if same:
            twins[name] = same[0]
    return twins


def _rank_text(rank: float) -> str:
    if math.isnan(rank):
        return "—"
    return str(int(rank)) if rank.is_integer() else f"{rank:g}"


def _signed(value: float) -> str:
    if math.isnan(value):
        return "—"
    return f"{0.0 if round(value, 3) == 0 else value:+.3f}"


def _short(name: object, width: int) -> str:
    text = str(name)
    return text.ljust(width) if len(text) <= width else text[: width - 1] + "…"


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
