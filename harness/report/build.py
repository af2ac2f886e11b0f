"""Markdown reports from result records.

A report has leaderboards per (dataset, protocol), a mean-rank table per protocol,
a pretrained-vs-random-initialisation summary and a provenance footer. Rendering is
deterministic: the same records give byte-identical markdown (no wall-clock time,
stable ordering), so a committed report only changes when the numbers do.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from harness.baselines.check import Baselines
from harness.cache import atomic
from harness.config.vocabulary import METRICS, interval_name, is_interval_name
from harness.protocols.registry import discover
from harness.records.results import BASE_COLUMNS, load_records, parse_timestamp
from harness.report.tolerance import render_tolerances

SEMI_SYNTHETIC_MARK = "†"
MISSING = "—"
DELTA_HEADER = "Δ vs random twin"

# Columns of load_records() that a report cannot do without (timings, cache counts,
# hyperparameters and provenance blobs are optional).
_OPTIONAL_COLUMNS = {
    "hyperparameters",
    "extraction_s",
    "protocol_s",
    "total_s",
    "feature_cache_hits",
    "feature_cache_misses",
    "git_dirty",
    "versions",
    "hardware",
    "path",
}
_REQUIRED_COLUMNS = tuple(c for c in BASE_COLUMNS if c not in _OPTIONAL_COLUMNS)
_VERSION_ORDER = (
    "python",
    "medxfer",
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "scikit-learn",
    "scipy",
    "pandas",
    "cuda",
)


def _detail_prefixes() -> tuple[str, ...]:
    """Metric prefixes the registered protocols mark as per-item details."""
    return tuple(p for spec in discover().values() for p in spec.detail_metric_prefixes)


def _descriptive_protocols() -> list[str]:
    """Protocols whose measures are described, not ranked against the random twin."""
    return [name for name, spec in discover().items() if spec.display == "descriptive"]


class ReportError(RuntimeError):
    """There is nothing to report, or the records lack what a report needs."""


def render_report(
    df: pd.DataFrame, title: str, suite: str | None = None, baselines: Baselines | None = None
) -> str:
    """Render result records as a markdown report.

    Args:
        df: records as returned by :func:`harness.records.results.load_records`; when a case
            has several records (``latest_only=False``, or the same case in two
            suites), the newest one is used.
        title: the report's title (first heading).
        suite: report only this suite; None reports every suite in ``df``.
        baselines: the suite's expected values; adds the reproducibility section.

    Returns:
        The markdown text, ending with a newline.

    Raises:
        ReportError: when ``df`` lacks required columns or holds no record (of ``suite``).
    """
    frame = _prepare(df, suite)
    multi_profile = frame["profile"].nunique() > 1
    sections = [
        _header(frame, title, suite),
        _leaderboards(frame, multi_profile),
        _mean_ranks(frame, multi_profile),
        _twin_summary(frame, multi_profile),
    ]
    invariance = _invariance_tables(frame)
    if invariance:
        sections.append(invariance)
    if baselines is not None:
        sections.append(render_tolerances(frame, baselines, _table))
    sections.append(_provenance(frame))
    return "\n\n".join(section.rstrip("\n") for section in sections) + "\n"


def write_report(
    results_dir: Path,
    out: Path,
    suite: str | None,
    title: str,
    baselines: Baselines | None = None,
) -> Path:
    """Load the newest record of every case, render the report and write it atomically.

    Args:
        results_dir: the results root.
        out: the markdown file to write.
        suite: report only this suite; None reports every suite.
        title: the report's title.
        baselines: the suite's expected values (adds the reproducibility section).

    Returns:
        ``out``.

    Raises:
        ReportError: when there are no records (for ``suite``) under ``results_dir``.
    """
    frame = load_records(Path(results_dir), latest_only=True)
    if suite is not None:
        frame = frame[frame["suite"] == suite]
    if frame.empty:
        if suite is None:
            raise ReportError(f"no result records under {results_dir}: run pytest benchmarks first")
        raise ReportError(
            f"no result records under {results_dir} for suite {suite}: "
            f"run pytest benchmarks --suite {suite} first"
        )
    text = render_report(frame, title, suite, baselines)
    atomic.write_text(Path(out), text)
    return Path(out)


# --------------------------------------------------------------------------- preparation


def _prepare(df: pd.DataFrame, suite: str | None) -> pd.DataFrame:
    missing = [column for column in _REQUIRED_COLUMNS if column not in df.columns]
    if missing:
        raise ReportError(f"result table lacks column(s) {', '.join(missing)}")
    frame = df if suite is None else df[df["suite"] == suite]
    if frame.empty:
        where = "" if suite is None else f" for suite {suite}"
        raise ReportError(f"no result records to report{where}")
    frame = frame.copy()
    frame["_when"] = [parse_timestamp(str(text)) for text in frame["timestamp"]]
    order = ["_when", "path"] if "path" in frame.columns else ["_when"]
    frame = frame.sort_values(order, kind="stable")
    # one row per (profile, protocol, dataset, model): the newest record wins
    frame = frame.drop_duplicates(["profile", "protocol", "dataset", "model"], keep="last")
    frame["primary_value"] = pd.to_numeric(frame["primary_value"], errors="coerce").astype(float)
    frame["_twin_of"] = [_text_or_none(value) for value in frame["random_twin_of"]]
    frame["_rank"] = frame.groupby(["profile", "protocol", "dataset"])["primary_value"].rank(
        method="average", ascending=False, na_option="keep"
    )
    return frame.sort_values(["profile", "protocol", "dataset", "model"]).reset_index(drop=True)


def _text_or_none(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    return str(value)


def _semi_synthetic(frame: pd.DataFrame) -> set[str]:
    flagged = frame[frame["semi_synthetic"].fillna(False).astype(bool)]
    return set(flagged["dataset"])


def _dataset_label(name: str, semi: set[str]) -> str:
    return f"`{name}`{SEMI_SYNTHETIC_MARK if name in semi else ''}"


def _protocol_label(protocol: str, profile: str, multi_profile: bool) -> str:
    return f"`{protocol}` (profile {profile})" if multi_profile else f"`{protocol}`"


def _twins(group: pd.DataFrame) -> dict[str, pd.Series]:
    """Map each pretrained model name to its random-init twin's row within one group."""
    twins: dict[str, pd.Series] = {}
    for _, row in group.sort_values("model").iterrows():
        target = row["_twin_of"]
        if target is not None and target not in twins:
            twins[target] = row
    return twins


# --------------------------------------------------------------------------- sections


def _header(frame: pd.DataFrame, title: str, suite: str | None) -> str:
    newest = frame.sort_values("_when", kind="stable").iloc[-1]
    commit = _text_or_none(newest["git_commit"])
    dirty = "git_dirty" in frame.columns and _truthy(newest["git_dirty"])
    commit_text = (
        "an unknown commit (not a git checkout)"
        if commit is None
        else f"commit `{commit[:12]}`{' (with uncommitted changes)' if dirty else ''}"
    )
    commits = {c for c in (_text_or_none(v) for v in frame["git_commit"]) if c is not None}
    suites = suite if suite is not None else ", ".join(sorted(set(frame["suite"])))
    profiles = ", ".join(sorted(set(frame["profile"])))
    lines = [
        f"# {title}",
        "",
        f"Generated from {_count(len(frame), 'result record')} "
        f"({_count(frame['run_id'].nunique(), 'run')}, {_count(len(commits), 'git commit')}; "
        f"suite: {suites}; profile: {profiles}); the newest record was made at {commit_text}.",
    ]
    semi = _semi_synthetic(frame)
    if semi:
        names = ", ".join(_dataset_label(name, semi) for name in sorted(semi))
        lines += [
            "",
            f"{SEMI_SYNTHETIC_MARK} Semi-synthetic dataset ({names}): real medical image "
            "backgrounds with synthetic lesions. Numbers on these datasets measure detection "
            "of the synthetic lesions, not clinical performance.",
        ]
    lines += [
        "",
        "Legend: the **bold** column is the dataset's primary metric, by which models are "
        "ranked (higher is better; a missing value ranks last and gets no rank). Tied models "
        "share the average of their ranks. "
        f"{DELTA_HEADER} = a pretrained model's primary metric minus that of its "
        "random-initialisation twin (same architecture, random weights). "
        f"{SEMI_SYNTHETIC_MARK} = semi-synthetic dataset. {MISSING} = not available. "
        "Numbers are rounded to 3 decimals.",
    ]
    return "\n".join(lines)


def _leaderboards(frame: pd.DataFrame, multi_profile: bool) -> str:
    semi = _semi_synthetic(frame)
    metric_columns = [column for column in frame.columns if column.startswith("metric_")]
    parts = ["## Leaderboards"]
    for (profile, protocol, dataset), group in frame.groupby(
        ["profile", "protocol", "dataset"], sort=True
    ):
        primaries = sorted(set(group["primary_metric"]))
        primary_name = "/".join(primaries)
        others = _ordered_metrics(
            column[len("metric_") :]
            for column in metric_columns
            if group[column].notna().any()
            and column[len("metric_") :] not in primaries
            and not _is_detail_metric(column[len("metric_") :])
        )
        twins = _twins(group)
        headers = ["rank", "model", "category", f"**{primary_name}**", *others, "hyperparameters"]
        if twins:
            headers.append(DELTA_HEADER)
        rows = []
        ranked = group.sort_values(
            ["primary_value", "model"], ascending=[False, True], na_position="last"
        )
        for _, row in ranked.iterrows():
            cells = [
                _fmt_rank(row["_rank"]),
                f"`{row['model']}`",
                str(row["model_category"]),
                _fmt_with_interval(
                    row["primary_value"], row.get("metric_" + interval_name(row["primary_metric"]))
                ),
                *(_fmt(row.get(f"metric_{name}")) for name in others),
                _fmt_hparams(row.get("hyperparameters")),
            ]
            if twins:
                twin = twins.get(row["model"])
                cells.append(
                    "" if twin is None else _fmt_delta(row["primary_value"] - twin["primary_value"])
                )
            rows.append(cells)
        heading = (
            f"### {_dataset_label(dataset, semi)} · "
            f"{_protocol_label(protocol, profile, multi_profile)}"
        )
        versions = (
            f"Dataset version {_versions(group['dataset_version'])}, protocol version "
            f"{_versions(group['protocol_version'])}; ranked by {primary_name}."
        )
        right = {0, 3, *range(4, 4 + len(others))} | ({len(headers) - 1} if twins else set())
        parts += [heading, versions, _table(headers, rows, right)]
    return "\n\n".join(parts)


def _is_detail_metric(name: str) -> bool:
    """Per-transform invariance values and intervals get their own tables/cells."""
    return name.startswith(_detail_prefixes()) or is_interval_name(name)


def _fmt_with_interval(value: Any, interval: Any) -> str:
    if _is_missing(interval):
        return _fmt(value)
    return f"{_fmt(value)} ± {_fmt(interval)}"


def _invariance_tables(frame: pd.DataFrame) -> str:
    """Per-transform whitened cosine (clean vs transformed), one table per dataset."""
    group_frame = frame[frame["protocol"] == "invariance"]
    if group_frame.empty:
        return ""
    semi = _semi_synthetic(frame)
    parts = [
        "## Invariance per transform",
        "Mean whitened cosine similarity between the features of clean and transformed "
        "images (1 = invariant). Transforms that cannot change the image (colour on "
        "grayscale data) are left out.",
    ]
    for dataset, group in group_frame.groupby("dataset", sort=True):
        columns = sorted(
            c for c in group.columns if c.startswith("metric_cos_") and group[c].notna().any()
        )
        headers = ["model", *(c[len("metric_cos_") :] for c in columns), "mean"]
        rows = [
            [f"`{row['model']}`", *(_fmt(row[c]) for c in columns), _fmt(row["primary_value"])]
            for _, row in group.sort_values("model").iterrows()
        ]
        parts += [
            f"### {_dataset_label(dataset, semi)}",
            _table(headers, rows, set(range(1, len(headers)))),
        ]
    return "\n\n".join(parts)


def _mean_ranks(frame: pd.DataFrame, multi_profile: bool) -> str:
    semi = _semi_synthetic(frame)
    parts = [
        "## Mean rank across datasets",
        "Rank of each model on each dataset's primary metric; the mean is over the datasets "
        "where the model has a ranked result. Lower is better.",
    ]
    for (profile, protocol), group in frame.groupby(["profile", "protocol"], sort=True):
        datasets = sorted(set(group["dataset"]))
        ranks = group.pivot(index="model", columns="dataset", values="_rank").reindex(
            columns=datasets
        )
        table = pd.DataFrame(
            {"model": list(ranks.index), "mean": list(ranks.mean(axis=1, skipna=True))}
        )
        table = table.sort_values(["mean", "model"], na_position="last", kind="stable")
        headers = ["model", *(_dataset_label(name, semi) for name in datasets), "mean rank"]
        rows = [
            [
                f"`{model}`",
                *(_fmt_rank(ranks.at[model, name]) for name in datasets),
                _fmt(mean),
            ]
            for model, mean in zip(table["model"], table["mean"], strict=True)
        ]
        parts += [
            f"### {_protocol_label(protocol, profile, multi_profile)}",
            _table(headers, rows, set(range(1, len(headers)))),
        ]
    return "\n\n".join(parts)


def _twin_summary(frame: pd.DataFrame, multi_profile: bool) -> str:
    semi = _semi_synthetic(frame)
    rows = []
    wins = compared = 0
    # Invariance measures are descriptive: "more invariant" is not "transfers better".
    accuracy_like = frame[~frame["protocol"].isin(_descriptive_protocols())]
    for (profile, protocol, dataset), group in accuracy_like.groupby(
        ["profile", "protocol", "dataset"], sort=True
    ):
        twins = _twins(group)
        for _, row in group.sort_values("model").iterrows():
            twin = twins.get(row["model"])
            if twin is None:
                continue
            delta = row["primary_value"] - twin["primary_value"]
            if math.isnan(delta):
                verdict = MISSING
            else:
                compared += 1
                wins += delta > 0
                verdict = "yes" if delta > 0 else ("tie" if delta == 0 else "no")
            rows.append(
                [
                    _dataset_label(dataset, semi),
                    _protocol_label(protocol, profile, multi_profile),
                    f"`{row['model']}`",
                    f"`{twin['model']}`",
                    str(row["primary_metric"]),
                    _fmt(row["primary_value"]),
                    _fmt(twin["primary_value"]),
                    _fmt_delta(delta),
                    verdict,
                ]
            )
    parts = ["## Pretrained vs random initialisation"]
    if not rows:
        parts.append("No pretrained model has a random-initialisation twin in these records.")
        return "\n\n".join(parts)
    headers = [
        "dataset",
        "protocol",
        "pretrained",
        "random twin",
        "metric",
        "pretrained value",
        "random value",
        "Δ",
        "pretrained wins",
    ]
    parts += [
        f"Pretrained weights beat their random-initialisation twin in {wins} of "
        f"{_count(compared, 'comparison')}.",
        _table(headers, rows, {5, 6, 7}),
    ]
    return "\n\n".join(parts)


def _provenance(frame: pd.DataFrame) -> str:
    lines = ["## Provenance", ""]
    lines.append(f"- Versions: {_version_summary(frame)}")
    hardware = Counter(_hardware_summary(value) for value in _column(frame, "hardware"))
    for summary, count in sorted(hardware.items()):
        lines.append(f"- Hardware: {summary} ({_count(count, 'record')})")
    commits: Counter[str] = Counter()
    dirty_commits: set[str] = set()
    dirty_flags = _column(frame, "git_dirty")
    for commit, dirty in zip(frame["git_commit"], dirty_flags, strict=True):
        name = _text_or_none(commit)
        label = "unknown (not a git checkout)" if name is None else f"`{name}`"
        commits[label] += 1
        if _truthy(dirty):
            dirty_commits.add(label)
    for label, count in sorted(commits.items()):
        note = ", with uncommitted changes" if label in dirty_commits else ""
        lines.append(f"- Git commit: {label} ({_count(count, 'record')}{note})")
    extraction = _sum(_column(frame, "extraction_s"))
    protocol = _sum(_column(frame, "protocol_s"))
    hits = int(_sum(_column(frame, "feature_cache_hits")))
    misses = int(_sum(_column(frame, "feature_cache_misses")))
    lines.append(
        f"- Time summed over the {_count(len(frame), 'record')}: feature extraction "
        f"{extraction:.1f} s, protocols {protocol:.1f} s; feature cache: "
        f"{_count(hits, 'hit')}, {_count(misses, 'miss', 'misses')}."
    )
    return "\n".join(lines)


def _version_summary(frame: pd.DataFrame) -> str:
    seen: dict[str, set[str]] = {}
    for versions in _column(frame, "versions"):
        if not isinstance(versions, dict):
            continue
        for key, value in versions.items():
            if value is not None:
                seen.setdefault(str(key), set()).add(str(value))
    if not seen:
        return MISSING
    keys = [key for key in _VERSION_ORDER if key in seen]
    keys += sorted(set(seen) - set(keys))
    return ", ".join(f"{key} {' / '.join(sorted(seen[key]))}" for key in keys)


def _hardware_summary(hardware: Any) -> str:
    if not isinstance(hardware, dict) or not hardware:
        return "not recorded"
    parts = [str(hardware.get("platform") or hardware.get("machine") or "unknown platform")]
    if hardware.get("cpu_count"):
        parts.append(f"{hardware['cpu_count']} CPUs")
    if hardware.get("torch_threads"):
        parts.append(f"{hardware['torch_threads']} torch threads")
    if hardware.get("memory_bytes"):
        parts.append(f"{hardware['memory_bytes'] / 2**30:.0f} GiB RAM")
    device = hardware.get("cuda_device") if hardware.get("cuda_available") else None
    parts.append(f"GPU {device}" if device else "no GPU")
    return ", ".join(parts)


# --------------------------------------------------------------------------- formatting


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
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


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def _truthy(value: Any) -> bool:
    return not _is_missing(value) and bool(value)


def _fmt(value: Any) -> str:
    if _is_missing(value):
        return MISSING
    return f"{float(value):.3f}"


def _fmt_delta(value: Any) -> str:
    if _is_missing(value):
        return MISSING
    value = float(value)
    if round(value, 3) == 0:
        value = 0.0  # no "-0.000"
    return f"{value:+.3f}"


def _fmt_rank(value: Any) -> str:
    if _is_missing(value):
        return MISSING
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:g}"


def _fmt_hparams(params: Any) -> str:
    if not isinstance(params, dict) or not params:
        return MISSING
    return ", ".join(f"{key}={_fmt_param(params[key])}" for key in sorted(params, key=str))


def _fmt_param(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1e}" if math.isfinite(value) else str(value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return str(value)


def _ordered_metrics(names: Iterable[str]) -> list[str]:
    names = set(names)
    known = [name for name in METRICS if name in names]
    return known + sorted(names - set(known))


def _versions(values: pd.Series) -> str:
    found = sorted({int(v) for v in values if not _is_missing(v)})
    return " / ".join(str(v) for v in found) if found else MISSING


def _column(frame: pd.DataFrame, name: str) -> list[Any]:
    return list(frame[name]) if name in frame.columns else [None] * len(frame)


def _sum(values: Iterable[Any]) -> float:
    return float(sum(float(v) for v in values if not _is_missing(v)))


def _count(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n} {singular if n == 1 else (plural or singular + 's')}"
