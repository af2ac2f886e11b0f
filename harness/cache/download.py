"""Streaming a URL to a file with a progress bar, hashing it on the way.

Used for model weights (:mod:`harness.zoo.sources`) and released dataset archives
(:mod:`harness.data.acquire`); callers write into a temporary path
(:func:`harness.cache.atomic.atomic_path`) and keep the file only when its digest matches.
"""

from __future__ import annotations

import hashlib
import urllib.request
from collections.abc import Iterable
from pathlib import Path

CHUNK_BYTES = 1 << 20


def stream(
    url: str, destination: Path, label: str, timeout_s: float, algorithms: Iterable[str]
) -> dict[str, str]:
    """Copy ``url`` to ``destination`` in chunks with a progress bar.

    Returns:
        The hex digest of the copied bytes for each of ``algorithms`` (``hashlib`` names).
    """
    from tqdm.auto import tqdm

    digests = {name: hashlib.new(name) for name in algorithms}
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with (
            open(destination, "wb") as out,
            tqdm(total=total, desc=label, unit="B", unit_scale=True, disable=None) as bar,
        ):
            for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                out.write(chunk)
                for digest in digests.values():
                    digest.update(chunk)
                bar.update(len(chunk))
    return {name: digest.hexdigest() for name, digest in digests.items()}


def file_digests(path: Path, algorithms: Iterable[str]) -> dict[str, str]:
    """The hex digest of a file for each of ``algorithms``, read in chunks."""
    digests = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            for digest in digests.values():
                digest.update(chunk)
    return {name: digest.hexdigest() for name, digest in digests.items()}
