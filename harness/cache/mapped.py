"""Memory maps that stream: dropping the pages a reader or writer has moved past."""

from __future__ import annotations

import contextlib
import mmap

import numpy as np


def release_pages(array: np.ndarray) -> None:
    """Drop the resident pages of a shared memory map from this process (not from disk).

    Reading or writing a memory map makes its pages count towards the process's RSS
    until the map is closed; dropping them as a stream moves on keeps peak memory flat
    however many rows there are. Written pages are flushed first; a copy-on-write map
    (mode ``c``) is left alone, since dropping its pages would lose the changes. Anything
    that is not a memory map is left alone.
    """
    handle = getattr(array, "_mmap", None)
    if handle is None or getattr(array, "mode", "c") == "c":
        return
    if getattr(array, "mode", "r") != "r":
        array.flush()
    # without madvise (another platform) the pages simply stay resident
    with contextlib.suppress(AttributeError, OSError, ValueError):
        handle.madvise(mmap.MADV_DONTNEED)
