"""Cache locks: one holder per key across threads, processes and hosts, holder recorded.

A lock is an exclusive ``flock`` on ``<file>.lock``. The holder writes who it is
(``pid``, ``host``, ``time``, ``argv``) into the lock file once it holds it, and clears it
on release. A waiter polls; it logs who holds the lock when it starts waiting and then
every :data:`LOG_EVERY_S` seconds, and gives up after :func:`lock_timeout` seconds
(``MEDXFER_LOCK_TIMEOUT``, default :data:`DEFAULT_TIMEOUT_S`) with :class:`LockTimeout`
naming the lock file and its holder.

The kernel releases an ``flock`` when the last descriptor of the file closes, so a killed
holder frees its lock by itself. A child forked by the holder (a data-loader worker)
inherits the descriptor, though, and keeps the lock held after the holder died. A waiter
that finds the recorded holder's pid dead on its own host therefore breaks the lock:
under a short guard lock (``.medxfer-lock-break`` in the same folder) it removes the lock
file, if that is still the file it waited on, and every process moves to a new file.
Holders on other hosts are never broken (their pids cannot be checked): they are waited
for until the timeout.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOG = logging.getLogger("medxfer.cache")
TIMEOUT_ENV = "MEDXFER_LOCK_TIMEOUT"
#: Seconds a waiter waits by default: long enough for a large extraction on a CPU.
DEFAULT_TIMEOUT_S = 3 * 3600.0
#: A waiter logs the holder at once and then every this many seconds.
LOG_EVERY_S = 60.0
BREAK_GUARD = ".medxfer-lock-break"
_POLL_S = (0.02, 0.5)  # first and longest sleep between attempts

_HELD: dict[str, tuple[int, int, int]] = {}  # path -> (thread id, fd, depth)
_HELD_GUARD = threading.Lock()


class LockTimeout(TimeoutError):
    """Raised when a cache lock stays held longer than the waiter's timeout."""


def lock_timeout() -> float:
    """The waiter's timeout in seconds: ``MEDXFER_LOCK_TIMEOUT`` or :data:`DEFAULT_TIMEOUT_S`.

    Raises:
        ValueError: Naming the variable when it is not a non-negative number.
    """
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds >= 0")
    return value


def this_host() -> str:
    """The host name recorded with locks and temporaries."""
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Return True when a process ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


@contextlib.contextmanager
def hold(path: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the lock file ``path`` for the block (re-entrant within one thread).

    Args:
        path: The lock file (created if missing).
        timeout: Seconds to wait; None reads :func:`lock_timeout`.

    Raises:
        LockTimeout: When the lock stays held longer than ``timeout``, naming the lock
            file and its recorded holder.
    """
    key = str(path)
    me = threading.get_ident()
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None and held[0] == me:
            _HELD[key] = (me, held[1], held[2] + 1)
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _HELD_GUARD:
                owner, fd, depth = _HELD[key]
                _HELD[key] = (owner, fd, depth - 1)
        return
    fd = _acquire(Path(path), lock_timeout() if timeout is None else timeout)
    with _HELD_GUARD:
        _HELD[key] = (me, fd, 1)
    try:
        yield
    finally:
        with _HELD_GUARD:
            del _HELD[key]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_holder(path: Path) -> dict[str, Any] | None:
    """The holder recorded in a lock file, or None (no file, not held, being written)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return None
    return _parse(text)


def describe_holder(holder: dict[str, Any] | None) -> str:
    """A holder as words: pid, host, since when, and whether it is stopped or dead."""
    if not holder:
        return "an unknown holder (none recorded)"
    pid, host = holder.get("pid"), holder.get("host")
    since = holder.get("time")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
        if isinstance(since, (int, float))
        else "?"
    )
    state = ""
    if host == this_host() and isinstance(pid, int):
        state = " (stopped)" if _stopped(pid) else "" if pid_alive(pid) else " (dead)"
    return f"pid {pid}{state} on host {host}, holding it since {when}"


def _acquire(path: Path, timeout: float) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    box = [_open(path)]  # the descriptor in use: closed on any error, kept on success
    try:
        return _wait_for(path, timeout, box)
    except BaseException:
        if box[0] >= 0:
            os.close(box[0])
        raise


def _wait_for(path: Path, timeout: float, box: list[int]) -> int:
    started = time.monotonic()
    next_log = started
    sleep = _POLL_S[0]
    while True:
        fd = box[0]
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            if _same_file(path, fd):
                _record(fd)
                return fd
            fcntl.flock(fd, fcntl.LOCK_UN)  # the file was broken away under us: retry anew
            _reopen(path, box)
            continue
        if not _same_file(path, fd):
            _reopen(path, box)
            continue
        holder = _parse(_pread(fd))
        if _dead_here(holder) and _break(path, fd, holder):
            _reopen(path, box)
            continue
        now = time.monotonic()
        waited = now - started
        if waited >= timeout:
            raise LockTimeout(
                f"cache lock {path} is still held after {waited:.0f} s by "
                f"{describe_holder(holder)}; gave up ({TIMEOUT_ENV}={timeout:g} s). If that "
                "process is stopped or hung, end it (or remove the lock file once it is gone)"
            )
        if now >= next_log:
            LOG.warning(
                "waiting for cache lock %s, held by %s (giving up after %g s)",
                path,
                describe_holder(holder),
                timeout,
            )
            next_log = now + LOG_EVERY_S
        time.sleep(min(sleep, max(timeout - waited, 0.0)))
        sleep = min(sleep * 2, _POLL_S[1])


def _reopen(path: Path, box: list[int]) -> None:
    os.close(box[0])
    box[0] = -1  # never closed twice: the number may be reused by another thread's file
    box[0] = _open(path)


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)


def _same_file(path: Path, fd: int) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)


def _record(fd: int) -> None:
    holder = {
        "pid": os.getpid(),
        "host": this_host(),
        "time": time.time(),
        "argv": " ".join(sys.argv)[:200],
    }
    data = json.dumps(holder).encode("utf-8")
    with contextlib.suppress(OSError):  # the record helps waiters; the lock works without it
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)


def _pread(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _parse(text: str) -> dict[str, Any] | None:
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return None
    return holder if isinstance(holder, dict) else None


def _dead_here(holder: dict[str, Any] | None) -> bool:
    if not holder or holder.get("host") != this_host():
        return False
    pid = holder.get("pid")
    return isinstance(pid, int) and pid != os.getpid() and not pid_alive(pid)


def _stopped(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # the state follows the parenthesised command name, which may itself hold spaces
    return stat.rsplit(")", 1)[-1].split()[:1] in (["T"], ["t"])


def _break(path: Path, fd: int, holder: dict[str, Any] | None) -> bool:
    """Remove ``path`` if it is still ``fd``'s file and its recorded holder is dead."""
    guard = _open(path.parent / BREAK_GUARD)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not _same_file(path, fd) or _parse(_pread(fd)) != holder or not _dead_here(holder):
            return False
        path.unlink()
        LOG.warning(
            "broke cache lock %s: its holder %s is dead and the lock was still held "
            "(by a child process that inherited it)",
            path,
            describe_holder(holder),
        )
        return True
    finally:
        os.close(guard)
