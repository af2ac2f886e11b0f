"""The terminal summary: a compact leaderboard of the cases just run."""

from __future__ import annotations

from harness.records.results import DatasetInfo, ModelInfo, ProtocolInfo, ResultRecord
from harness.report.terminal import summary_lines


def record(model: str, category: str, value: float | None, when: str, **kw) -> ResultRecord:
    protocol = kw.pop("protocol", "linear")
    dataset = kw.pop("dataset", "demo_modality")
    metrics = {"accuracy": value, **kw.pop("metrics", {})}
    return ResultRecord(
        case_id=f"{protocol}/{dataset}/{model}",
        suite="demo",
        profile="demo",
        model=ModelInfo(model, category, model.split(".")[0], "pip", **kw),
        dataset=DatasetInfo(dataset, 1, "multiclass", "accuracy"),
        protocol=ProtocolInfo(protocol, 1),
        metrics=metrics,
        primary_metric="accuracy",
        primary_value=float("nan") if value is None else value,
        hardware={},
        versions={},
        git={"commit": None, "dirty": None},
        timestamp=when,
        run_id="r",
    )


def test_summary_lines_rank_twins_intervals_and_newest_run() -> None:
    records = [
        record("lite0.random", "random-init", 0.33, "2026-01-01T00:00:00Z"),
        record("lite0.in1k", "supervised", 0.70, "2026-01-01T00:00:00Z"),
        record("lite0.in1k", "supervised", 0.797, "2026-01-02T00:00:00Z"),  # newer: shown
        record("mnv2.in1k", "supervised", 0.797, "2026-01-01T00:00:00Z"),  # ties lite0.in1k
        record("mnv2.ssl", "self-supervised", None, "2026-01-01T00:00:00Z"),
        record(
            "lite0.in1k", "supervised", 0.683, "2026-01-01T00:00:00Z",
            protocol="fewshot", metrics={"accuracy_ci95": 0.0071},
        ),
    ]  # fmt: skip
    lines = summary_lines([records[0].to_dict(), *records[1:]])  # dicts or records
    assert lines == [
        "medxfer results: 5 cases, 2 protocols, 1 dataset",
        "fewshot · demo_modality (accuracy)",
        "  rank  model         accuracy         Δ random",
        "     1  lite0.in1k    0.683 ± 0.007",
        "linear · demo_modality (accuracy)",
        "  rank  model         accuracy         Δ random",
        "   1.5  lite0.in1k    0.797              +0.467",
        "   1.5  mnv2.in1k     0.797",
        "     3  lite0.random  0.330",
        "     —  mnv2.ssl      —",
    ]
    assert summary_lines([]) == []


def test_long_names_are_shortened_to_fit() -> None:
    name = "vit_base_patch16_224." + "x" * 80
    lines = summary_lines([record(name, "supervised", 0.5, "2026-01-01T00:00:00Z")], max_width=80)
    assert all(len(line) <= 80 for line in lines)
    assert "…" in lines[-1]
