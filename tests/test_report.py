"""Markdown report: leaderboards, ranks, mean ranks, random-twin deltas, determinism."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from harness.records.results import (
    DatasetInfo,
    ModelInfo,
    ProtocolInfo,
    ResultRecord,
    store,
)
from harness.records.table import load_records
from harness.report.build import ReportError, render_report, write_report

MODELS = {
    "alpha.in1k": ("supervised", None),
    "beta.ssl": ("self-supervised", None),
    "alpha.random": ("random-init", "alpha.in1k"),
}
DATASETS = {
    # name: (primary metric, semi-synthetic)
    "lesions": ("roc_auc", True),
    "modality": ("accuracy", False),
}
# primary values; on "modality" alpha and beta tie -> both rank 1.5
PRIMARY = {
    ("lesions", "alpha.in1k"): 0.9,
    ("lesions", "beta.ssl"): 0.8,
    ("lesions", "alpha.random"): 0.6,
    ("modality", "alpha.in1k"): 0.8,
    ("modality", "beta.ssl"): 0.8,
    ("modality", "alpha.random"): 0.55,
}
COMMIT = "c0ffee" + "0" * 34


def make_record(dataset: str, model: str, value: float, timestamp: str, **extra: Any):
    category, twin_of = MODELS[model]
    metric, semi = DATASETS[dataset]
    metrics = {"accuracy": round(value - 0.1, 4), "mean_per_class_accuracy": 0.5}
    metrics[metric] = value
    return ResultRecord(
        case_id=f"linear/{dataset}/{model}",
        suite="demo",
        profile="demo",
        model=ModelInfo(
            model,
            category,
            model.split(".")[0],
            "random" if twin_of else "pip",
            random_twin_of=twin_of,
        ),
        dataset=DatasetInfo(dataset, 2, "binary", metric, semi_synthetic=semi),
        protocol=ProtocolInfo("linear", 1),
        metrics=metrics,
        primary_metric=metric,
        primary_value=value,
        hyperparameters={"C": 0.012},
        feature_cache={"train": "miss", "test": "hit"},
        timings={"extraction_s": 2.0, "protocol_s": 0.5},
        hardware={"platform": "Linux-test", "cpu_count": 4, "cuda_available": False},
        versions={"python": "3.11.7", "torch": "2.14.1"},
        git={"commit": COMMIT, "dirty": False},
        timestamp=timestamp,
        run_id=extra.pop("run_id", "run-1"),
        **extra,
    )


@pytest.fixture
def results(tmp_path: Path) -> Path:
    for index, ((dataset, model), value) in enumerate(sorted(PRIMARY.items())):
        store(make_record(dataset, model, value, f"2026-01-01T00:00:{index:02d}Z"), tmp_path)
    # an older run of one case, superseded by the record above
    store(
        make_record("lesions", "beta.ssl", 0.99, "2025-12-31T00:00:00Z", run_id="run-0"), tmp_path
    )
    return tmp_path


def tables(markdown: str) -> dict[str, list[list[str]]]:
    """Map each ``###``/``##`` heading to the rows (header first) of the first table under it."""
    found: dict[str, list[list[str]]] = {}
    heading = ""
    for line in markdown.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("|") and not re.fullmatch(r"\|[\s:|-]+\|", line):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            found.setdefault(heading, []).append(cells)
    return found


def test_leaderboards_rank_by_primary_metric(results: Path) -> None:
    report = render_report(load_records(results), "Demo report")
    found = tables(report)

    lesions = found["`lesions`† · `linear`"]
    assert lesions[0] == [
        "rank",
        "model",
        "category",
        "**roc_auc**",
        "runs",
        "accuracy",
        "mean_per_class_accuracy",
        "hyperparameters",
        "Δ vs random twin",
    ]
    row = ["0.800", "0.500", "C=1.2e-02"]
    assert lesions[1:] == [
        ["1", "`alpha.in1k`", "supervised", "**0.900**", "1", *row, "+0.300"],
        ["2", "`beta.ssl`", "self-supervised", "0.800", "1", "0.700", *row[1:], ""],
        ["3", "`alpha.random`", "random-init", "0.600", "1", "0.500", *row[1:], ""],
    ]

    modality = found["`modality` · `linear`"]
    assert modality[0][3] == "**accuracy**"
    assert "accuracy" not in modality[0][4:]
    assert [row[:4] for row in modality[1:]] == [  # tied best values are both bold
        ["1.5", "`alpha.in1k`", "supervised", "**0.800**"],
        ["1.5", "`beta.ssl`", "self-supervised", "**0.800**"],
        ["3", "`alpha.random`", "random-init", "0.550"],
    ]
    assert [row[-1] for row in modality[1:]] == ["+0.250", "", ""]
    assert report.index("### `lesions`†") < report.index("### `modality`")


def test_mean_rank_table_averages_ties(results: Path) -> None:
    report = render_report(load_records(results), "Demo report")
    assert tables(report)["`linear`"] == [
        ["model", "`lesions`†", "`modality`", "mean rank"],
        ["`alpha.in1k`", "1", "1.5", "1.250"],
        ["`beta.ssl`", "2", "1.5", "1.750"],
        ["`alpha.random`", "3", "3", "3.000"],
    ]


def test_pretrained_vs_random_summary(results: Path) -> None:
    report = render_report(load_records(results), "Demo report")
    rows = tables(report)["Pretrained vs random initialisation"]
    assert rows[1:] == [
        [
            "`lesions`†",
            "`linear`",
            "`alpha.in1k`",
            "`alpha.random`",
            "roc_auc",
            "0.900",
            "0.600",
            "+0.300",
            "+50.0%",
            "yes",
        ],
        [
            "`modality`",
            "`linear`",
            "`alpha.in1k`",
            "`alpha.random`",
            "accuracy",
            "0.800",
            "0.550",
            "+0.250",
            "+45.5%",
            "yes",
        ],
    ]
    assert "beat their random-initialisation twin in 2 of 2 comparisons" in report


def test_header_legend_and_provenance(results: Path) -> None:
    report = render_report(load_records(results), "Demo report")
    lines = report.splitlines()
    assert lines[0] == "# Demo report"
    generated = "Generated from 6 result records (1 run, 1 git commit; suite: demo; profile: demo)"
    assert generated in report
    assert f"commit `{COMMIT[:12]}`" in report
    semi_note = (
        "† Semi-synthetic dataset (`lesions`†): real medical image backgrounds with synthetic"
    )
    assert semi_note in report
    assert "Legend:" in report
    # every mention of the semi-synthetic dataset carries the mark
    assert re.findall(r"`lesions`(?!†)", report) == []
    assert "`modality`†" not in report
    assert "- Versions: python 3.11.7, torch 2.14.1" in report
    assert "- Hardware: Linux-test, 4 CPUs, no GPU (6 records)" in report
    assert f"- Git commit: `{COMMIT}` (6 records)" in report
    assert "feature extraction 12.0 s, protocols 3.0 s; feature cache: 6 hits, 6 misses" in report
    # the only time is the records' own range, in the footer: regenerating changes nothing
    assert "- Runs shown: the newest run of each case; 6 runs of 6 cases made from " in report
    assert "2026-01-01 00:00:00 to 2026-01-01 00:00:05 UTC" in report
    assert report.count("2026-01-01") == 2
    assert "- Suite: demo; profile: demo" in report
    assert "- Presets: linear=medxfer" in report
    assert report.endswith("\n") and not report.endswith("\n\n")
    sections = [line for line in lines if line.startswith("## ")]
    assert sections == [
        "## Leaderboards",
        "## Mean rank across datasets",
        "## Models × datasets",
        "## Pretrained vs random initialisation",
        "## Provenance",
    ]


def test_render_is_deterministic(results: Path) -> None:
    latest = load_records(results)
    first = render_report(latest, "Demo report")
    assert render_report(latest, "Demo report") == first
    # row order of the input and superseded runs do not change the output
    shuffled = latest.sample(frac=1, random_state=3)
    assert render_report(shuffled, "Demo report") == first
    # every run loaded: the same numbers, and the case run twice says so
    every = render_report(load_records(results, latest_only=False), "Demo report")
    assert every == render_report(
        load_records(results, latest_only=False).iloc[::-1], "Demo report"
    )
    assert "| `beta.ssl`     | self-supervised |       0.800 |    2 |" in every
    assert "Generated from 7 result records (" in every
    same = every.replace("0.800 |    2 |", "0.800 |    1 |").replace(
        "7 result records", "6 result records"
    )
    assert same.split("## Provenance")[0] == first.split("## Provenance")[0]


def test_nan_primary_ranks_last_without_rank(tmp_path: Path) -> None:
    store(make_record("lesions", "alpha.in1k", 0.7, "2026-01-01T00:00:00Z"), tmp_path)
    store(make_record("lesions", "beta.ssl", float("nan"), "2026-01-01T00:00:01Z"), tmp_path)
    store(make_record("lesions", "alpha.random", 0.75, "2026-01-01T00:00:02Z"), tmp_path)
    report = render_report(load_records(tmp_path), "T")
    rows = tables(report)["`lesions`† · `linear`"][1:]
    assert [(row[0], row[1], row[3], row[-1]) for row in rows] == [
        ("1", "`alpha.random`", "**0.750**", ""),
        ("2", "`alpha.in1k`", "0.700", "-0.050"),
        ("—", "`beta.ssl`", "—", ""),
    ]
    assert "in 0 of 1 comparison." in report


def test_suite_filter_and_errors(results: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    frame = load_records(results)
    with pytest.raises(ReportError, match="for suite paper"):
        render_report(frame, "T", suite="paper")
    with pytest.raises(ReportError, match="lacks column"):
        render_report(pd.DataFrame({"model": ["x"]}), "T")

    empty = tmp_path_factory.mktemp("empty")
    message = f"no result records under {empty} for suite demo: run pytest benchmarks --suite demo"
    with pytest.raises(ReportError, match=re.escape(message)):
        write_report(empty, empty / "report.md", "demo", "T")
    with pytest.raises(ReportError, match="run pytest benchmarks first"):
        write_report(empty, empty / "report.md", None, "T")


def test_write_report(results: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    out = tmp_path_factory.mktemp("reports") / "demo.md"
    assert write_report(results, out, "demo", "Demo report") == out
    every = load_records(results, latest_only=False)
    assert out.read_text(encoding="utf-8") == render_report(every, "Demo report")
    assert out.with_suffix(".csv").is_file()
    assert not out.with_suffix(".html").exists() and not (out.parent / "figures").exists()


def test_reproducibility_table_says_what_pytest_says(results: Path, tmp_path: Path) -> None:
    from harness.baselines import check
    from harness.baselines import expected as ex

    source = {"kind": "published", "repository": "r", "commit": "c", "file": "f", "row": "x"}

    def entry(
        case: str, value: float, others: dict | None = None, kind: dict = source
    ) -> ex.Expectation:
        _, dataset, _ = case.split("/")
        return ex.Expectation(
            case, "demo", 1, 2, DATASETS[dataset][0], value, 0.01, others or {}, kind
        )

    good = "linear/lesions/alpha.in1k"  # passes on every metric
    secondary = "linear/lesions/beta.ssl"  # primary matches, accuracy does not
    device = "linear/modality/alpha.in1k"  # the record says it ran on cuda
    mpc = ex.MetricExpectation(0.5, 0.01)
    expected = ex.ExpectedFile(
        tmp_path / "demo.yaml",
        "demo",
        {
            good: entry(good, 0.9, {"mean_per_class_accuracy": mpc}),
            secondary: entry(secondary, 0.8, {"accuracy": ex.MetricExpectation(0.9, 0.01)}),
            # calibrated on CPU without a cross-device spread: says nothing about cuda
            # (a published value would apply to every device class)
            device: entry(device, 0.8, kind={"kind": "calibration", "seeds": 3, "std": 0.0}),
        },
    )
    store(
        make_record("modality", "alpha.in1k", 0.8, "2026-01-02T00:00:00Z",
                    details={"device_class": "cuda"}),
        results,
    )  # fmt: skip
    baselines = check.Baselines("demo", files={"cpu": expected})
    text = render_report(load_records(results), "t", "demo", baselines)
    rows = {
        line.split("|")[1].strip().strip("`"): [cell.strip() for cell in line.split("|")[1:-1]]
        for line in text.splitlines()
        if line.startswith("| `linear/")
    }
    frame = load_records(results)
    for case, row in rows.items():
        path = frame.loc[frame["case_id"] == case, "path"].iloc[-1]
        from harness.records.results import load_record

        outcome = baselines.check(load_record(Path(path)).to_dict())
        assert row[5] == {"fail": "FAIL", "device": "other device"}.get(
            outcome.status, outcome.status
        ), case
    assert rows[good][5] == "pass"
    assert rows[secondary][5] == "FAIL"  # the primary metric alone would say pass
    assert rows[device][5] == "other device"
    assert rows["linear/lesions/alpha.random"][5] == "missing"


def test_suite_version_is_recorded_and_shown_in_the_header(tmp_path: Path) -> None:
    from harness.records.results import load_record

    path = store(
        make_record("modality", "alpha.in1k", 0.8, "2026-01-02T00:00:00Z", suite_version=3),
        tmp_path,
    )
    assert load_record(path).suite_version == 3
    frame = load_records(tmp_path)
    assert frame["suite_version"].tolist() == [3]
    assert "suite: demo v3;" in render_report(frame, "T")
    store(make_record("lesions", "alpha.in1k", 0.7, "2026-01-03T00:00:00Z"), tmp_path)
    assert "suite: demo v3;" in render_report(load_records(tmp_path), "T")  # unrecorded: no v


def test_suite_cases_carry_the_suite_version() -> None:
    from harness.config.suites import load_suite

    suite = load_suite("smoke")
    assert {case.suite_version for case in suite.cases()} == {suite.version}


def test_detail_tables_come_from_the_protocols_declaration(tmp_path: Path) -> None:
    from harness.protocols.registry import discover

    (table,) = discover()["invariance"].detail_tables
    assert table.prefix == "cos_"
    for model, shift in (("alpha.in1k", 0.0), ("alpha.random", -0.5)):
        record = make_record("lesions", model, 0.6 + shift, "2026-01-02T00:00:00Z")
        record.case_id = f"invariance/lesions/{model}"
        record.protocol = ProtocolInfo("invariance", 1)
        record.primary_metric = "mean_cosine"
        record.metrics = {
            "mean_cosine": 0.6 + shift,
            "cos_blur_1": 0.5 + shift,
            "cos_hflip_1": 0.7 + shift,
            "mahal_blur_1": 3.0,  # a detail prefix without a table: in no table
        }
        store(record, tmp_path)
    report = render_report(load_records(tmp_path), "T")
    section = report.split(f"## {table.title}\n\n")[1]
    assert section.startswith(table.caption)
    header = next(line for line in section.splitlines() if line.startswith("| model"))
    assert [cell.strip() for cell in header.split("|")[1:-1]] == [
        "model",
        "blur_1",
        "hflip_1",
        "mean",
    ]
    assert "| `alpha.in1k`   |  0.500 |   0.700 | 0.600 |" in section
    assert "mahal_blur_1" not in report and "cos_blur_1" not in report


def test_a_suite_made_of_includes_reports_the_records_of_its_parts(
    results: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report.md"
    path = write_report(results, out, "default", "composite", parts=("demo", "real-data"))
    text = path.read_text()
    assert "## Leaderboards" in text and "suite: demo" in text
    with pytest.raises(ReportError, match="for suite default"):
        write_report(results, out, "default", "composite", parts=("real-data",))
