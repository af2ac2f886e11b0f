"""Helpers of the fault-injection suite (``tests/test_faults.py``): run the driver, kill it
(time-based or syscall-exact), and check the invariants of a cache and results folder.

Invariants after a kill and a complete re-run (:func:`check_folders`,
:func:`check_events`, :func:`finished_artefacts`):

* every file under the cache home loads through its namespace's reader (features,
  built datasets, JSON documents, checkpoints, decoded images), or is a known temporary
  (``.tmp-``), a lock, or an event log;
* every result record (``*.json`` under the results folder) validates with
  :func:`harness.records.results.load_record`;
* a finished artefact that existed before the re-run is still there, byte for byte;
* no key is ``hit`` after a ``corrupt`` / ``mismatch`` event without being stored again;
* the re-run's digest equals an uninterrupted run's (done by the tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TESTS = Path(__file__).resolve().parent
DRIVER = TESTS / "fault_driver.py"
RENAME_SYSCALLS = "rename,renameat,renameat2"
#: Counts of the session (printed by ``tests/fault_report.py``).
TALLY: dict[str, int] = {
    "time": 0,
    "syscall_strace": 0,
    "syscall_python": 0,
    "bad_inputs": 0,
    "concurrent": 0,
    "violations": 0,
}


def full_run() -> bool:
    """Whether ``MEDXFER_FAULTS=full`` asks for the full set."""
    return os.environ.get("MEDXFER_FAULTS", "").strip().lower() == "full"


def strace_path() -> str | None:
    """``strace`` when it is installed and can trace here (ptrace may be forbidden)."""
    found = shutil.which("strace")
    if found is None:
        return None
    probe = subprocess.run(
        [found, "-f", "-qq", "-o", os.devnull, sys.executable, "-c", "pass"],
        capture_output=True,
        check=False,
    )
    return found if probe.returncode == 0 else None


@dataclass
class Workdir:
    """One isolated cache home, results folder and card folder for the driver."""

    root: Path

    @property
    def home(self) -> Path:
        """``MEDXFER_HOME``."""
        return self.root / "home"

    @property
    def results(self) -> Path:
        """``MEDXFER_RESULTS``."""
        return self.root / "results"

    def env(self, **extra: str) -> dict[str, str]:
        """The driver's environment."""
        env = dict(os.environ)
        env.update(
            MEDXFER_HOME=str(self.home),
            MEDXFER_RESULTS=str(self.results),
            MEDXFER_CARDS=str(self.root / "cards"),
            PYTHONDONTWRITEBYTECODE="1",
            OMP_NUM_THREADS="1",
        )
        env.pop("MEDXFER_CACHE_READONLY", None)
        env.update(extra)
        return env


def make_workdir(root: Path) -> Workdir:
    """A fresh workdir holding the tiny dataset card (``tests/tiny_cases.py``)."""
    from tiny_cases import tiny_dataset

    tiny_dataset(root / "cards")
    return Workdir(root)


@dataclass
class Outcome:
    """One driver run: killed or not, its digest, and its output."""

    killed: bool
    digest: dict[str, Any] | None
    output: str
    returncode: int
    renames: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _command(op: str, work: Workdir, strace: list[str] | None) -> list[str]:
    command = [sys.executable, "-u", str(DRIVER), op, str(work.root)]
    return (strace or []) + command


def _parse(output: str, returncode: int, killed: bool) -> Outcome:
    digest, renames = None, None
    for line in output.splitlines():
        if line.startswith("DIGEST "):
            digest = json.loads(line[len("DIGEST ") :])
        elif line.startswith("RENAMES "):
            renames = int(line.split()[1])
    return Outcome(killed, digest, output, returncode, renames)


def run_op(op: str, work: Workdir, *, count_renames: bool = False, **env: str) -> Outcome:
    """Run ``op`` to completion (fails the test when it does not complete)."""
    if count_renames:
        env["MEDXFER_FAULT_COUNT_RENAMES"] = "1"
    done = subprocess.run(
        _command(op, work, None), env=work.env(**env), capture_output=True, text=True, check=False
    )
    output = done.stdout + done.stderr
    outcome = _parse(output, done.returncode, done.returncode == -signal.SIGKILL)
    if env.get("MEDXFER_FAULT_RENAME_KILL") is None:
        assert done.returncode == 0 and outcome.digest is not None, output[-4000:]
    return outcome


def timed_op(op: str, work: Workdir, *, count_renames: bool = False) -> tuple[Outcome, float]:
    """Run ``op`` to completion; return it and the seconds from READY to its exit."""
    started: float | None = None
    extra = {"MEDXFER_FAULT_COUNT_RENAMES": "1"} if count_renames else {}
    process = subprocess.Popen(
        _command(op, work, None),
        env=work.env(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.strip() == "READY" and started is None:
            started = time.monotonic()
    process.wait()
    seconds = time.monotonic() - (started or time.monotonic())
    outcome = _parse("".join(lines), process.returncode, False)
    assert process.returncode == 0 and outcome.digest is not None, "".join(lines)[-4000:]
    return outcome, seconds


def kill_after(op: str, work: Workdir, delay: float) -> Outcome:
    """Start ``op``, wait for READY (imports done), sleep ``delay`` seconds, SIGKILL it."""
    process = subprocess.Popen(
        _command(op, work, None),
        env=work.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.strip() == "READY":
            break
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    rest, _ = process.communicate()
    output = "".join(lines) + (rest or "")
    outcome = _parse(output, process.returncode, process.returncode == -signal.SIGKILL)
    if outcome.killed:
        TALLY["time"] += 1
    return outcome


def strace_rename_count(op: str, work: Workdir, strace: str) -> int:
    """How many rename syscalls ``op`` makes in a complete run under ``strace``."""
    log = work.root / "strace-count.txt"
    prefix = [strace, "-f", "-qq", "-o", str(log), "-e", f"trace={RENAME_SYSCALLS}"]
    done = subprocess.run(
        _command(op, work, prefix), env=work.env(), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return sum(1 for line in log.read_text().splitlines() if "rename" in line and "(" in line)


def strace_kill_at(op: str, work: Workdir, strace: str, k: int) -> Outcome:
    """Run ``op`` under ``strace``, which SIGKILLs it on entry to its ``k``-th rename."""
    log = work.root / f"strace-kill-{k}.txt"
    prefix = [
        strace, "-f", "-qq", "-o", str(log),
        "-e", f"trace={RENAME_SYSCALLS}",
        "-e", f"inject={RENAME_SYSCALLS}:signal=KILL:when={k}",
    ]  # fmt: skip
    done = subprocess.run(
        _command(op, work, prefix), env=work.env(), capture_output=True, text=True, check=False
    )
    traced = log.read_text() if log.exists() else ""
    killed = "killed by SIGKILL" in traced
    outcome = _parse(done.stdout + done.stderr + traced, done.returncode, killed)
    if killed:
        TALLY["syscall_strace"] += 1
    return outcome


def python_kill_at(op: str, work: Workdir, k: int) -> Outcome:
    """Run ``op`` with the driver's hook, which SIGKILLs it at its ``k``-th ``os.replace``."""
    outcome = run_op(op, work, MEDXFER_FAULT_RENAME_KILL=str(k))
    if outcome.killed:
        TALLY["syscall_python"] += 1
    return outcome


def seeded_delays(seed: int, count: int, seconds: float) -> list[float]:
    """``count`` kill delays drawn uniformly in (0, 0.85 ``seconds``), reproducibly."""
    rng = random.Random(seed)
    return [rng.uniform(0.02, 0.85) * seconds for _ in range(count)]


# --------------------------------------------------------------------------- invariants


def _key_of(text: str, length: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def _check_cache_file(path: Path) -> str | None:
    """Why a cache file does not load through its namespace's reader (None: it does)."""
    from harness.cache.store import Entry
    from harness.data.npz import read_npz_meta
    from harness.data.prepare import SplitArchive
    from harness.features import FeatureFile

    name = path.name
    parts = path.parts
    try:
        if "features" in parts and name.endswith(".npz"):
            with np.load(path, allow_pickle=False) as payload:
                meta = json.loads(str(payload["meta"]))
            entry = Entry("features", meta["key"], meta["key_text"], path)
            FeatureFile().read(path, entry)
            if not name.endswith(f"-{_key_of(meta['key_text'], 32)}.npz"):
                return "its name does not hold its key"
        elif ("data" in parts or "prepared" in parts) and name.endswith(".npz"):
            meta = read_npz_meta(path)
            if meta is None:
                return "no stored key"
            SplitArchive().read(path, Entry("data", "", meta["key"], path))
        elif name.endswith(".completed.json") or name.endswith(".done.json"):
            document = json.loads(path.read_text(encoding="utf-8"))
            from harness.cache.codecs import JsonDocument

            JsonDocument().read(path, Entry("checkpoints", "", document["key"], path))
            if name.endswith(".completed.json") and _key_of(document["key"], 16) not in name:
                return "its name does not hold its key"
        elif name.endswith(".pt"):
            import torch

            payload = torch.load(path, map_location="cpu", weights_only=True)
            if "key" not in payload or "format" not in payload:
                return "a checkpoint without its key"
        elif "decoded" in parts and name.endswith(".npy"):
            from harness.features_stream import open_resized

            open_resized(path, path.stem)  # rejected copies are made again: never trusted
        elif name.endswith(".parquet"):
            import pyarrow.parquet as pq

            pq.read_table(path)
        elif name.endswith(".json"):
            json.loads(path.read_text(encoding="utf-8"))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def check_folders(work: Workdir) -> list[str]:
    """Every violation of the file invariants in ``work``'s home and results folder."""
    from harness.cache.atomic import is_temporary
    from harness.records.results import RecordError, load_record

    problems: list[str] = []
    for path in sorted(p for p in work.home.rglob("*") if p.is_file()):
        if is_temporary(path) or path.name.endswith(".lock") or path.name == "events.jsonl":
            continue
        problem = _check_cache_file(path)
        if problem is not None:
            problems.append(f"corrupt cache file {path}: {problem}")
    for path in sorted(p for p in work.results.rglob("*.json") if p.is_file()):
        if is_temporary(path) or "cache-events" in path.parts:
            continue
        try:
            load_record(path)
        except RecordError as exc:
            problems.append(f"half-written record {path}: {exc}")
    return problems


def check_events(work: Workdir) -> list[str]:
    """Keys ``hit`` after a ``corrupt`` / ``mismatch`` event with no store in between."""
    from harness.cache.store import read_events

    problems: list[str] = []
    for log in work.home.rglob("events.jsonl"):
        suspect: set[tuple[str, str]] = set()
        for event in read_events(log.parent):
            key = (str(event.get("namespace")), str(event.get("key")))
            kind = event.get("event")
            if kind in ("corrupt", "mismatch"):
                suspect.add(key)
            elif kind == "hit" and key in suspect:
                problems.append(f"{log}: {key} was a hit after a {kind!r} event")
            elif kind not in ("hit", "stale", "corrupt", "mismatch"):
                suspect.discard(key)
    return problems


FINISHED_SUFFIXES = (".npz", ".completed.json")


def finished_artefacts(work: Workdir) -> dict[Path, bytes]:
    """The finished artefacts in ``work`` that pass their reader, with their bytes."""
    from harness.cache.atomic import is_temporary
    from harness.records.results import RecordError, load_record

    found: dict[Path, bytes] = {}
    for path in work.home.rglob("*"):
        if not path.is_file() or is_temporary(path) or not path.name.endswith(FINISHED_SUFFIXES):
            continue
        if _check_cache_file(path) is None:
            found[path] = path.read_bytes()
    for path in work.results.rglob("*.json"):
        if is_temporary(path):
            continue
        try:
            load_record(path)
        except RecordError:
            continue
        found[path] = path.read_bytes()
    return found


def lost_artefacts(before: dict[Path, bytes]) -> list[str]:
    """Finished artefacts of ``before`` that are gone or changed now."""
    problems = []
    for path, content in before.items():
        if not path.is_file():
            problems.append(f"finished artefact lost: {path}")
        elif path.read_bytes() != content:
            problems.append(f"finished artefact rewritten: {path}")
    return problems
