"""The report's provenance footer: versions, hardware, commits, time and cache use."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd

from harness.config.vocabulary import VERSIONED_PACKAGES
from harness.report.format import (
    MISSING,
    column_values,
    count_text,
    is_missing,
    text_or_none,
    total,
    truthy,
)

_VERSION_ORDER = ("python", "medxfer", *VERSIONED_PACKAGES, "cuda")


RUNS_CHOICE_TEXT = {
    "latest": "the newest run of each case",
    "best": "the run with the highest primary value of each case",
    "mean": "the mean over the runs of each case (same protocol and dataset versions)",
}


def provenance(frame: pd.DataFrame, runs: str = "latest") -> str:
    """The ``## Provenance`` footer of the prepared report frame.

    Lists the suites and their versions, profiles, presets per protocol, the run
    selection, the time range of the runs (UTC, from the records, so the text does not
    change when the report is regenerated), library versions (medxfer's included),
    hardware, git commits, and time and cache use summed over the rows.
    """
    lines = ["## Provenance", ""]
    suites = sorted(set(frame["suite"]))
    suite_versions = (
        {
            name: sorted({int(v) for v in group["suite_version"] if not is_missing(v)})
            for name, group in frame.groupby("suite")
        }
        if "suite_version" in frame
        else {}
    )
    lines.append(
        "- Suite: "
        + ", ".join(
            name + ("" if not suite_versions.get(name) else
                    " v" + "/".join(map(str, suite_versions[name])))
            for name in suites
        )
        + f"; profile: {', '.join(sorted(set(frame['profile'])))}"
    )  # fmt: skip
    lines.append(f"- Presets: {_presets(frame)}")
    lines.append(f"- Runs shown: {RUNS_CHOICE_TEXT.get(runs, runs)}; {_time_range(frame)}")
    lines.append(f"- Versions: {_version_summary(frame)}")
    hardware = Counter(_hardware_summary(value) for value in column_values(frame, "hardware"))
    for summary, count in sorted(hardware.items()):
        lines.append(f"- Hardware: {summary} ({count_text(count, 'record')})")
    commits: Counter[str] = Counter()
    dirty_commits: set[str] = set()
    dirty_flags = column_values(frame, "git_dirty")
    for commit, dirty in zip(frame["git_commit"], dirty_flags, strict=True):
        name = text_or_none(commit)
        label = "unknown (not a git checkout)" if name is None else f"`{name}`"
        commits[label] += 1
        if truthy(dirty):
            dirty_commits.add(label)
    for label, count in sorted(commits.items()):
        note = ", with uncommitted changes" if label in dirty_commits else ""
        lines.append(f"- Git commit: {label} ({count_text(count, 'record')}{note})")
    extraction = total(column_values(frame, "extraction_s"))
    protocol = total(column_values(frame, "protocol_s"))
    hits = int(total(column_values(frame, "feature_cache_hits")))
    misses = int(total(column_values(frame, "feature_cache_misses")))
    lines.append(
        f"- Time summed over the {count_text(len(frame), 'record')}: feature extraction "
        f"{extraction:.1f} s, protocols {protocol:.1f} s; feature cache: "
        f"{count_text(hits, 'hit')}, {count_text(misses, 'miss', 'misses')}."
    )
    return "\n".join(lines)


def _presets(frame: pd.DataFrame) -> str:
    presets = frame["preset"] if "preset" in frame else pd.Series("medxfer", frame.index)
    found: dict[str, set[str]] = {}
    for protocol, preset in zip(frame["protocol"], presets, strict=True):
        found.setdefault(str(protocol), set()).add(text_or_none(preset) or "medxfer")
    return ", ".join(f"{p}={' / '.join(sorted(found[p]))}" for p in sorted(found))


def _time_range(frame: pd.DataFrame) -> str:
    first = frame["_first_when"] if "_first_when" in frame else frame["_when"]
    last = frame["_last_when"] if "_last_when" in frame else frame["_when"]
    start, end = min(first), max(last)
    text = "%Y-%m-%d %H:%M:%S"
    runs = frame["_runs"].sum() if "_runs" in frame else len(frame)
    return (
        f"{count_text(int(runs), 'run')} of {count_text(len(frame), 'case')} made from "
        f"{start.strftime(text)} to {end.strftime(text)} UTC"
    )


def _version_summary(frame: pd.DataFrame) -> str:
    seen: dict[str, set[str]] = {}
    for versions in column_values(frame, "versions"):
        if not isinstance(versions, dict):
            continue
        for key, value in versions.items():
            if value is not None:
                seen.setdefault(str(key), set()).add(str(value))
    if not seen:
        return MISSING
    keys = [key for key in _VERSION_ORDER if key in seen]
    keys += sorted(set(seen) - set(keys))
    return ", ".join(f"{key} {' / '.join(sorted(seen[key]))}" for key in keys)


def _hardware_summary(hardware: Any) -> str:
    if not isinstance(hardware, dict) or not hardware:
        return "not recorded"
    parts = [str(hardware.get("platform") or hardware.get("machine") or "unknown platform")]
    if hardware.get("cpu_count"):
        parts.append(f"{hardware['cpu_count']} CPUs")
    if hardware.get("torch_threads"):
        parts.append(f"{hardware['torch_threads']} torch threads")
    if hardware.get("memory_bytes"):
        parts.append(f"{hardware['memory_bytes'] / 2**30:.0f} GiB RAM")
    device = hardware.get("cuda_device") if hardware.get("cuda_available") else None
    parts.append(f"GPU {device}" if device else "no GPU")
    return ", ".join(parts)
