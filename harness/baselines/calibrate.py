"""``medxfer calibrate``: measure what varies between users' runs and write expected values.

Every run is a pytest session in a fresh process (``--medxfer-record-only``, its own results
folder, its own seed):

* **seed runs**, seeds ``0 .. N-1``, sharing one feature cache that the first of them
  fills from empty;
* **kernel runs**, seed 0 again, each with a fresh, empty cache (so the dataset is
  rebuilt and every feature extracted anew) and one of :data:`KERNEL_VARIANTS` in its
  environment. Each variant makes oneDNN, ATen or OpenBLAS take the code path another
  CPU would take, so the features differ in their last bits as they do on a user's
  machine. A fresh cache on the same machine alone reproduces the calibration's bits
  exactly (``docs/reproducibility.md``) and would measure nothing.

Per case, the value is the mean over the seed runs and the tolerance follows
:data:`harness.baselines.tolerance.TOLERANCE_RULE` over the seed spread, the kernel-run spread,
the protocol's interval and the floor; every component is written into the entry.

With ``--work-dir`` and ``--resume``, a session that finished earlier (its marker
``<results>.done.json`` records the same suite, seed, environment and pytest arguments)
is not run again, so an interrupted calibration continues where it stopped.

``--cross-device RESULTS`` instead measures the spread between this file's values and
records made on another device class, and writes it into the file, so runs on that
class are checked against these values with widened tolerances.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.baselines.calibrate_merge import machine_values, other_machines
from harness.baselines.check import record_device
from harness.baselines.expected import (
    Expectation,
    ExpectedFile,
    MetricExpectation,
    expected_path,
    load_expected,
)
from harness.baselines.obtained import (
    entry_from_record,
    interval_of,
    regenerated_source,
    resolution_of,
)
from harness.baselines.tolerance import TOLERANCE_RULE
from harness.cache.atomic import is_temporary, write_json
from harness.config.paths import PROJECT_ROOT
from harness.config.suites import load_suite
from harness.config.vocabulary import is_interval_name
from harness.records.results import RecordError, load_record


@dataclass(frozen=True)
class KernelVariant:
    """An environment that makes this machine compute like another CPU would."""

    name: str
    env: Mapping[str, str] = field(default_factory=dict)


KERNEL_VARIANTS: tuple[KernelVariant, ...] = (
    KernelVariant("onednn-sse41", {"ONEDNN_MAX_CPU_ISA": "SSE41"}),
    KernelVariant("aten-default", {"ATEN_CPU_CAPABILITY": "default"}),
    KernelVariant(
        "onednn-avx+openblas-sandybridge",
        {"ONEDNN_MAX_CPU_ISA": "AVX", "OPENBLAS_CORETYPE": "Sandybridge"},
    ),
    # An AVX-512 machine computing like the common AVX2 ones (on those, the native run).
    # No variant makes an AVX2 machine compute like an AVX-512 one: calibrate on AVX-512
    # where there is one (docs/reproducibility.md).
    KernelVariant(
        "avx2",
        {
            "ONEDNN_MAX_CPU_ISA": "AVX2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "ATEN_CPU_CAPABILITY": "avx2",
        },
    ),
)


@dataclass(frozen=True)
class CalibrationRun:
    """One pytest session of a calibration."""

    label: str
    seed: int
    home: Path
    results: Path
    env: Mapping[str, str] = field(default_factory=dict)
    starts_cache: bool = True
    """The session must find ``home`` empty (the first seed run and every kernel run)."""


def run_session(run: CalibrationRun, suite: str, pytest_args: Sequence[str]) -> int:
    """Run the suite once in a fresh process, writing records only; return pytest's exit code."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        "benchmarks",
        "--suite",
        suite,
        "--medxfer-record-only",
        "--medxfer-seed",
        str(run.seed),
        "--medxfer-results",
        str(run.results),
        "-p",
        "no:cacheprovider",
        *pytest_args,
    ]
    env = {**os.environ, "MEDXFER_HOME": str(run.home), **run.env}
    # each run is a session of its own, even when calibrate is called from inside one
    for inherited in ("MEDXFER_RUN_ID", "PYTEST_XDIST_WORKER", "PYTEST_CURRENT_TEST"):
        env.pop(inherited, None)
    shown = " ".join(f"{k}={v}" for k, v in run.env.items())
    print(f"$ [{run.label}] MEDXFER_HOME={run.home} {shown} {' '.join(command)}", flush=True)
    return subprocess.call(command, cwd=PROJECT_ROOT, env=env)


def _session_identity(run: CalibrationRun, suite: str, pytest_args: Sequence[str]) -> dict:
    return {
        "suite": suite,
        "label": run.label,
        "seed": run.seed,
        "env": dict(run.env),
        "pytest_args": list(pytest_args),
    }


def done_marker(run: CalibrationRun) -> Path:
    """The file that says ``run`` finished (next to its results folder, not inside it)."""
    return run.results.with_name(run.results.name + ".done.json")


def finished_earlier(run: CalibrationRun, suite: str, pytest_args: Sequence[str]) -> int | None:
    """Exit code of an earlier identical session of ``run`` that finished, else ``None``."""
    marker = done_marker(run)
    if not marker.is_file() or not run.results.is_dir():
        return None
    try:
        done = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if done.get("session") != _session_identity(run, suite, pytest_args):
        return None
    return int(done["exit_code"])


def mark_finished(run: CalibrationRun, suite: str, pytest_args: Sequence[str], code: int) -> None:
    """Write ``run``'s done marker atomically."""
    payload = {"session": _session_identity(run, suite, pytest_args), "exit_code": code}
    write_json(done_marker(run), payload)


def records_by_case(results: Path) -> dict[str, dict[str, Any]]:
    """Return the newest record per case id under a results folder, as dicts.

    Temporaries of writes (in progress or interrupted) are ignored; a corrupt or invalid
    record is skipped with a warning naming the file (its run's other records count).
    """
    newest: dict[str, dict[str, Any]] = {}
    for path in sorted(results.rglob("*.json")):
        if is_temporary(path):
            continue
        try:
            record = load_record(path).to_dict()
        except RecordError as exc:
            warnings.warn(f"calibrate: skipping result record: {exc}", stacklevel=2)
            continue
        current = newest.get(record["case_id"])
        if current is None or record["timestamp"] > current["timestamp"]:
            newest[record["case_id"]] = record
    return newest


def _metric_values(records: Sequence[dict[str, Any]], metric: str) -> list[float] | None:
    values = [r["metrics"].get(metric) for r in records]
    if any(not isinstance(v, int | float) or v != v for v in values):
        return None
    return [float(v) for v in values]


def calibrated_entry(
    records: list[dict[str, Any]],
    previous: Expectation | None,
    kernel_records: Sequence[dict[str, Any]] = (),
    kernel_labels: Sequence[str] = (),
    merge: bool = False,
) -> Expectation:
    """Build one case's expected entry from its seed runs and its kernel runs.

    Args:
        records: One record per seed; the first is seed 0.
        previous: The entry being replaced, if any.
        kernel_records: Seed-0 records from fresh caches under other kernels.
        kernel_labels: The kernel variant of each of ``kernel_records``.
        merge: Keep the runs of the other machines ``previous`` was calibrated on as
            further extraction runs (:mod:`harness.baselines.calibrate_merge`).
    """
    first = records[0]
    metric = first["primary_metric"]
    values = [float(r["primary_value"]) for r in records]
    source = regenerated_source(first, seeds=len(records))
    machines = other_machines(previous, source["hardware"]) if merge else []
    extraction = [values[0], *(float(r["primary_value"]) for r in kernel_records)]
    extraction += machine_values(machines)
    if len(extraction) == 1:
        extraction = []
    value = statistics.fmean(values)
    intervals = [i for i in (interval_of(r, metric) for r in records) if i is not None]
    interval = max(intervals) if intervals else None
    resolution = max(resolution_of(r, metric) for r in records)
    components = TOLERANCE_RULE.components(values, extraction, interval, value, resolution)
    source["values"] = [round(v, 6) for v in values]
    source["std"] = components["seed_std"]
    if kernel_records:
        source["kernel_runs"] = {
            label: round(float(r["primary_value"]), 6)
            for label, r in zip(kernel_labels, kernel_records, strict=True)
        }
    if machines:
        source["other_hardware"] = machines
    entry = entry_from_record(
        {**first, "primary_value": value},
        previous,
        source=source,
        tolerance=components["tolerance"],
    )
    others = {}
    for name in first["metrics"]:
        if name == metric or is_interval_name(name):
            continue
        series = _metric_values(records, name)
        kernel_series = _metric_values([first, *kernel_records], name)
        if series is None or kernel_series is None:
            continue
        kernel_series += machine_values(machines, name)
        if len(kernel_series) == 1:
            kernel_series = []
        mean = statistics.fmean(series)
        step = max(resolution_of(r, name) for r in records)
        other = TOLERANCE_RULE.components(series, kernel_series, None, mean, step)
        others[name] = MetricExpectation(round(mean, 6), other["tolerance"])
    return Expectation(**{**entry.__dict__, "others": others, "tolerance_components": components})


def plan_runs(scratch: Path, seeds: int, kernel_runs: int) -> list[CalibrationRun]:
    """The sessions of a calibration: seed runs on one fresh cache, then kernel runs.

    Raises:
        ValueError: On fewer than 1 seed or more kernel runs than known variants.
    """
    if seeds < 1:
        raise ValueError("--seeds must be at least 1")
    if not 0 <= kernel_runs <= len(KERNEL_VARIANTS):
        raise ValueError(f"--kernel-runs must lie in [0, {len(KERNEL_VARIANTS)}]")
    shared = scratch / "home-seeds"
    runs = [
        CalibrationRun(f"seed {seed}", seed, shared, scratch / f"seed{seed}", {}, seed == 0)
        for seed in range(seeds)
    ]
    for index, variant in enumerate(KERNEL_VARIANTS[:kernel_runs]):
        runs.append(
            CalibrationRun(
                f"kernels {variant.name}",
                0,
                scratch / f"home-kernels{index}",
                scratch / f"kernels{index}",
                dict(variant.env),
            )
        )
    return runs


def calibrate(
    suite: str,
    seeds: int,
    pytest_args: Sequence[str] = (),
    out: Path | None = None,
    kernel_runs: int = len(KERNEL_VARIANTS),
    work_dir: Path | None = None,
    resume: bool = False,
    merge: bool = False,
) -> ExpectedFile:
    """Run ``suite`` under ``seeds`` seeds and ``kernel_runs`` kernel variants; write expected values.

    Cases that ran under every seed are (re)written; other entries are kept.

    Args:
        suite: suite name.
        seeds: number of seeds (0 .. seeds-1).
        pytest_args: extra pytest arguments (e.g. ``-n 2``, ``-k modality``).
        out: expected file to write (default: the suite's file for the runs' device class).
        kernel_runs: fresh-cache runs under :data:`KERNEL_VARIANTS` (0 to skip).
        work_dir: keep every run's cache and records there (default: a temporary folder,
            removed afterwards).
        resume: skip sessions in ``work_dir`` that finished earlier with the same settings.
        merge: keep the runs of the other machines each entry was calibrated on
            (:mod:`harness.baselines.calibrate_merge`).

    Raises:
        ValueError: ``resume`` without ``work_dir``.
        RuntimeError: A session was interrupted or could not run.
    """
    if resume and work_dir is None:
        raise ValueError("--resume needs --work-dir (the folder of the interrupted calibration)")
    name = load_suite(suite).name
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="medxfer-cal-")))
        runs = plan_runs(Path(work_dir), seeds, kernel_runs)
        collected: list[dict[str, dict[str, Any]]] = []
        for run in runs:
            code = finished_earlier(run, suite, pytest_args) if resume else None
            if code is not None:
                print(f"[{run.label}] finished earlier (exit {code}); reusing {run.results}")
            else:
                done_marker(run).unlink(missing_ok=True)
                shutil.rmtree(run.results, ignore_errors=True)
                if run.starts_cache:
                    shutil.rmtree(run.home, ignore_errors=True)
                code = run_session(run, suite, pytest_args)
                if code in (2, 3, 4):  # interrupted, internal error, usage error
                    raise RuntimeError(f"{run.label}: pytest exited {code}; nothing calibrated")
                mark_finished(run, suite, pytest_args, code)
            if code not in (0, 5):
                print(f"{run.label}: pytest exited {code}; cases that failed are left out")
            collected.append(records_by_case(run.results) if run.results.is_dir() else {})
    per_seed, per_kernel = collected[:seeds], collected[seeds:]
    labels = [run.label.removeprefix("kernels ") for run in runs[seeds:]]
    common = set.intersection(*(set(r) for r in per_seed))
    devices = {record_device(per_seed[0][case_id]) for case_id in common} or {"cpu"}
    if len(devices) > 1:
        raise RuntimeError(f"calibration runs span device classes {sorted(devices)}")
    device = devices.pop()
    path = out or expected_path(name, device)
    expected = load_expected(path, name)
    expected.device = device
    for case_id in sorted(common):
        present = [
            (lb, r[case_id]) for lb, r in zip(labels, per_kernel, strict=True) if case_id in r
        ]
        if len(present) < len(labels):
            print(f"{case_id}: records from {len(present)} of {len(labels)} kernel runs")
        expected.entries[case_id] = calibrated_entry(
            [records[case_id] for records in per_seed],
            expected.entries.get(case_id),
            [record for _, record in present],
            [label for label, _ in present],
            merge,
        )
    expected.save()
    print(
        f"calibrated {len(common)} cases over {seeds} seed(s) and {len(per_kernel)} kernel "
        f"run(s) on {device} into {path}"
    )
    return expected


def measure_cross_device(expected: ExpectedFile, results: Path) -> dict[str, Any]:
    """Measure how far records of another device class land from ``expected``; store it.

    The spread of a protocol is the largest ``|measured - expected|`` of its primary
    metric over the cases both hold, rounded up to 4 decimals.

    Args:
        expected: The expected values (of one device class).
        results: A results folder of a run on another device class.

    Returns:
        The ``cross_device`` block written for that class.

    Raises:
        ValueError: When the records are of the file's own class, of several classes, or
            share no case with the file.
    """
    records = records_by_case(results)
    devices = {record_device(r) for r in records.values()}
    if len(devices) != 1 or expected.device in devices:
        raise ValueError(
            f"{results}: records must all come from one device class other than "
            f"{expected.device}; found {sorted(devices)}"
        )
    device = devices.pop()
    spread: dict[str, float] = {}
    cases = 0
    for case_id, record in records.items():
        entry = expected.entries.get(case_id)
        if entry is None or entry.metric != record["primary_metric"]:
            continue
        cases += 1
        protocol = record["protocol"]["name"]
        gap = abs(float(record["primary_value"]) - entry.value)
        spread[protocol] = max(spread.get(protocol, 0.0), gap)
    if not cases:
        raise ValueError(f"{results}: no record matches a case of {expected.path}")
    block = {
        "spread": {p: math.ceil(v * 1e4 - 1e-9) / 1e4 for p, v in sorted(spread.items())},
        "cases": cases,
        "source": {
            "results": str(results),
            "date": dt.date.today().isoformat(),
            "rule": "largest |measured - expected| per protocol",
        },
    }
    expected.cross_device[device] = block
    expected.save()
    return block
