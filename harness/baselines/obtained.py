"""Obtained entries: a measured record turned into an expected entry, and ``--medxfer-regen``.

A failing, stale or missing case writes its measured entry beside the expected file
(``<suite>.yaml.obtained/<case>.yaml``, pytest-regressions' convention); regeneration
merges those entries into the file at the end of the session.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import yaml

from harness.baselines.check import record_device
from harness.baselines.expected import Expectation, ExpectedFile, obtained_dir, parse_entry
from harness.baselines.tolerance import TOLERANCE_RULE
from harness.cache.atomic import write_text
from harness.config.card_fields import safe_load_yaml
from harness.config.vocabulary import interval_name


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
    preset = record["protocol"].get("preset") or {}
    return Expectation(
        case_id=record["case_id"],
        preset=str(preset.get("name", "medxfer")),
        preset_version=preset.get("version"),
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
        raw = safe_load_yaml(path.read_text(encoding="utf-8")) or {}
        for case_id, entry in raw.items():
            expected.entries[case_id] = parse_entry(case_id, entry, str(path), expected.device)
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
