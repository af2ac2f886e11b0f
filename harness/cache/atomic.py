"""Atomic file writes: write to a temporary name in the same folder, fsync, rename.

A reader (or a re-run after SIGKILL) sees either the old complete file or the new
complete file, never a partial one. Stray temporaries carry a ``.tmp-`` infix and
are ignored by every reader.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

TMP_INFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    Args:
        target: the final file path.

    Yields:
        A path to write to. If the block raises, the temporary file is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f"{target.name}{TMP_INFIX}", suffix=target.suffix, dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; final files get normal permissions
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


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
    """Return True for a leftover temporary file from an interrupted write."""
    return TMP_INFIX in Path(path).name


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
