"""Markdown reports from result records.

A report has leaderboards per (dataset, protocol), a mean-rank table per protocol,
a pretrained-vs-random-initialisation summary and a provenance footer. Rendering is
deterministic: the same records give byte-identical markdown (no wall-clock time,
stable ordering), so a committed report only changes when the numbers do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.baselines.check import Baselines
from harness.cache import atomic
from harness.records.table import REQUIRED_COLUMNS, load_records
from harness.report.analysis_figures import AnalysisFigure, plan_analysis_figures
from harness.report.analysis_sections import analysis_sections
from harness.report.export import cases_csv
from harness.report.figures import Figure, plan_figures
from harness.report.format import markdown_table
from harness.report.frame import ReportError, prepare_frame
from harness.report.html import render_html
from harness.report.matrix import matrices
from harness.report.provenance import provenance
from harness.report.sections import detail_tables, header, leaderboards, mean_ranks, twin_summary
from harness.report.select import filter_records
from harness.report.tolerance import render_tolerances

FIGURE_DIR = "figures"

__all__ = ["ReportError", "ReportFiles", "render_report", "report_frame", "write_report"]


def report_frame(
    df: pd.DataFrame,
    suite: str | None = None,
    runs: str = "latest",
    filters: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Filter the records and reduce each case's runs to one row (the report's frame).

    Args:
        df: records as returned by :func:`harness.records.table.load_records` (every run:
            ``latest_only=False``, for ``best`` and ``mean`` to see them).
        suite: keep only this suite; None keeps every suite.
        runs: ``latest``, ``best`` or ``mean`` (see :mod:`harness.report.select`).
        filters: keyword arguments of :func:`harness.report.select.filter_records`
            (``keyword``, ``protocols``, ``models``, ``datasets``).

    Raises:
        ReportError: when ``df`` lacks required columns or nothing is left to report.
        FilterError: on a malformed filter.
    """
    missing = [column for column in REQUIRED_COLUMNS if column not in df.columns]
    if missing:
        raise ReportError(f"result table lacks column(s) {', '.join(missing)}")
    if filters and any(filters.values()):
        df = filter_records(df, **filters)
        if df.empty:
            raise ReportError("no result record matches the filters")
    return prepare_frame(df, suite, runs)


def render_report(
    df: pd.DataFrame,
    title: str,
    suite: str | None = None,
    baselines: Baselines | None = None,
    runs: str = "latest",
    figures: Sequence[Figure] = (),
    figure_dir: str = "figures",
    prepared: pd.DataFrame | None = None,
) -> str:
    """Render result records as a markdown report.

    Args:
        df: records as returned by :func:`harness.records.table.load_records`; when a case
            has several records, ``runs`` chooses what is shown.
        title: the report's title (first heading).
        suite: report only this suite; None reports every suite in ``df``.
        baselines: the suite's expected values; adds the reproducibility section (each
            case's shown record is checked; under ``mean``, its newest run).
        runs: ``latest``, ``best`` or ``mean``.
        figures: figures to link (from :func:`harness.report.figures.plan_figures` and
            :func:`harness.report.analysis_figures.plan_analysis_figures`; the analysis
            ones go inside their sections).
        figure_dir: the figures' folder relative to the markdown file.
        prepared: the frame from :func:`report_frame`, when the caller already made it.

    Returns:
        The markdown text, ending with a newline.

    Raises:
        ReportError: when ``df`` lacks required columns or holds no record (of ``suite``).
    """
    frame = prepared if prepared is not None else report_frame(df, suite, runs)
    multi_profile = frame["_setting"].nunique() > 1
    sections = [
        header(frame, title, runs),
        leaderboards(frame, multi_profile),
        mean_ranks(frame, multi_profile),
        matrices(frame, multi_profile),
        twin_summary(frame, multi_profile),
    ]
    details = detail_tables(frame)
    if details:
        sections.append(details)
    analyses = analysis_sections(frame, figures, figure_dir)
    if analyses:
        sections.append(analyses)
    if baselines is not None:
        sections.append(render_tolerances(frame, baselines, markdown_table))
    # analysis figures sit in their sections; the rest are listed at the end
    listed = [figure for figure in figures if not isinstance(figure, AnalysisFigure)]
    if listed:
        sections.append(_figure_section(listed, figure_dir))
    sections.append(provenance(frame, runs))
    return "\n\n".join(section.rstrip("\n") for section in sections) + "\n"


def _suite_baselines(frame: pd.DataFrame) -> Baselines | None:
    """The expected values of the frame's one suite, when it has an expected file."""
    from harness.baselines.expected import expected_path

    suites = set(frame["suite"])
    if len(suites) != 1:
        return None
    (suite,) = suites
    return Baselines(suite) if expected_path(suite).is_file() else None


def _figure_section(figures: Sequence[Figure], folder: str) -> str:
    parts = ["## Figures"]
    for figure in figures:
        parts.append(f"![{figure.title}]({folder}/{figure.name})")
    return "\n\n".join(parts)


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote."""

    markdown: Path
    csv: Path
    html: Path | None
    figures: tuple[Path, ...]


def write_report(
    results_dir: Path,
    out: Path,
    suite: str | None,
    title: str,
    baselines: Baselines | None = None,
    parts: tuple[str, ...] = (),
    runs: str = "latest",
    filters: Mapping[str, Any] | None = None,
    figures: bool = False,
    html: bool = False,
) -> Path:
    """Load the records, render the report and write it (and its companions) atomically.

    Writes ``out`` (markdown) and ``out`` with suffix ``.csv`` beside it; with
    ``figures``, the PNGs into ``<out's folder>/figures/`` (linked from the markdown);
    with ``html``, ``out`` with suffix ``.html`` (figures embedded). See
    :func:`write_report_files` for the list of written files.

    Args:
        results_dir: the results root.
        out: the markdown file to write.
        suite: report only this suite; None reports every suite.
        title: the report's title.
        baselines: the suite's expected values (adds the reproducibility section).
        parts: for a suite made of ``include``s, the suites its records carry.
        runs: ``latest``, ``best`` or ``mean``.
        filters: see :func:`report_frame`.
        figures: draw the figures (needs matplotlib).
        html: write the self-contained HTML report too.

    Returns:
        ``out``.

    Raises:
        ReportError: when there are no records (for ``suite``) under ``results_dir``.
    """
    written = write_report_files(
        results_dir, out, suite, title, baselines, parts, runs, filters, figures, html
    )
    return written.markdown


def write_report_files(
    results_dir: Path,
    out: Path,
    suite: str | None,
    title: str,
    baselines: Baselines | None = None,
    parts: tuple[str, ...] = (),
    runs: str = "latest",
    filters: Mapping[str, Any] | None = None,
    figures: bool = False,
    html: bool = False,
    auto_baselines: bool = False,
) -> ReportFiles:
    """:func:`write_report`, returning every file written (same arguments).

    With ``auto_baselines`` and no ``baselines``, records of one suite that has an
    expected-value file get the reproducibility section too (``medxfer report -k ...``
    without ``--suite``).
    """
    frame = load_records(Path(results_dir), latest_only=False)
    if suite is not None:
        frame = frame[frame["suite"].isin(parts or (suite,))]
    if frame.empty:
        if suite is None:
            raise ReportError(f"no result records under {results_dir}: run pytest benchmarks first")
        raise ReportError(
            f"no result records under {results_dir} for suite {suite}: "
            f"run pytest benchmarks --suite {suite} first"
        )
    out = Path(out)
    prepared = report_frame(frame, None if parts else suite, runs, filters)
    if figures:
        try:
            import matplotlib  # noqa: F401
        except ImportError as exc:
            raise ReportError(
                "figures need matplotlib: pip install 'medxfer[report]', or pass --no-figures"
            ) from exc
    if baselines is None and auto_baselines:
        baselines = _suite_baselines(prepared)
    planned: list[Figure] = []
    if figures:
        planned = [*plan_figures(prepared, out.stem), *plan_analysis_figures(prepared, out.stem)]
    images = {f"{FIGURE_DIR}/{figure.name}": figure.draw() for figure in planned}
    text = render_report(
        frame, title, baselines=baselines, runs=runs, figures=planned, prepared=prepared
    )
    paths = []
    for link, data in images.items():
        paths.append(out.parent / link)
        atomic.write_with(paths[-1], lambda handle, d=data: handle.write(d))
    atomic.write_text(out, text)
    csv_path = out.with_suffix(".csv")
    atomic.write_text(csv_path, cases_csv(prepared))
    html_path = None
    if html:
        html_path = out.with_suffix(".html")
        atomic.write_text(html_path, render_html(text, title, images))
    return ReportFiles(out, csv_path, html_path, tuple(paths))
