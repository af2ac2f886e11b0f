"""The report's view of the records: one row per case, ranks, labels and twins."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.config.vocabulary import is_interval_name
from harness.protocols.registry import discover
from harness.records.results import RecordError, load_record, parse_timestamp
from harness.records.table import REQUIRED_COLUMNS
from harness.report.format import text_or_none
from harness.report.select import select_runs

SEMI_SYNTHETIC_MARK = "†"
RANDOM_INIT = "random-init"


class ReportError(RuntimeError):
    """There is nothing to report, or the records lack what a report needs."""


def prepare_frame(df: pd.DataFrame, suite: str | None, runs: str = "latest") -> pd.DataFrame:
    """One row per case (chosen by ``runs``, see :mod:`harness.report.select`) with the
    report's helper columns: ``_setting``, ``_rank``, ``_twin_of``, ``_arch``, ``_runs``,
    ``_spread``, ``_config``.

    Raises:
        ReportError: when ``df`` lacks a required column or holds no record (of ``suite``).
    """
    missing = [column for column in REQUIRED_COLUMNS if column not in df.columns]
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
    presets = frame["preset"] if "preset" in frame.columns else pd.Series("medxfer", frame.index)
    frame["_setting"] = [
        f"profile {profile}"
        + ("" if text_or_none(preset) in (None, "medxfer") else f", preset {preset}")
        for profile, preset in zip(frame["profile"], presets, strict=True)
    ]
    frame["primary_value"] = pd.to_numeric(frame["primary_value"], errors="coerce").astype(float)
    # one row per (profile and preset, protocol, dataset, model), chosen by ``runs``
    frame = select_runs(frame, runs)
    for column in ["primary_value", *(c for c in frame.columns if c.startswith("metric_"))]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    extras = [_record_extras(row) for row in frame.to_dict("records")]
    frame["_arch"] = [arch for arch, _ in extras]
    frame["_config"] = [config for _, config in extras]
    frame["_twin_of"] = [text_or_none(value) for value in frame["random_twin_of"]]
    frame["_rank"] = frame.groupby(["_setting", "protocol", "dataset"])["primary_value"].rank(
        method="average", ascending=False, na_option="keep"
    )
    return frame.sort_values(["_setting", "protocol", "dataset", "model"]).reset_index(drop=True)


def _record_extras(row: dict) -> tuple[str, dict]:
    """The model's architecture and the protocol config, read from the record file; a
    frame without readable files falls back to the ``arch`` of the ``arch.tag`` name."""
    path = text_or_none(row.get("path"))
    if path is not None:
        try:
            record = load_record(Path(path))
        except RecordError:
            pass
        else:
            return record.model.architecture, dict(record.protocol.config)
    return str(row["model"]).split(".", 1)[0], {}


def semi_synthetic(frame: pd.DataFrame) -> set[str]:
    flagged = frame[frame["semi_synthetic"].fillna(False).astype(bool)]
    return set(flagged["dataset"])


def dataset_label(name: str, semi: set[str]) -> str:
    return f"`{name}`{SEMI_SYNTHETIC_MARK if name in semi else ''}"


def protocol_label(protocol: str, setting: str, multi_setting: bool) -> str:
    """The protocol's name, with its profile and preset when the report mixes several or
    the preset is a peer's (``setting`` is the frame's ``_setting``)."""
    shown = multi_setting or ", preset " in setting
    return f"`{protocol}` ({setting})" if shown else f"`{protocol}`"


def random_twins(group: pd.DataFrame) -> dict[str, pd.Series]:
    """Map each pretrained model name to its random-init twin's row within one group.

    A twin is the model whose card names it (``random_twin_of``), else a ``random-init``
    model of the same architecture (the first by name when there are several).
    """
    twins: dict[str, pd.Series] = {}
    ordered = group.sort_values("model")
    for _, row in ordered.iterrows():
        target = row["_twin_of"]
        if target is not None and target not in twins:
            twins[target] = row
    randoms = ordered[ordered["model_category"] == RANDOM_INIT]
    for _, row in ordered.iterrows():
        if row["model_category"] == RANDOM_INIT or row["model"] in twins:
            continue
        same = randoms[randoms["_arch"] == row["_arch"]]
        if not same.empty:
            twins[row["model"]] = same.iloc[0]
    return twins


# What a protocol contributes to a report, by its registry ``display`` (a protocol may
# declare ``report_sections`` on its spec to choose for itself):
#   leaderboard  a table per dataset       ranking      ranks, bold best, mean-rank table
#   matrix       models x datasets table   twin_gain    delta and relative gain vs random init
#   details      its DetailTables          heatmap / bars / sweep   the figures
SECTIONS_BY_DISPLAY: dict[str, frozenset[str]] = {
    "leaderboard": frozenset(
        {"leaderboard", "ranking", "matrix", "twin_gain", "heatmap", "bars", "sweep", "details"}
    ),
    "descriptive": frozenset({"leaderboard", "matrix", "heatmap", "details"}),
}
# Config keys a sweep figure puts on its x axis unless the spec declares ``sweep_parameters``.
DEFAULT_SWEEP_PARAMETERS = ("n_shot",)


def report_sections(protocol: str) -> frozenset[str]:
    """The report sections ``protocol`` contributes (an unregistered one: a leaderboard's)."""
    spec = discover().get(protocol)
    if spec is None:
        return SECTIONS_BY_DISPLAY["leaderboard"]
    declared = getattr(spec, "report_sections", None)
    if declared is not None:
        return frozenset(declared)
    return SECTIONS_BY_DISPLAY.get(spec.display, SECTIONS_BY_DISPLAY["leaderboard"])


def sweep_parameters(protocol: str) -> tuple[str, ...]:
    """Config keys whose values, when several were run, get a metric-vs-value figure."""
    spec = discover().get(protocol)
    declared = getattr(spec, "sweep_parameters", None) if spec is not None else None
    return tuple(declared) if declared is not None else DEFAULT_SWEEP_PARAMETERS


def protocols_with(frame: pd.DataFrame, section: str) -> list[str]:
    """The protocols in ``frame`` that contribute ``section``, sorted."""
    return sorted(p for p in set(frame["protocol"]) if section in report_sections(p))


def detail_prefixes() -> tuple[str, ...]:
    """Metric prefixes the registered protocols mark as per-item details."""
    return tuple(p for spec in discover().values() for p in spec.detail_metric_prefixes)


def is_detail_metric(name: str) -> bool:
    """Per-transform invariance values and intervals get their own tables/cells."""
    return name.startswith(detail_prefixes()) or is_interval_name(name)
