"""The analysis figures: CKA heatmaps, layer-wise curves, estimate-vs-accuracy scatters.

Planned like the report's other figures (:mod:`harness.report.figures`), but each one
carries a ``key`` by which :mod:`harness.report.analysis_sections` places it inside its
analysis section instead of the report's closing figure list. What gets a figure comes
from the records, never from a protocol's name alone:

* a protocol's per-layer detail tables (items are stage names, see :func:`layer_tables`)
  get layer-wise curves (``layerwise``, ``similarity``, ``dynamics``), and those that
  measure similarity (``cka`` / ``cca`` in the prefix) a heatmap of pairs x layers;
* ``transferability`` records next to ``linear`` ones get an estimate-vs-accuracy scatter;
* saliency overlays (:mod:`harness.report.saliency_grid`) and the source x target matrix
  (:mod:`harness.report.transfer_matrix`) plan their own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from harness.protocols.registry import discover
from harness.report.figures import Figure, _detail_unit, _slug
from harness.report.frame import RANDOM_INIT
from harness.report.plots import Line, Panel, Point, curves, heatmaps, scatters

# Layer names of harness.protocols.layer_features (stage1 ... stageK, pooled) and the
# module paths a config may name instead (ResNet layer1, timm blocks.2, features.13).
_LAYER_ITEM = re.compile(r"^(stage\d+|pooled|layer\d+|(blocks|features|layers?|stages?)[._]\d+.*)$")
_FINAL_LAYERS = ("pooled", "final", "head")
SIMILARITY_MARKERS = ("cka", "cca")
ESTIMATES = ("logme", "nleep", "leep", "frechet_train_test", "frechet_reference")
ESTIMATE_PROTOCOL = "transferability"
PROBE_PROTOCOL = "linear"


@dataclass(frozen=True)
class AnalysisFigure(Figure):
    """A figure drawn inside an analysis section; ``key`` names its place there."""

    key: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class LayerTable:
    """A protocol's detail table whose items are layers."""

    protocol: str
    prefix: str
    title: str
    caption: str
    unit: str | None = None


def layer_sort_key(name: str) -> tuple[int, tuple[Any, ...]]:
    """Order layers shallow to deep: numbered stages by number, final features last."""
    if name in _FINAL_LAYERS:
        return (2, (_FINAL_LAYERS.index(name),))
    parts = tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name) if p)
    return (1, tuple((0, p) if isinstance(p, int) else (1, p) for p in parts))


def layer_columns(group: pd.DataFrame, prefix: str) -> list[tuple[str, str]]:
    """``(layer, column)`` of the ``metric_<prefix><layer>`` columns with a value, in order."""
    head = f"metric_{prefix}"
    found = [
        (c[len(head) :], c) for c in group.columns if c.startswith(head) and group[c].notna().any()
    ]
    return sorted(found, key=lambda item: layer_sort_key(item[0]))


def is_layer_table(table: Any, items: list[str]) -> bool:
    """A detail table is per layer when it says so (``per_layer``) or its items are layers."""
    declared = getattr(table, "per_layer", None)
    if declared is not None:
        return bool(declared)
    return bool(items) and any(_LAYER_ITEM.match(item) for item in items)


def layer_tables(frame: pd.DataFrame) -> list[LayerTable]:
    """The per-layer detail tables of the protocols in ``frame`` that have values, sorted."""
    found = []
    specs = discover()
    for protocol in sorted(set(frame["protocol"])):
        spec = specs.get(protocol)
        group = frame[frame["protocol"] == protocol]
        for table in spec.detail_tables if spec is not None else ():
            items = [layer for layer, _ in layer_columns(group, table.prefix)]
            if is_layer_table(table, items):
                unit = getattr(table, "unit", None)
                found.append(LayerTable(protocol, table.prefix, table.title, table.caption, unit))
        if protocol == "similarity":
            # per-layer SVCCA / CCA / RBF-CKA, when a similarity record carries them
            for prefix in ("svcca_", "cca_", "rbf_cka_"):
                if any(t.prefix == prefix for t in found if t.protocol == protocol):
                    continue
                items = [layer for layer, _ in layer_columns(group, prefix)]
                if items and all(_LAYER_ITEM.match(item) for item in items):
                    title = f"Layer-wise {prefix.rstrip('_').upper().replace('_', '-')}"
                    found.append(LayerTable(protocol, prefix, title, ""))
    return found


def is_similarity_table(table: LayerTable) -> bool:
    """Whether a per-layer table measures the similarity of two representations."""
    return any(marker in table.prefix.lower() for marker in SIMILARITY_MARKERS)


def reference_of(row: pd.Series) -> str | None:
    """The model a similarity-like case compared with (its ``reference`` hyperparameter)."""
    params = row.get("hyperparameters")
    if isinstance(params, dict) and params.get("reference"):
        return str(params["reference"])
    return None


def pair_label(row: pd.Series) -> str:
    """``model vs reference`` (or the model alone when the case names no reference)."""
    reference = reference_of(row)
    return str(row["model"]) + (f" vs {reference}" if reference else "")


def setting_groups(frame: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """``(setting, file-name suffix, rows)`` per setting; the suffix is empty for one."""
    multi = frame["_setting"].nunique() > 1
    return [
        (str(setting), f"-{_slug(str(setting))}" if multi else "", group)
        for setting, group in frame.groupby("_setting", sort=True)
    ]


def model_colours(group: pd.DataFrame) -> dict[str, int]:
    """A colour per model; a random-init twin takes its pretrained model's colour."""
    models = group.drop_duplicates("model").sort_values("model")
    colours: dict[str, int] = {}
    for _, row in models.iterrows():
        if row["model_category"] != RANDOM_INIT:
            colours[str(row["model"])] = len(colours)
    next_colour = len(colours)
    for _, row in models.iterrows():
        if row["model_category"] != RANDOM_INIT:
            continue
        twin_of = row.get("_twin_of")
        same = [
            str(r["model"])
            for _, r in models.iterrows()
            if r["model_category"] != RANDOM_INIT and r["_arch"] == row["_arch"]
        ]
        target = twin_of if twin_of in colours else (same[0] if same else None)
        if target is None:
            colours[str(row["model"])] = next_colour
            next_colour += 1
        else:
            colours[str(row["model"])] = colours[target]
    return colours


def plan_analysis_figures(frame: pd.DataFrame, stem: str) -> list[AnalysisFigure]:
    """Every analysis figure of ``frame``'s report, in report order (nothing drawn yet).

    Args:
        frame: the prepared report frame (one row per case).
        stem: prefix of the file names (the report file's stem).
    """
    from harness.report.saliency_grid import plan_saliency_figures
    from harness.report.transfer_matrix import plan_transfer_figures

    figures: list[AnalysisFigure] = []
    tables = layer_tables(frame)
    for setting, suffix, group in setting_groups(frame):
        for table in tables:
            rows = group[group["protocol"] == table.protocol]
            if not layer_columns(rows, table.prefix):
                continue
            slug = f"{table.protocol}-{_slug(table.prefix)}{suffix}"
            if is_similarity_table(table):
                figures.append(
                    AnalysisFigure(
                        f"{stem}-{slug}-heatmap.png",
                        table.protocol,
                        f"{table.title}: model pairs x layers, per dataset",
                        lambda r=rows, t=table: similarity_heatmap(r, t),
                        ("layer-heatmap", setting, table.protocol, table.prefix),
                    )
                )
            figures.append(
                AnalysisFigure(
                    f"{stem}-{slug}-curves.png",
                    table.protocol,
                    f"{table.title} against depth, per dataset",
                    lambda r=rows, t=table: layer_curves(r, t),
                    ("layer-curves", setting, table.protocol, table.prefix),
                )
            )
        pairs = estimate_points(group)
        metric = probe_metric(group)
        if pairs:
            figures.append(
                AnalysisFigure(
                    f"{stem}-transferability{suffix}-scatter.png",
                    ESTIMATE_PROTOCOL,
                    "Transferability estimates against linear-probe accuracy",
                    lambda p=pairs, m=metric: estimate_scatter(p, m),
                    ("estimate-scatter", setting),
                )
            )
    figures += plan_saliency_figures(frame, stem)
    figures += plan_transfer_figures(frame, stem)
    return figures


def similarity_heatmap(rows: pd.DataFrame, table: LayerTable) -> bytes:
    """Pairs x layers of one per-layer similarity table, one panel per dataset."""
    panels = []
    for dataset, group in rows.groupby("dataset", sort=True):
        columns = layer_columns(group, table.prefix)
        if not columns:
            continue
        ordered = group.sort_values("model")
        values = np.array(
            [[float(row[c]) for _, c in columns] for _, row in ordered.iterrows()], dtype=float
        ).reshape(len(ordered), len(columns))
        labels = [pair_label(row) for _, row in ordered.iterrows()]
        panels.append(Panel(str(dataset), values, labels, [layer for layer, _ in columns]))
    label = _curve_unit(table) or table.prefix.rstrip("_")
    return heatmaps(panels, f"{table.protocol}: {table.title}", label)


def layer_curves(rows: pd.DataFrame, table: LayerTable) -> bytes:
    """A table's value against layer, a line per model, one panel per dataset."""
    colours = model_colours(rows)
    ylabel = _curve_unit(table)
    panels = []
    for dataset, group in rows.groupby("dataset", sort=True):
        columns = layer_columns(group, table.prefix)
        if not columns:
            continue
        lines = [
            Line(
                pair_label(row),
                [float(row[c]) for _, c in columns],
                colours[str(row["model"])],
                row["model_category"] == RANDOM_INIT,
            )
            for _, row in group.sort_values("model").iterrows()
        ]
        name = str(dataset)
        if ylabel is None:  # the dataset's primary metric, e.g. layer-wise k-NN accuracy
            name += f" ({'/'.join(sorted(set(group['primary_metric'])))})"
        panels.append((name, [layer for layer, _ in columns], lines))
    return curves(panels, f"{table.protocol}: {table.title}", ylabel or "primary metric")


def _curve_unit(table: LayerTable) -> str | None:
    """The y label of a table's curves; None: each dataset's primary metric (named in the
    panel titles), for tables whose caption says their values are that metric."""
    if table.unit:
        return table.unit
    if is_similarity_table(table):
        return next(m for m in SIMILARITY_MARKERS if m in table.prefix.lower()).upper()
    if " between " not in table.caption.split(". ")[0] and "primary metric" in table.caption:
        return None
    return _detail_unit(table)


def probe_metric(group: pd.DataFrame) -> str | None:
    """The linear-probe metric estimates are ranked against: accuracy where every probe
    record has it, else (None) each record's primary metric."""
    probes = group[group["protocol"] == PROBE_PROTOCOL]
    if "metric_accuracy" in probes.columns and probes["metric_accuracy"].notna().all():
        return "accuracy"
    return None


def estimate_names(group: pd.DataFrame) -> list[str]:
    """The estimates the transferability records of ``group`` carry, in :data:`ESTIMATES` order."""
    rows = group[group["protocol"] == ESTIMATE_PROTOCOL]
    return [
        name
        for name in ESTIMATES
        if f"metric_{name}" in rows.columns and rows[f"metric_{name}"].notna().any()
    ]


def estimate_points(group: pd.DataFrame) -> dict[str, list[Point]]:
    """Per estimate, a point per (model, dataset) with the estimate and the probe's value."""
    metric = probe_metric(group)
    target = "primary_value" if metric is None else f"metric_{metric}"
    probes = group[group["protocol"] == PROBE_PROTOCOL]
    found = group[group["protocol"] == ESTIMATE_PROTOCOL]
    if probes.empty or found.empty:
        return {}
    merged = found.merge(
        probes[["dataset", "model", target]].rename(columns={target: "_probe"}),
        on=["dataset", "model"],
    )
    points: dict[str, list[Point]] = {}
    for name in estimate_names(group):
        usable = merged.dropna(subset=[f"metric_{name}", "_probe"]).sort_values(
            ["dataset", "model"]
        )
        if usable.empty:
            continue
        points[name] = [
            Point(
                float(row[f"metric_{name}"]),
                float(row["_probe"]),
                str(row["dataset"]),
                row["model_category"] == RANDOM_INIT,
            )
            for _, row in usable.iterrows()
        ]
    return points


def estimate_scatter(points: dict[str, list[Point]], metric: str | None) -> bytes:
    """One panel per estimate: the estimate (x) against the probe's value (y)."""
    panels = [(name, name, points[name]) for name in points]
    ylabel = f"linear probe {metric or 'primary metric'}"
    return scatters(
        panels, "Transferability estimates vs linear probe (hollow: random init)", ylabel
    )
