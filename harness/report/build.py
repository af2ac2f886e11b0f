"""Markdown reports from result records.

A report has leaderboards per (dataset, protocol), a mean-rank table per protocol,
a pretrained-vs-random-initialisation summary and a provenance footer. Rendering is
deterministic: the same records give byte-identical markdown (no wall-clock time,
stable ordering), so a committed report only changes when the numbers do.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.baselines.check import Baselines
from harness.cache import atomic
from harness.records.table import load_records
from harness.report.format import markdown_table
from harness.report.frame import ReportError, prepare_frame
from harness.report.provenance import provenance
from harness.report.sections import detail_tables, header, leaderboards, mean_ranks, twin_summary
from harness.report.tolerance import render_tolerances

__all__ = ["ReportError", "render_report", "write_report"]


def render_report(
    df: pd.DataFrame, title: str, suite: str | None = None, baselines: Baselines | None = None
) -> str:
    """Render result records as a markdown report.

    Args:
        df: records as returned by :func:`harness.records.table.load_records`; when a case
            has several records (``latest_only=False``, or the same case in two
            suites), the newest one is used.
        title: the report's title (first heading).
        suite: report only this suite; None reports every suite in ``df``.
        baselines: the suite's expected values; adds the reproducibility section.

    Returns:
        The markdown text, ending with a newline.

    Raises:
        ReportError: when ``df`` lacks required columns or holds no record (of ``suite``).
    """
    frame = prepare_frame(df, suite)
    multi_profile = frame["_setting"].nunique() > 1
    sections = [
        header(frame, title),
        leaderboards(frame, multi_profile),
        mean_ranks(frame, multi_profile),
        twin_summary(frame, multi_profile),
    ]
    details = detail_tables(frame)
    if details:
        sections.append(details)
    if baselines is not None:
        sections.append(render_tolerances(frame, baselines, markdown_table))
    sections.append(provenance(frame))
    return "\n\n".join(section.rstrip("\n") for section in sections) + "\n"


def write_report(
    results_dir: Path,
    out: Path,
    suite: str | None,
    title: str,
    baselines: Baselines | None = None,
    parts: tuple[str, ...] = (),
) -> Path:
    """Load the newest record of every case, render the report and write it atomically.

    Args:
        results_dir: the results root.
        out: the markdown file to write.
        suite: report only this suite; None reports every suite.
        title: the report's title.
        baselines: the suite's expected values (adds the reproducibility section).
        parts: for a suite made of ``include``s, the suites its records carry.

    Returns:
        ``out``.

    Raises:
        ReportError: when there are no records (for ``suite``) under ``results_dir``.
    """
    frame = load_records(Path(results_dir), latest_only=True)
    if suite is not None:
        frame = frame[frame["suite"].isin(parts or (suite,))]
    if frame.empty:
        if suite is None:
            raise ReportError(f"no result records under {results_dir}: run pytest benchmarks first")
        raise ReportError(
            f"no result records under {results_dir} for suite {suite}: "
            f"run pytest benchmarks --suite {suite} first"
        )
    text = render_report(frame, title, None if parts else suite, baselines)
    atomic.write_text(Path(out), text)
    return Path(out)
