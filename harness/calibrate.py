"""``medxfer calibrate``: measure each case under N seeds and write expected values.

Each seed runs the suite as a pytest session with ``--record-only --medxfer-seed i``
into its own results folder; per case, the tolerance follows
:data:`harness.expected.TOLERANCE_RULE` over the seeds' values.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.expected import (
    TOLERANCE_RULE,
    Expectation,
    ExpectedFile,
    MetricExpectation,
    entry_from_record,
    expected_path,
    interval_of,
    load_expected,
    regenerated_source,
)
from harness.paths import PROJECT_ROOT
from harness.results import load_record
from harness.suites import load_suite


def run_seed(suite: str, seed: int, results: Path, pytest_args: Sequence[str]) -> int:
    """Run the suite once with a seed override, writing records only; return pytest's exit code."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        "benchmarks",
        "--suite",
        suite,
        "--record-only",
        "--medxfer-seed",
        str(seed),
        "--medxfer-results",
        str(results),
        "-p",
        "no:cacheprovider",
        *pytest_args,
    ]
    print("$", " ".join(command), flush=True)
    return subprocess.call(command, cwd=PROJECT_ROOT)


def records_by_case(results: Path) -> dict[str, dict[str, Any]]:
    """Return the newest record per case id under a results folder, as dicts."""
    newest: dict[str, dict[str, Any]] = {}
    for path in sorted(results.rglob("*.json")):
        record = load_record(path).to_dict()
        current = newest.get(record["case_id"])
        if current is None or record["timestamp"] > current["timestamp"]:
            newest[record["case_id"]] = record
    return newest


def calibrated_entry(records: list[dict[str, Any]], previous: Expectation | None) -> Expectation:
    """Build one case's expected entry from its records under different seeds."""
    first = records[0]
    metric = first["primary_metric"]
    values = [float(r["primary_value"]) for r in records]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    intervals = [i for i in (interval_of(r, metric) for r in records) if i is not None]
    interval = max(intervals) if intervals else None
    source = regenerated_source(first, seeds=len(records))
    source["values"] = [round(v, 6) for v in values]
    source["std"] = round(std, 6)
    entry = entry_from_record(
        {**first, "primary_value": statistics.fmean(values)},
        previous,
        source=source,
        tolerance=TOLERANCE_RULE.tolerance(std, interval),
    )
    others = {}
    for name in first["metrics"]:
        if name == metric or name.endswith("_ci95"):
            continue
        series = [r["metrics"].get(name) for r in records]
        if any(not isinstance(v, int | float) or v != v for v in series):
            continue
        spread = statistics.stdev(series) if len(series) > 1 else 0.0
        others[name] = MetricExpectation(
            round(statistics.fmean(series), 6), TOLERANCE_RULE.tolerance(spread)
        )
    return Expectation(**{**entry.__dict__, "others": others})


def calibrate(
    suite: str, seeds: int, pytest_args: Sequence[str] = (), out: Path | None = None
) -> ExpectedFile:
    """Run ``suite`` under ``seeds`` seeds and write calibrated expected values.

    Cases that ran under every seed are (re)written; other entries are kept.

    Args:
        suite: suite name.
        seeds: number of seeds (0 .. seeds-1).
        pytest_args: extra pytest arguments (e.g. ``-n 2``, ``-k modality``).
        out: expected file to write (default ``benchmarks/expected/<suite>.yaml``).
    """
    if seeds < 1:
        raise ValueError("--seeds must be at least 1")
    name = load_suite(suite).name
    path = out or expected_path(name)
    expected = load_expected(path, name)
    with tempfile.TemporaryDirectory(prefix="medxfer-calibrate-") as scratch:
        per_seed = []
        for seed in range(seeds):
            results = Path(scratch) / f"seed{seed}"
            code = run_seed(suite, seed, results, pytest_args)
            if code in (2, 3, 4):  # interrupted, internal error, usage error
                raise RuntimeError(f"seed {seed}: pytest exited {code}; nothing calibrated")
            if code not in (0, 5):
                print(f"seed {seed}: pytest exited {code}; cases that failed are left out")
            per_seed.append(records_by_case(results))
    common = set.intersection(*(set(r) for r in per_seed)) if per_seed else set()
    for case_id in sorted(common):
        runs = [records[case_id] for records in per_seed]
        expected.entries[case_id] = calibrated_entry(runs, expected.entries.get(case_id))
    expected.save()
    print(f"calibrated {len(common)} cases over {seeds} seeds into {path}")
    return expected
