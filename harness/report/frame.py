"""The report's view of the records: one row per case, ranks, labels and twins."""

from __future__ import annotations

import pandas as pd

from harness.config.vocabulary import is_interval_name
from harness.protocols.registry import discover
from harness.records.results import parse_timestamp
from harness.records.table import REQUIRED_COLUMNS
from harness.report.format import text_or_none

SEMI_SYNTHETIC_MARK = "†"


class ReportError(RuntimeError):
    """There is nothing to report, or the records lack what a report needs."""


def prepare_frame(df: pd.DataFrame, suite: str | None) -> pd.DataFrame:
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
    # one row per (profile, protocol, dataset, model): the newest record wins
    presets = frame["preset"] if "preset" in frame.columns else pd.Series("medxfer", frame.index)
    frame["_setting"] = [
        f"profile {profile}"
        + ("" if text_or_none(preset) in (None, "medxfer") else f", preset {preset}")
        for profile, preset in zip(frame["profile"], presets, strict=True)
    ]
    # one row per (profile and preset, protocol, dataset, model): the newest record wins
    frame = frame.drop_duplicates(["_setting", "protocol", "dataset", "model"], keep="last")
    frame["primary_value"] = pd.to_numeric(frame["primary_value"], errors="coerce").astype(float)
    frame["_twin_of"] = [text_or_none(value) for value in frame["random_twin_of"]]
    frame["_rank"] = frame.groupby(["_setting", "protocol", "dataset"])["primary_value"].rank(
        method="average", ascending=False, na_option="keep"
    )
    return frame.sort_values(["_setting", "protocol", "dataset", "model"]).reset_index(drop=True)


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
    """Map each pretrained model name to its random-init twin's row within one group."""
    twins: dict[str, pd.Series] = {}
    for _, row in group.sort_values("model").iterrows():
        target = row["_twin_of"]
        if target is not None and target not in twins:
            twins[target] = row
    return twins


def detail_prefixes() -> tuple[str, ...]:
    """Metric prefixes the registered protocols mark as per-item details."""
    return tuple(p for spec in discover().values() for p in spec.detail_metric_prefixes)


def descriptive_protocols() -> list[str]:
    """Protocols whose measures are described, not ranked against the random twin."""
    return [name for name, spec in discover().items() if spec.display == "descriptive"]


def is_detail_metric(name: str) -> bool:
    """Per-transform invariance values and intervals get their own tables/cells."""
    return name.startswith(detail_prefixes()) or is_interval_name(name)
