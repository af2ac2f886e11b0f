"""File formats of the cache service: NumPy arrays (``.npz``) and JSON documents.

Both store the key payload's canonical text inside the file and refuse, on load, a
file whose stored text differs (:class:`harness.cache.store.KeyMismatch`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from harness.cache.store import Entry, KeyMismatch

#: Name of the entry that holds the key payload (JSON) inside each file.
KEY_ENTRY = "__key__"

_ARRAY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Keyword names of ``np.savez`` itself: arrays cannot be passed under these names.
_RESERVED = frozenset({KEY_ENTRY, "file", "allow_pickle"})


class NpzArrays:
    """Name -> array mappings in an ``.npz`` file, with the key text under ``__key__``.

    Arrays keep their dtype (numeric or string; no object arrays, which ``.npz`` cannot
    store without pickle).
    """

    def write(self, handle: IO[bytes], value: Mapping[str, np.ndarray], entry: Entry) -> None:
        """Write the arrays and the key.

        Raises:
            ValueError: On something that is not a mapping, a reserved or non-identifier
                name, or an object array.
        """
        arrays = check_arrays(value, entry.path.parent.name)
        np.savez(handle, **arrays, **{KEY_ENTRY: np.array(entry.text)})

    def read(self, path: Path, entry: Entry) -> dict[str, np.ndarray]:
        """Read the arrays of ``entry``.

        Raises:
            KeyMismatch: When the file's key text is missing or another key's.
        """
        with np.load(path, allow_pickle=False) as payload:
            arrays = {name: payload[name] for name in payload.files}
        stored = arrays.pop(KEY_ENTRY, None)
        if stored is None or str(stored) != entry.text:
            raise KeyMismatch("the stored key differs")
        return arrays

    def summary(self, value: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """The arrays' names and shapes."""
        return {"arrays": {name: list(np.shape(array)) for name, array in value.items()}}


def check_arrays(arrays: Any, where: str) -> dict[str, np.ndarray]:
    """Check that ``arrays`` can be stored in an ``.npz`` file; return them as arrays.

    Raises:
        ValueError: Naming ``where`` and the array at fault.
    """
    if not isinstance(arrays, Mapping):
        raise ValueError(
            f"array cache {where!r}: compute() must return a mapping of name -> array, "
            f"got {type(arrays).__name__}"
        )
    out: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not _ARRAY_NAME.fullmatch(name) or name in _RESERVED:
            raise ValueError(
                f"array cache {where!r}: invalid array name {name!r} (use an identifier "
                f"other than {', '.join(sorted(_RESERVED))})"
            )
        array = np.asarray(value)
        if array.dtype == object:
            raise ValueError(
                f"array cache {where!r}: array {name!r} has dtype object, which .npz "
                "cannot store without pickle"
            )
        out[name] = array
    return out


class JsonDocument:
    """A JSON object ``{"key": <key text>, "value": <value>}`` (UTF-8, indented)."""

    def write(self, handle: IO[bytes], value: Any, entry: Entry) -> None:
        """Write the value with its key text."""
        text = json.dumps({"key": entry.text, "value": value}, indent=2, default=str)
        handle.write((text + "\n").encode("utf-8"))

    def read(self, path: Path, entry: Entry) -> Any:
        """Read the value of ``entry``.

        Raises:
            KeyMismatch: When the file's key text is missing or another key's.
        """
        document = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(document, dict) or document.get("key") != entry.text:
            raise KeyMismatch("the stored key differs")
        return document["value"]

    def summary(self, value: Any) -> dict[str, Any]:
        """Nothing: documents are summarised by their namespace's facts."""
        return {}
