"""Expected values, tolerances and the regression check of every benchmark case.

One YAML file per suite and device class: ``benchmarks/expected/<suite>.yaml`` for CPU
runs, ``benchmarks/expected/<suite>.<device>.yaml`` (e.g. ``demo.cuda.yaml``) for
another device class::

    schema_version: 2
    suite: demo
    device: cpu
    cross_device:                       # optional, measured (medxfer calibrate --cross-device)
      cuda: {spread: {linear: 0.012}, cases: 40, source: {...}}
    cases:
      linear/demo_modality/mobilenet_v2.random:
        device: cpu
        profile: demo
        protocol_version: 1
        dataset_version: 1
        metric: accuracy
        value: 0.4067
        tolerance: 0.012
        tolerance_components: {seed_std: ..., extraction_std: ..., ...}   # see harness/baselines/tolerance.py
        others: {roc_auc: {value: 0.671, tolerance: 0.005}}     # optional
        source:
          kind: calibration            # calibration | published | regenerated
          ...                          # see SOURCE_FIELDS

A case passes when ``|measured - value| <= tolerance`` for the primary metric and
every ``others`` entry. Otherwise it fails with expected, measured, delta,
tolerance and source, and the measured entry is written to
``<suite>.yaml.obtained/<case>.yaml`` (pytest-regressions' convention).
``--medxfer-regen`` merges the obtained entries of failing, stale and missing
cases into the expected file at the end of the session; ``--medxfer-regen-all`` merges
every case run.

A run is checked against entries of its own device class. Where a case has only an
entry of another class, the check uses it only if that file holds a measured
cross-device spread for the run's class, widens the tolerance by it and says so;
otherwise the case fails with status ``device``: a GPU run is never silently compared
with CPU values. Schema 1 files (no device) are read as CPU files.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.baselines.tolerance import TOLERANCE_RULE
from harness.cache.atomic import write_text
from harness.config.paths import PROJECT_ROOT, user_card_folders
from harness.config.vocabulary import interval_name

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
DEVICE_CLASSES = ("cpu", "cuda")
EXPECTED_DIR = PROJECT_ROOT / "benchmarks" / "expected"
OBTAINED_SUFFIX = ".obtained"
SOURCE_KINDS = ("calibration", "published", "regenerated")
SOURCE_FIELDS = {
    "calibration": ("hardware", "seeds", "versions", "commit", "date"),
    "published": ("repository", "commit", "file", "row"),
    "regenerated": ("hardware", "versions", "commit", "date"),
}
# Interval keys a protocol may put in its metrics (e.g. few-shot's 95% CI).


class ExpectedFileError(ValueError):
    """An expected-value file is malformed."""


@dataclass(frozen=True)
class MetricExpectation:
    """Expected value and tolerance of one metric."""

    value: float
    tolerance: float


@dataclass(frozen=True)
class Expectation:
    """The expected outcome of one case."""

    case_id: str
    profile: str
    protocol_version: int
    dataset_version: int
    metric: str
    value: float
    tolerance: float
    others: dict[str, MetricExpectation] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    tolerance_components: dict[str, Any] = field(default_factory=dict)

    def to_yaml_dict(self) -> dict[str, Any]:
        """Return the entry as written in an expected file (without its case id)."""
        entry: dict[str, Any] = {
            "device": self.device,
            "profile": self.profile,
            "protocol_version": self.protocol_version,
            "dataset_version": self.dataset_version,
            "metric": self.metric,
            "value": self.value,
            "tolerance": self.tolerance,
        }
        if self.tolerance_components:
            entry["tolerance_components"] = self.tolerance_components
        if self.others:
            entry["others"] = {
                name: {"value": m.value, "tolerance": m.tolerance}
                for name, m in self.others.items()
            }
        entry["source"] = self.source
        return entry

    def source_summary(self) -> str:
        """A short human description of where the value comes from."""
        kind = self.source.get("kind", "?")
        if kind == "published":
            parts = [self.source.get(k) for k in ("repository", "file", "row")]
            return "published: " + ", ".join(str(p) for p in parts if p)
        seeds = self.source.get("seeds")
        seeds_text = f", {seeds} seeds" if seeds else ""
        return (
            f"{kind} on {self.source.get('hardware', '?')}{seeds_text}, commit "
            f"{str(self.source.get('commit') or '?')[:12]}, {self.source.get('date', '?')}"
        )


@dataclass
class ExpectedFile:
    """A suite's expected values on one device class.

    Attributes:
        path: The file.
        suite: The suite's name.
        entries: Case id -> expectation.
        device: The device class the entries were calibrated on.
        cross_device: Device class -> measured spread between this file's class and that
            one (``{"spread": {protocol: value}, "cases": n, "source": {...}}``).
    """

    path: Path
    suite: str
    entries: dict[str, Expectation] = field(default_factory=dict)
    device: str = "cpu"
    cross_device: dict[str, dict[str, Any]] = field(default_factory=dict)

    def cross_device_spread(self, device: str, protocol: str) -> float | None:
        """The measured spread between this file's device class and ``device``, if any."""
        spreads = (self.cross_device.get(device) or {}).get("spread") or {}
        value = spreads.get(protocol, spreads.get("*"))
        return float(value) if isinstance(value, int | float) else None

    def render(self) -> str:
        """Return the file's YAML text (sorted by case id, stable)."""
        header = (
            f"# Expected values of suite {self.suite!r} on {self.device}; see harness/baselines/expected.py "
            "for the format.\n"
            f"# Tolerances: {TOLERANCE_RULE.describe()}.\n"
            f"# Regenerate failing entries: pytest benchmarks --suite {self.suite} --medxfer-regen\n"
        )
        body: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "suite": self.suite,
            "device": self.device,
        }
        if self.cross_device:
            body["cross_device"] = self.cross_device
        body["cases"] = {cid: self.entries[cid].to_yaml_dict() for cid in sorted(self.entries)}
        return header + yaml.safe_dump(body, sort_keys=False, width=100)

    def save(self) -> None:
        """Write the file atomically."""
        write_text(self.path, self.render())


def expected_path(suite: str, device: str = "cpu") -> Path:
    """Return the expected-value file of a suite on a device class (``<suite>.yaml`` on CPU).

    A suite kept in a user's card folder (``<folder>/suites/``) has its expected values
    in ``<folder>/expected/``; every other suite in ``benchmarks/expected/``.
    """
    name = f"{suite}.yaml" if device == "cpu" else f"{suite}.{device}.yaml"
    for folder in user_card_folders():
        if (folder / "suites" / f"{suite}.yaml").is_file():
            return folder / "expected" / name
    return EXPECTED_DIR / name


def obtained_dir(path: Path) -> Path:
    """Return the folder where obtained entries of an expected file are written."""
    return path.with_name(path.name + OBTAINED_SUFFIX)


def _number(raw: Any, where: str, key: str, minimum: float | None = None) -> float:
    value = raw.get(key) if isinstance(raw, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ExpectedFileError(f"{where}: '{key}' must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ExpectedFileError(f"{where}: '{key}' must be >= {minimum}, got {value}")
    return float(value)


def _int(raw: dict[str, Any], where: str, key: str) -> int:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ExpectedFileError(f"{where}: '{key}' must be an integer, got {value!r}")
    return value


def _parse_entry(case_id: str, raw: Any, where: str, device: str = "cpu") -> Expectation:
    if not isinstance(raw, dict):
        raise ExpectedFileError(f"{where}: entry must be a mapping")
    allowed = {"profile", "protocol_version", "dataset_version", "metric", "value", "tolerance"}
    extra = set(raw) - allowed - {"others", "source", "device", "tolerance_components"}
    if extra:
        raise ExpectedFileError(f"{where}: unknown field(s) {', '.join(sorted(extra))}")
    for key in ("profile", "metric"):
        if not isinstance(raw.get(key), str):
            raise ExpectedFileError(f"{where}: '{key}' must be a string, got {raw.get(key)!r}")
    others = {}
    for name, other in (raw.get("others") or {}).items():
        inner = f"{where}.others.{name}"
        others[name] = MetricExpectation(
            _number(other, inner, "value"), _number(other, inner, "tolerance", 0.0)
        )
    source = raw.get("source")
    if not isinstance(source, dict) or source.get("kind") not in SOURCE_KINDS:
        raise ExpectedFileError(
            f"{where}: 'source' must be a mapping with kind one of {', '.join(SOURCE_KINDS)}"
        )
    missing = [k for k in SOURCE_FIELDS[source["kind"]] if k not in source]
    if missing:
        raise ExpectedFileError(
            f"{where}: a {source['kind']} source needs field(s) {', '.join(missing)}"
        )
    entry_device = raw.get("device", device)
    if entry_device != device:
        raise ExpectedFileError(
            f"{where}: entry is for device {entry_device!r} but the file holds {device!r} values"
        )
    components = raw.get("tolerance_components") or {}
    if not isinstance(components, dict):
        raise ExpectedFileError(f"{where}: 'tolerance_components' must be a mapping")
    return Expectation(
        case_id=case_id,
        device=entry_device,
        tolerance_components=components,
        profile=raw["profile"],
        protocol_version=_int(raw, where, "protocol_version"),
        dataset_version=_int(raw, where, "dataset_version"),
        metric=raw["metric"],
        value=_number(raw, where, "value"),
        tolerance=_number(raw, where, "tolerance", 0.0),
        others=others,
        source=source,
    )


def load_expected(path: Path, suite: str) -> ExpectedFile:
    """Load and validate an expected-value file; a missing file is an empty one.

    Raises:
        ExpectedFileError: naming the file (and the case) at fault.
    """
    if not path.is_file():
        return ExpectedFile(path, suite, device=_device_of(path, suite))
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ExpectedFileError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ExpectedFileError(f"{path}: expected a mapping with schema_version, suite, cases")
    if raw.get("schema_version") not in READABLE_SCHEMAS:
        raise ExpectedFileError(
            f"{path}: schema_version is {raw.get('schema_version')!r}, this medxfer reads "
            f"{', '.join(map(str, READABLE_SCHEMAS))}"
        )
    device = raw.get("device", "cpu")
    if device not in DEVICE_CLASSES:
        raise ExpectedFileError(
            f"{path}: 'device' is {device!r}; expected one of {', '.join(DEVICE_CLASSES)}"
        )
    cross_device = raw.get("cross_device") or {}
    if not isinstance(cross_device, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("spread"), dict) for v in cross_device.values()
    ):
        raise ExpectedFileError(
            f"{path}: 'cross_device' must map a device class to {{spread: {{protocol: value}}}}"
        )
    if raw.get("suite") != suite:
        raise ExpectedFileError(f"{path}: file is for suite {raw.get('suite')!r}, not {suite!r}")
    cases = raw.get("cases") or {}
    if not isinstance(cases, dict):
        raise ExpectedFileError(f"{path}: 'cases' must be a mapping of case id to entry")
    entries = {
        str(cid): _parse_entry(str(cid), entry, f"{path}: case {cid}", device)
        for cid, entry in cases.items()
    }
    return ExpectedFile(path, suite, entries, device, cross_device)


def _device_of(path: Path, suite: str) -> str:
    """The device class a (possibly absent) file is named for."""
    stem = path.name.removesuffix(".yaml")
    tail = stem.removeprefix(f"{suite}.") if stem != suite else "cpu"
    return tail if tail in DEVICE_CLASSES else "cpu"


# --------------------------------------------------------------------------- checking


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
            lacks only where ``fallback`` holds a measured cross-device spread.

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
    if entry.device != device:
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
    checks = [(entry.metric, entry.value, entry.tolerance)]
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
    if record["dataset"]["version"] != entry.dataset_version:
        reasons.append(
            f"calibrated for dataset v{entry.dataset_version}, running v{record['dataset']['version']}"
        )
    if record["primary_metric"] != entry.metric:
        reasons.append(f"expects metric {entry.metric}, case reports {record['primary_metric']}")
    return "; ".join(reasons)


def _fmt(value: float) -> str:
    return f"{value:.4f}"


# --------------------------------------------------------------------------- obtained / regen


def resolution_of(record: dict[str, Any], metric: str) -> float:
    """What one test image's prediction can change in a metric (0 when not recorded)."""
    notes = (record.get("details") or {}).get("metric_notes") or {}
    value = (notes.get("resolution") or {}).get(metric)
    return float(value) if isinstance(value, int | float) else 0.0


def interval_of(record: dict[str, Any], metric: str) -> float | None:
    """Return the protocol's own interval for a metric (e.g. few-shot's 95% CI), if any."""
    value = record["metrics"].get(interval_name(metric))
    return float(value) if isinstance(value, int | float) else None


def entry_from_record(
    record: dict[str, Any],
    previous: Expectation | None,
    source: dict[str, Any] | None = None,
    tolerance: float | None = None,
) -> Expectation:
    """Build an expected entry from a measured record.

    The tolerance is, in order: the one given, the previous entry's, or the rule's
    value for a single run (the protocol interval or the floor).
    """
    metric = record["primary_metric"]
    device = record_device(record)
    components = previous.tolerance_components if previous is not None else {}
    if tolerance is None:
        if previous is not None and previous.metric == metric and previous.device == device:
            tolerance = previous.tolerance
        else:
            interval = interval_of(record, metric)
            resolution = resolution_of(record, metric)
            tolerance = TOLERANCE_RULE.tolerance(0.0, interval, resolution=resolution)
            components = {
                "rule": TOLERANCE_RULE.describe(),
                "seeds": 1,
                "extraction_runs": 0,
                "resolution": round(resolution, 6),
                "interval": interval,
                "floor": TOLERANCE_RULE.floor,
                "tolerance": tolerance,
                "note": "one run: no spread measured (medxfer calibrate measures it)",
            }
    return Expectation(
        case_id=record["case_id"],
        device=device,
        tolerance_components=components,
        profile=record["profile"],
        protocol_version=int(record["protocol"]["version"]),
        dataset_version=int(record["dataset"]["version"]),
        metric=metric,
        value=round(float(record["primary_value"]), 6),
        tolerance=tolerance,
        source=source or regenerated_source(record),
    )


def regenerated_source(record: dict[str, Any], seeds: int = 1) -> dict[str, Any]:
    """Provenance of an entry taken from one measured record."""
    hardware = record.get("hardware", {})
    return {
        "kind": "regenerated" if seeds == 1 else "calibration",
        "hardware": _hardware_text(hardware),
        "seeds": seeds,
        "versions": {
            k: v
            for k, v in record.get("versions", {}).items()
            if k in ("torch", "timm", "scikit-learn", "numpy", "medxfer")
        },
        "commit": (record.get("git") or {}).get("commit"),
        "date": dt.date.today().isoformat(),
        "rule": TOLERANCE_RULE.describe(),
    }


def _hardware_text(hardware: dict[str, Any]) -> str:
    cpu = hardware.get("cpu_model") or hardware.get("processor") or hardware.get("machine") or "cpu"
    if hardware.get("cpu_capability"):
        cpu = f"{cpu} ({hardware['cpu_capability']})"
    gpu = hardware.get("cuda_device")
    return f"{hardware.get('cpu_count', '?')}x {cpu}" + (f" + {gpu}" if gpu else "")


def _safe_name(case_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]", "_", case_id.replace("/", "__"))


def write_obtained(path: Path, entry: Expectation) -> Path:
    """Write one case's obtained entry beside the expected file (atomic, one file per case)."""
    target = obtained_dir(path) / f"{_safe_name(entry.case_id)}.yaml"
    write_text(target, yaml.safe_dump({entry.case_id: entry.to_yaml_dict()}, sort_keys=False))
    return target


def merge_obtained(expected: ExpectedFile) -> list[str]:
    """Merge every obtained entry into the expected file, save it, and return the case ids."""
    folder = obtained_dir(expected.path)
    merged = []
    for path in sorted(folder.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for case_id, entry in raw.items():
            expected.entries[case_id] = _parse_entry(case_id, entry, str(path), expected.device)
            merged.append(case_id)
        path.unlink()
    if merged:
        expected.save()
    return merged


def clear_obtained(path: Path) -> None:
    """Remove obtained entries left by an earlier session."""
    folder = obtained_dir(path)
    if folder.is_dir():
        for stale in folder.glob("*"):
            stale.unlink()
