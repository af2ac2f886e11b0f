"""Case-level resume: a finished case reuses its stored result record instead of running again.

A case is identified by its full key: the model card and its weights identity, the
dataset card (with its version) and a digest of the data the case reads, the protocol
with its VERSION, config and preset, the profile, the seeds, the device class and
precision, the versions of the libraries (a library upgrade runs every case again), and
the suite the record belongs to. When a case finishes, its record is
written as usual (:func:`harness.records.results.store`) and a small marker
``case-<key>.finished`` beside it names the record file. The marker is a value of the
cache service (:mod:`harness.cache.store`): the key payload is stored inside and checked
on load, it is written atomically, and the key's file lock stops two sessions (or xdist
workers) from running the same case at once: the second waits, then reuses.

A stored record is reused only when the marker holds this key, the record it names
loads and validates, and the record carries the same key (``details.case_key``); a
corrupt or foreign file is a miss (a ``corrupt`` / ``mismatch`` event and a warning) and
the case runs again. A reused record is still checked against the expected values.
``--medxfer-rerun`` (and fine-tuning's ``--medxfer-retrain``) runs the case again and
replaces the marker.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.cache.codecs import JsonDocument
from harness.cache.keys import stable_hash
from harness.cache.store import STORE, CacheStore, Namespace
from harness.config.safe_paths import UnsafePath, inside
from harness.records.results import RecordError, ResultRecord, load_record, record_dir

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun
    from harness.protocols.registry import ProtocolSpec

#: Bump when what enters the case key, or the marker's layout, changes.
CASE_KEY_FORMAT = 1
CASES: Namespace[dict[str, Any]] = Namespace(
    "cases", JsonDocument(), suffix=".finished", key_length=32, stored_event="finished"
)


def case_key(run: CaseRun, spec: ProtocolSpec, config: Any) -> dict[str, Any]:
    """Everything a case's result depends on (its key payload).

    Args:
        run: The case being run (its data is loaded and its backbone identified, not run).
        spec: The case's registered protocol.
        config: The protocol config the case runs with.

    Returns:
        A JSON-like payload; its :func:`~harness.cache.keys.stable_hash` is the case key.
    """
    from harness.features import device_class
    from harness.records.provenance import collect_provenance

    case = run.case
    preset = run.preset
    config_dict = config.to_dict()
    return {
        "format": CASE_KEY_FORMAT,
        "case_id": case.case_id,
        "suite": case.suite,
        "suite_version": case.suite_version,
        "model": case.model.fingerprint(),
        "weights_id": run.backbone().weights_id,
        "dataset": case.dataset.fingerprint(),
        "data": run.data_digests(),
        "protocol": {
            "name": case.protocol,
            "version": spec.version,
            "config": config_dict,
            "preset": preset.identity() if preset else {"name": case.preset},
            "primary_metric": spec.primary_metric,
        },
        "profile": case.profile.to_dict(),
        "seeds": {"protocol": config_dict.get("seed"), "subset": case.profile.seed},
        "device_class": device_class(run.device),
        "precision": run.precision,
        # a new torch / timm / scikit-learn... runs the case again: regression checks of a
        # library upgrade must measure, not reuse
        "libraries": collect_provenance()["versions"],
    }


def run_or_reuse(run: CaseRun, spec: ProtocolSpec, config: Any, store: CacheStore = STORE) -> Path:
    """Run a case and write its record, or reuse the record of the same finished case.

    Args:
        run: The case (``run.rerun`` or ``run.retrain`` forces a new run).
        spec: Its protocol.
        config: The protocol config.
        store: The cache service (locks, markers, events).

    Returns:
        The path of the case's record (the reused one, or the one just written).
    """
    payload = case_key(run, spec, config)
    key = stable_hash(payload, CASES.key_length)
    folder = record_dir(run.results_dir, run.case.suite, run.case.case_id)
    entry = store.entry(CASES, payload, folder=folder, prefix="case-")
    fresh: list[ResultRecord] = []

    def compute() -> dict[str, Any]:
        record = _run_protocol(run, spec, config, key)
        fresh.append(record)
        assert run.record_path is not None  # set by run.store_record
        return {"record": run.record_path.name, "case_id": run.case.case_id}

    def validate(value: dict[str, Any]) -> str | None:
        try:
            found = _stored_record(folder, value, run.case.case_id, key)
        except (RecordError, UnsafePath, TypeError, KeyError) as exc:
            return f"its record cannot be reused: {exc}"
        fresh.append(found[1])
        run.record_path = found[0]
        return None

    lookup = store.get_or_compute(
        CASES,
        entry,
        compute,
        validate=validate,
        # --medxfer-retrain must reach the training store, which a reused case never asks
        refresh=run.rerun or run.retrain,
        describe={"case_id": run.case.case_id, "suite": run.case.suite},
    )
    record = fresh[-1]
    run.outcome = "reused" if lookup.hit else "computed"
    run.record_written = not lookup.hit
    if run.on_record is not None:
        run.on_record(record)
    assert run.record_path is not None
    return run.record_path


def _run_protocol(run: CaseRun, spec: ProtocolSpec, config: Any, key: str) -> ResultRecord:
    """Run the protocol, time it, and store the record (tagged with the case key)."""
    started = time.perf_counter()
    before = run.timings.get("extraction_s", 0.0) + run.timings.get("data_s", 0.0)
    result = spec.run_case(run, config)
    elapsed = time.perf_counter() - started
    after = run.timings.get("extraction_s", 0.0) + run.timings.get("data_s", 0.0)
    run.timings["protocol_s"] = elapsed - (after - before)
    record = run.build_record(result, spec.version, config.to_dict(), spec.primary_metric)
    record.details["case_key"] = key
    run.store_record(record)
    return record


def _stored_record(
    folder: Path, marker: dict[str, Any], case_id: str, key: str
) -> tuple[Path, ResultRecord]:
    """The record a marker names, checked to be this case's under this key.

    Raises:
        RecordError: When the record is missing, unreadable, or another case's or key's.
        UnsafePath: When the marker names a file outside the case's folder.
    """
    path = inside(folder, str(marker["record"]))
    if not path.is_file():
        raise RecordError(f"{path}: the finished case's record is missing")
    record = load_record(path)
    if record.case_id != case_id or record.details.get("case_key") != key:
        raise RecordError(f"{path}: the record was written for another case or key")
    return path, record
