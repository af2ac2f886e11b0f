"""The one regression check: a result record against its suite's expected values.

pytest (after every case), the report's reproducibility table and ``medxfer compare``
all call :class:`Baselines.check`, so the three say the same about every case: which
expected file applies to the record's device class, when an entry is stale, and that
every checked metric (the primary and each ``others`` entry) is within its tolerance.

A published entry (``source.kind: published``) is checked by the published-value rule
(:mod:`harness.baselines.published`): its primary metric's tolerance is computed from
the published interval and the record's own interval, never below the entry's stored
tolerance (a floor). Device classes are handled as for calibrated entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.baselines.expected import (
    Expectation,
    ExpectedFile,
    ExpectedFileError,
    expected_path,
    load_expected,
)
from harness.baselines.published import PUBLISHED_RULE, PublishedIntervalError


@dataclass(frozen=True)
class CheckOutcome:
    """The result of checking one record against its expectation."""

    status: str  # pass | fail | missing | stale | error
    message: str
    expectation: Expectation | None = None

    @property
    def ok(self) -> bool:
        """True when the case passes."""
        return self.status == "pass"


def record_device(record: dict[str, Any]) -> str:
    """The device class a record was measured on (``details.device_class``; CPU if absent)."""
    return str((record.get("details") or {}).get("device_class") or "cpu")


def check_record(
    record: dict[str, Any], expected: ExpectedFile, fallback: ExpectedFile | None = None
) -> CheckOutcome:
    """Check a result record (as a dict) against the suite's expected values.

    Args:
        record: The record.
        expected: The expected values of the record's device class.
        fallback: Expected values of another device class, used for a case ``expected``
            lacks only where ``fallback`` holds a measured cross-device spread, or where
            the value is published (a peer's number applies to every device class).

    Returns:
        The outcome: ``pass``, ``fail``, ``missing``, ``stale`` or ``device`` (only
        another device class's value exists and no cross-device spread was measured).
    """
    case_id = record["case_id"]
    measured = record["primary_value"]
    device = record_device(record)
    source = expected
    entry = expected.entries.get(case_id)
    if entry is None and fallback is not None and case_id in fallback.entries:
        source, entry = fallback, fallback.entries[case_id]
    if entry is None:
        return CheckOutcome(
            "missing",
            f"no expected value for case {case_id} in {expected.path}; measured "
            f"{record['primary_metric']} = {_fmt(measured)}",
        )
    stale = _stale_reason(record, entry)
    if stale:
        return CheckOutcome("stale", f"expected entry for {case_id} is stale: {stale}", entry)
    widen, note = 0.0, ""
    published = entry.source.get("kind") == "published"
    if entry.device != device and published:
        # A published number came from the peer's own hardware: no device class of ours
        # is closer to it, and the published rule's tolerance already spans both intervals.
        note = f"  published value: checked on {device} as on any device class"
    elif entry.device != device:
        spread = source.cross_device_spread(device, record["protocol"]["name"])
        if spread is None:
            return CheckOutcome(
                "device",
                f"{case_id} ran on {device}, but its expected value was calibrated on "
                f"{entry.device} ({source.path}) and no {entry.device}->{device} spread has "
                f"been measured: calibrate on {device} (medxfer calibrate {source.suite}) or "
                f"run on {entry.device} (--medxfer-device {entry.device})",
                entry,
            )
        widen = spread
        note = (
            f"  calibrated on {entry.device}: tolerances widened by the measured "
            f"{entry.device}->{device} spread {spread:.4f}"
        )
    lines = []
    primary_tolerance = entry.tolerance
    if published:
        try:
            primary_tolerance, rule_note = PUBLISHED_RULE.tolerance(
                record, entry.metric, entry.value, entry.source.get("interval"), entry.tolerance
            )
        except PublishedIntervalError as exc:
            return CheckOutcome(
                "error", f"cannot check {case_id}: its source.interval in {source.path}: {exc}"
            )
        note = "\n".join(filter(None, [note, f"  tolerance of a published value: {rule_note}"]))
    checks = [(entry.metric, entry.value, primary_tolerance)]
    checks += [(name, m.value, m.tolerance) for name, m in entry.others.items()]
    failed = False
    for metric, value, tolerance in checks:
        tolerance += widen
        got = record["metrics"].get(metric)
        if got is None or (isinstance(got, float) and math.isnan(got)):
            failed = True
            lines.append(f"  {metric}: expected {_fmt(value)}, measured nothing")
            continue
        delta = got - value
        bad = abs(delta) > tolerance + 1e-12
        failed |= bad
        mark = "FAIL" if bad else "ok"
        lines.append(
            f"  {metric}: expected {_fmt(value)}, measured {_fmt(got)}, delta {delta:+.4f}, "
            f"tolerance {tolerance:.4f}  [{mark}]"
        )
    head = f"{case_id} {'differs from' if failed else 'matches'} its expected value"
    tail = f"  source: {entry.source_summary()} ({source.path})"
    body = "\n".join([head, *lines, *([note] if note else []), tail])
    return CheckOutcome("fail" if failed else "pass", body, entry)


def _stale_reason(record: dict[str, Any], entry: Expectation) -> str:
    reasons = []
    if record["profile"] != entry.profile:
        reasons.append(f"calibrated for profile {entry.profile}, running {record['profile']}")
    protocol = record["protocol"]
    if protocol["version"] != entry.protocol_version:
        reasons.append(
            f"calibrated for {protocol['name']} v{entry.protocol_version}, running v{protocol['version']}"
        )
    preset = protocol.get("preset") or {}
    running = (str(preset.get("name", "medxfer")), preset.get("version"))
    if running not in entry.presets:
        expected = " or ".join(_preset_text(*preset) for preset in entry.presets)
        reasons.append(f"calibrated for preset {expected}, running {_preset_text(*running)}")
    if record["dataset"]["version"] != entry.dataset_version:
        reasons.append(
            f"calibrated for dataset v{entry.dataset_version}, running v{record['dataset']['version']}"
        )
    if record["primary_metric"] != entry.metric:
        reasons.append(f"expects metric {entry.metric}, case reports {record['primary_metric']}")
    return "; ".join(reasons)


def _preset_text(name: str, version: int | None) -> str:
    return name if version is None else f"{name} v{version}"


def _fmt(value: float) -> str:
    return f"{value:.4f}"


class Baselines:
    """The expected values a suite's records are checked against, one file per device class.

    A record is checked against the file of its own device class; on another class
    than CPU the CPU file is the fallback (used only with a measured cross-device
    spread, see :func:`check_record`). With an explicit ``path`` (pytest's
    ``--medxfer-expected``) every record is checked against that one file.

    Args:
        suite: the suite's name.
        path: one expected file for every device class, or None for the suite's own files.
        files: already loaded files by device class (they take precedence over ``path``).
    """

    def __init__(
        self, suite: str, path: Path | None = None, files: dict[str, ExpectedFile] | None = None
    ) -> None:
        self.suite = suite
        self.explicit = path
        self._files: dict[str, ExpectedFile | ExpectedFileError] = dict(files or {})

    def path_for(self, device: str) -> Path:
        """The expected file that applies to records of a device class."""
        return self.explicit or expected_path(self.suite, device)

    def for_device(self, device: str) -> ExpectedFile:
        """The expected values of a device class (loaded once).

        Raises:
            ExpectedFileError: when the file is malformed (raised again on every call).
        """
        if device not in self._files:
            try:
                self._files[device] = load_expected(self.path_for(device), self.suite)
            except ExpectedFileError as exc:
                self._files[device] = exc
        found = self._files[device]
        if isinstance(found, ExpectedFileError):
            raise found
        return found

    def fallback(self, device: str) -> ExpectedFile | None:
        """The CPU values for a record of another device class (None on CPU or when unreadable)."""
        if device == "cpu" or self.explicit is not None:
            return None
        if "cpu" not in self._files and not self.path_for("cpu").is_file():
            return None
        try:
            return self.for_device("cpu")
        except ExpectedFileError:
            return None

    def check(self, record: dict[str, Any]) -> CheckOutcome:
        """Check one record (as a dict); a malformed expected file gives status ``error``."""
        device = record_device(record)
        try:
            expected = self.for_device(device)
        except ExpectedFileError as exc:
            return CheckOutcome("error", f"cannot check {record['case_id']}: {exc}")
        return check_record(record, expected, self.fallback(device))
