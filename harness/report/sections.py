"""The report's sections: header, leaderboards, per-item detail tables, mean ranks, twins."""

from __future__ import annotations

import math

import pandas as pd

from harness.config.vocabulary import interval_name
from harness.protocols.registry import discover
from harness.report.format import (
    MISSING,
    count_text,
    fmt,
    fmt_delta,
    fmt_gain,
    fmt_hparams,
    fmt_rank,
    fmt_with_interval,
    markdown_table,
    ordered_metrics,
    text_or_none,
    truthy,
    versions_text,
)
from harness.report.frame import (
    SEMI_SYNTHETIC_MARK,
    dataset_label,
    is_detail_metric,
    protocol_label,
    protocols_with,
    random_twins,
    report_sections,
    semi_synthetic,
)

DELTA_HEADER = "Δ vs random twin"
SPREAD_HEADER = "sd over runs"


def relative_gain(pretrained: float, random: float) -> float:
    """``(pretrained - random) / random``; NaN when ``random`` is not positive or missing."""
    if math.isnan(pretrained) or math.isnan(random) or random <= 0:
        return float("nan")
    return (pretrained - random) / random


RUNS_TEXT = {
    "latest": "the newest run is shown",
    "best": "the run with the highest primary value is shown",
    "mean": f"every metric is the mean over the runs; {SPREAD_HEADER} = the sample standard "
    "deviation of the primary value over them",
}


def header(frame: pd.DataFrame, title: str, runs: str = "latest") -> str:
    """The title, what the records are, the semi-synthetic note and the legend."""
    newest = frame.sort_values("_when", kind="stable").iloc[-1]
    commit = text_or_none(newest["git_commit"])
    dirty = "git_dirty" in frame.columns and truthy(newest["git_dirty"])
    commit_text = (
        "an unknown commit (not a git checkout)"
        if commit is None
        else f"commit `{commit[:12]}`{' (with uncommitted changes)' if dirty else ''}"
    )
    commits = {c for c in (text_or_none(v) for v in frame["git_commit"]) if c is not None}
    suites = ", ".join(
        _suite_text(name, group) for name, group in frame.groupby("suite", sort=True)
    )
    profiles = ", ".join(sorted(set(frame["profile"])))
    lines = [
        f"# {title}",
        "",
        f"Generated from {count_text(int(frame['_runs'].sum()), 'result record')} "
        f"({count_text(frame['run_id'].nunique(), 'run')}, {count_text(len(commits), 'git commit')}; "
        f"suite: {suites}; profile: {profiles}); the newest record was made at {commit_text}.",
    ]
    semi = semi_synthetic(frame)
    if semi:
        names = ", ".join(dataset_label(name, semi) for name in sorted(semi))
        lines += [
            "",
            f"{SEMI_SYNTHETIC_MARK} Semi-synthetic dataset ({names}): real medical image "
            "backgrounds with synthetic lesions. Numbers on these datasets measure detection "
            "of the synthetic lesions, not clinical performance.",
        ]
    lines += [
        "",
        "Legend: the column with the **bold** header is the dataset's primary metric, by "
        "which models are ranked (higher is better; a missing value ranks last and gets no "
        "rank); the best value in it is **bold**. Tied models share the average of their "
        "ranks. ± = the half-width of the protocol's 95% interval, where it reports one. "
        "runs = the number of runs of the case the row was taken from "
        f"({RUNS_TEXT[runs]}). "
        f"{DELTA_HEADER} = a pretrained model's primary metric minus that of its "
        "random-initialisation twin (same architecture, random weights). "
        f"{SEMI_SYNTHETIC_MARK} = semi-synthetic dataset. {MISSING} = not available. "
        "Numbers are rounded to 3 decimals.",
    ]
    return "\n".join(lines)


def _suite_text(name: str, group: pd.DataFrame) -> str:
    """A suite's name with the suite versions its records were made with, when recorded."""
    found = versions_text(group["suite_version"]) if "suite_version" in group else MISSING
    return name if found == MISSING else f"{name} v{found}"


def leaderboards(frame: pd.DataFrame, multi_profile: bool) -> str:
    """One table per (setting, protocol, dataset) of the protocols with a leaderboard."""
    semi = semi_synthetic(frame)
    metric_columns = [column for column in frame.columns if column.startswith("metric_")]
    show_spread = bool(frame["_spread"].notna().any()) if "_spread" in frame else False
    parts = ["## Leaderboards"]
    shown = frame[frame["protocol"].isin(protocols_with(frame, "leaderboard"))]
    for (setting, protocol, dataset), group in shown.groupby(
        ["_setting", "protocol", "dataset"], sort=True
    ):
        sections = report_sections(protocol)
        ranked_protocol = "ranking" in sections
        primaries = sorted(set(group["primary_metric"]))
        primary_name = "/".join(primaries)
        others = ordered_metrics(
            column[len("metric_") :]
            for column in metric_columns
            if group[column].notna().any()
            and column[len("metric_") :] not in primaries
            and not is_detail_metric(column[len("metric_") :])
        )
        twins = random_twins(group) if "twin_gain" in sections else {}
        headers = ["rank"] if ranked_protocol else []
        headers += ["model", "category", f"**{primary_name}**", "runs"]
        headers += [SPREAD_HEADER] if show_spread else []
        headers += [*others, "hyperparameters"]
        if twins:
            headers.append(DELTA_HEADER)
        best = group["primary_value"].max()
        rows = []
        ranked = (
            group.sort_values(
                ["primary_value", "model"], ascending=[False, True], na_position="last"
            )
            if ranked_protocol
            else group.sort_values("model")
        )
        for _, row in ranked.iterrows():
            value = fmt_with_interval(
                row["primary_value"], row.get("metric_" + interval_name(row["primary_metric"]))
            )
            if ranked_protocol and row["primary_value"] == best:
                value = f"**{value}**"
            cells = [fmt_rank(row["_rank"])] if ranked_protocol else []
            cells += [f"`{row['model']}`", str(row["model_category"]), value, str(row["_runs"])]
            cells += [fmt(row["_spread"])] if show_spread else []
            cells += [fmt(row.get(f"metric_{name}")) for name in others]
            cells.append(fmt_hparams(row.get("hyperparameters")))
            if twins:
                twin = twins.get(row["model"])
                cells.append(
                    "" if twin is None else fmt_delta(row["primary_value"] - twin["primary_value"])
                )
            rows.append(cells)
        heading = (
            f"### {dataset_label(dataset, semi)} · "
            f"{protocol_label(protocol, setting, multi_profile)}"
        )
        order = f"ranked by {primary_name}" if ranked_protocol else f"{primary_name} (not ranked)"
        versions = (
            f"Dataset version {versions_text(group['dataset_version'])}, protocol version "
            f"{versions_text(group['protocol_version'])}; {order}."
        )
        first_number = headers.index(f"**{primary_name}**")
        right = set(range(first_number, first_number + 2 + show_spread + len(others)))
        right |= ({0} if ranked_protocol else set()) | ({len(headers) - 1} if twins else set())
        parts += [heading, versions, markdown_table(headers, rows, right)]
    return "\n\n".join(parts)


def detail_tables(frame: pd.DataFrame) -> str:
    """The per-item tables the protocols declare (e.g. invariance per transform), per dataset."""
    semi = semi_synthetic(frame)
    parts = []
    for name, spec in sorted(discover().items()):
        protocol_frame = frame[frame["protocol"] == name]
        if "details" not in report_sections(name):
            continue
        for table in spec.detail_tables if not protocol_frame.empty else ():
            prefix = f"metric_{table.prefix}"
            parts += [f"## {table.title}", *([table.caption] if table.caption else [])]
            for dataset, group in protocol_frame.groupby("dataset", sort=True):
                columns = sorted(
                    c for c in group.columns if c.startswith(prefix) and group[c].notna().any()
                )
                headers = ["model", *(c[len(prefix) :] for c in columns), table.summary_header]
                rows = [
                    [
                        f"`{row['model']}`",
                        *(fmt(row[c]) for c in columns),
                        fmt(row["primary_value"]),
                    ]
                    for _, row in group.sort_values("model").iterrows()
                ]
                parts += [
                    f"### {dataset_label(dataset, semi)}",
                    markdown_table(headers, rows, set(range(1, len(headers)))),
                ]
    return "\n\n".join(parts)


def mean_ranks(frame: pd.DataFrame, multi_profile: bool) -> str:
    semi = semi_synthetic(frame)
    parts = [
        "## Mean rank across datasets",
        "Rank of each model on each dataset's primary metric; the mean is over the datasets "
        "where the model has a ranked result. Lower is better.",
    ]
    ranked = frame[frame["protocol"].isin(protocols_with(frame, "ranking"))]
    for (setting, protocol), group in ranked.groupby(["_setting", "protocol"], sort=True):
        datasets = sorted(set(group["dataset"]))
        ranks = group.pivot(index="model", columns="dataset", values="_rank").reindex(
            columns=datasets
        )
        table = pd.DataFrame(
            {"model": list(ranks.index), "mean": list(ranks.mean(axis=1, skipna=True))}
        )
        table = table.sort_values(["mean", "model"], na_position="last", kind="stable")
        headers = ["model", *(dataset_label(name, semi) for name in datasets), "mean rank"]
        rows = [
            [
                f"`{model}`",
                *(fmt_rank(ranks.at[model, name]) for name in datasets),
                fmt(mean),
            ]
            for model, mean in zip(table["model"], table["mean"], strict=True)
        ]
        parts += [
            f"### {protocol_label(protocol, setting, multi_profile)}",
            markdown_table(headers, rows, set(range(1, len(headers)))),
        ]
    return "\n\n".join(parts)


def twin_summary(frame: pd.DataFrame, multi_profile: bool) -> str:
    semi = semi_synthetic(frame)
    rows = []
    wins = compared = 0
    # Descriptive measures (invariance) are left out: "more invariant" is not "transfers better".
    accuracy_like = frame[frame["protocol"].isin(protocols_with(frame, "twin_gain"))]
    for (setting, protocol, dataset), group in accuracy_like.groupby(
        ["_setting", "protocol", "dataset"], sort=True
    ):
        twins = random_twins(group)
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
                    dataset_label(dataset, semi),
                    protocol_label(protocol, setting, multi_profile),
                    f"`{row['model']}`",
                    f"`{twin['model']}`",
                    str(row["primary_metric"]),
                    fmt(row["primary_value"]),
                    fmt(twin["primary_value"]),
                    fmt_delta(delta),
                    fmt_gain(relative_gain(row["primary_value"], twin["primary_value"])),
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
        "relative gain",
        "pretrained wins",
    ]
    parts += [
        f"Pretrained weights beat their random-initialisation twin in {wins} of "
        f"{count_text(compared, 'comparison')}. The twin is the random-init model whose card "
        "names the pretrained one, else the random-init model of the same architecture; "
        "relative gain = Δ / random value (— when the random value is not positive).",
        markdown_table(headers, rows, {5, 6, 7, 8}),
    ]
    return "\n\n".join(parts)
