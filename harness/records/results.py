"""Result records: a versioned schema and an atomic per-case store.

Every benchmark case run writes one JSON record to
``<results_dir>/<suite>/<case_id with '/' -> '__'>/<timestamp>-<run_id>.json``. A
record is never overwritten: re-running a case adds a file, and readers pick the
newest one (:mod:`harness.records.table` loads them into pandas). Files are written to a temporary name and renamed
(:mod:`harness.cache.atomic`), so a crash leaves either the whole record or nothing;
the first store into a results folder in a process deletes the stale temporaries that
killed writers left there (:func:`harness.cache.atomic.remove_stale_temporaries`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.cache import atomic
from harness.records.provenance import collect_provenance
from harness.records.runid import new_run_id

if TYPE_CHECKING:
    from harness.config.cards import DatasetCard, ModelCard

SCHEMA_VERSION = 1

_REQUIRED = (
    "case_id",
    "suite",
    "profile",
    "model",
    "dataset",
    "protocol",
    "metrics",
    "primary_metric",
    "primary_value",
    "timestamp",
    "run_id",
)
_UNSAFE_PATH_CHARS = re.compile(r"[^A-Za-z0-9._+=-]")
_SWEPT: set[Path] = set()


class RecordError(ValueError):
    """A result record is malformed, or was written with another schema version."""


def utc_now() -> str:
    """Return the current UTC time as ISO-8601 with microseconds and a ``Z`` suffix."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class ModelInfo:
    """The model of a case, as recorded (a summary of its card)."""

    name: str
    category: str
    architecture: str
    weights_source: str
    weights_sha256: str | None = None
    random_twin_of: str | None = None
    pretraining_data: str = ""
    batchnorm_stats: str | None = None
    weights_file_sha256: str | None = None
    feature_layer: str = "pooled"
    derived_from: dict[str, Any] | None = None

    @classmethod
    def from_card(cls, card: ModelCard) -> ModelInfo:
        """Summarise a model card.

        Args:
            card: the model card of the case.
        """
        return cls(
            name=card.name,
            category=card.category,
            architecture=card.architecture,
            weights_source=card.weights.source,
            weights_sha256=card.weights.sha256,
            random_twin_of=card.random_twin_of,
            pretraining_data=card.pretraining_data,
            batchnorm_stats=card.weights.batchnorm_stats,
            feature_layer=card.feature_layer,
            derived_from=_derived_from(card),
        )


def _derived_from(card: ModelCard) -> dict[str, Any] | None:
    """A derived model's provenance (parent, source dataset, protocol, profile, seed, and its
    checkpoint's sha256 and validation score once made); None for other models."""
    if card.weights.derived is None:
        return None
    from harness.zoo.derived import provenance

    return provenance(card)


@dataclass
class DatasetInfo:
    """The dataset of a case, as recorded (a summary of its card and split sizes)."""

    name: str
    version: int
    task: str
    primary_metric: str
    semi_synthetic: bool = False
    classes: list[str] = field(default_factory=list)
    n: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_card(cls, card: DatasetCard, n: dict[str, int] | None = None) -> DatasetInfo:
        """Summarise a dataset card.

        Args:
            card: the dataset card of the case.
            n: number of samples per split, e.g. ``{"train": 800, "val": 200, "test": 500}``.
        """
        return cls(
            name=card.name,
            version=card.version,
            task=card.task,
            primary_metric=card.primary_metric,
            semi_synthetic=card.semi_synthetic,
            classes=list(card.classes),
            n=dict(n or {}),
        )


@dataclass
class ProtocolInfo:
    """The protocol of a case: name, VERSION, the full config it ran with, and its preset.

    ``preset`` is ``{name, version, source}`` of the peer preset the case ran (see
    :class:`harness.protocols.registry.Preset`), or ``{"name": "medxfer"}`` for the default.
    """

    name: str
    version: int
    config: dict[str, Any] = field(default_factory=dict)
    preset: dict[str, Any] = field(default_factory=lambda: {"name": "medxfer"})


def _provenance_part(key: str) -> Any:
    return collect_provenance()[key]


@dataclass
class ResultRecord:
    """One result of one benchmark case run (schema version :data:`SCHEMA_VERSION`).

    ``hardware``, ``versions`` and ``git`` default to this process's provenance,
    ``timestamp`` to now and ``run_id`` to a new id; the plugin passes one run id
    to every case of a session.
    """

    case_id: str
    suite: str
    profile: str
    model: ModelInfo
    dataset: DatasetInfo
    protocol: ProtocolInfo
    metrics: dict[str, float]
    primary_metric: str
    primary_value: float
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    seeds: dict[str, int] = field(default_factory=dict)
    feature_cache: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=lambda: _provenance_part("hardware"))
    versions: dict[str, Any] = field(default_factory=lambda: _provenance_part("versions"))
    git: dict[str, Any] = field(default_factory=lambda: _provenance_part("git"))
    timestamp: str = field(default_factory=utc_now)
    run_id: str = field(default_factory=new_run_id)
    suite_version: int | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Return the record as plain JSON-safe data (NaN/inf become null, numpy scalars floats)."""
        payload = {
            "schema_version": self.schema_version,
            "case_id": self.case_id,
            "suite": self.suite,
            "suite_version": self.suite_version,
            "profile": self.profile,
            "model": vars(self.model),
            "dataset": vars(self.dataset),
            "protocol": vars(self.protocol),
            "metrics": self.metrics,
            "primary_metric": self.primary_metric,
            "primary_value": self.primary_value,
            "hyperparameters": self.hyperparameters,
            "details": self.details,
            "seeds": self.seeds,
            "feature_cache": self.feature_cache,
            "timings": self.timings,
            "hardware": self.hardware,
            "versions": self.versions,
            "git": self.git,
            "timestamp": self.timestamp,
            "run_id": self.run_id,
        }
        return _jsonable(payload)

    @classmethod
    def from_dict(cls, data: Any, source: str | Path | None = None) -> ResultRecord:
        """Validate and build a record from its JSON data.

        Args:
            data: the parsed JSON object.
            source: where it came from (a file path), named in every error.

        Raises:
            RecordError: on a wrong ``schema_version``, a missing required field or
                a field of the wrong type, naming ``source``.
        """
        where = str(source) if source is not None else "<result record>"
        if not isinstance(data, dict):
            raise RecordError(f"{where}: a result record must be a JSON object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise RecordError(
                f"{where}: schema_version is {version!r}; this medxfer reads schema_version "
                f"{SCHEMA_VERSION} (re-run the case, or use the medxfer version that wrote it)"
            )
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise RecordError(f"{where}: missing required field(s) {', '.join(missing)}")
        for key in ("case_id", "suite", "profile", "primary_metric", "timestamp", "run_id"):
            _expect(data[key], str, where, key)
        parse_timestamp(data["timestamp"], where)
        metrics = _expect(data["metrics"], dict, where, "metrics")
        return cls(
            case_id=data["case_id"],
            suite=data["suite"],
            suite_version=_optional_int(data, "suite_version", where),
            profile=data["profile"],
            model=_info(ModelInfo, data["model"], where, "model"),
            dataset=_info(DatasetInfo, data["dataset"], where, "dataset"),
            protocol=_info(ProtocolInfo, data["protocol"], where, "protocol"),
            metrics={
                str(name): _number(value, where, f"metrics.{name}")
                for name, value in metrics.items()
            },
            primary_metric=data["primary_metric"],
            primary_value=_number(data["primary_value"], where, "primary_value"),
            hyperparameters=_optional_dict(data, "hyperparameters", where),
            details=_optional_dict(data, "details", where),
            seeds=_optional_dict(data, "seeds", where),
            feature_cache=_optional_dict(data, "feature_cache", where),
            timings=_optional_dict(data, "timings", where),
            # a stored record keeps the provenance it was written with, never this process's
            hardware=_optional_dict(data, "hardware", where),
            versions=_optional_dict(data, "versions", where),
            git=_optional_dict(data, "git", where) or {"commit": None, "dirty": None},
            timestamp=data["timestamp"],
            run_id=data["run_id"],
            schema_version=version,
        )


_INFO_REQUIRED = {
    ModelInfo: ("name", "category", "architecture", "weights_source"),
    DatasetInfo: ("name", "version", "task", "primary_metric"),
    ProtocolInfo: ("name", "version"),
}


def _info(kind: type, raw: Any, where: str, key: str) -> Any:
    _expect(raw, dict, where, key)
    missing = [name for name in _INFO_REQUIRED[kind] if raw.get(name) is None]
    if missing:
        raise RecordError(f"{where}: field '{key}' lacks {', '.join(missing)}")
    version = raw.get("version")
    if "version" in _INFO_REQUIRED[kind] and (
        not isinstance(version, int) or isinstance(version, bool)
    ):
        raise RecordError(f"{where}: field '{key}.version' must be an integer, got {version!r}")
    known = kind.__dataclass_fields__
    # unknown keys are dropped: a newer writer may add optional detail within a schema version
    return kind(**{name: value for name, value in raw.items() if name in known})


def _expect(value: Any, kind: type, where: str, key: str) -> Any:
    if not isinstance(value, kind):
        raise RecordError(
            f"{where}: field '{key}' must be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _number(value: Any, where: str, key: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(f"{where}: field '{key}' must be a number or null, got {value!r}")
    return float(value)


def _optional_int(data: dict[str, Any], key: str, where: str) -> int | None:
    value = data.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise RecordError(f"{where}: field '{key}' must be an integer, got {value!r}")
    return value


def _optional_dict(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    return _expect(value, dict, where, key)


def parse_timestamp(text: str, where: str = "<result record>") -> datetime:
    """Parse a record's ISO-8601 timestamp as an aware UTC datetime (naive means UTC).

    Raises:
        RecordError: when ``text`` is not ISO-8601, naming ``where``.
    """
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError as exc:
        raise RecordError(f"{where}: field 'timestamp' is not ISO-8601: {text!r}") from exc
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC)


def _jsonable(value: Any) -> Any:
    """Convert to strict-JSON data: numpy scalars/arrays, tuples, paths; NaN/inf -> None."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [_jsonable(item) for item in items]
    if isinstance(value, bool | str | None):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays, torch tensors
    if callable(tolist):
        return _jsonable(tolist())
    return str(value)


# --------------------------------------------------------------------------- storing


def record_dir(results_dir: Path, suite: str, case_id: str) -> Path:
    """Return the folder that holds every run of one case of one suite.

    Raises:
        RecordError: when the suite or case id would escape ``results_dir``.
    """
    parts = [_safe_component(suite, "suite"), _safe_component(case_id.replace("/", "__"), "case")]
    return Path(results_dir).joinpath(*parts)


def _safe_component(text: str, what: str) -> str:
    safe = _UNSAFE_PATH_CHARS.sub("_", text)
    if safe in ("", ".", ".."):
        raise RecordError(f"{what} {text!r} cannot name a folder")
    return safe


def store(record: ResultRecord, results_dir: Path) -> Path:
    """Write one record atomically as a new JSON file; never overwrites an older run.

    Args:
        record: the result of one case run.
        results_dir: the results root (e.g. :func:`harness.config.paths.results_dir`).

    Returns:
        The path of the written file,
        ``<results_dir>/<suite>/<case_id with '/' -> '__'>/<timestamp>-<run_id>.json``.
    """
    payload = record.to_dict()
    ResultRecord.from_dict(payload, source=f"record of case {record.case_id!r}")
    folder = record_dir(results_dir, record.suite, record.case_id)
    stamp = parse_timestamp(record.timestamp).strftime("%Y%m%dT%H%M%S%fZ")
    stem = f"{stamp}-{_safe_component(record.run_id, 'run_id')}"
    root = Path(results_dir).absolute()
    if root not in _SWEPT:
        _SWEPT.add(root)
        atomic.remove_stale_temporaries(root, depth=2)  # <suite>/<case>/<record>
    target = folder / f"{stem}.json"
    counter = 1
    while target.exists():
        target = folder / f"{stem}-{counter}.json"
        counter += 1
    atomic.write_json(target, payload)
    return target


# --------------------------------------------------------------------------- loading


def load_record(path: Path) -> ResultRecord:
    """Read and validate one record file.

    Raises:
        RecordError: when the file is unreadable, not JSON, or not a valid record.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordError(f"{path}: cannot read result record: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: not valid JSON ({exc}); the file is corrupt") from exc
    return ResultRecord.from_dict(data, source=path)
