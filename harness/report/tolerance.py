"""The report's reproducibility section: each case through the same check pytest runs."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

from harness.baselines.check import Baselines, record_device
from harness.baselines.expected import ExpectedFile, ExpectedFileError
from harness.records.results import load_record

_STATUS_TEXT = {"fail": "FAIL", "device": "other device"}


def render_tolerances(frame: pd.DataFrame, baselines: Baselines, table: Any) -> str:
    """Return the markdown of the tolerance table and the per-protocol spread of the calibration.

    Every row is :meth:`harness.baselines.check.Baselines.check` on the case's newest
    record, the check pytest runs, so the report says what pytest said (secondary
    metrics, versions and device class included).

    Args:
        frame: the newest record per case (as prepared by the report).
        baselines: the suite's expected values.
        table: the report's markdown table renderer ``(headers, rows, right_aligned)``.
    """
    records = [load_record(Path(path)).to_dict() for path in frame.sort_values("case_id")["path"]]
    files = _files_used(baselines, {record_device(record) for record in records})
    used = ", ".join(f"`{file.path.name}` (calibrated on {file.device})" for file in files)
    parts = [
        "## Reproducibility",
        f"Each case against its expected value in {used or 'no expected file'}: pass when "
        "|measured − expected| ≤ tolerance for the primary and every other checked metric "
        "(see `harness/baselines/check.py` and `docs/reproducibility.md`).",
    ]
    rows = []
    for record in records:
        outcome = baselines.check(record)
        entry = outcome.expectation
        measured = float(record["primary_value"])
        status = _STATUS_TEXT.get(outcome.status, outcome.status)
        if entry is None:
            rows.append([f"`{record['case_id']}`", "—", "—", f"{measured:.4f}", "—", status, "—"])
            continue
        rows.append(
            [
                f"`{record['case_id']}`",
                f"{entry.value:.4f}",
                f"{entry.tolerance:.4f}",
                f"{measured:.4f}",
                f"{measured - entry.value:+.4f}",
                status,
                entry.source.get("kind", "?"),
            ]
        )
    headers = ["case", "expected", "tolerance", "measured", "delta", "status", "source"]
    parts.append(table(headers, rows, {1, 2, 3, 4}))
    parts += [_spread(file, table) for file in files] or [_spread(None, table)]
    return "\n\n".join(parts)


def _files_used(baselines: Baselines, devices: set[str]) -> list[ExpectedFile]:
    """The readable expected files that apply to records of these device classes."""
    files: dict[Path, ExpectedFile] = {}
    for device in sorted(devices or {"cpu"}):
        for source in (device, "cpu"):
            try:
                file = baselines.for_device(source)
            except ExpectedFileError:
                continue
            if file.entries:
                files.setdefault(file.path, file)
                break
    return list(files.values())


def _spread(expected: ExpectedFile | None, table: Any) -> str:
    by_protocol: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for case_id, entry in (expected.entries if expected else {}).items():
        if entry.source.get("kind") != "calibration":
            continue
        components = dict(entry.tolerance_components)
        components.setdefault("seed_std", float(entry.source.get("std", 0.0)))
        components.setdefault("seeds", int(entry.source.get("seeds", 0)))
        by_protocol[case_id.split("/", 1)[0]].append(components)
    if not by_protocol:
        return "No calibrated entries yet: run `medxfer calibrate <suite> --seeds N`."
    rows = []
    for protocol in sorted(by_protocol):
        items = by_protocol[protocol]
        seed_stds = [float(c.get("seed_std") or 0.0) for c in items]
        kernel_stds = [float(c.get("extraction_std") or 0.0) for c in items]
        rows.append(
            [
                f"`{protocol}`",
                str(len(items)),
                str(max(int(c.get("seeds") or 0) for c in items)),
                f"{sum(seed_stds) / len(seed_stds):.4f}",
                f"{max(seed_stds):.4f}",
                str(max(int(c.get("extraction_runs") or 0) for c in items)),
                f"{max(kernel_stds):.4f}",
                str(sum(std > 0 for std in kernel_stds)),
            ]
        )
    heading = (
        "Spread of the primary metric across calibration seeds and across fresh-cache runs "
        f"under other CPU kernels, per protocol (`{expected.path.name}`):"
    )
    headers = [
        "protocol",
        "cases",
        "seeds",
        "mean seed std",
        "max seed std",
        "kernel runs",
        "max kernel std",
        "cases moved by kernels",
    ]
    return heading + "\n\n" + table(headers, rows, {1, 2, 3, 4, 5, 6, 7})
