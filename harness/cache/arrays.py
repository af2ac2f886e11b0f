"""The statistics cache: NumPy arrays derived from features (e.g. means and covariances).

A thin namespace of the cache service (:mod:`harness.cache.store`): one ``.npz`` file
per key under ``<MEDXFER_HOME>/arrays/<namespace>/<key>.npz``, the key payload's text
and the arrays' sha256 stored inside and checked on load
(:class:`~harness.cache.codecs.NpzArrays`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from harness.cache.codecs import NpzArrays, check_arrays
from harness.cache.store import STORE, CacheStore, Entry, Namespace

_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]+")

ARRAYS: Namespace[Mapping[str, np.ndarray]] = Namespace("arrays", NpzArrays(), suffix=".npz")


def array_entry(namespace: str, key_payload: Mapping[str, Any], store: CacheStore = STORE) -> Entry:
    """The entry (key and file) of one key's arrays.

    Args:
        namespace: Sub-folder of the statistics cache (letters, digits, ``_``, ``-``, ``.``).
        key_payload: Everything the arrays depend on (arrays in it enter as digests).
        store: The cache store.

    Raises:
        ValueError: On a namespace that is not a plain folder name.
    """
    if not _NAMESPACE.fullmatch(namespace) or namespace in (".", ".."):
        raise ValueError(f"array cache namespace must be a plain folder name, got {namespace!r}")
    return store.entry(ARRAYS, dict(key_payload), subfolders=(namespace,))


def cached_arrays(
    namespace: str,
    key_payload: Mapping[str, Any],
    compute: Callable[[], Mapping[str, np.ndarray]],
    store: CacheStore = STORE,
) -> tuple[dict[str, np.ndarray], bool]:
    """Return the arrays of a key from the cache, or compute and store them once.

    Args:
        namespace: Sub-folder of the statistics cache (e.g. ``"invariance-stats"``).
        key_payload: Everything the arrays depend on.
        compute: Builds the arrays (name -> array; numeric or string dtypes, no objects);
            called only on a miss, under the key's file lock.
        store: The cache store.

    Returns:
        The arrays (name -> array) and whether they came from the cache.

    Raises:
        ValueError: On a bad namespace, or when ``compute`` returns something that cannot
            be stored (not a mapping, a reserved or non-string name, an object array).
    """
    entry = array_entry(namespace, key_payload, store)
    lookup = store.get_or_compute(
        ARRAYS,
        entry,
        lambda: check_arrays(compute(), namespace),
        describe={"cache": namespace},
    )
    return dict(lookup.value), lookup.hit
