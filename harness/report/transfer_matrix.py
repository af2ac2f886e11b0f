"""The source x target matrix of gains over random initialisation (issue 14, item 5).

Derived models are models fine-tuned inside the harness on a source dataset; their
records carry ``derived_parent`` (the parent card) and ``derived_source`` (the source
dataset). For each derived model and each target dataset, the gain is its primary value
under one protocol (``linear`` by default) minus that of the random-init model of the
same architecture on the same target: the random-init card that names the derived
model's root parent (``random_twin_of``), else the random-init model of the same
architecture (the twin rule of :func:`harness.report.frame.random_twins`). The parents
themselves are the row "none (original pretraining)". With ``transferability`` records
of these models, each estimate's rank correlation with the measured gains per target is
reported too.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.analyses.ranking import kendall, spearman
from harness.report.analysis_figures import (
    ESTIMATE_PROTOCOL,
    AnalysisFigure,
    estimate_names,
    setting_groups,
)
from harness.report.format import fmt, fmt_delta, markdown_table
from harness.report.frame import RANDOM_INIT, random_twins
from harness.report.plots import Panel, Point, heatmaps, scatters

ORIGINAL_SOURCE = "none (original pretraining)"
MEAN_TARGETS = "(mean over targets)"
DEFAULT_PROTOCOL = "linear"
GAIN_COLUMNS = [
    "_setting", "parent", "source", "target", "model", "value", "random_model",
    "random_value", "gain",
]  # fmt: skip


def derived_models(frame: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """``model -> (parent, source)`` of the derived models in ``frame`` (empty: none)."""
    if "derived_source" not in frame.columns or "derived_parent" not in frame.columns:
        return {}
    found: dict[str, tuple[str, str]] = {}
    rows = frame.dropna(subset=["derived_source", "derived_parent"]).sort_values("model")
    for _, row in rows.iterrows():
        found.setdefault(
            str(row["model"]), (str(row["derived_parent"]), str(row["derived_source"]))
        )
    return found


def root_parent(model: str, derived: dict[str, tuple[str, str]]) -> str:
    """The first ancestor of ``model`` that is not itself derived (a card of the zoo)."""
    seen = {model}
    while model in derived:
        model = derived[model][0]
        if model in seen:  # a cycle cannot come from real records; stop rather than loop
            break
        seen.add(model)
    return model


def _twin(
    root: str, arch: str, base: pd.DataFrame, twins: dict[str, pd.Series]
) -> pd.Series | None:
    """The random-init row for a derived model (or parent): the twin naming its root,
    else the first random-init model (by name) of its architecture."""
    if root in twins:
        return twins[root]
    randoms = base[(base["model_category"] == RANDOM_INIT) & (base["_arch"] == arch)]
    return None if randoms.empty else randoms.sort_values("model").iloc[0]


def transfer_gains(frame: pd.DataFrame, protocol: str = DEFAULT_PROTOCOL) -> pd.DataFrame:
    """One row per (setting, derived model or parent, target) with its gain.

    Args:
        frame: the prepared report frame.
        protocol: the protocol whose primary value measures transfer.

    Returns:
        Columns :data:`GAIN_COLUMNS`; ``gain`` is ``value - random_value`` (NaN when
        either is missing or no random-init model matches). Empty without derived models.
    """
    derived = derived_models(frame)
    if not derived:
        return pd.DataFrame(columns=GAIN_COLUMNS)
    roots = {model: root_parent(model, derived) for model in derived}
    parents = set(roots.values())
    rows = []
    shown = frame[frame["protocol"] == protocol]
    for (setting, target), group in shown.groupby(["_setting", "dataset"], sort=True):
        base = group[~group["model"].isin(list(derived))]
        twins = random_twins(base)
        for _, row in group.sort_values("model").iterrows():
            model = str(row["model"])
            if model in derived:
                root, source = roots[model], derived[model][1]
            elif model in parents:
                root, source = model, ORIGINAL_SOURCE
            else:
                continue
            twin = _twin(root, str(row["_arch"]), base, twins)
            random_value = float("nan") if twin is None else float(twin["primary_value"])
            value = float(row["primary_value"])
            found = [setting, root, source, target, model, value]
            found += [None, float("nan")] if twin is None else [str(twin["model"]), random_value]
            rows.append(dict(zip(GAIN_COLUMNS, [*found, value - random_value], strict=True)))
    return pd.DataFrame(rows, columns=GAIN_COLUMNS)


def _row_order(gains: pd.DataFrame) -> list[tuple[str, str]]:
    keys = {(str(p), str(s)) for p, s in zip(gains["parent"], gains["source"], strict=True)}
    return sorted(keys, key=lambda k: (k[0], k[1] != ORIGINAL_SOURCE, k[1]))


def gain_matrix(gains: pd.DataFrame) -> pd.DataFrame:
    """(parent, source) rows x target columns of gains, for one setting; NaN: not run."""
    matrix = gains.pivot_table(
        index=["parent", "source"], columns="target", values="gain", aggfunc="first", dropna=False
    )
    targets = sorted(set(gains["target"]))
    return matrix.reindex(index=pd.MultiIndex.from_tuples(_row_order(gains)), columns=targets)


def estimate_gain_correlations(frame: pd.DataFrame, gains: pd.DataFrame) -> pd.DataFrame:
    """Each estimate's Spearman / Kendall correlation with the gains, per target.

    Models are the derived models and parents with both a transferability record and a
    gain on the target. Returns columns ``estimate``, ``target``, ``n_models``,
    ``spearman``, ``kendall``: per target (sorted), each estimate in
    :data:`~harness.report.analysis_figures.ESTIMATES` order, then per estimate a
    :data:`MEAN_TARGETS` row (mean of the defined values, total model count).
    """
    columns = ["estimate", "target", "n_models", "spearman", "kendall"]
    found = frame[(frame["protocol"] == ESTIMATE_PROTOCOL) & frame["model"].isin(gains["model"])]
    if found.empty or gains.empty:
        return pd.DataFrame(columns=columns)
    merged = found.merge(
        gains[["model", "target", "gain"]],
        left_on=["model", "dataset"],
        right_on=["model", "target"],
    )
    rows = []
    for name in estimate_names(found):
        usable = merged.dropna(subset=[f"metric_{name}", "gain"])
        per_target = [
            {
                "estimate": name,
                "target": str(target),
                "n_models": len(group),
                "spearman": spearman(group[f"metric_{name}"], group["gain"]),
                "kendall": kendall(group[f"metric_{name}"], group["gain"]),
            }
            for target, group in usable.groupby("target", sort=True)
        ]
        if not per_target:
            continue
        rows += per_target
        rows.append(
            {
                "estimate": name,
                "target": MEAN_TARGETS,
                "n_models": sum(int(r["n_models"]) for r in per_target),
                "spearman": _nanmean([float(r["spearman"]) for r in per_target]),
                "kendall": _nanmean([float(r["kendall"]) for r in per_target]),
            }
        )
    table = pd.DataFrame(rows, columns=columns)
    order = {name: index for index, name in enumerate(estimate_names(found))}
    keys = [
        (target == MEAN_TARGETS, target, order[name])
        for target, name in zip(table["target"], table["estimate"], strict=True)
    ]
    return table.iloc[sorted(range(len(table)), key=lambda i: keys[i])].reset_index(drop=True)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _blank(text: str) -> str:
    return "" if text == "—" else text


def transfer_section(
    frame: pd.DataFrame, links: dict[tuple[str, ...], str], protocol: str = DEFAULT_PROTOCOL
) -> str:
    """The ``## Source × target transfer`` section; empty without derived models.

    Args:
        frame: the prepared report frame.
        links: markdown image lines by analysis-figure key.
        protocol: the protocol whose primary value measures transfer.
    """
    all_gains = transfer_gains(frame, protocol)
    if all_gains.empty:
        return ""
    parts = [
        "## Source × target transfer",
        f"Gain over random initialisation under `{protocol}`: the primary metric of a model "
        "fine-tuned on the source dataset (row) and then evaluated on the target (column), "
        "minus that of the random-init model of the same architecture on the target (the "
        f"random-init card naming the parent, else the one of its architecture). Rows "
        f'"{ORIGINAL_SOURCE}" are the parent models themselves. Where source and target '
        "are the same dataset, the model was fine-tuned on that dataset before the probe. "
        "A blank cell was not run.",
    ]
    multi = frame["_setting"].nunique() > 1
    for setting, _, group in setting_groups(frame):
        gains = all_gains[all_gains["_setting"] == setting]
        if gains.empty:
            continue
        if multi:
            parts.append(f"### {setting}")
        matrix = gain_matrix(gains)
        headers = ["parent", "source", *(f"`{t}`" for t in matrix.columns)]
        rows = [
            [f"`{parent}`", source if source == ORIGINAL_SOURCE else f"`{source}`"]
            + [_blank(fmt_delta(matrix.at[(parent, source), t])) for t in matrix.columns]
            for parent, source in matrix.index
        ]
        parts.append(markdown_table(headers, rows, set(range(2, len(headers)))))
        twins = gains.dropna(subset=["random_model"]).drop_duplicates(["target", "random_model"])
        if not twins.empty:
            parts.append(
                "Random-init values: "
                + "; ".join(
                    f"`{r.target}`: `{r.random_model}` {fmt(r.random_value)}"
                    for r in twins.sort_values(["target", "random_model"]).itertuples()
                )
                + "."
            )
        if ("transfer-matrix", setting) in links:
            parts.append(links[("transfer-matrix", setting)])
        table = estimate_gain_correlations(group, gains)
        if table.empty:
            continue
        parts += [
            "Rank correlation of each transferability estimate with the measured gains, per "
            "target, over the derived models and their parents (a Fréchet distance is lower "
            "for closer features: a negative correlation is the expected direction).",
            markdown_table(
                ["target", "estimate", "models", "Spearman ρ", "Kendall τ"],
                [
                    [
                        r.target if r.target == MEAN_TARGETS else f"`{r.target}`",
                        f"`{r.estimate}`",
                        str(r.n_models),
                        fmt(r.spearman),
                        fmt(r.kendall),
                    ]
                    for r in table.itertuples()
                ],
                {2, 3, 4},
            ),
        ]
        if ("transfer-scatter", setting) in links:
            parts.append(links[("transfer-scatter", setting)])
    return "\n\n".join(parts)


def plan_transfer_figures(
    frame: pd.DataFrame, stem: str, protocol: str = DEFAULT_PROTOCOL
) -> list[AnalysisFigure]:
    """The matrix heatmap and the estimate-vs-gain scatter, per setting with derived models."""
    all_gains = transfer_gains(frame, protocol)
    figures: list[AnalysisFigure] = []
    if all_gains.empty:
        return figures
    for setting, suffix, group in setting_groups(frame):
        gains = all_gains[all_gains["_setting"] == setting]
        if gains.empty:
            continue
        figures.append(
            AnalysisFigure(
                f"{stem}-transfer{suffix}-matrix.png",
                protocol,
                f"Gain over random initialisation (`{protocol}`), source x target",
                lambda g=gains: _matrix_png(g, protocol),
                ("transfer-matrix", setting),
            )
        )
        points = _gain_points(group, gains)
        if points:
            figures.append(
                AnalysisFigure(
                    f"{stem}-transfer{suffix}-estimates.png",
                    ESTIMATE_PROTOCOL,
                    "Transferability estimates against the measured gain",
                    lambda p=points: scatters(
                        [(n, n, p[n]) for n in p],
                        "Estimates vs gain over random init (hollow: parent)",
                        f"gain over random init ({protocol})",
                        legend="target",
                    ),
                    ("transfer-scatter", setting),
                )
            )
    return figures


def _matrix_png(gains: pd.DataFrame, protocol: str) -> bytes:
    matrix = gain_matrix(gains)
    labels = [f"{parent} / {source}" for parent, source in matrix.index]
    panel = Panel("", matrix.to_numpy(dtype=float), labels, [str(t) for t in matrix.columns])
    return heatmaps(
        [panel],
        f"Gain over random initialisation ({protocol}): source (rows) x target (columns)",
        "gain",
        diverging=True,
        signed_text=True,
    )


def _gain_points(group: pd.DataFrame, gains: pd.DataFrame) -> dict[str, list[Point]]:
    found = group[(group["protocol"] == ESTIMATE_PROTOCOL) & group["model"].isin(gains["model"])]
    if found.empty:
        return {}
    merged = found.merge(
        gains[["model", "target", "gain", "source"]],
        left_on=["model", "dataset"],
        right_on=["model", "target"],
    ).sort_values(["target", "model"])
    points = {}
    for name in estimate_names(found):
        usable = merged.dropna(subset=[f"metric_{name}", "gain"])
        if not usable.empty:
            points[name] = [
                Point(float(r[f"metric_{name}"]), float(r["gain"]), str(r["target"]),
                      r["source"] == ORIGINAL_SOURCE)
                for _, r in usable.iterrows()
            ]  # fmt: skip
    return points
