"""The cache's event logs: one ``events.jsonl`` per namespace, one JSON object a line.

Each event is one short ``O_APPEND`` write, so lines from concurrent workers do not
interleave. While the cache home is read-only, events go to the results folder
(:func:`events_folder_read_only`) instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.config.paths import results_dir

EVENTS_FILE = "events.jsonl"


def events_folder_read_only(namespace: str) -> Path:
    """Where a namespace's events go while the cache home is read-only (see module doc)."""
    return results_dir() / "cache-events" / namespace


def append_event(path: Path, line: str) -> None:
    """Append one JSON line to an event log (the folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # One short O_APPEND write per event: lines from concurrent workers do not interleave.
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def read_events(folder: Path) -> list[dict[str, Any]]:
    """Return a namespace's event log (``folder/events.jsonl``), oldest first.

    A line cut short by a kill mid-write is skipped.
    """
    path = Path(folder) / EVENTS_FILE
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events
