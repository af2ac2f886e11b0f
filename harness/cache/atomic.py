"""Atomic file writes: write to a temporary name in the same folder, fsync, rename.

A reader (or a re-run after SIGKILL) sees either the old complete file or the new
complete file, never a partial one. Temporaries carry a ``.tmp-`` infix (every reader
ignores them) followed by the writer's pid and host, so that
:func:`remove_stale_temporaries` can tell a killed writer's leftovers from a live
writer's file. A failed write (a full disk: ``ENOSPC``) raises an :class:`OSError`
that names the file being written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from harness.cache.locks import pid_alive, this_host

TMP_INFIX = ".tmp-"
#: A temporary older than this (seconds) whose writer is not alive is stale.
STALE_AFTER_S = 3600.0
_HOST_CHARS = re.compile(r"[^A-Za-z0-9-]")
_WRITER = re.compile(r"\.tmp-p(?P<pid>\d+)\.(?P<host>[A-Za-z0-9-]*)\.")


def _host_tag() -> str:
    return _HOST_CHARS.sub("-", this_host())[:40]


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    Args:
        target: the final file path.

    Yields:
        A path to write to. If the block raises, the temporary file is removed.

    Raises:
        OSError: When writing fails (e.g. ``ENOSPC``, a full disk); its message names
            ``target`` and its errno is kept.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f"{target.name}{TMP_INFIX}p{os.getpid()}.{_host_tag()}.",
            suffix=target.suffix,
            dir=target.parent,
        )
    except OSError as exc:
        raise _naming(exc, target, None) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; final files get normal permissions
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        raise _naming(exc, target, tmp) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _naming(exc: OSError, target: Path, tmp: Path | None) -> OSError:
    """``exc`` itself when it names a file of its own or is not about a file (a network
    error raised while producing the content), else the same error naming ``target``."""
    if exc.filename is not None and (tmp is None or str(exc.filename) != str(tmp)):
        return exc
    if exc.errno is None:  # urllib's URLError, socket errors: the source failed, not the disk
        return exc
    # OSError(errno, ...) builds the matching subclass (PermissionError...); errno is kept
    return OSError(exc.errno, f"{exc.strerror or exc} (writing {target})", str(target))


def write_with(target: Path, writer: Callable[[IO[bytes]], None]) -> None:
    """Atomically write ``target`` with ``writer``, which receives a binary file object."""
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        writer(handle)


def write_text(target: Path, text: str) -> None:
    """Atomically write a text file (UTF-8)."""
    write_with(target, lambda handle: handle.write(text.encode("utf-8")))


def write_json(target: Path, payload: Any) -> None:
    """Atomically write ``payload`` as indented JSON."""
    write_text(target, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_temporary(path: Path) -> bool:
    """Return True for a temporary file of a write (in progress or interrupted)."""
    return TMP_INFIX in Path(path).name


def writer_alive(path: Path) -> bool:
    """Return True when a temporary's writer is a live process on this host.

    Temporaries of other hosts, and of older versions (no pid in the name), count as
    not alive: only their age protects them.
    """
    found = _WRITER.search(Path(path).name)
    if found is None or found["host"] != _host_tag():
        return False
    pid = int(found["pid"])
    return pid == os.getpid() or pid_alive(pid)


def remove_stale_temporaries(
    folder: Path, *, depth: int = 0, max_age_s: float = STALE_AFTER_S
) -> list[Path]:
    """Delete temporaries under ``folder`` that are stale: old and not being written.

    A temporary is stale when it is older than ``max_age_s`` (modification time) and its
    writer is not a live process on this host (:func:`writer_alive`). Files that vanish
    or cannot be deleted (a read-only folder) are left alone.

    Args:
        folder: Where to look (a missing folder has none).
        depth: How many levels of sub-folders to look into as well.
        max_age_s: Age in seconds after which a temporary without a live writer is stale.

    Returns:
        The temporaries deleted.
    """
    removed: list[Path] = []
    now = time.time()
    try:
        children = list(os.scandir(folder))
    except OSError:
        return removed
    for child in children:
        try:
            if child.is_dir(follow_symlinks=False):
                if depth > 0:
                    removed += remove_stale_temporaries(
                        Path(child.path), depth=depth - 1, max_age_s=max_age_s
                    )
                continue
            if TMP_INFIX not in child.name or not child.is_file(follow_symlinks=False):
                continue
            if now - child.stat(follow_symlinks=False).st_mtime < max_age_s:
                continue
            if writer_alive(Path(child.path)):
                continue
            os.unlink(child.path)
        except OSError:
            continue
        removed.append(Path(child.path))
    return removed


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
