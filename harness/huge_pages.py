"""Large CPU tensors in transparent huge pages (PyTorch's ``THP_MEM_ALLOC_ENABLE``).

PyTorch's CPU allocator (c10 ``alloc_cpu``) takes every tensor from ``posix_memalign``.
glibc serves a large request with a fresh ``mmap`` and unmaps it again on free, so every
batch's activations (tens to hundreds of MB at 64 images) are new pages that the kernel
faults in and zeroes 4 KiB at a time. With ``THP_MEM_ALLOC_ENABLE=1``, c10 page-aligns
its allocations and marks those of 2 MiB and more ``madvise(MADV_HUGEPAGE)``, so they
fault in 2 MiB at a time. Only where tensors live changes, not what is computed:
features and metrics are the same bits (``docs/performance.md``, "Transparent huge
pages for CPU tensors").

c10 reads the variable once, at its first CPU allocation, so medxfer's pytest plugin and
command line set it when they configure, before any case allocates; xdist workers and
``medxfer calibrate``'s child processes inherit it. A value the user set is kept
(``THP_MEM_ALLOC_ENABLE=0`` turns it off). It takes effect where the kernel's
``/sys/kernel/mm/transparent_hugepage/enabled`` is ``always`` or ``madvise``; every
record's provenance names both.
"""

from __future__ import annotations

import os
from pathlib import Path

HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"
KERNEL_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def request_huge_pages() -> str:
    """Ask PyTorch to back large CPU tensors with huge pages, unless the user chose already.

    Returns:
        The value of ``THP_MEM_ALLOC_ENABLE`` from now on (the user's, or ``"1"``).
    """
    return os.environ.setdefault(HUGE_PAGES_ENV, "1")


def huge_pages_state() -> dict[str, str | None]:
    """What this process asked for and what the kernel allows, for a record's provenance.

    Returns:
        ``{"THP_MEM_ALLOC_ENABLE": value or None, "kernel": the bracketed mode of
        transparent_hugepage/enabled (``always``, ``madvise`` or ``never``), or None where
        the file is missing (not Linux, or no THP support)}``.
    """
    try:
        text = KERNEL_SETTING.read_text(encoding="utf-8")
    except OSError:
        kernel = None
    else:
        chosen = [word for word in text.split() if word.startswith("[")]
        kernel = chosen[0].strip("[]") if chosen else None
    return {HUGE_PAGES_ENV: os.environ.get(HUGE_PAGES_ENV), "kernel": kernel}
