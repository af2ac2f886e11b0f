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

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.baselines.tolerance import TOLERANCE_RULE
from harness.cache.atomic import write_text
from harness.config.card_fields import safe_load_yaml
from harness.config.paths import PROJECT_ROOT, user_card_folders

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
    preset: str = "medxfer"
    preset_version: int | None = None
    other_presets: tuple[tuple[str, int], ...] = ()
    """Further presets whose records are checked against the entry (a published number
    that the study's procedure gives both at its selected point and over its grid)."""

    @property
    def presets(self) -> tuple[tuple[str, int | None], ...]:
        """Every (preset, version) a record may run under and still be checked."""
        return ((self.preset, self.preset_version), *self.other_presets)

    def to_yaml_dict(self) -> dict[str, Any]:
        """Return the entry as written in an expected file (without its case id)."""
        entry: dict[str, Any] = {
            "device": self.device,
            "profile": self.profile,
            "protocol_version": self.protocol_version,
            **({"preset": self._preset_field()} if self.preset_version else {}),
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

    def _preset_field(self) -> str | list[str]:
        names = [f"{name} v{version}" for name, version in self.presets]
        return names[0] if len(names) == 1 else names

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


def _presets(raw: dict[str, Any], where: str) -> list[tuple[str, int]]:
    """``preset: ssl-transfer v1`` (or a list of such) -> [(name, version)]; absent -> []."""
    value = raw.get("preset")
    if value is None:
        return []
    presets = []
    for text in value if isinstance(value, list) and value else [value]:
        name, _, version = str(text).partition(" v")
        if not name or not version.isdigit():
            raise ExpectedFileError(
                f"{where}: 'preset' must read '<name> v<version>' (or be a list of such), "
                f"got {text!r}"
            )
        presets.append((name, int(version)))
    return presets


def parse_entry(case_id: str, raw: Any, where: str, device: str = "cpu") -> Expectation:
    """Parse one case's entry of an expected file (``where`` names it in errors)."""
    if not isinstance(raw, dict):
        raise ExpectedFileError(f"{where}: entry must be a mapping")
    allowed = {"profile", "protocol_version", "dataset_version", "metric", "value", "tolerance"}
    extra = set(raw) - allowed - {"others", "source", "device", "tolerance_components", "preset"}
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
    presets = _presets(raw, where)
    preset, preset_version = presets[0] if presets else ("medxfer", None)
    return Expectation(
        case_id=case_id,
        preset=preset,
        preset_version=preset_version,
        other_presets=tuple(presets[1:]),
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
        raw = safe_load_yaml(path.read_text(encoding="utf-8"))
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
        str(cid): parse_entry(str(cid), entry, f"{path}: case {cid}", device)
        for cid, entry in cases.items()
    }
    return ExpectedFile(path, suite, entries, device, cross_device)


def _device_of(path: Path, suite: str) -> str:
    """The device class a (possibly absent) file is named for."""
    stem = path.name.removesuffix(".yaml")
    tail = stem.removeprefix(f"{suite}.") if stem != suite else "cpu"
    return tail if tail in DEVICE_CLASSES else "cpu"
