"""Pytest hooks of the fault-injection suite: print what it tried at the end of the session.

Loaded by ``tests/conftest.py`` so that the controller of an xdist run has them too. The
tests fill :data:`fault_tools.TALLY` in whichever process runs them; each process adds
its counts to a JSON-lines file named in ``$MEDXFER_FAULT_TALLY`` (set by the controller
before the workers start, so they inherit it), and the controller sums the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from fault_tools import TALLY

TALLY_ENV = "MEDXFER_FAULT_TALLY"


def pytest_configure(config: Any) -> None:
    """On the controller: name the file every process adds its counts to."""
    if not hasattr(config, "workerinput") and TALLY_ENV not in os.environ:
        handle, path = tempfile.mkstemp(prefix="medxfer-fault-tally-", suffix=".jsonl")
        os.close(handle)
        os.environ[TALLY_ENV] = path
        config._medxfer_fault_tally = path  # removed at unconfigure


def pytest_sessionfinish(session: Any) -> None:
    """Add this process's counts to the shared file (workers and controller alike)."""
    path = os.environ.get(TALLY_ENV)
    if path and any(TALLY.values()):
        with open(path, "a") as handle:
            handle.write(json.dumps(TALLY) + "\n")


def pytest_unconfigure(config: Any) -> None:
    """Remove the controller's count file."""
    path = getattr(config, "_medxfer_fault_tally", None)
    if path:
        Path(path).unlink(missing_ok=True)
        os.environ.pop(TALLY_ENV, None)


def _session_tally() -> dict[str, int]:
    path = os.environ.get(TALLY_ENV)
    total = dict.fromkeys(TALLY, 0)
    lines = Path(path).read_text().splitlines() if path and Path(path).is_file() else []
    for line in lines:
        for key, value in json.loads(line).items():
            total[key] = total.get(key, 0) + int(value)
    return total


def summary_line(tally: dict[str, int] | None = None) -> str:
    """``fault injection: N kills (T time-based, S syscall-exact), M bad inputs, ...``."""
    counts = TALLY if tally is None else tally
    syscall = counts["syscall_strace"] + counts["syscall_python"]
    kills = counts["time"] + syscall
    modes = []
    if counts["syscall_strace"]:
        modes.append(f"{counts['syscall_strace']} by strace")
    if counts["syscall_python"]:
        modes.append(f"{counts['syscall_python']} by the os.replace hook")
    how = f" [{', '.join(modes)}]" if modes else ""
    return (
        f"fault injection: {kills} kills ({counts['time']} time-based, {syscall} "
        f"syscall-exact{how}), {counts['bad_inputs']} bad inputs, {counts['concurrent']} "
        f"concurrent sessions; {counts['violations']} violations"
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the summary line when any fault test ran (in any process)."""
    tally = _session_tally()
    if any(tally.values()):
        terminalreporter.write_sep("-", "fault injection")
        terminalreporter.write_line(summary_line(tally))
