"""Analysis sections of the report: CKA heatmaps, layer curves, saliency overlays,
transferability rank correlations and the source x target matrix of gains."""

from __future__ import annotations

import io
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from scipy import stats

import harness.report.analysis_figures as analysis_figures
import harness.report.figures as report_figures
import harness.report.frame as report_frame_module
import harness.report.sections as report_sections_module
from harness.analyses.ranking import MEAN_ROW
from harness.baselines.check import Baselines
from harness.protocols.registry import DetailTable
from harness.records.results import DatasetInfo, ModelInfo, ProtocolInfo, ResultRecord, store
from harness.records.table import load_records
from harness.report.analysis_figures import AnalysisFigure, plan_analysis_figures
from harness.report.analysis_sections import analysis_sections
from harness.report.build import render_report, report_frame, write_report_files
from harness.report.figures import plan_figures
from harness.report.transfer_matrix import (
    ORIGINAL_SOURCE,
    estimate_gain_correlations,
    transfer_gains,
)

pytest.importorskip("matplotlib")
PIL = pytest.importorskip("PIL.Image")

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "abcd" + "0" * 36
# model: (category, architecture, random_twin_of)
MODELS = {
    "alpha.in1k": ("supervised", "alpha", None),
    "alpha.random": ("random-init", "alpha", "alpha.in1k"),
    "beta.in1k": ("supervised", "beta", None),
    "beta.random": ("random-init", "beta", None),  # twin found by architecture
    "alpha.in1k+src1": ("supervised", "alpha", None),  # derived models
    "alpha.in1k+src2": ("supervised", "alpha", None),
    "beta.in1k+src1": ("supervised", "beta", None),
}
DERIVED = {
    "alpha.in1k+src1": ("alpha.in1k", "src1"),
    "alpha.in1k+src2": ("alpha.in1k", "src2"),
    "beta.in1k+src1": ("beta.in1k", "src1"),
}
LAYERS = ("stage1", "stage2", "stage10", "pooled")  # stage10 sorts after stage2
_clock = iter(range(10_000))


def record(
    protocol: str,
    dataset: str,
    model: str,
    primary: str,
    value: float,
    metrics: dict[str, float] | None = None,
    *,
    hyperparameters: dict[str, Any] | None = None,
    details: dict[str, Any] | None = None,
    suite: str = "analyses",
) -> ResultRecord:
    category, arch, twin_of = MODELS[model]
    tick = next(_clock)
    return ResultRecord(
        case_id=f"{protocol}/{dataset}/{model}",
        suite=suite,
        suite_version=1,
        profile="smoke",
        model=ModelInfo(model, category, arch, "pip", random_twin_of=twin_of),
        dataset=DatasetInfo(dataset, 1, "binary", "accuracy"),
        protocol=ProtocolInfo(protocol, 1),
        metrics={primary: value, **(metrics or {})},
        primary_metric=primary,
        primary_value=value,
        hyperparameters=hyperparameters or {},
        details=details or {},
        hardware={"platform": "Linux-test", "cpu_count": 2, "cuda_available": False},
        versions={"python": "3.11.7", "medxfer": "0.1.0"},
        git={"commit": COMMIT, "dirty": False},
        timestamp=f"2026-02-01T00:{tick // 60:02d}:{tick % 60:02d}Z",
        run_id="run-1",
    )


def with_derived(df: pd.DataFrame) -> pd.DataFrame:
    """The table as the loader gives it for derived models (parent and source columns)."""
    df = df.copy()
    df["derived_parent"] = [DERIVED.get(m, (None, None))[0] for m in df["model"]]
    df["derived_source"] = [DERIVED.get(m, (None, None))[1] for m in df["model"]]
    return df


def frame_of(root: Path) -> pd.DataFrame:
    return report_frame(with_derived(load_records(root, latest_only=False)))


# linear-probe accuracy and transferability estimates of four models on two datasets
PROBE = {
    ("ds1", "alpha.in1k"): 0.91, ("ds1", "alpha.random"): 0.55,
    ("ds1", "beta.in1k"): 0.84, ("ds1", "beta.random"): 0.60,
    ("ds2", "alpha.in1k"): 0.72, ("ds2", "alpha.random"): 0.70,
    ("ds2", "beta.in1k"): 0.80, ("ds2", "beta.random"): 0.51,
}  # fmt: skip
LOGME = {
    ("ds1", "alpha.in1k"): -0.2, ("ds1", "alpha.random"): -0.9,
    ("ds1", "beta.in1k"): -0.5, ("ds1", "beta.random"): -0.4,
    ("ds2", "alpha.in1k"): -0.3, ("ds2", "alpha.random"): -0.8,
    ("ds2", "beta.in1k"): -0.1, ("ds2", "beta.random"): -0.6,
}  # fmt: skip
FRECHET = {key: 10.0 + 5 * i for i, key in enumerate(sorted(PROBE))}


@pytest.fixture
def analyses(tmp_path: Path) -> Path:
    """similarity, layerwise, linear and transferability records."""
    root = tmp_path / "results"
    for (dataset, model), accuracy in sorted(PROBE.items()):
        store(record("linear", dataset, model, "accuracy", accuracy), root)
        estimates = {"nleep": -accuracy * 2, "frechet_train_test": FRECHET[(dataset, model)]}
        store(
            record("transferability", dataset, model, "logme", LOGME[(dataset, model)], estimates),
            root,
        )
        depth = {f"layer_{name}": accuracy - 0.1 * (3 - i) for i, name in enumerate(LAYERS)}
        store(record("layerwise", dataset, model, "accuracy", accuracy, depth), root)
        if MODELS[model][0] != "random-init":
            cka = {f"cka_{name}": 0.9 - 0.2 * i for i, name in enumerate(LAYERS)}
            store(
                record(
                    "similarity", dataset, model, "linear_cka", 0.3, {**cka, "svcca": 0.95},
                    hyperparameters={"reference": model.split(".")[0] + ".random"},
                ),
                root,
            )  # fmt: skip
    return root


def section(markdown: str, heading: str) -> str:
    """The text of a ``##`` section (up to the next ``##`` heading)."""
    start = markdown.index(f"\n{heading}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end >= 0 else None]


def table_rows(text: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|") and not re.fullmatch(r"\|[\s:|-]+\|", line)
    ]


def test_transferability_rank_correlations_equal_scipys(analyses: Path) -> None:
    text = render_report(load_records(analyses, latest_only=False), "T")
    rows = table_rows(section(text, "## Transferability estimates"))
    header, body = rows[0], rows[1:]
    assert header == ["dataset", "estimate", "models", "Spearman ρ", "Kendall τ"]
    assert [r[1] for r in body] == ["`logme`", "`nleep`", "`frechet_train_test`"] * 3
    assert [r[0] for r in body[-3:]] == [MEAN_ROW] * 3
    for dataset in ("ds1", "ds2"):
        models = sorted(m for d, m in PROBE if d == dataset)
        probe = [PROBE[(dataset, m)] for m in models]
        estimate = [LOGME[(dataset, m)] for m in models]
        row = next(r for r in body if r[0] == f"`{dataset}`" and r[1] == "`logme`")
        assert row[2] == "4"
        assert row[3] == f"{stats.spearmanr(estimate, probe).statistic:.3f}"
        assert row[4] == f"{stats.kendalltau(estimate, probe).statistic:.3f}"
    rhos = [
        stats.spearmanr(
            [LOGME[key] for key in sorted(PROBE) if key[0] == d],
            [PROBE[key] for key in sorted(PROBE) if key[0] == d],
        ).statistic
        for d in ("ds1", "ds2")
    ]
    mean_row = next(r for r in body if r[0] == MEAN_ROW and r[1] == "`logme`")
    assert mean_row[2] == "8" and mean_row[3] == f"{sum(rhos) / 2:.3f}"
    # nleep = -2 x accuracy: a perfect inverse ranking
    assert next(r for r in body if r[0] == "`ds1`" and r[1] == "`nleep`")[3] == "-1.000"


def test_rank_correlations_span_the_suites_of_one_setting(tmp_path: Path) -> None:
    """The report shows one row per case whatever its suite: correlate them together."""
    root = tmp_path / "results"
    for index, ((dataset, model), accuracy) in enumerate(sorted(PROBE.items())):
        suite = "first" if index % 2 else "second"
        store(record("linear", dataset, model, "accuracy", accuracy, suite=suite), root)
        logme = LOGME[(dataset, model)]
        store(record("transferability", dataset, model, "logme", logme, suite=suite), root)
    text = render_report(load_records(root, latest_only=False), "T")
    rows = table_rows(section(text, "## Transferability estimates"))
    assert [r[:3] for r in rows[1:]] == [
        ["`ds1`", "`logme`", "4"], ["`ds2`", "`logme`", "4"], [MEAN_ROW, "`logme`", "8"],
    ]  # fmt: skip


def test_similarity_heatmap_and_layer_curves(analyses: Path) -> None:
    text = render_report(load_records(analyses, latest_only=False), "T")
    similarity = section(text, "## Layer-wise similarity")
    rows = table_rows(similarity)
    assert rows[0] == ["dataset", "model vs reference", "linear_cka", "svcca"]
    assert rows[1][1] == "`alpha.in1k vs alpha.random`"
    curves = section(text, "## Layer-wise curves")
    assert "### `layerwise`: Layer-wise k-NN" in curves
    assert "### `similarity`: Layer-wise CKA to the reference model" in curves
    layer_rows = table_rows(curves.split("### `similarity`")[0])
    # layer values rise with depth: the peak is the last layer, stage10 before pooled
    first = layer_rows[1]
    assert first[:3] == ["`ds1`", "`alpha.in1k`", "pooled"] and first[5] == "pooled"
    names = [f.name for f in plan_analysis_figures(frame_of(analyses), "r")]
    assert names == [
        "r-layerwise-layer-curves.png",
        "r-similarity-cka-heatmap.png",
        "r-similarity-cka-curves.png",
        "r-transferability-scatter.png",
    ]
    # the figures are drawn inside their sections, not in the closing list
    frame = frame_of(analyses)
    figures = [*plan_figures(frame, "r"), *plan_analysis_figures(frame, "r")]
    text = render_report(frame, "T", figures=figures, prepared=frame)
    assert "![" in section(text, "## Layer-wise similarity")
    assert "r-similarity-cka-heatmap.png" not in section(text, "## Figures")


def test_layer_order_is_shallow_to_deep() -> None:
    names = ["pooled", "stage10", "head", "stage2", "stage1"]
    assert sorted(names, key=analysis_figures.layer_sort_key) == [
        "stage1", "stage2", "stage10", "pooled", "head",
    ]  # fmt: skip


def test_dynamics_like_detail_tables_get_curves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Curves and heatmaps follow any protocol's per-layer detail tables."""
    real = analysis_figures.discover()
    spec = SimpleNamespace(
        display="descriptive",
        detail_metric_prefixes=(),
        detail_tables=(
            DetailTable("l2_", "Weight distance per layer", "L2 distance between weights."),
            DetailTable("cka_init_ft_", "CKA between initial and fine-tuned features"),
            DetailTable("per_image_", "Not a layer table", "One column per image."),
        ),
    )
    fake = {**real, "fakedyn": spec}
    for module in (analysis_figures, report_figures, report_frame_module, report_sections_module):
        monkeypatch.setattr(module, "discover", lambda: fake)
    root = tmp_path / "results"
    for model in ("alpha.in1k", "alpha.random"):
        metrics = {f"l2_{name}": 1.0 + i for i, name in enumerate(("stage1", "stage2", "head"))}
        metrics |= {f"cka_init_ft_{name}": 0.5 for name in ("stage1", "stage2")}
        metrics |= {"per_image_test_3": 1.0}
        store(record("fakedyn", "ds1", model, "mean_cka_init_ft", 0.5, metrics), root)
    frame = frame_of(root)
    tables = [(t.protocol, t.prefix) for t in analysis_figures.layer_tables(frame)]
    assert tables == [("fakedyn", "l2_"), ("fakedyn", "cka_init_ft_")]
    names = [f.name for f in plan_analysis_figures(frame, "r")]
    assert names == [
        "r-fakedyn-l2-curves.png",
        "r-fakedyn-cka-init-ft-heatmap.png",
        "r-fakedyn-cka-init-ft-curves.png",
    ]
    text = analysis_sections(frame)
    assert "### `fakedyn`: Weight distance per layer" in text
    row = table_rows(section("\n" + text, "## Layer-wise curves"))[1]
    assert row[2:] == ["head", "3.000", "3.000", "head"]
    for figure in plan_analysis_figures(frame, "r"):
        assert figure.draw() == figure.draw()


def _png(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.new("RGB", (48, 40), colour).save(path, format="PNG")


def test_saliency_grids_and_missing_artefacts(tmp_path: Path) -> None:
    root = tmp_path / "results"
    pictures = {}
    for model in ("alpha.in1k", "beta.in1k"):
        folder = f"analyses/saliency__ds1__{model}/artefacts/run-1"
        images = [
            {"index": i, "label": i % 2, "attentive_diffusion": 40.0,
             "overlay": f"{folder}/saliency-test_{i}-overlay.png",
             "heatmap": f"{folder}/saliency-test_{i}-heatmap.png"}
            for i in (3, 8)
        ]  # fmt: skip
        pictures[model] = images
        metrics = {f"ad_test_{i}": 40.0 for i in (3, 8)}
        store(
            record("saliency", "ds1", model, "attentive_diffusion", 40.0, metrics,
                   details={"images": images, "split": "test"}),
            root,
        )  # fmt: skip
    for entry in pictures["alpha.in1k"]:
        _png(root / entry["overlay"], (200, 10, 10))
        _png(root / entry["heatmap"], (10, 10, 200))
    _png(root / pictures["beta.in1k"][0]["overlay"], (10, 200, 10))  # the rest are gone
    frame = frame_of(root)
    figures = plan_analysis_figures(frame, "r")
    assert [f.name for f in figures] == [
        "r-saliency-ds1-alpha-in1k.png",
        "r-saliency-ds1-beta-in1k.png",
    ]
    grid = figures[0].draw()
    assert grid == figures[0].draw()
    with PIL.open(io.BytesIO(grid)) as opened:
        assert opened.size == (2 * 164 + 4, 2 * 164 + 4)  # two images, overlay + heat map
    text = analysis_sections(frame, figures)
    beta = next(p for p in text.split("\n\n") if p.startswith("`beta.in1k`"))
    assert "heatmap of image test_3 is missing" in beta
    assert f"`{pictures['beta.in1k'][1]['overlay']}`" in beta
    assert "![Occlusion saliency of alpha.in1k on ds1](figures/r-saliency-ds1-alpha-in1k.png)" in (
        text
    )
    # every picture gone: a note, no figure, no error
    for path in root.rglob("*.png"):
        path.unlink()
    assert plan_analysis_figures(frame, "r") == []
    assert "overlay of image test_3 is missing" in analysis_sections(frame)


@pytest.fixture
def derived(tmp_path: Path) -> Path:
    """linear records of parents, derived models and random twins on two targets."""
    root = tmp_path / "results"
    scores = {
        ("tgt_a", "alpha.in1k"): 0.80, ("tgt_a", "alpha.random"): 0.50,
        ("tgt_a", "alpha.in1k+src1"): 0.875, ("tgt_a", "alpha.in1k+src2"): 0.70,
        ("tgt_a", "beta.in1k"): 0.77, ("tgt_a", "beta.random"): 0.61,
        ("tgt_a", "beta.in1k+src1"): 0.83,
        ("tgt_b", "alpha.in1k"): 0.60, ("tgt_b", "alpha.random"): 0.52,
        ("tgt_b", "alpha.in1k+src1"): 0.66,  # alpha.in1k+src2, beta.* not run on tgt_b
    }  # fmt: skip
    for (dataset, model), value in sorted(scores.items()):
        store(record("linear", dataset, model, "accuracy", value), root)
    estimates = {"alpha.in1k": -0.5, "alpha.in1k+src1": -0.2, "alpha.in1k+src2": -0.4}
    estimates |= {"beta.in1k": -0.6, "beta.in1k+src1": -0.3}
    for model, value in sorted(estimates.items()):
        store(record("transferability", "tgt_a", model, "logme", value, {"nleep": -value}), root)
    return root


def test_matrix_cell_is_derived_minus_random(derived: Path) -> None:
    gains = transfer_gains(frame_of(derived))
    cell = gains[(gains["model"] == "alpha.in1k+src1") & (gains["target"] == "tgt_a")].iloc[0]
    assert cell["gain"] == 0.875 - 0.50 and cell["random_model"] == "alpha.random"
    assert cell["source"] == "src1" and cell["parent"] == "alpha.in1k"
    beta = gains[(gains["model"] == "beta.in1k+src1")].iloc[0]
    assert beta["random_model"] == "beta.random" and beta["gain"] == 0.83 - 0.61  # by arch
    parent = gains[(gains["model"] == "alpha.in1k") & (gains["target"] == "tgt_b")].iloc[0]
    assert parent["source"] == ORIGINAL_SOURCE and parent["gain"] == 0.60 - 0.52
    text = render_report(with_derived(load_records(derived, latest_only=False)), "T")
    rows = table_rows(section(text, "## Source × target transfer").split("Rank correlation")[0])
    assert rows[0] == ["parent", "source", "`tgt_a`", "`tgt_b`"]
    assert rows[1:] == [
        ["`alpha.in1k`", ORIGINAL_SOURCE, "+0.300", "+0.080"],
        ["`alpha.in1k`", "`src1`", "+0.375", "+0.140"],
        ["`alpha.in1k`", "`src2`", "+0.200", ""],  # not run: blank
        ["`beta.in1k`", ORIGINAL_SOURCE, "+0.160", ""],
        ["`beta.in1k`", "`src1`", "+0.220", ""],
    ]


def test_estimate_gain_correlations_equal_scipys(derived: Path) -> None:
    frame = frame_of(derived)
    gains = transfer_gains(frame)
    table = estimate_gain_correlations(frame, gains)
    row = table[(table["estimate"] == "logme") & (table["target"] == "tgt_a")].iloc[0]
    models = sorted(["alpha.in1k", "alpha.in1k+src1", "alpha.in1k+src2", "beta.in1k"])
    models = sorted([*models, "beta.in1k+src1"])
    logme = frame[(frame["protocol"] == "transferability")].set_index("model")["primary_value"]
    by_model = gains[gains["target"] == "tgt_a"].set_index("model")["gain"]
    x = [logme[m] for m in models]
    y = [by_model[m] for m in models]
    assert row["n_models"] == 5
    assert row["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert row["kendall"] == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    text = render_report(frame, "T", prepared=frame)
    assert "Rank correlation of each transferability estimate with the measured gains" in text
    names = [f.name for f in plan_analysis_figures(frame, "r")]
    assert names[-2:] == ["r-transfer-matrix.png", "r-transfer-estimates.png"]


def test_the_record_loaders_derived_columns_feed_the_matrix(tmp_path: Path) -> None:
    """Records whose model carries ``derived_from`` load with the parent and source columns."""
    import dataclasses

    if "derived_from" not in {f.name for f in dataclasses.fields(ModelInfo)}:
        pytest.skip("records do not carry derived models yet")
    root = tmp_path / "results"
    for model, value in (("alpha.in1k", 0.7), ("alpha.random", 0.5), ("alpha.in1k+src1", 0.8)):
        made = record("linear", "tgt_a", model, "accuracy", value)
        if model in DERIVED:
            parent, source = DERIVED[model]
            made.model.derived_from = {"parent": parent, "dataset": source}
        store(made, root)
    gains = transfer_gains(report_frame(load_records(root, latest_only=False)))
    assert list(gains["source"]) == [ORIGINAL_SOURCE, "src1"]
    assert list(gains["gain"]) == [0.7 - 0.5, 0.8 - 0.5]


def test_figures_are_written_with_deterministic_bytes(analyses: Path, tmp_path: Path) -> None:
    files = write_report_files(analyses, tmp_path / "r.md", None, "T", figures=True)
    written = {p.name: p.read_bytes() for p in files.figures}
    analysis = plan_analysis_figures(frame_of(analyses), "r")
    assert analysis
    for figure in analysis:  # drawn again from the same records: the same bytes
        assert figure.draw() == written[figure.name], figure.name
    markdown = (tmp_path / "r.md").read_text()
    for link in re.findall(r"\]\((figures/[^)]+\.png)\)", markdown):
        assert (tmp_path / link).read_bytes().startswith(b"\x89PNG")


def test_a_report_without_analyses_is_unchanged() -> None:
    """The committed demo report (no analysis protocol) renders byte for byte as before."""
    records = load_records(ROOT / "reports" / "demo-records", latest_only=False)
    records = records[records["suite"] == "demo"]
    prepared = report_frame(records, "demo")
    assert plan_analysis_figures(prepared, "demo") == []
    assert analysis_sections(prepared) == ""
    figures = plan_figures(prepared, "demo")
    assert not any(isinstance(f, AnalysisFigure) for f in figures)
    text = render_report(
        records,
        "medxfer demo report",
        baselines=Baselines("demo"),
        figures=figures,
        prepared=prepared,
    )
    assert text == (ROOT / "reports" / "demo.md").read_text()
