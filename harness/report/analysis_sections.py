"""The report's analysis sections, each with its figure (issue 14, items 5 and 6).

* ``## Layer-wise similarity``: per dataset, each model against its reference (final
  features: linear CKA, RBF CKA, SVCCA, CCA), and the pairs x layers heatmap;
* ``## Layer-wise curves``: per per-layer detail table (layer-wise k-NN, CKA, a
  ``dynamics`` protocol's tables), the peak layer per model and the curves;
* ``## Saliency overlays`` (:mod:`harness.report.saliency_grid`);
* ``## Transferability estimates``: each estimate's rank correlation with the
  linear-probe accuracy per dataset and on average, and the scatter;
* ``## Source × target transfer`` (:mod:`harness.report.transfer_matrix`).

A section appears only when the records hold what it shows, so a report without
analyses is unchanged. Figures come from
:func:`harness.report.analysis_figures.plan_analysis_figures`; without them (``--no-figures``)
the tables stay.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from harness.analyses.ranking import MEAN_ROW, estimate_rank_correlations
from harness.report.analysis_figures import (
    ESTIMATE_PROTOCOL,
    PROBE_PROTOCOL,
    AnalysisFigure,
    LayerTable,
    estimate_names,
    is_similarity_table,
    layer_columns,
    layer_tables,
    pair_label,
    probe_metric,
    setting_groups,
)
from harness.report.figures import Figure
from harness.report.format import fmt, markdown_table
from harness.report.frame import dataset_label, semi_synthetic
from harness.report.saliency_grid import saliency_section
from harness.report.transfer_matrix import transfer_section

FINAL_SIMILARITY = ("linear_cka", "rbf_cka", "svcca", "cca", "mean_layer_cka")


def figure_links(figures: Sequence[Figure], folder: str) -> dict[tuple[str, ...], str]:
    """Markdown image lines of the analysis figures, by their key."""
    return {
        figure.key: f"![{figure.title}]({folder}/{figure.name})"
        for figure in figures
        if isinstance(figure, AnalysisFigure)
    }


def analysis_sections(
    frame: pd.DataFrame, figures: Sequence[Figure] = (), figure_dir: str = "figures"
) -> str:
    """Every analysis section the records call for, joined; empty when there is none.

    Args:
        frame: the prepared report frame (one row per case).
        figures: the planned figures; the analysis ones are linked in their sections.
        figure_dir: the figures' folder relative to the markdown file.
    """
    links = figure_links(figures, figure_dir)
    tables = layer_tables(frame)
    parts = [
        similarity_section(frame, [t for t in tables if is_similarity_table(t)], links),
        curves_section(frame, tables, links),
        saliency_section(frame, links),
        transferability_section(frame, links),
        transfer_section(frame, links),
    ]
    return "\n\n".join(part for part in parts if part)


def _where(setting: str, multi: bool) -> str:
    return f" ({setting})" if multi else ""


def similarity_section(
    frame: pd.DataFrame, tables: list[LayerTable], links: dict[tuple[str, ...], str]
) -> str:
    """Final-feature similarity per pair and dataset, then each per-layer heatmap."""
    if not tables:
        return ""
    semi = semi_synthetic(frame)
    multi = frame["_setting"].nunique() > 1
    parts = [
        "## Layer-wise similarity",
        "Similarity of two representations of the same images, per layer: for `similarity`, "
        "each model and its reference (by default its random-init twin); for other "
        "protocols, what the table's caption says. The heatmap shows every stage, shallow "
        "to deep (1: the same representation up to rotation and scale); the table the "
        "final features. SVCCA and CCA saturate when there are about as many images as "
        "feature directions (see docs/analyses.md): read CKA there.",
    ]
    for setting, _, group in setting_groups(frame):
        for table in tables:
            rows = group[group["protocol"] == table.protocol]
            if not layer_columns(rows, table.prefix):
                continue
            parts.append(f"### `{table.protocol}`: {table.title}{_where(setting, multi)}")
            if table.caption:
                parts.append(table.caption)
            finals = [
                name
                for name in FINAL_SIMILARITY
                if f"metric_{name}" in rows.columns and rows[f"metric_{name}"].notna().any()
            ]
            if finals:
                body = [
                    [dataset_label(str(row["dataset"]), semi), f"`{pair_label(row)}`"]
                    + [fmt(row[f"metric_{name}"]) for name in finals]
                    for _, row in rows.sort_values(["dataset", "model"]).iterrows()
                ]
                headers = ["dataset", "model vs reference", *finals]
                parts.append(markdown_table(headers, body, set(range(2, len(headers)))))
            key = ("layer-heatmap", setting, table.protocol, table.prefix)
            if key in links:
                parts.append(links[key])
    return "\n\n".join(parts)


def curves_section(
    frame: pd.DataFrame, tables: list[LayerTable], links: dict[tuple[str, ...], str]
) -> str:
    """Per per-layer table: where each model peaks, then its curves against depth."""
    if not tables:
        return ""
    semi = semi_synthetic(frame)
    multi = frame["_setting"].nunique() > 1
    parts = [
        "## Layer-wise curves",
        "Each per-layer measure against depth (stage outputs, spatially averaged; pooled is "
        "the model's final features), one line per model: pretrained solid, random-init "
        "dashed in its pretrained twin's colour. The table gives each model's peak layer "
        "(highest value) and its final-layer value.",
    ]
    for setting, _, group in setting_groups(frame):
        for table in tables:
            rows = group[group["protocol"] == table.protocol]
            columns = layer_columns(rows, table.prefix)
            if not columns:
                continue
            parts.append(f"### `{table.protocol}`: {table.title}{_where(setting, multi)}")
            if table.caption:
                parts.append(table.caption)
            body = []
            for _, row in rows.sort_values(["dataset", "model"]).iterrows():
                values = [(layer, row[c]) for layer, c in columns if not pd.isna(row[c])]
                if not values:
                    continue
                peak = max(values, key=lambda item: float(item[1]))  # first of ties: shallower
                body.append(
                    [
                        dataset_label(str(row["dataset"]), semi),
                        f"`{pair_label(row)}`",
                        peak[0],
                        fmt(peak[1]),
                        fmt(values[-1][1]),
                        values[-1][0],
                    ]
                )
            headers = ["dataset", "model", "peak layer", "peak value", "last value", "last layer"]
            parts.append(markdown_table(headers, body, {3, 4}))
            key = ("layer-curves", setting, table.protocol, table.prefix)
            if key in links:
                parts.append(links[key])
    return "\n\n".join(parts)


def estimate_correlations(group: pd.DataFrame) -> pd.DataFrame:
    """:func:`estimate_rank_correlations` of one setting's rows, ordered by dataset
    (the mean rows last) then estimate."""
    estimates = estimate_names(group)
    # The report frame already holds one row per (setting, protocol, dataset, model), the
    # newest whatever its suite: correlate over the setting, not per suite.
    paired = group[group["protocol"].isin([ESTIMATE_PROTOCOL, PROBE_PROTOCOL])]
    paired = paired.assign(suite="", profile="")
    table = estimate_rank_correlations(
        paired, estimates, target_protocol=PROBE_PROTOCOL, target_metric=probe_metric(group)
    )
    if table.empty:
        return table
    order = {name: index for index, name in enumerate(estimates)}
    keys = [
        (dataset == MEAN_ROW, dataset, order[estimate])
        for dataset, estimate in zip(table["dataset"], table["estimate"], strict=True)
    ]
    ranked = sorted(range(len(table)), key=lambda i: keys[i])
    return table.iloc[ranked].reset_index(drop=True)


def transferability_section(frame: pd.DataFrame, links: dict[tuple[str, ...], str]) -> str:
    """Each estimate's rank correlation with the linear probe, per dataset, and its scatter."""
    if ESTIMATE_PROTOCOL not in set(frame["protocol"]):
        return ""
    semi = semi_synthetic(frame)
    multi = frame["_setting"].nunique() > 1
    parts = ["## Transferability estimates"]
    for setting, _, group in setting_groups(frame):
        if ESTIMATE_PROTOCOL not in set(group["protocol"]):
            continue
        if multi:
            parts.append(f"### {setting}")
        metric = probe_metric(group)
        measured = f"linear-probe {metric}" if metric else "linear probe's primary metric"
        table = estimate_correlations(group)
        if table.empty:
            parts.append(
                f"No `{PROBE_PROTOCOL}` record pairs with a `{ESTIMATE_PROTOCOL}` record of the "
                "same model and dataset: nothing to rank against."
            )
            continue
        parts.append(
            f"How well each estimate, computed from cached features without training, ranks "
            f"the models by their measured {measured}: Spearman's ρ and Kendall's τ-b over the "
            "models of each dataset (— below two models or for constant values), then their "
            "mean over datasets. LogME, LEEP and N-LEEP should correlate positively; a "
            "Fréchet distance is lower for closer features (negative is the expected sign)."
        )
        body = [
            [
                row.dataset if row.dataset == MEAN_ROW else dataset_label(str(row.dataset), semi),
                f"`{row.estimate}`",
                str(row.n_models),
                fmt(row.spearman),
                fmt(row.kendall),
            ]
            for row in table.itertuples()
        ]
        headers = ["dataset", "estimate", "models", "Spearman ρ", "Kendall τ"]
        parts.append(markdown_table(headers, body, {2, 3, 4}))
        if ("estimate-scatter", setting) in links:
            parts.append(links[("estimate-scatter", setting)])
    return "\n\n".join(parts)
