"""Cache keys: the one content hash of every cache, and the digests that enter keys.

A key payload is a JSON-like description of everything a cached value depends on
(names, versions, settings). :func:`key_text` writes it canonically (sorted keys); the
key is a prefix of the sha256 of that text (:func:`stable_hash`). NumPy arrays may
appear in a payload: they enter as their shape, dtype and the sha256 of their bytes
(:func:`array_digest`), never as their (abbreviated) printed form.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from harness.cache.mapped import release_pages

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_FILE_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """Return the sha256 of a file's bytes, memoised per (path, size, mtime, inode, ctime).

    Args:
        path: The file.

    Returns:
        64 hex digits.
    """
    stat = Path(path).stat()
    # inode and ctime too: a file replaced by one of the same size and mtime is hashed again
    memo = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)
    if memo not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _FILE_DIGESTS[memo] = digest.hexdigest()
    return _FILE_DIGESTS[memo]


def module_sha256(module: Any) -> str:
    """Return the sha256 of a torch module's state-dict names and tensor bytes.

    Identical weights give equal digests, whatever the tensors' dtype or device.

    Args:
        module: A ``torch.nn.Module``.

    Returns:
        64 hex digits.
    """
    import torch

    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def array_digest(array: np.ndarray) -> str:
    """Return the sha256 of an array's shape, dtype and bytes (C order).

    Args:
        array: Any NumPy array.

    Returns:
        64 hex digits.
    """
    digest = hashlib.sha256(f"{array.shape}|{array.dtype}".encode())
    if isinstance(array, np.memmap) and array.ndim and array.size:
        # a memory map (a prepared split's images) is hashed in blocks of rows whose pages
        # are dropped as the hash moves on, so it is never copied or left resident whole
        step = max(1, _DIGEST_BLOCK // max(1, array.nbytes // len(array)))
        for start in range(0, len(array), step):
            digest.update(np.ascontiguousarray(array[start : start + step]).tobytes())
            release_pages(array)
        return digest.hexdigest()
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


_DIGEST_BLOCK = 64 << 20


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """Return the sha256 of named arrays: each name with its :func:`array_digest`, by name.

    The content checksum that cache files of arrays store and check on load.

    Args:
        arrays: Name -> array.

    Returns:
        64 hex digits.
    """
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(f"{name}={array_digest(np.asarray(arrays[name]))};".encode())
    return digest.hexdigest()


def json_digest(value: Any) -> str:
    """Return the sha256 of a JSON value's canonical text (sorted keys, no spaces).

    Args:
        value: A value as ``json.loads`` returns it.

    Returns:
        64 hex digits.
    """
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {
            "ndarray_sha256": array_digest(value),
            "shape": list(value.shape),
            "dtype": value.dtype.str,
        }
    return str(value)


def key_text(payload: Any) -> str:
    """Return the canonical JSON text of a key payload (sorted keys, arrays as digests).

    Args:
        payload: JSON-serialisable values, NumPy arrays, or objects whose ``str`` names them.

    Returns:
        The text whose hash is the key; cache files store it to be checked on load.
    """
    return json.dumps(payload, sort_keys=True, default=_json_default)


def stable_hash(payload: Any, length: int = 16) -> str:
    """Return a short sha256 of a key payload (key order independent).

    Args:
        payload: See :func:`key_text`.
        length: Hex digits kept.

    Returns:
        The first ``length`` hex digits of the sha256 of :func:`key_text`.
    """
    return hashlib.sha256(key_text(payload).encode("utf-8")).hexdigest()[:length]


def safe_name(text: str) -> str:
    """Return ``text`` as one plain folder name (``/`` as ``__``, other odd characters ``_``)."""
    return _UNSAFE.sub("_", text.replace("/", "__"))
