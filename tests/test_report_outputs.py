"""Report outputs: run selection, filters, twins by architecture, CSV, figures, HTML, CLI."""

from __future__ import annotations

import base64
import csv
import io
import re
import struct
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from harness.records.results import DatasetInfo, ModelInfo, ProtocolInfo, ResultRecord, store
from harness.records.table import load_records
from harness.report.build import render_report, report_frame, write_report_files
from harness.report.figures import plan_figures
from harness.report.select import FilterError, filter_records

pytest.importorskip("matplotlib")  # a dev dependency (see docs/reports.md); never skipped in CI

COMMIT = "feed" + "0" * 36
# model: (category, architecture, random_twin_of)
MODELS = {
    "alpha.in1k": ("supervised", "alpha", None),
    "alpha.ssl": ("self-supervised", "alpha", None),  # twin found by architecture
    "alpha.random": ("random-init", "alpha", "alpha.in1k"),
    "beta.in1k": ("supervised", "beta", None),  # no random twin of its architecture
}


def record(
    model: str,
    value: float,
    when: str,
    *,
    dataset: str = "lesions",
    protocol: str = "linear",
    version: int = 2,
    profile: str = "demo",
    config: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    run_id: str = "run-1",
) -> ResultRecord:
    category, arch, twin_of = MODELS[model]
    primary = "accuracy"
    return ResultRecord(
        case_id=f"{protocol}/{dataset}/{model}",
        suite="demo",
        suite_version=1,
        profile=profile,
        model=ModelInfo(model, category, arch, "pip", random_twin_of=twin_of),
        dataset=DatasetInfo(dataset, 1, "binary", primary),
        protocol=ProtocolInfo(protocol, version, config=config or {}),
        metrics={primary: value, "roc_auc": round(value + 0.05, 4), **(metrics or {})},
        primary_metric=primary,
        primary_value=value,
        hardware={"platform": "Linux-test", "cpu_count": 2, "cuda_available": False},
        versions={"python": "3.11.7", "medxfer": "0.1.0", "torch": "2.14.1"},
        git={"commit": COMMIT, "dirty": False},
        timestamp=when,
        run_id=run_id,
    )


@pytest.fixture
def two_runs(tmp_path: Path) -> Path:
    """linear/lesions/alpha.in1k ran twice at version 2 (0.90 then 0.80) and once at
    version 1 (0.99, older, must not count); the other cases ran once."""
    root = tmp_path / "results"
    store(record("alpha.in1k", 0.99, "2026-01-01T00:00:00Z", version=1, run_id="r0"), root)
    store(record("alpha.in1k", 0.90, "2026-01-02T00:00:00Z", run_id="r1"), root)
    store(record("alpha.in1k", 0.80, "2026-01-03T00:00:00Z", run_id="r2"), root)
    store(record("alpha.ssl", 0.75, "2026-01-03T00:00:01Z", run_id="r2"), root)
    store(record("alpha.random", 0.50, "2026-01-03T00:00:02Z", run_id="r2"), root)
    store(record("beta.in1k", 0.70, "2026-01-03T00:00:03Z", run_id="r2"), root)
    store(record("beta.in1k", 0.60, "2026-01-03T00:00:04Z", dataset="modality"), root)
    return root


def rows_of(markdown: str, heading: str) -> list[list[str]]:
    """Rows (header first) of the first table under the heading that equals ``heading``."""
    lines = markdown.splitlines()
    start = lines.index(heading)
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|") and not re.fullmatch(r"\|[\s:|-]+\|", line):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


@pytest.mark.parametrize(
    ("runs", "value", "spread", "delta", "gain"),
    [
        ("latest", "**0.800**", None, "+0.300", "+60.0%"),  # the newest run
        ("best", "**0.900**", None, "+0.400", "+80.0%"),  # the highest of the version-2 runs
        ("mean", "**0.850**", "0.071", "+0.350", "+70.0%"),  # (0.9+0.8)/2, sd of [0.9, 0.8]
    ],
)
def test_run_selection_numbers(
    two_runs: Path, runs: str, value: str, spread: str | None, delta: str, gain: str
) -> None:
    text = render_report(load_records(two_runs, latest_only=False), "T", runs=runs)
    table = rows_of(text, "### `lesions` · `linear`")
    header, first = table[0], table[1]
    assert first[header.index("model")] == "`alpha.in1k`"
    assert first[header.index("**accuracy**")] == value
    assert first[header.index("runs")] == "2"  # the version-1 run does not count
    assert ("sd over runs" in header) == (spread is not None)
    if spread is not None:
        assert first[header.index("sd over runs")] == spread
        assert table[2][header.index("sd over runs")] == "—"  # one run: no spread
    assert first[header.index("Δ vs random twin")] == delta
    twin_rows = rows_of(text, "## Pretrained vs random initialisation")
    alpha = next(row for row in twin_rows if row[2] == "`alpha.in1k`")
    assert alpha[7:9] == [delta, gain]
    # the other metrics follow the same choice
    roc = {"latest": "0.850", "best": "0.950", "mean": "0.900"}[runs]
    assert first[header.index("roc_auc")] == roc


def test_mean_averages_the_protocols_interval(tmp_path: Path) -> None:
    for value, ci, when in ((0.6, 0.02, "01"), (0.7, 0.04, "02")):
        store(
            record("alpha.in1k", value, f"2026-01-{when}T00:00:00Z", protocol="fewshot",
                   metrics={"accuracy_ci95": ci}),
            tmp_path,
        )  # fmt: skip
    text = render_report(load_records(tmp_path, latest_only=False), "T", runs="mean")
    table = rows_of(text, "### `lesions` · `fewshot`")
    assert table[1][table[0].index("**accuracy**")] == "**0.650 ± 0.030**"
    assert table[1][table[0].index("sd over runs")] == "0.071"


def test_twin_by_architecture_and_relative_gain(two_runs: Path) -> None:
    frame = report_frame(load_records(two_runs, latest_only=False))
    text = render_report(frame, "T", prepared=frame)
    twin_rows = rows_of(text, "## Pretrained vs random initialisation")
    by_model = {row[2]: row for row in twin_rows[1:]}
    # alpha.ssl's card names no twin: the random-init model of its architecture is used
    assert by_model["`alpha.ssl`"][3] == "`alpha.random`"
    assert by_model["`alpha.ssl`"][7:] == ["+0.250", "+50.0%", "yes"]
    assert "`beta.in1k`" not in by_model  # no random-init model of architecture beta


def test_models_by_datasets_matrix_and_mean_rank(two_runs: Path) -> None:
    text = render_report(load_records(two_runs, latest_only=False), "T")
    assert rows_of(text, "### `linear` (accuracy)") == [
        ["model", "`lesions`", "`modality`"],
        ["`alpha.in1k`", "**0.800**", "—"],
        ["`alpha.random`", "0.500", "—"],
        ["`alpha.ssl`", "0.750", "—"],
        ["`beta.in1k`", "0.700", "**0.600**"],
    ]
    assert rows_of(text, "### `linear`") == [
        ["model", "`lesions`", "`modality`", "mean rank"],
        ["`alpha.in1k`", "1", "—", "1.000"],
        ["`alpha.ssl`", "2", "—", "2.000"],
        ["`beta.in1k`", "3", "1", "2.000"],
        ["`alpha.random`", "4", "—", "4.000"],
    ]


def test_filters(two_runs: Path) -> None:
    frame = load_records(two_runs, latest_only=False)
    cases = lambda **kw: sorted(set(filter_records(frame, **kw)["case_id"]))  # noqa: E731
    assert cases(keyword="modality") == ["linear/modality/beta.in1k"]
    assert cases(keyword="lesions and not random and not alpha.in1k") == [
        "linear/lesions/alpha.ssl",
        "linear/lesions/beta.in1k",
    ]
    assert cases(keyword="LESIONS and supervised and not self") == [  # category, any case
        "linear/lesions/alpha.in1k",
        "linear/lesions/beta.in1k",
    ]
    assert cases(models="alpha.*") == [
        "linear/lesions/alpha.in1k",
        "linear/lesions/alpha.random",
        "linear/lesions/alpha.ssl",
    ]
    assert cases(models="alpha") == []  # the whole name must match
    assert cases(protocols=["knn"]) == []
    assert len(cases(protocols=["linear"], datasets="mod.*")) == 1
    with pytest.raises(FilterError, match="bad -k expression"):
        filter_records(frame, keyword="lesions and (")
    with pytest.raises(FilterError, match="bad --models pattern"):
        filter_records(frame, models="alpha[")


def test_cli_report_writes_markdown_csv_html_and_figures(two_runs: Path, tmp_path: Path) -> None:
    from harness.cli import main

    out = tmp_path / "out" / "sub.md"
    argv = ["report", "--results", str(two_runs), "--out", str(out), "--runs", "mean"]
    argv += ["-k", "lesions", "--protocol", "linear", "--models", "alpha.*"]
    assert main(argv) == 0
    text = out.read_text(encoding="utf-8")
    assert "`beta.in1k`" not in text and "`modality`" not in text
    table = rows_of(text, "### `lesions` · `linear`")
    assert table[0][2:6] == ["category", "**accuracy**", "runs", "sd over runs"]
    assert table[1][:6] == ["1", "`alpha.in1k`", "supervised", "**0.850**", "2", "0.071"]
    assert "accuracy per dataset with the standard deviation over runs" in text
    # no --suite, but every record is of suite demo, which has expected values
    assert "## Reproducibility" in text and "| `linear/lesions/alpha.in1k`   |" in text
    rows = list(csv.DictReader(io.StringIO(out.with_suffix(".csv").read_text())))
    assert [row["model"] for row in rows] == ["alpha.in1k", "alpha.random", "alpha.ssl"]
    first = rows[0]
    assert (first["primary_value"], first["runs"], first["sd_over_runs"]) == (
        "0.850000",
        "2",
        "0.070711",
    )
    assert (first["random_twin"], first["delta_vs_twin"], first["relative_gain"]) == (
        "alpha.random",
        "0.350000",
        "0.700000",
    )
    assert first["rank"] == "1.000000" and rows[1]["random_twin"] == ""
    for link in re.findall(r"\]\((figures/[^)]+\.png)\)", text):
        assert (out.parent / link).read_bytes().startswith(b"\x89PNG")
    assert out.with_suffix(".html").is_file()
    bad = ["report", "--results", str(two_runs), "--out", str(out), "--models", "zeta.*"]
    assert main(bad) == 2


def png_chunks(data: bytes) -> list[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, position = [], 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        chunks.append(data[position + 4 : position + 8])
        position += 12 + length
    return chunks


def test_figures_are_planned_from_the_registry_and_deterministic(tmp_path: Path) -> None:
    for model, value in (("alpha.in1k", 0.8), ("alpha.random", 0.5)):
        for shots, profile in ((5, "smoke"), (20, "demo")):
            store(
                record(model, value + shots / 100, "2026-01-01T00:00:00Z", protocol="fewshot",
                       profile=profile, config={"n_shot": shots},
                       metrics={"accuracy_ci95": 0.01}),
                tmp_path,
            )  # fmt: skip
        inv = record(model, value - 0.3, "2026-01-01T00:00:00Z", protocol="invariance")
        inv.primary_metric = "mean_cosine"
        inv.metrics = {"mean_cosine": value - 0.3, "cos_blur_1": 0.1, "cos_hflip_1": value}
        store(inv, tmp_path)
    frame = report_frame(load_records(tmp_path, latest_only=False))
    names = [figure.name for figure in plan_figures(frame, "r")]
    assert names == [
        "r-fewshot-profile-demo-heatmap.png",
        "r-fewshot-profile-demo-bars.png",
        "r-invariance-profile-demo-heatmap.png",  # descriptive: a heatmap, no bars
        "r-fewshot-profile-smoke-heatmap.png",
        "r-fewshot-profile-smoke-bars.png",
        "r-fewshot-n-shot-sweep.png",  # two shot counts were run
        "r-invariance-cos-details.png",  # the protocol's detail table, per transform
    ]
    for figure in plan_figures(frame, "r"):
        first = figure.draw()
        assert figure.draw() == first, figure.name
        chunks = png_chunks(first)
        assert b"tIME" not in chunks and b"tEXt" not in chunks and b"iTXt" not in chunks
        width, height = struct.unpack(">II", first[16:24])
        assert 200 < width < 4000 and 150 < height < 3000, figure.name
    # one shot count only: no sweep figure
    demo_only = frame[frame["profile"] == "demo"]
    assert not any("sweep" in f.name for f in plan_figures(demo_only, "r"))


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables = 0
        self.headers: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.scripts = 0
        self._in_th = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "table":
            self.tables += 1
            assert values.get("class") == "sortable"
        self._in_th = tag == "th"
        if tag == "img":
            self.images.append(values["src"] or "")
        if tag == "script":
            self.scripts += 1
            assert "src" not in values  # inline only
        if tag in ("link", "a") and values.get("href"):
            self.links.append(values["href"] or "")

    def handle_endtag(self, tag: str) -> None:
        self._in_th = False if tag == "th" else self._in_th

    def handle_data(self, data: str) -> None:
        if self._in_th:
            self.headers.append(data)


def test_html_is_self_contained_and_regeneration_is_byte_identical(
    two_runs: Path, tmp_path: Path
) -> None:
    outs = []
    for name in ("a", "b"):
        written = write_report_files(
            two_runs, tmp_path / name / "r.md", None, "T", figures=True, html=True
        )
        outs.append(written)
    a, b = outs
    for first, second in zip(
        [a.markdown, a.csv, a.html, *a.figures], [b.markdown, b.csv, b.html, *b.figures],
        strict=True,
    ):  # fmt: skip
        assert first.read_bytes() == second.read_bytes(), first.name
    assert len(a.figures) == 2  # linear: heatmap and bars
    markdown = a.markdown.read_text(encoding="utf-8")
    parser = _Collector()
    assert a.html is not None
    parser.feed(a.html.read_text(encoding="utf-8"))
    assert parser.tables == markdown.count("\n| --") + markdown.count("\n| -:")
    assert parser.tables == len(re.findall(r"^\| [-:]+", markdown, flags=re.M))
    assert "runs" in parser.headers and "sd over runs" not in parser.headers
    assert len(parser.images) == len(a.figures) == markdown.count("](figures/")
    for src, path in zip(parser.images, a.figures, strict=True):
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix) :]) == path.read_bytes()
    assert parser.scripts == 1 and parser.links == []
    assert "http://" not in a.html.read_text() and "https://" not in a.html.read_text()


def test_report_frame_errors() -> None:
    from harness.report.build import ReportError

    with pytest.raises(ReportError, match="lacks column"):
        report_frame(pd.DataFrame({"model": ["x"]}))


_DOM_MOCK = r"""
function cls() { var s = new Set(); return {
  add: function () { for (var a of arguments) s.add(a); },
  remove: function () { for (var a of arguments) s.delete(a); },
  contains: function (x) { return s.has(x); } }; }
var body = { rows: [], appendChild: function (r) {
  this.rows.splice(this.rows.indexOf(r), 1); this.rows.push(r); } };
ROWS.forEach(function (t) {
  body.rows.push({ cells: t.map(function (x) { return { textContent: x }; }) }); });
var table = { tBodies: [body] }, tr = { children: [] };
var ths = [0, 1, 2].map(function () { var th = { parentNode: tr, classList: cls(),
  closest: function () { return table; },
  addEventListener: function (e, f) { this.click = f; } }; tr.children.push(th); return th; });
var document = { querySelectorAll: function () { return ths; } };
"""


def test_sort_script_orders_numbers_then_text(tmp_path: Path) -> None:
    """Run the HTML's inline script under node with a minimal DOM (node is an apt package
    here; the test skips, and says so, where it is missing)."""
    import json
    import shutil
    import subprocess

    from harness.report.html import render_html

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the sorting script was not executed")
    page = render_html(
        "| model | value | runs |\n| --- | ---: | ---: |\n| `a` | 1 | 1 |\n", "t", {}
    )
    script = re.search(r"<script>(.*)</script>", page, re.S)
    assert script is not None
    rows = [
        ["`a`", "**0.900 ± 0.010**", "1"],
        ["`b`", "—", "2"],
        ["`c`", "0.250", "10"],
        ["`d`", "-0.100", "2"],
    ]
    program = _DOM_MOCK.replace("ROWS", json.dumps(rows)) + script[1]
    program += """
function order() { return body.rows.map(function (r) { return r.cells[0].textContent; }); }
var out = [];
ths[1].click(); out.push(order()); ths[1].click(); out.push(order());
ths[2].click(); out.push(order()); ths[0].click(); out.push(order());
console.log(JSON.stringify(out));
"""
    (tmp_path / "sort.js").write_text(program, encoding="utf-8")
    done = subprocess.run([node, str(tmp_path / "sort.js")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        ["`d`", "`c`", "`a`", "`b`"],  # numbers ascending (bold, ± ignored), — last
        ["`a`", "`c`", "`d`", "`b`"],  # descending, — still last
        ["`a`", "`d`", "`b`", "`c`"],  # 10 after 2: numeric, stable for ties
        ["`a`", "`b`", "`c`", "`d`"],  # text
    ]
