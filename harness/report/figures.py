"""The report's figures as PNG bytes: heatmaps, bar charts, sweeps and per-item details.

Which figures a protocol gets comes from its report sections
(:func:`harness.report.frame.report_sections`): ``heatmap`` (models x datasets),
``bars`` (primary value per dataset and model, with the protocol's 95% interval or the
spread over runs as error bars), ``sweep`` (the primary value against a config value,
e.g. few-shot accuracy against the number of shots, when several were run) and
``details`` (one bar group per item of each of the protocol's detail tables, e.g.
invariance per transform).

Figures are drawn with matplotlib's Agg canvas (no pyplot state), a fixed size, dpi and
font, and no timestamp or software tag in the PNG metadata, so the same records give the
same bytes on the same matplotlib version. matplotlib is imported only when a figure is
drawn: planning the figures (and so the markdown that links them) does not need it.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from harness.config.vocabulary import interval_name
from harness.protocols.registry import discover
from harness.report.frame import protocols_with, sweep_parameters
from harness.report.matrix import primary_matrix

DPI = 100
_STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "path.simplify": False,
}


@dataclass(frozen=True)
class Figure:
    """One planned figure.

    Attributes:
        name: file name (``<stem>-<protocol>-<kind>.png``).
        protocol: the protocol it belongs to.
        title: the caption used as the markdown image's alt text and heading.
        draw: returns the PNG bytes.
    """

    name: str
    protocol: str
    title: str
    draw: Callable[[], bytes]


def plan_figures(frame: pd.DataFrame, stem: str) -> list[Figure]:
    """Every figure the report of ``frame`` has, in report order (nothing drawn yet).

    Args:
        frame: the prepared report frame (one row per case).
        stem: prefix of the file names (the report file's stem).
    """
    figures: list[Figure] = []
    multi = frame["_setting"].nunique() > 1
    for (setting, protocol), group in frame.groupby(["_setting", "protocol"], sort=True):
        suffix = f"-{_slug(setting)}" if multi else ""
        where = f"`{protocol}`" + (f" ({setting})" if multi else "")
        metric = "/".join(sorted(set(group["primary_metric"])))
        if protocol in protocols_with(frame, "heatmap"):
            figures.append(
                Figure(
                    f"{stem}-{protocol}{suffix}-heatmap.png",
                    protocol,
                    f"{where}: {metric} of every model on every dataset",
                    lambda g=group, m=metric, t=where: _heatmap(g, m, t),
                )
            )
        if protocol in protocols_with(frame, "bars"):
            figures.append(
                Figure(
                    f"{stem}-{protocol}{suffix}-bars.png",
                    protocol,
                    f"{where}: {metric} per dataset with {_error_text(group)}",
                    lambda g=group, m=metric, t=where: _bars(g, m, t),
                )
            )
    for protocol in protocols_with(frame, "sweep"):
        group = frame[frame["protocol"] == protocol]
        for key in sweep_parameters(protocol):
            values = {config.get(key) for config in group["_config"] if key in config}
            if len(values) < 2:
                continue
            metric = "/".join(sorted(set(group["primary_metric"])))
            figures.append(
                Figure(
                    f"{stem}-{protocol}-{_slug(key)}-sweep.png",
                    protocol,
                    f"`{protocol}`: {metric} against {key}",
                    lambda g=group, k=key, m=metric, p=protocol: _sweep(g, k, m, p),
                )
            )
    specs = discover()
    for protocol in protocols_with(frame, "details"):
        spec = specs.get(protocol)
        group = frame[frame["protocol"] == protocol]
        for table in spec.detail_tables if spec is not None else ():
            columns = _detail_columns(group, f"metric_{table.prefix}")
            if not columns:
                continue
            figures.append(
                Figure(
                    f"{stem}-{protocol}-{_slug(table.prefix)}-details.png",
                    protocol,
                    f"`{protocol}`: {table.title.lower()}",
                    lambda g=group, c=columns, t=table: _details(g, c, t),
                )
            )
    return figures


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _error_text(group: pd.DataFrame) -> str:
    if _interval(group, spread=False).notna().any():
        return "95% intervals"
    if "_spread" in group and group["_spread"].notna().any():
        return "the standard deviation over runs"
    return "no interval reported"


def _interval(group: pd.DataFrame, spread: bool = True) -> pd.Series:
    """Each row's error bar: the protocol's 95% half-width, else (``spread``) the standard
    deviation over runs."""
    values = [
        row.get("metric_" + interval_name(row["primary_metric"])) for _, row in group.iterrows()
    ]
    interval = pd.Series(
        pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").values, group.index
    )
    if spread and "_spread" in group:
        interval = interval.fillna(group["_spread"])
    return interval


def _detail_unit(table: Any) -> str:
    """The y label of a detail figure: the table's ``unit`` when it declares one, else
    the measure its caption names (the words before " between "), else the prefix."""
    unit = getattr(table, "unit", None)
    if unit:
        return str(unit)
    caption = str(table.caption or "").split(". ")[0]
    if " between " in caption:
        return caption.split(" between ")[0].lower()
    return f"{table.prefix.rstrip('_')} value"


def _detail_columns(group: pd.DataFrame, prefix: str) -> list[str]:
    return sorted(c for c in group.columns if c.startswith(prefix) and group[c].notna().any())


# --------------------------------------------------------------------------- drawing


def _canvas(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _styled(draw: Callable[[], bytes]) -> bytes:
    import matplotlib

    with matplotlib.rc_context(_STYLE):
        return draw()


def _heatmap(group: pd.DataFrame, metric: str, where: str) -> bytes:
    def draw() -> bytes:
        matrix = primary_matrix(group)
        n_models, n_datasets = matrix.shape
        figure = _canvas(2.5 + 1.3 * n_datasets, 1.2 + 0.4 * n_models)
        axes = figure.add_subplot()
        values = matrix.to_numpy(dtype=float)
        image = axes.imshow(values, cmap="viridis", aspect="auto")
        axes.set_xticks(range(n_datasets), list(matrix.columns), rotation=30, ha="right")
        axes.set_yticks(range(n_models), list(matrix.index))
        finite = values[~pd.isna(values)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for i in range(n_models):
            for j in range(n_datasets):
                value = values[i, j]
                text = "—" if pd.isna(value) else f"{value:.3f}"
                colour = "black" if not pd.isna(value) and value > middle else "white"
                axes.text(j, i, text, ha="center", va="center", color=colour)
        axes.set_xlabel("dataset")
        axes.set_ylabel("model")
        axes.set_title(f"{where.replace('`', '')}: {metric}")
        figure.colorbar(image, ax=axes, label=f"{metric} (higher is better)")
        return _png(figure)

    return _styled(draw)


def _bars(group: pd.DataFrame, metric: str, where: str) -> bytes:
    group = group.assign(_error=_interval(group))

    def draw() -> bytes:
        datasets = sorted(set(group["dataset"]))
        models = sorted(set(group["model"]))
        figure = _canvas(3.0 + 0.35 * len(datasets) * len(models), 3.6)
        axes = figure.add_subplot()
        width = 0.8 / len(models)
        for index, model in enumerate(models):
            rows = group[group["model"] == model].set_index("dataset")
            heights = [float(rows["primary_value"].get(d, float("nan"))) for d in datasets]
            errors = [float(rows["_error"].get(d, float("nan"))) for d in datasets]
            errors = [0.0 if pd.isna(e) else e for e in errors]
            offsets = [i - 0.4 + width * (index + 0.5) for i in range(len(datasets))]
            axes.bar(offsets, heights, width, yerr=errors, capsize=3, label=model)
        axes.set_xticks(range(len(datasets)), datasets)
        axes.set_xlabel("dataset")
        axes.set_ylabel(f"{metric} (higher is better)")
        figure.suptitle(f"{where.replace('`', '')}: {metric}\nerror bars: {_error_text(group)}")
        figure.legend(title="model", fontsize=7, loc="outside right upper")
        axes.grid(axis="y", alpha=0.3)
        return _png(figure)

    return _styled(draw)


def _sweep(group: pd.DataFrame, key: str, metric: str, protocol: str) -> bytes:
    def draw() -> bytes:
        datasets = sorted(set(group["dataset"]))
        figure = _canvas(1.0 + 4.0 * len(datasets), 3.4)
        axes_list = figure.subplots(1, len(datasets), squeeze=False)[0]
        errors = _interval(group)
        for axes, dataset in zip(axes_list, datasets, strict=True):
            rows = group[(group["dataset"] == dataset)]
            for model in sorted(set(rows["model"])):
                points = sorted(
                    (float(row["_config"][key]), float(row["primary_value"]), errors.loc[i])
                    for i, row in rows[rows["model"] == model].iterrows()
                    if key in row["_config"]
                )
                xs = [x for x, _, _ in points]
                ys = [y for _, y, _ in points]
                es = [0.0 if pd.isna(e) else float(e) for _, _, e in points]
                axes.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=model)
            axes.set_title(dataset)
            axes.set_xticks(sorted({float(c[key]) for c in rows["_config"] if key in c}))
            axes.set_xlabel(key)
            axes.set_ylabel(f"{metric} (higher is better)")
            axes.grid(alpha=0.3)
        handles, labels = axes_list[0].get_legend_handles_labels()
        figure.legend(handles, labels, title="model", fontsize=7, loc="outside right upper")
        figure.suptitle(f"{protocol}: {metric} against {key}")
        return _png(figure)

    return _styled(draw)


def _details(group: pd.DataFrame, columns: list[str], table: Any) -> bytes:
    def draw() -> bytes:
        datasets = sorted(set(group["dataset"]))
        items = [c[len("metric_" + table.prefix) :] for c in columns]
        models = sorted(set(group["model"]))
        width = max(6.0, 2.5 + 0.12 * len(items) * len(models))
        figure = _canvas(width, 0.8 + 2.4 * len(datasets))
        axes_list = figure.subplots(len(datasets), 1, squeeze=False, sharex=True)[:, 0]
        bar = 0.8 / len(models)
        for axes, dataset in zip(axes_list, datasets, strict=True):
            rows = group[group["dataset"] == dataset]
            for index, model in enumerate(models):
                row = rows[rows["model"] == model]
                heights = [
                    float(row[c].iloc[0]) if not row.empty and not pd.isna(row[c].iloc[0])
                    else 0.0
                    for c in columns
                ]  # fmt: skip
                offsets = [i - 0.4 + bar * (index + 0.5) for i in range(len(items))]
                axes.bar(offsets, heights, bar, label=model)
            axes.set_title(dataset)
            axes.axhline(0, color="black", linewidth=0.5)
            axes.grid(axis="y", alpha=0.3)
        axes_list[-1].set_xticks(range(len(items)), items, rotation=30, ha="right")
        title = str(table.title)
        axes_list[-1].set_xlabel(title.split(" per ", 1)[1] if " per " in title else "item")
        figure.supylabel(_detail_unit(table))
        handles, labels = axes_list[0].get_legend_handles_labels()
        figure.legend(handles, labels, title="model", fontsize=7, loc="outside right upper")
        figure.suptitle(title)
        return _png(figure)

    return _styled(draw)
