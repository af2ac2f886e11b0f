"""A small content-keyed cache of numpy arrays (e.g. feature means and covariances).

One ``.npz`` file per key under ``<MEDXFER_HOME>/arrays/<namespace>/<hash>.npz``, where
the hash is :func:`harness.config.cards.stable_hash` of the caller's key payload. Files are
written atomically (temporary name, fsync, rename) and a file lock per key makes
concurrent pytest-xdist workers wait for one computation instead of repeating it. The
key payload is stored in the file as JSON and checked on load; an unreadable file or
one whose payload does not match is recomputed, never trusted.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from harness.cache.atomic import TMP_INFIX, write_with
from harness.config.cards import stable_hash
from harness.config.paths import home

LOG = logging.getLogger("medxfer.arraycache")

#: Name of the entry that holds the key payload (JSON) inside each file.
KEY_ENTRY = "__key__"

_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]+")
_ARRAY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Keyword names of ``np.savez`` itself: arrays cannot be passed under these names.
_RESERVED = frozenset({KEY_ENTRY, "file", "allow_pickle"})


def cache_path(namespace: str, key_payload: Mapping[str, Any]) -> Path:
    """The file that holds (or would hold) the arrays of one key.

    Args:
        namespace: Sub-folder name (letters, digits, ``_``, ``-``, ``.``).
        key_payload: JSON-serialisable description of everything the arrays depend on.

    Returns:
        ``home() / "arrays" / namespace / f"{stable_hash(key_payload, 32)}.npz"``.

    Raises:
        ValueError: On a namespace that is not a plain folder name.
    """
    if not _NAMESPACE.fullmatch(namespace) or namespace in (".", ".."):
        raise ValueError(f"array cache namespace must be a plain folder name, got {namespace!r}")
    return home() / "arrays" / namespace / f"{stable_hash(dict(key_payload), 32)}.npz"


def cached_arrays(
    namespace: str,
    key_payload: Mapping[str, Any],
    compute: Callable[[], Mapping[str, np.ndarray]],
) -> tuple[dict[str, np.ndarray], bool]:
    """Return the arrays of a key from the cache, or compute and store them once.

    Args:
        namespace: Sub-folder of the cache (e.g. ``"invariance-stats"``).
        key_payload: JSON-serialisable description of everything the arrays depend on.
        compute: Builds the arrays (name -> array; numeric or string dtypes, no objects);
            called only on a miss, under the key's file lock.

    Returns:
        The arrays (name -> array) and whether they came from the cache.

    Raises:
        ValueError: On a bad namespace, or when ``compute`` returns something that cannot
            be stored (not a mapping, a reserved or non-string name, an object array).
    """
    path = cache_path(namespace, key_payload)
    key_json = _key_json(key_payload)
    cached = _load(path, key_json)
    if cached is not None:
        return cached, True
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        # Another process may have written it while this one waited for the lock.
        cached = _load(path, key_json)
        if cached is not None:
            return cached, True
        _remove_stale_temporaries(path)
        arrays = _check_arrays(compute(), namespace)
        payload = {**arrays, KEY_ENTRY: np.array(key_json)}
        write_with(path, lambda handle: np.savez(handle, **payload))
        LOG.info("array cache: stored %s", path)
        return arrays, False


def _key_json(key_payload: Mapping[str, Any]) -> str:
    return json.dumps(dict(key_payload), sort_keys=True, default=str)


def _check_arrays(arrays: Any, namespace: str) -> dict[str, np.ndarray]:
    if not isinstance(arrays, Mapping):
        raise ValueError(
            f"array cache {namespace!r}: compute() must return a mapping of name -> array, "
            f"got {type(arrays).__name__}"
        )
    out: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not _ARRAY_NAME.fullmatch(name) or name in _RESERVED:
            raise ValueError(
                f"array cache {namespace!r}: invalid array name {name!r} (use an identifier "
                f"other than {', '.join(sorted(_RESERVED))})"
            )
        array = np.asarray(value)
        if array.dtype == object:
            raise ValueError(
                f"array cache {namespace!r}: array {name!r} has dtype object, which .npz "
                "cannot store without pickle"
            )
        out[name] = array
    return out


def _load(path: Path, key_json: str) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as payload:
            arrays = {name: payload[name] for name in payload.files}
    except Exception as exc:  # a corrupt file is recomputed, never trusted
        LOG.warning("array cache file %s is unreadable (%s); computing again", path, exc)
        return None
    stored_key = arrays.pop(KEY_ENTRY, None)
    if stored_key is None or str(stored_key) != key_json:
        LOG.warning("array cache file %s does not hold its key's arrays; computing again", path)
        return None
    return arrays


def _remove_stale_temporaries(path: Path) -> None:
    # Only the lock holder writes this key, so a temporary beside it was left by a
    # writer that was killed (SIGKILL skips the cleanup in atomic_path).
    for stale in path.parent.glob(f"{path.name}{TMP_INFIX}*"):
        stale.unlink(missing_ok=True)
        LOG.warning("removed %s, left by an interrupted write", stale)
